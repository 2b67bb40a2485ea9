"""The backend interface (DESIGN §8): what the one federated interpreter asks of a backend.

The interpreter walks the IR on the server. Every value placed at CLIENTS is,
on the server, a `ClientValue`: a small description of where each client's
value comes from, never the values themselves:

- `Handle`: values a backend holds, one a client, wherever it keeps them
  (in this process, in a worker's memory); only the backend can read them.
- `AllEqual`: one server-side value that every client holds (a broadcast);
  a backend sends it to a worker once, not once a client.
- `Zipped`: per client, the struct of the parts' values (`federated_zip`).
- `Selected`: per client, one element of the source's struct value.

Zips and selections are thus done structurally, on the server, moving no
data. A backend serves one run through a `ClientSession`: it places the
clients' argument values (or has the clients load their own data sets),
maps closed non-federated functions (given as building blocks, so they can
travel as serialized IR), aggregates along the canonical tree of
`runtimes/reduction.py`, and materializes client values when a computation
returns them. Everything else (server values, sequence
intrinsics, control of the program) stays in the interpreter.

A new backend subclasses `Backend` and returns its own `ClientSession`; one
that splits clients into contiguous shards gets all of the session's logic
from `runtimes/shard.py` and supplies only the transport.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import BackendError
from fedcc.ir.types import Type


class ClientValue:
    """Base of the server-side descriptions of a value placed at CLIENTS."""

    __slots__ = ()


@dataclass(frozen=True, eq=False, slots=True)
class Handle(ClientValue):
    """Client values held by the backend that created this handle, one a client."""

    id: int


@dataclass(frozen=True, eq=False, slots=True)
class AllEqual(ClientValue):
    """A server-side runtime value that every client holds."""

    value: Any


@dataclass(frozen=True, eq=False, slots=True)
class Zipped(ClientValue):
    """Per client, the tuple of the parts' values (names live in the type)."""

    parts: tuple[ClientValue, ...]


@dataclass(frozen=True, eq=False, slots=True)
class Selected(ClientValue):
    """Per client, element `index` of the source's struct value."""

    source: ClientValue
    index: int


# What an aggregation does at the leaves and merges of the canonical tree
# (see runtimes/aggregations.py for each kind's exact arithmetic).
AGGREGATION_KINDS = ("sum", "weighted_sum", "min", "max", "bounded_sum", "fold")


@dataclass(frozen=True, eq=False)
class Aggregation:
    """One reduction over clients, described so that a remote worker can perform its part.

    - `intrinsic`: the intrinsic being computed, for error messages.
    - `kind`: one of `AGGREGATION_KINDS`.
    - `member_type`: the type of one client's value.
    - `bounds` (`bounded_sum`): per tensor leaf, the largest value a client may
      hold (inclusive, a Python int); the smallest is 0.
    - `zero`, `accumulate`, `merge` (`fold`): the accumulator's zero (a runtime
      value) and closed functions `(<A,T> -> A)` and `(<A,A> -> A)`.
    """

    intrinsic: str
    kind: str
    member_type: Type
    bounds: tuple[int, ...] | None = None
    zero: Any = None
    accumulate: BuildingBlock | None = None
    merge: BuildingBlock | None = None

    def __post_init__(self) -> None:
        if self.kind not in AGGREGATION_KINDS:
            raise ValueError(f"unknown aggregation kind {self.kind!r}; known: {AGGREGATION_KINDS}")

    @property
    def depth(self) -> int:
        """How deeply the user functions of the aggregation nest (0 without any)."""
        return max((f.depth for f in (self.accumulate, self.merge) if f is not None), default=0)


class ClientSession(abc.ABC):
    """The clients of one run, as a backend holds them.

    Handles are valid until `close()`. Client indices in errors are global,
    in [0, num_clients).
    """

    num_clients: int

    @abc.abstractmethod
    def place(self, values: Sequence[Any]) -> Handle:
        """Takes one runtime value a client (`len(values) == num_clients`) to the clients."""

    def load(self, uri: str, element_type: Type) -> Handle:
        """Has each client load its own sequence of `element_type` from the data set `uri`.

        Where the clients live loads them (runtimes/client_data.py), so the data
        never passes through the server. A session that cannot load refuses.
        """
        raise BackendError(
            f"the {type(self).__name__} cannot load the client data set {uri!r}: "
            "it has no data loaders"
        )

    @abc.abstractmethod
    def map(self, intrinsic: str, function: BuildingBlock, argument: ClientValue | None) -> Handle:
        """Calls the closed, non-federated `function` on each client's `argument` value.

        With `argument=None`, `function` takes no parameter and is called once a
        client (`federated_eval_at_clients`). The results stay with the backend.
        """

    @abc.abstractmethod
    def aggregate(self, argument: ClientValue, aggregation: Aggregation) -> Any:
        """The root value of the canonical tree over the clients' leaf values.

        For `fold`, that is the merged accumulator, before the report; for the
        other kinds, see `runtimes/aggregations.py`. Returns None when there are
        no clients.
        """

    @abc.abstractmethod
    def materialize(self, argument: ClientValue) -> list[Any]:
        """The clients' runtime values, brought to the server, in client order."""

    def close(self) -> None:  # noqa: B027 - a session without resources has nothing to free
        """Frees every client value of this session; the handles become invalid."""

    def __enter__(self) -> ClientSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Backend(abc.ABC):
    """A way to hold client values and run client work; registered under `name`.

    A backend may be long-lived (a pool of workers serving many runs); each run
    opens a session. `close()` frees the backend's resources.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def open_session(self, num_clients: int) -> ClientSession:
        """Starts a run over `num_clients` clients."""

    def close(self) -> None:  # noqa: B027 - a backend without resources has nothing to free
        """Frees the backend's resources (worker pools, clusters)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
