"""Saving and loading programs as `.pb` files (DESIGN §6)."""

from __future__ import annotations

import os
from pathlib import Path

from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.program import Program
from fedcc.ir.serialization import deserialize, serialize


def save(x: BuildingBlock | Program, path: str | os.PathLike) -> None:
    """Writes `x` to `path` in the `.pb` format; the bytes are deterministic."""
    Path(path).write_bytes(serialize(x))


def load(path: str | os.PathLike) -> BuildingBlock | Program:
    """Reads a `.pb` file; raises `IRFormatError` for anything but a valid program."""
    return deserialize(Path(path).read_bytes())
