"""The `Program` envelope: named computations plus metadata, what a `.pb` file holds (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import is_valid_field_name

FORMAT_VERSION = 1


class Program:
    """One or more named computations (an iterative process is `initialize` and `next`).

    `metadata` holds strings: `fedcc_version`, `passes` (comma-separated, in
    the order applied), `source_module`, and anything else a tool records.
    """

    __slots__ = ("computations", "metadata")

    def __init__(
        self,
        computations: Mapping[str, BuildingBlock] | Iterable[tuple[str, BuildingBlock]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        items = tuple(computations.items() if isinstance(computations, Mapping) else computations)
        if not items:
            raise FederatedTypeError("a program holds at least one computation")
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            raise FederatedTypeError(f"computation names repeat: {names}")
        for name, comp in items:
            if not is_valid_field_name(name):
                raise FederatedTypeError(f"computation name {name!r} is not an identifier")
            if not isinstance(comp, BuildingBlock):
                raise FederatedTypeError(
                    f"computation {name!r} is not a building block: {type(comp).__name__}"
                )
        meta = dict(sorted((metadata or {}).items()))
        for key, value in meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise FederatedTypeError(f"metadata must map strings to strings: {key!r}")
        object.__setattr__(self, "computations", dict(items))
        object.__setattr__(self, "metadata", meta)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Program is immutable")

    def __getitem__(self, name: str) -> BuildingBlock:
        return self.computations[name]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Program)
            and list(self.computations.items()) == list(other.computations.items())
            and self.metadata == other.metadata
        )

    def __hash__(self) -> int:
        return hash((tuple(self.computations.items()), tuple(self.metadata.items())))

    def __repr__(self) -> str:
        return f"<Program {', '.join(self.computations)}>"
