"""The shard protocol: a `ClientSession` served by contiguous shards of clients.

A sharded backend splits the clients [0, n) of a run into contiguous shards
[start, stop). Each shard is a `ClientShard`, living wherever the backend
keeps it (in this process, in a worker process, on a Dask worker); it holds
its clients' values between requests and answers the requests below. The
server side, `ShardedSession`, turns the interpreter's calls into one request
a shard and combines the answers; a backend subclasses it and supplies only
`dispatch` (how request k reaches shard k and its answer comes back).

Everything a request carries is plain data: ints, runtime values (arrays,
tuples, lists), `ClientValue` descriptions, `Aggregation`s and building blocks
(which travel as serialized IR). Only aggregates come back from `aggregate`:
one partial value per complete subtree of the canonical tree inside the shard.
A session may instead run a secure sum as masked aggregation
(runtimes/secure_aggregation.py): a `MaskKeyRequest` answers a fresh public
key, then a `MaskedSumRequest` answers the shard's masked partial sum.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import BackendError
from fedcc.ir.types import Type
from fedcc.runtimes import client_data, reduction, secure_aggregation
from fedcc.runtimes.aggregations import tree_operations
from fedcc.runtimes.backend import (
    Aggregation,
    AllEqual,
    ClientSession,
    ClientValue,
    Handle,
    Selected,
    Zipped,
)
from fedcc.runtimes.interpreter import call_with_stack_for, client_function
from fedcc.runtimes.user_errors import USER_ERRORS, user_error


@dataclass(frozen=True)
class PlaceRequest:
    """Keep `values` (one a client of the shard, in order) under `handle`."""

    handle: int
    values: list


@dataclass(frozen=True)
class BroadcastRequest:
    """Keep `value` under `handle` as the value every client of the shard holds."""

    handle: int
    value: Any


@dataclass(frozen=True)
class LoadRequest:
    """Keep the shard's clients' part of the client data set `uri` under `handle`.

    Each client's value is a sequence of `element_type`; the shard loads only
    its own clients, through runtimes/client_data.py (cached in its process).
    """

    handle: int
    uri: str
    element_type: Type


@dataclass(frozen=True)
class MapRequest:
    """Call the closed `function` on each client's `argument` (None: no argument); keep results."""

    handle: int
    intrinsic: str
    function: BuildingBlock
    argument: ClientValue | None


@dataclass(frozen=True)
class AggregateRequest:
    """Answer the shard's partials of `aggregation` over the clients' `argument` values."""

    argument: ClientValue
    aggregation: Aggregation


@dataclass(frozen=True)
class MaskKeyRequest:
    """Make a fresh key pair for the secure sum `nonce`; answer its public key (bytes).

    The first step of a masked secure sum (runtimes/secure_aggregation.py);
    the shard keeps the private key for the `MaskedSumRequest` that follows.
    """

    nonce: bytes


@dataclass(frozen=True)
class MaskedSumRequest:
    """Answer the shard's masked input to the secure sum `nonce` of `aggregation` (a bounded_sum).

    `index` is this shard's position and `public_keys` every shard's public
    key, in shard order, as the server relays them.
    """

    argument: ClientValue
    aggregation: Aggregation
    nonce: bytes
    index: int
    public_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class MaterializeRequest:
    """Answer the clients' `argument` values, in order."""

    argument: ClientValue


@dataclass(frozen=True)
class ReleaseRequest:
    """Forget the values kept under `handles`."""

    handles: tuple[int, ...]


ShardRequest = (
    PlaceRequest | BroadcastRequest | LoadRequest | MapRequest | AggregateRequest
    | MaskKeyRequest | MaskedSumRequest | MaterializeRequest | ReleaseRequest
)


