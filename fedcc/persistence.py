"""Computations to bytes, files and text and back (DESIGN §6).

What is written is the IR only: a computation's building block, or a
`ComputationBundle`'s program (named computations plus metadata). What is read
back is callable: a closed function building block becomes a `Computation`
(without Python body or result containers, so results come back as plain
dicts, tuples and lists), a program a `ComputationBundle`. Reading never
executes anything from the input and raises `IRFormatError` (text:
`TextSyntaxError`) for anything malformed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedcc.computation import (
    Computation,
    ComputationBundle,
    PolymorphicComputation,
    as_computation,
)
from fedcc.ir import serialization, text
from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.program import Program


def _readable(x: BuildingBlock | Program) -> Computation | ComputationBundle | BuildingBlock:
    if isinstance(x, Program):
        return ComputationBundle(dict(x.computations), x.metadata)
    return as_computation(x)


Writable = Computation | ComputationBundle | BuildingBlock | Program


def _writable(x: Any) -> BuildingBlock | Program:
    if isinstance(x, Computation):
        return x.building_block
    if isinstance(x, ComputationBundle):
        return x.program
    if isinstance(x, (BuildingBlock, Program)):
        return x
    if isinstance(x, PolymorphicComputation):
        raise FederatedTypeError(
            f"{x.name} is polymorphic and has no single IR: declare its types "
            "(@fc.federated_computation(types...)) or save one traced version"
        )
    raise FederatedTypeError(
        "expected a computation, a ComputationBundle, a building block or a Program, "
        f"found {type(x).__name__}"
    )


def serialize(x: Writable) -> bytes:
    """The `.pb` bytes of a computation, a bundle, a building block or a program.

    The same IR always gives the same bytes, in any process.
    """
    return serialization.serialize(_writable(x))


def deserialize(data: bytes) -> Computation | ComputationBundle | BuildingBlock:
    """What `serialize` wrote, callable: a `Computation`, a `ComputationBundle`, or a block.

    Raises `IRFormatError` for anything that is not a valid program.
    """
    return _readable(serialization.deserialize(data))


def save(x: Writable, path: str | os.PathLike) -> None:
    """Writes `x` to `path` in the `.pb` format; the bytes are deterministic."""
    Path(path).write_bytes(serialize(x))


def load(path: str | os.PathLike) -> Computation | ComputationBundle | BuildingBlock:
    """Reads a `.pb` file (see `deserialize`); a loaded computation is callable."""
    return deserialize(Path(path).read_bytes())


def to_text(x: Writable) -> str:
    """The readable, lossless text of a computation, a bundle, a building block or a program."""
    return text.to_text(_writable(x))


def parse_text(source: str) -> Computation | ComputationBundle | BuildingBlock:
    """Parses what `to_text` wrote; `parse_text(to_text(x)) == x`.

    Raises `TextSyntaxError` showing the line and column of what does not parse.
    """
    return _readable(text.parse_text(source))