class ClientShard:
    """The clients [start, stop) of a run over `num_clients` clients, and their values."""

    def __init__(self, num_clients: int, start: int, stop: int) -> None:
        if not 0 <= start < stop <= num_clients:
            raise ValueError(
                f"a shard is a non-empty part of [0, {num_clients}), found [{start}, {stop})"
            )
        self.num_clients = num_clients
        self.start = start
        self.stop = stop
        self._values: dict[int, list] = {}
        self._broadcasts: dict[int, Any] = {}
        # The key pair of the secure sum in progress, by its nonce: one at a time, since
        # the server sends a secure sum's two requests back to back.
        self._mask_key: tuple[bytes, secure_aggregation.MaskKey] | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start

    def handle(self, request: ShardRequest) -> Any:
        """Performs `request`; returns its answer (None for requests that only change state)."""
        return _HANDLERS[type(request)](self, request)

    def place(self, request: PlaceRequest) -> None:
        if len(request.values) != self.size:
            raise BackendError(
                f"shard [{self.start}, {self.stop}) got {len(request.values)} client values"
            )
        self._values[request.handle] = list(request.values)

    def broadcast(self, request: BroadcastRequest) -> None:
        self._broadcasts[request.handle] = request.value

    def load(self, request: LoadRequest) -> None:
        self._values[request.handle] = client_data.load_clients(
            request.uri, request.element_type, self.num_clients, self.start, self.stop
        )

    def map(self, request: MapRequest) -> None:
        call_with_stack_for(request.function.depth, self._map, request)

    def _map(self, request: MapRequest) -> None:
        call = client_function(request.function).call
        if request.argument is None:
            arguments: Sequence[Any] = itertools.repeat(None, self.size)
        else:
            arguments = self.values(request.argument)
        results = []
        for client, argument in enumerate(arguments, self.start):
            try:
                results.append(call(argument))
            except USER_ERRORS as error:
                raise user_error(error, request.intrinsic, client) from error
        self._values[request.handle] = results

    def aggregate(self, request: AggregateRequest) -> list[tuple[reduction.Subtree, Any]]:
        return call_with_stack_for(request.aggregation.depth, self._aggregate, request)

    def _aggregate(self, request: AggregateRequest) -> list[tuple[reduction.Subtree, Any]]:
        operations = tree_operations(request.aggregation)
        leaf = operations.leaf
        intrinsic = request.aggregation.intrinsic

        def leaves():
            for client, value in enumerate(self.values(request.argument), self.start):
                try:
                    yield leaf(value)
                except USER_ERRORS as error:
                    raise user_error(error, intrinsic, client) from error

        # IEEE results (inf, nan) without warnings, as local graphs compute them.
        with np.errstate(all="ignore"):
            return reduction.reduce_shard(
                self.num_clients, self.start, self.stop, leaves(), operations.merge
            )

    def mask_key(self, request: MaskKeyRequest) -> bytes:
        key = secure_aggregation.MaskKey.generate()
        self._mask_key = (request.nonce, key)
        return key.public

    def masked_sum(self, request: MaskedSumRequest) -> tuple[np.ndarray, ...]:
        # A key serves one secure sum only: it is dropped whatever happens next.
        held, self._mask_key = self._mask_key, None
        if held is None or held[0] != request.nonce:
            raise BackendError(
                f"shard [{self.start}, {self.stop}) holds no key of the key exchange of this "
                f"{request.aggregation.intrinsic}: expected a key request with its nonce first"
            )
        if request.aggregation.kind != "bounded_sum":
            raise BackendError(
                f"a masked sum adds bounded_sum partials, found a {request.aggregation.kind!r} "
                "aggregation"
            )
        # The clients' range checks (and the shard's own overflow checks) happen here,
        # on the clients' side, exactly as for an unmasked bounded sum.
        partials = self.aggregate(AggregateRequest(request.argument, request.aggregation))
        return secure_aggregation.masked_input(
            request.aggregation,
            [value for _, value in partials],
            held[1],
            request.index,
            request.public_keys,
            request.nonce,
        )

    def materialize(self, request: MaterializeRequest) -> list:
        return list(self.values(request.argument))

    def release(self, request: ReleaseRequest) -> None:
        for handle in request.handles:
            self._values.pop(handle, None)
            self._broadcasts.pop(handle, None)

    def values(self, argument: ClientValue) -> Sequence[Any]:
        """The shard's clients' values described by `argument`, in client order."""
        if isinstance(argument, Handle):
            if argument.id in self._values:
                return self._values[argument.id]
            if argument.id in self._broadcasts:
                return [self._broadcasts[argument.id]] * self.size
            raise BackendError(f"shard [{self.start}, {self.stop}) holds no values {argument.id}")
        if isinstance(argument, AllEqual):
            return [argument.value] * self.size
        if isinstance(argument, Zipped):
            return list(zip(*(self.values(part) for part in argument.parts))) or [()] * self.size
        if isinstance(argument, Selected):
            index = argument.index
            return [value[index] for value in self.values(argument.source)]
        raise BackendError(f"not a client value description: {argument!r}")


_HANDLERS: dict[type, Callable[[ClientShard, Any], Any]] = {
    PlaceRequest: ClientShard.place,
    BroadcastRequest: ClientShard.broadcast,
    LoadRequest: ClientShard.load,
    MapRequest: ClientShard.map,
    AggregateRequest: ClientShard.aggregate,
    MaskKeyRequest: ClientShard.mask_key,
    MaskedSumRequest: ClientShard.masked_sum,
    MaterializeRequest: ClientShard.materialize,
    ReleaseRequest: ClientShard.release,
}


def split_contiguous(num_clients: int, shards: int) -> list[tuple[int, int]]:
    """`num_clients` clients in at most `shards` contiguous, non-empty shards of near-equal size."""
    if shards < 1:
        raise ValueError(f"need at least one shard, found {shards}")
    count = min(shards, num_clients)
    bounds = []
    for k in range(count):
        bounds.append((k * num_clients // count, (k + 1) * num_clients // count))
    return bounds


class ShardedSession(ClientSession):
    """A `ClientSession` over contiguous shards; subclasses say how requests reach them.

    `bounds` lists the shards' [start, stop) ranges in client order; they must
    tile [0, num_clients). A value all clients share is broadcast to each shard
    once, the first time client work needs it, then named by its handle.
    """

    def __init__(self, num_clients: int, bounds: Sequence[tuple[int, int]]) -> None:
        covered = 0
        for start, stop in bounds:
            if start != covered or stop <= start:
                raise ValueError(f"shards {list(bounds)} do not tile [0, {num_clients})")
            covered = stop
        if covered != num_clients:
            raise ValueError(f"shards {list(bounds)} do not tile [0, {num_clients})")
        self.num_clients = num_clients
        self.bounds = tuple(bounds)
        self._next_handle = 0
        self._handles: list[int] = []
        self._broadcasts: dict[int, tuple[Any, Handle]] = {}

    @abc.abstractmethod
    def dispatch(self, requests: Sequence[ShardRequest]) -> list[Any]:
        """Delivers `requests[k]` to shard k, for every shard; their answers, in shard order."""

    def shutdown(self) -> None:
        """Frees the shards themselves, after their values were released."""

    def _new_handle(self) -> Handle:
        handle = Handle(self._next_handle)
        self._next_handle += 1
        self._handles.append(handle.id)
        return handle

    def place(self, values: Sequence[Any]) -> Handle:
        if len(values) != self.num_clients:
            raise BackendError(f"expected {self.num_clients} client values, found {len(values)}")
        handle = self._new_handle()
        self.dispatch([PlaceRequest(handle.id, list(values[a:b])) for a, b in self.bounds])
        return handle

    def load(self, uri: str, element_type: Type) -> Handle:
        handle = self._new_handle()
        self.dispatch([LoadRequest(handle.id, uri, element_type)] * len(self.bounds))
        return handle

    def map(self, intrinsic: str, function: BuildingBlock, argument: ClientValue | None) -> Handle:
        if argument is not None:
            argument = self._sendable(argument)
        handle = self._new_handle()
        request = MapRequest(handle.id, intrinsic, function, argument)
        self.dispatch([request] * len(self.bounds))
        return handle

    def aggregate(self, argument: ClientValue, aggregation: Aggregation) -> Any:
        if self.num_clients == 0:
            return None
        request = AggregateRequest(self._sendable(argument), aggregation)
        answers = self.dispatch([request] * len(self.bounds))
        merge = tree_operations(aggregation).merge
        partials = [partial for answer in answers for partial in answer]
        with np.errstate(all="ignore"):
            return reduction.combine_partials(self.num_clients, partials, merge)

    def materialize(self, argument: ClientValue) -> list[Any]:
        if isinstance(argument, AllEqual):
            return [argument.value] * self.num_clients
        request = MaterializeRequest(self._sendable(argument))
        answers = self.dispatch([request] * len(self.bounds))
        return [value for answer in answers for value in answer]

    def close(self) -> None:
        if self._handles and self.bounds:
            release = ReleaseRequest(tuple(self._handles))
            self.dispatch([release] * len(self.bounds))
        self._handles = []
        self._broadcasts = {}
        self.shutdown()

    def _sendable(self, argument: ClientValue) -> ClientValue:
        # Replaces each all-equal value by a handle to a copy each shard got once.
        if isinstance(argument, AllEqual):
            key = id(argument.value)
            known = self._broadcasts.get(key)
            if known is None:
                handle = self._new_handle()
                self.dispatch([BroadcastRequest(handle.id, argument.value)] * len(self.bounds))
                # Keeping the value alive keeps its id from naming another value.
                known = self._broadcasts[key] = (argument.value, handle)
            return known[1]
        if isinstance(argument, Zipped):
            return Zipped(tuple(self._sendable(part) for part in argument.parts))
        if isinstance(argument, Selected):
            return Selected(self._sendable(argument.source), argument.index)
        return argument
