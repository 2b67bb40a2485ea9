"""The bytes between the server and worker processes: shard requests, answers, no pickle.

Everything a `processes` worker receives or sends is one *frame*, written and
read here. Reading trusts nothing: a frame that is truncated, lies about a
length, nests too deep or holds a value of the wrong kind raises
`WireFormatError` (a `BackendError`) saying what is wrong and at which byte,
never another exception, a crash or an allocation out of proportion to the
frame. Nothing is ever executed while reading.

A frame (integers little-endian; u8/u32/u64 unsigned):

    b"FCW1"                      magic and version
    u8 k, k x (str name, u64 size)  shared-memory segments holding large tensors
    value                        the message

A value is a one-byte tag and its payload:

| tag | value | payload |
|---|---|---|
| `N` `T` `F` | None, True, False | - |
| `i` | int | u8 n (<= 16), n bytes two's complement |
| `d` | float | 8 bytes IEEE 754 |
| `s` | str | u32 n, n bytes UTF-8 |
| `y` | bytes | u64 n, n bytes |
| `t` `l` | tuple, list | u32 n, then n values |
| `a` | ndarray | u8 dtype, u8 rank, rank x u64 dims, storage |
| `g` | NumPy scalar | u8 dtype, its itemsize raw bytes |
| `r` | record | u8 kind (`RECORDS`), then its fields as values |
| `f` | function | 32-byte sha256 of its IR bytes (`fc.serialize`), then payload |
| `v` | content | 32-byte digest (`content_digest`), then payload |

An array's storage is `I` u64 n and its n raw bytes (inline), or `S` u8
segment, u64 offset, u64 n (in a shared-memory segment); elements are in C
order, little-endian. dtype codes are positions in `fedcc.ir.types.DTYPES`.
A payload is u8 0 (a reference only), or u8 1 and the IR bytes as a `y`
value (a function) or the value itself (content).

Functions and client data travel by content: a sender includes the payload
of a digest only the first time (it keeps the digests a receiver holds in a
`sent` set), and the receiver keeps what it got in a `ContentStore`. A frame
that names a digest the receiver no longer holds decodes to `MissingContent`
(listing all of them), and nothing in it is acted on: the sender sends it
again with every payload. A value's digest hashes each array's data once in
the array's life when the array is frozen (read-only down to the memory's
owner); writeable arrays are hashed each time, since they may have changed.

Tensors of at least `SHARED_MEMORY_MIN_ARRAY` bytes go into one
`multiprocessing.shared_memory` segment per frame when they add up to the
sender's threshold; the receiver copies them out and closes the segment, and
whoever created the segment unlinks it (the server unlinks its own once the
answer is back, and a worker's once it has read the answer).

On a stream socket a frame is an 8-byte length and the frame (`send_frame`,
`receive_frame`, and `FrameReader` for reading several sockets at once).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
import struct
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import lru_cache
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import BackendError, FedccError
from fedcc.ir.serialization import deserialize, serialize
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import DTYPES, Type
from fedcc.runtimes.backend import Aggregation, AllEqual, ClientValue, Handle, Selected, Zipped
from fedcc.runtimes.reduction import Subtree
from fedcc.runtimes.secure_aggregation import NONCE_BYTES, PUBLIC_KEY_BYTES
from fedcc.runtimes.shard import (
    AggregateRequest,
    BroadcastRequest,
    LoadRequest,
    MapRequest,
    MaskedSumRequest,
    MaskKeyRequest,
    MaterializeRequest,
    PlaceRequest,
    ReleaseRequest,
    ShardRequest,
)

MAGIC = b"FCW1"
# 2: secure sums are masked (MaskKeyRequest, MaskedSumRequest).
PROTOCOL_VERSION = 2
DIGEST_SIZE = 32
# Values nest as deep as their types (at most 200) plus client value descriptions,
# which nest as deep as the program (at most 1000 levels in a .pb).
MAX_NESTING = 4096
MAX_INT_BYTES = 16
MAX_RANK = 64
MAX_SEGMENTS = 16
# Tensors smaller than this always travel inline: a segment is not worth it for them.
SHARED_MEMORY_MIN_ARRAY = 16 * 1024
# Where segment offsets are aligned, so that copying out reads aligned memory.
SEGMENT_ALIGNMENT = 64
# Raw buffers at least this large are sent as they are instead of copied into the frame.
_LARGE_BUFFER = 64 * 1024
_VALUE_DOMAIN = b"fedcc.value.v1\0"

_DTYPE_NAMES: tuple[str, ...] = tuple(DTYPES)
_DTYPE_CODES: dict[str, int] = {name: code for code, name in enumerate(_DTYPE_NAMES)}
_LITTLE = {name: np.dtype(name).newbyteorder("<") for name in _DTYPE_NAMES}
# The same, keyed by the little-endian dtypes themselves: `dtype.name` is computed in
# Python on every access, and a frame of a thousand clients asks for it ten thousand
# times. Other byte orders miss here and go by name.
_CODES_OF_LITTLE: dict[np.dtype, int] = {_LITTLE[name]: code for name, code in _DTYPE_CODES.items()}


def _dtype_code(dtype: np.dtype) -> int | None:
    code = _CODES_OF_LITTLE.get(dtype)
    return _DTYPE_CODES.get(dtype.name) if code is None else code

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")


class WireFormatError(BackendError):
    """A frame is malformed: not something a fedcc server or worker would have sent."""


class MissingContent(FedccError):
    """A frame names content (by digest) that the receiving store does not hold."""

    def __init__(self, digests: tuple[bytes, ...], sequence: int = -1) -> None:
        super().__init__(f"{len(digests)} content digest(s) are not held here")
        self.digests = digests
        # The sequence number of the envelope that named them, to answer it.
        self.sequence = sequence


# ---------------------------------------------------------------------------
# The protocol messages around shard requests.


@dataclass(frozen=True)
class Envelope:
    """Request `sequence` to the shard [start, stop) of run `run` over `num_clients` clients.

    `final`: forget the whole shard once the request is done (the run is over).
    """

    sequence: int
    run: int
    num_clients: int
    start: int
    stop: int
    final: bool
    request: ShardRequest


@dataclass(frozen=True)
class Answer:
    """The answer to request `sequence` (None for requests that only change state)."""

    sequence: int
    value: Any


@dataclass(frozen=True)
class Failure:
    """Request `sequence` raised `error` (a fedcc exception class name) with `message`."""

    sequence: int
    error: str
    message: str


@dataclass(frozen=True)
class Missing:
    """Request `sequence` named content the worker does not hold; send it with these payloads."""

    sequence: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True)
class Ready:
    """A worker's first message: it runs as process `pid` and speaks `version`."""

    pid: int
    version: int


@dataclass(frozen=True)
class Exit:
    """Asks a worker to exit."""


@dataclass(frozen=True)
class Content:
    """A value sent by content: `digest` is `content_digest(value)`."""

    digest: bytes
    value: Any


# ---------------------------------------------------------------------------
# Records: the classes that travel as `r` values, each with its fields' checks.


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_anything(value: Any) -> bool:
    return True


def _is_client_value(value: Any) -> bool:
    return isinstance(value, ClientValue)


def _is_block(value: Any) -> bool:
    return isinstance(value, BuildingBlock)


def _is_request(value: Any) -> bool:
    return isinstance(value, _REQUEST_CLASSES)


def _is_list(value: Any) -> bool:
    return type(value) is list


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _tuple_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: type(value) is tuple and all(check(item) for item in value)


def _is_digest(value: Any) -> bool:
    return type(value) is bytes and len(value) == DIGEST_SIZE


def _is_nonce(value: Any) -> bool:
    return type(value) is bytes and len(value) == NONCE_BYTES


def _is_public_key(value: Any) -> bool:
    # Only the length here; whether it is an element of the group is the receiver's check.
    return type(value) is bytes and len(value) == PUBLIC_KEY_BYTES


def _type_to_wire(t: Type) -> str:
    return str(t)


def _type_from_wire(text: Any) -> Type:
    if type(text) is not str:
        raise WireFormatError(f"a type travels as its text, found {_describe(text)}")
    return _parsed_type(text)


@lru_cache(maxsize=1024)
def _parsed_type(text: str) -> Type:
    try:
        return parse_type(text)
    except FedccError as error:
        raise WireFormatError(f"a type on the wire does not parse: {error}") from None


def _check_aggregation(aggregation: Aggregation) -> str | None:
    if aggregation.kind == "fold" and (aggregation.accumulate is None or aggregation.merge is None):
        return "a fold aggregation without its accumulate and merge functions"
    if aggregation.kind == "bounded_sum" and aggregation.bounds is None:
        return "a bounded_sum aggregation without bounds"
    return None


def _check_masked_sum(request: MaskedSumRequest) -> str | None:
    if request.aggregation.kind != "bounded_sum":
        return f"a masked sum of a {request.aggregation.kind!r} aggregation, not a bounded_sum"
    if not request.index < len(request.public_keys):
        return f"a masked sum for shard {request.index} of {len(request.public_keys)} shards"
    return None


def _check_envelope(envelope: Envelope) -> str | None:
    if not 0 <= envelope.start < envelope.stop <= envelope.num_clients:
        return (
            f"a request for clients [{envelope.start}, {envelope.stop}), not a shard of "
            f"[0, {envelope.num_clients})"
        )
    return None


@dataclass(frozen=True)
class RecordKind:
    """How one class travels: its code, and per field a check (and conversions, for types)."""

    code: int
    cls: type
    checks: tuple[Callable[[Any], bool], ...]
    # Fields that travel converted: field index -> (to wire, from wire).
    conversions: dict[int, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = field(
        default_factory=dict
    )
    # A whole-record check; returns what is wrong, or None.
    check_record: Callable[[Any], str | None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.cls))


RECORDS: tuple[RecordKind, ...] = (
    RecordKind(1, Handle, (_is_count,)),
    RecordKind(2, AllEqual, (_is_anything,)),
    RecordKind(3, Zipped, (_tuple_of(_is_client_value),)),
    RecordKind(4, Selected, (_is_client_value, _is_count)),
    RecordKind(
        5,
        Aggregation,
        (
            _is_str,
            _is_str,
            lambda value: isinstance(value, Type),
            _optional(_tuple_of(_is_count)),
            _is_anything,
            _optional(_is_block),
            _optional(_is_block),
        ),
        conversions={2: (_type_to_wire, _type_from_wire)},
        check_record=_check_aggregation,
    ),
    RecordKind(6, Subtree, (_is_count, _is_count)),
    RecordKind(7, PlaceRequest, (_is_count, _is_list)),
    RecordKind(8, BroadcastRequest, (_is_count, _is_anything)),
    RecordKind(9, MapRequest, (_is_count, _is_str, _is_block, _optional(_is_client_value))),
    RecordKind(10, AggregateRequest, (_is_client_value, lambda v: isinstance(v, Aggregation))),
    RecordKind(11, MaterializeRequest, (_is_client_value,)),
    RecordKind(12, ReleaseRequest, (_tuple_of(_is_count),)),
    RecordKind(
        13,
        Envelope,
        (_is_count, _is_count, _is_count, _is_count, _is_count, _is_bool, _is_request),
        check_record=_check_envelope,
    ),
    RecordKind(14, Answer, (_is_int, _is_anything)),
    RecordKind(15, Failure, (_is_int, _is_str, _is_str)),
    RecordKind(16, Missing, (_is_int, _tuple_of(_is_digest))),
    RecordKind(17, Ready, (_is_count, _is_count)),
    RecordKind(18, Exit, ()),
    RecordKind(
        19,
        LoadRequest,
        (_is_count, _is_str, lambda value: isinstance(value, Type)),
        conversions={2: (_type_to_wire, _type_from_wire)},
    ),
    RecordKind(20, MaskKeyRequest, (_is_nonce,)),
    RecordKind(
        21,
        MaskedSumRequest,
        (
            _is_client_value,
            lambda value: isinstance(value, Aggregation),
            _is_nonce,
            _is_count,
            _tuple_of(_is_public_key),
        ),
        check_record=_check_masked_sum,
    ),
)

_REQUEST_CLASSES = (
    PlaceRequest,
    BroadcastRequest,
    LoadRequest,
    MapRequest,
    AggregateRequest,
    MaskKeyRequest,
    MaskedSumRequest,
    MaterializeRequest,
    ReleaseRequest,
)
_RECORD_BY_CODE: dict[int, RecordKind] = {kind.code: kind for kind in RECORDS}
_RECORD_BY_CLASS: dict[type, RecordKind] = {kind.cls: kind for kind in RECORDS}


# ---------------------------------------------------------------------------
# Function bytes: each building block serialized once, remembered by identity.

_FUNCTION_CACHE_ENTRIES = 256
_function_bytes: OrderedDict[int, tuple[BuildingBlock, bytes, bytes]] = OrderedDict()
_function_lock = threading.Lock()


def function_bytes(block: BuildingBlock) -> tuple[bytes, bytes]:
    """`(sha256 digest, IR bytes)` of a building block: the bytes `fc.serialize` writes.

    Cached by the block's identity (the last few hundred), so a function sent
    every round is serialized once.
    """
    with _function_lock:
        cached = _function_bytes.get(id(block))
        if cached is not None and cached[0] is block:
            _function_bytes.move_to_end(id(block))
            return cached[1], cached[2]
    data = serialize(block)
    digest = hashlib.sha256(data).digest()
    with _function_lock:
        # Keeping the block alive keeps its id from naming another block.
        _function_bytes[id(block)] = (block, digest, data)
        while len(_function_bytes) > _FUNCTION_CACHE_ENTRIES:
            _function_bytes.popitem(last=False)
    return digest, data


# ---------------------------------------------------------------------------
# Writing.


def _array_bytes(array: np.ndarray) -> memoryview:
    """The array's elements as little-endian bytes in C order, without a copy when possible."""
    if array.dtype not in _CODES_OF_LITTLE:
        little = _LITTLE.get(array.dtype.name)
        if little is None:
            raise BackendError(f"cannot send an array of dtype {array.dtype}: not a fedcc dtype")
        array = array.astype(little)
    if not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return memoryview(array.reshape(-1).view(np.uint8))


class _Deferred:
    """An array's storage, decided once the whole frame is known: inline or in a segment."""

    __slots__ = ("data", "location")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.location: bytes | None = None


class _FrameWriter:
    """Collects a frame as a list of buffers: small writes coalesced, big buffers as they are."""

    def __init__(self, shared_memory: bool) -> None:
        self.parts: list[Any] = []
        self.small = bytearray()
        self.shared_memory = shared_memory
        self.deferred: list[_Deferred] = []
        self.deferred_bytes = 0

    def write(self, data: bytes) -> None:
        self.small += data

    def _flush(self) -> None:
        if self.small:
            self.parts.append(bytes(self.small))
            self.small = bytearray()

    def write_buffer(self, data: bytes | memoryview) -> None:
        if len(data) < _LARGE_BUFFER:
            self.small += data
        else:
            self._flush()
            self.parts.append(data)

    def write_array_data(self, array: np.ndarray) -> None:
        data = _array_bytes(array)
        if self.shared_memory and len(data) >= SHARED_MEMORY_MIN_ARRAY:
            self._flush()
            deferred = _Deferred(data)
            self.parts.append(deferred)
            self.deferred.append(deferred)
            self.deferred_bytes += len(data)
        else:
            self.small += b"I" + _U64.pack(len(data))
            self.write_buffer(data)

    def finish(self) -> list[Any]:
        self._flush()
        return self.parts


class _HashWriter:
    """Feeds the inline encoding of a value to a hash, each array's data as its own digest."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256(_VALUE_DOMAIN)

    def write(self, data: bytes) -> None:
        self.hash.update(data)

    write_buffer = write

    def write_array_data(self, array: np.ndarray) -> None:
        self.hash.update(b"I" + _U64.pack(array.nbytes))
        self.hash.update(array_digest(array))


# Digests of regions of frozen arrays: by the identity of the array owning the memory
# (while it lives), then by where the region is in it and how it is laid out.
_frozen_digests: dict[int, tuple[weakref.ref, dict[tuple, bytes]]] = {}
_frozen_lock = threading.Lock()


def frozen_owner(array: np.ndarray) -> np.ndarray | None:
    """The array owning `array`'s memory if nothing can change that memory, else None.

    That is: `array` and every base down to the owner are read-only (changing
    the data would take making the owner writeable again on purpose).
    """
    current = array
    while not current.flags.writeable:
        base = current.base
        if base is None:
            return current
        if not isinstance(base, np.ndarray):
            return None  # memory of another object (a buffer, a memory map): it may change
        current = base
    return None


def is_frozen(array: np.ndarray) -> bool:
    """Whether the array's data cannot change (see `frozen_owner`)."""
    return frozen_owner(array) is not None


def array_digest(array: np.ndarray) -> bytes:
    """The sha256 digest of an array's elements (little-endian, C order).

    Remembered for frozen arrays (`frozen_owner`), which cannot have changed
    since, by their owner and region, so that views made afresh each round
    hit as well; computed afresh for writeable arrays, which may have changed.
    """
    owner = frozen_owner(array)
    if owner is None:
        return hashlib.sha256(_array_bytes(array)).digest()
    region = (
        array.__array_interface__["data"][0] - owner.__array_interface__["data"][0],
        array.shape,
        array.strides,
        array.dtype.str,
    )
    key = id(owner)
    with _frozen_lock:
        entry = _frozen_digests.get(key)
        if entry is not None and entry[0]() is owner:
            digest = entry[1].get(region)
            if digest is not None:
                return digest
    digest = hashlib.sha256(_array_bytes(array)).digest()
    with _frozen_lock:
        entry = _frozen_digests.get(key)
        if entry is None or entry[0]() is not owner:
            entry = _frozen_digests[key] = (weakref.ref(owner, _forget_owner(key)), {})
        entry[1][region] = digest
    return digest


def _forget_owner(key: int) -> Callable[[weakref.ref], None]:
    def forget(reference: weakref.ref) -> None:
        with _frozen_lock:
            entry = _frozen_digests.get(key)
            if entry is not None and entry[0] is reference:
                del _frozen_digests[key]

    return forget


@dataclass
class _EncodeState:
    """What the receiver is believed to hold, and what this frame sends."""

    sent: set[bytes] | None
    allow_references: bool = True
    functions_sent: int = 0
    values_sent: int = 0
    values_referenced: int = 0

    def include(self, digest: bytes) -> bool:
        if self.sent is None:
            return True
        if digest in self.sent:
            return False
        self.sent.add(digest)
        return True


def _write_value(writer: Any, root: Any, state: _EncodeState) -> None:
    stack = [root]
    while stack:
        value = stack.pop()
        kind = type(value)
        if value is None:
            writer.write(b"N")
        elif kind is bool:
            writer.write(b"T" if value else b"F")
        elif kind is tuple or kind is list:
            writer.write((b"t" if kind is tuple else b"l") + _U32.pack(len(value)))
            stack.extend(reversed(value))
        elif isinstance(value, np.ndarray):
            _write_array(writer, value)
        elif isinstance(value, np.generic):
            _write_scalar(writer, value)
        elif kind is int:
            _write_int(writer, value)
        elif kind is float:
            writer.write(b"d" + _F64.pack(value))
        elif kind is str:
            data = value.encode("utf-8")
            writer.write(b"s" + _U32.pack(len(data)))
            writer.write_buffer(data)
        elif kind is bytes:
            writer.write(b"y" + _U64.pack(len(value)))
            writer.write_buffer(value)
        elif kind is Content:
            _require_references(state, value)
            include = state.include(value.digest)
            writer.write(b"v" + value.digest + (b"\x01" if include else b"\x00"))
            if include:
                state.values_sent += 1
                stack.append(value.value)
            else:
                state.values_referenced += 1
        elif isinstance(value, BuildingBlock):
            _require_references(state, value)
            digest, data = function_bytes(value)
            include = state.include(digest)
            writer.write(b"f" + digest + (b"\x01" if include else b"\x00"))
            if include:
                state.functions_sent += 1
                writer.write(b"y" + _U64.pack(len(data)))
                writer.write_buffer(data)
        elif kind in _RECORD_BY_CLASS:
            record = _RECORD_BY_CLASS[kind]
            writer.write(b"r" + _U8.pack(record.code))
            parts = [getattr(value, name) for name in record.names]
            for index, (to_wire, _) in record.conversions.items():
                parts[index] = to_wire(parts[index])
            stack.extend(reversed(parts))
        else:
            raise BackendError(
                f"cannot send a {type(value).__name__} to a worker: runtime values are arrays, "
                "tuples and lists"
            )


def _require_references(state: _EncodeState, value: Any) -> None:
    if not state.allow_references:
        raise BackendError(f"a client value cannot hold a {type(value).__name__}")


def _write_int(writer: Any, value: int) -> None:
    size = max(1, (value.bit_length() + 8) // 8)
    if size > MAX_INT_BYTES:
        raise BackendError(f"the integer {value} is too large to send ({size} bytes)")
    writer.write(b"i" + _U8.pack(size) + value.to_bytes(size, "little", signed=True))


def _write_array(writer: Any, array: np.ndarray) -> None:
    code = _dtype_code(array.dtype)
    if code is None:
        raise BackendError(f"cannot send an array of dtype {array.dtype}: not a fedcc dtype")
    if array.ndim > MAX_RANK:
        raise BackendError(f"cannot send an array of rank {array.ndim}")
    header = b"a" + _U8.pack(code) + _U8.pack(array.ndim)
    header += b"".join(_U64.pack(dim) for dim in array.shape)
    writer.write(header)
    writer.write_array_data(array)


def _write_scalar(writer: Any, scalar: np.generic) -> None:
    code = _dtype_code(scalar.dtype)
    if code is None:
        raise BackendError(f"cannot send a scalar of dtype {scalar.dtype}: not a fedcc dtype")
    writer.write(b"g" + _U8.pack(code) + bytes(_array_bytes(np.asarray(scalar))))


@dataclass
class EncodedFrame:
    """A frame ready to send: its buffers in order, and the segments it created.

    The sender sends `buffers`, then calls `release()` once the receiver has
    read the frame (or is gone): that closes and unlinks the segments.
    """

    buffers: list[Any]
    segments: list[shared_memory.SharedMemory]
    functions_sent: int = 0
    values_sent: int = 0
    values_referenced: int = 0

    @property
    def size(self) -> int:
        """The number of bytes sent on the stream (segments not counted)."""
        return sum(len(buffer) for buffer in self.buffers)

    @property
    def shared_bytes(self) -> int:
        """The number of bytes in shared-memory segments."""
        return sum(segment.size for segment in self.segments)

    def to_bytes(self) -> bytes:
        return b"".join(self.buffers)

    def release(self) -> None:
        """Closes and unlinks this frame's segments (idempotent)."""
        segments, self.segments = self.segments, []
        for segment in segments:
            _close_and_unlink(segment)


def encode(
    message: Any,
    *,
    sent: set[bytes] | None = None,
    shared_memory_threshold: int | None = None,
    segment_name: Callable[[], str | None] | None = None,
    receiver_unlinks: bool = False,
) -> EncodedFrame:
    """The frame of `message` (a protocol record, or any value the format holds).

    - `sent`: the digests the receiver holds; functions and `Content` in it
      travel as references, the others with their payload, and are added.
      None: every payload is included.
    - `shared_memory_threshold`: when the tensors of at least
      `SHARED_MEMORY_MIN_ARRAY` bytes add up to this many bytes, they go into
      one shared-memory segment, named by `segment_name()` (None: a random name).
      None: everything inline.
    - `receiver_unlinks`: the receiver unlinks the segments (`decode(...,
      unlink_segments=True)`); the sender then only closes them.
    """
    writer = _FrameWriter(shared_memory=shared_memory_threshold is not None)
    state = _EncodeState(sent)
    _write_value(writer, message, state)
    parts = writer.finish()
    segments: list[shared_memory.SharedMemory] = []
    if writer.deferred:
        assert shared_memory_threshold is not None
        if writer.deferred_bytes >= shared_memory_threshold:
            segments.append(_fill_segment(writer.deferred, segment_name, not receiver_unlinks))
        else:
            for deferred in writer.deferred:
                deferred.location = b"I" + _U64.pack(len(deferred.data))
    buffers: list[Any] = []
    for part in parts:
        if isinstance(part, _Deferred):
            buffers.append(part.location)
            if part.location[:1] == b"I":
                buffers.append(part.data)
        else:
            buffers.append(part)
    table = _U8.pack(len(segments)) + b"".join(
        _encode_str(segment.name) + _U64.pack(segment.size) for segment in segments
    )
    return EncodedFrame(
        [MAGIC + table, *buffers],
        segments,
        state.functions_sent,
        state.values_sent,
        state.values_referenced,
    )


def encode_bytes(message: Any, *, sent: set[bytes] | None = None) -> bytes:
    """The frame of `message` as one bytes object, every tensor inline."""
    return encode(message, sent=sent).to_bytes()


def _encode_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return _U32.pack(len(data)) + data


def _fill_segment(
    deferred: list[_Deferred], segment_name: Callable[[], str | None] | None, tracked: bool
) -> shared_memory.SharedMemory:
    offsets = []
    size = 0
    for item in deferred:
        size = -(-size // SEGMENT_ALIGNMENT) * SEGMENT_ALIGNMENT
        offsets.append(size)
        size += len(item.data)
    segment = _create_segment(size, segment_name, tracked)
    try:
        for item, offset in zip(deferred, offsets):
            segment.buf[offset : offset + len(item.data)] = item.data
            item.location = b"S" + _U8.pack(0) + _U64.pack(offset) + _U64.pack(len(item.data))
    except BaseException:
        _close_and_unlink(segment)
        raise
    return segment


def _create_segment(
    size: int, segment_name: Callable[[], str | None] | None, tracked: bool
) -> shared_memory.SharedMemory:
    for _ in range(8):
        name = None if segment_name is None else segment_name()
        try:
            return _open_segment(name, size, tracked)
        except FileExistsError:
            continue
    return _open_segment(None, size, tracked)


# Python 3.13 lets a process open a segment without its resource tracker; before,
# every open registers the segment, and the tracker unlinks at exit what is left.
_HAS_TRACK_PARAMETER = sys.version_info >= (3, 13)


def _open_segment(name: str | None, size: int, tracked: bool) -> shared_memory.SharedMemory:
    """Creates (size > 0) or opens a segment; `tracked=False` when another process unlinks it."""
    create = size > 0
    if _HAS_TRACK_PARAMETER and not tracked:
        return shared_memory.SharedMemory(name=name, create=create, size=size, track=False)
    segment = shared_memory.SharedMemory(name=name, create=create, size=size)
    if not tracked:
        with contextlib.suppress(Exception):
            resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    return segment


def _close_and_unlink(segment: shared_memory.SharedMemory) -> None:
    segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()


def content_digest(value: Any) -> bytes:
    """The sha256 digest that identifies a runtime value by content.

    Two values have the same digest exactly when they are the same structure
    (tuples, lists, arrays vs. scalars) of tensors of the same dtypes, shapes
    and bits (NaN payloads and -0.0 included). It hashes the value's encoding
    with each array's data replaced by `array_digest`, so frozen arrays are
    read once in their life.
    """
    writer = _HashWriter()
    _write_value(writer, value, _EncodeState(None, allow_references=False))
    return writer.hash.digest()


# Digests of many values are computed on this many threads: hashlib's sha256 releases the
# GIL on large buffers, so placing a thousand clients' data hashes on every core.
_DIGEST_THREADS = min(8, os.cpu_count() or 1)
_digest_pool: ThreadPoolExecutor | None = None
_digest_pool_lock = threading.Lock()


def _content_digests(values: Sequence[Any]) -> list[bytes]:
    """`content_digest` of each value, in order, in a few contiguous chunks run in parallel."""
    global _digest_pool
    chunks = min(_DIGEST_THREADS, len(values))
    if chunks < 2:
        return [content_digest(value) for value in values]
    with _digest_pool_lock:
        if _digest_pool is None:
            _digest_pool = ThreadPoolExecutor(_DIGEST_THREADS, thread_name_prefix="fedcc-digest")
        pool = _digest_pool
    size = -(-len(values) // chunks)
    parts = pool.map(
        lambda start: [content_digest(v) for v in values[start : start + size]],
        range(0, len(values), size),
    )
    return [digest for part in parts for digest in part]


def by_content(requests: Sequence[ShardRequest], min_bytes: int) -> list[ShardRequest]:
    """`requests` with each placed client value of at least `min_bytes` of tensor data
    wrapped as `Content`, so that it travels by digest to a receiver that holds it."""
    places = [(k, i) for k, request in enumerate(requests) if isinstance(request, PlaceRequest)
              for i, value in enumerate(request.values) if tensor_bytes(value) >= min_bytes]
    digests = _content_digests([requests[k].values[i] for k, i in places])
    values = {k: list(requests[k].values) for k, _ in places}
    for (k, i), digest in zip(places, digests, strict=True):
        values[k][i] = Content(digest, values[k][i])
    result = list(requests)
    for k, placed in values.items():
        result[k] = PlaceRequest(requests[k].handle, placed)
    return result


def tensor_bytes(value: Any) -> int:
    """The number of bytes of tensor data in a runtime value (its arrays and scalars)."""
    total = 0
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, (tuple, list)):
            stack.extend(current)
        elif isinstance(current, (np.ndarray, np.generic)):
            total += current.nbytes
    return total


# ---------------------------------------------------------------------------
# Reading.


class ContentStore:
    """Functions and values a receiver got by content, by digest; least recently used go first.

    Bounded by `max_bytes` of payload (IR bytes for a function, tensor bytes
    for a value). Reading a frame adds what it brings without evicting, so
    that everything one frame names is there while it is read; `trim()`
    afterwards evicts down to the bound.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"a content store holds at least 0 bytes, found {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._entries

    def get(self, digest: bytes, default: Any = None) -> Any:
        """The entry under `digest` (marking it recently used), or `default`."""
        entry = self._entries.get(digest)
        if entry is None:
            return default
        self._entries.move_to_end(digest)
        return entry[0]

    def put(self, digest: bytes, value: Any, size: int, trim: bool = True) -> None:
        """Keeps `value` (of `size` bytes) under `digest` as the most recently used entry."""
        old = self._entries.pop(digest, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[digest] = (value, size)
        self.bytes += size
        if trim:
            self.trim()

    def trim(self) -> None:
        """Evicts least recently used entries until at most `max_bytes` are held."""
        while self.bytes > self.max_bytes and self._entries:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted


_MISSING = object()


@dataclass(frozen=True)
class _Incomplete:
    """A record some of whose content is missing: kept only to say which request it was."""

    cls: type
    items: list


class _Reader:
    """A position in a frame's bytes, with checked reads."""

    def __init__(self, data: memoryview, segments: list[shared_memory.SharedMemory]) -> None:
        self.data = data
        self.position = 0
        self.segments = segments
        self.array_bytes = 0  # tensor bytes read so far, to size stored content

    def fail(self, what: str) -> WireFormatError:
        return WireFormatError(f"malformed frame at byte {self.position}: {what}")

    def take(self, count: int, what: str) -> memoryview:
        end = self.position + count
        if count < 0 or end > len(self.data):
            raise self.fail(
                f"{what} needs {count} bytes, only {len(self.data) - self.position} are left"
            )
        view = self.data[self.position : end]
        self.position = end
        return view

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack(self.take(8, what))[0]

    def text(self, what: str) -> str:
        size = self.u32(what)
        try:
            return str(self.take(size, what), "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def count(self, what: str) -> int:
        size = self.u32(what)
        # Every element takes at least one byte: a count cannot exceed what is left.
        if size > len(self.data) - self.position:
            raise self.fail(f"{what} of {size} elements in {len(self.data) - self.position} bytes")
        return size


class _Open:
    """A container being read: its kind, the number of items it needs and those read so far."""

    __slots__ = ("count", "extra", "items", "kind", "start_bytes")

    def __init__(self, kind: str, count: int, extra: Any = None, start_bytes: int = 0) -> None:
        self.kind = kind
        self.count = count
        self.items: list[Any] = []
        self.extra = extra
        self.start_bytes = start_bytes


def decode(
    data: bytes | bytearray | memoryview,
    *,
    store: ContentStore | None = None,
    unlink_segments: bool = False,
) -> Any:
    """The message of a frame, checked; raises `WireFormatError` for anything malformed.

    Content (functions, values) that arrives with its payload is put in
    `store`; a reference to content not in `store` raises `MissingContent`
    listing every such digest. `unlink_segments`: unlink the frame's segments
    once read (when the sender leaves that to the receiver), also on errors.
    """
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    reader = _Reader(view, [])
    names: list[str] = []
    try:
        if bytes(reader.take(len(MAGIC), "the magic")) != MAGIC:
            raise WireFormatError(
                f"not a fedcc wire frame (version {PROTOCOL_VERSION}): it starts with "
                f"{bytes(view[:4])!r}, expected {MAGIC!r}"
            )
        count = reader.u8("the segment count")
        if count > MAX_SEGMENTS:
            raise reader.fail(f"{count} shared-memory segments, at most {MAX_SEGMENTS} are allowed")
        for _ in range(count):
            name = reader.text("a segment name")
            size = reader.u64("a segment size")
            names.append(name)
            reader.segments.append(_attach_segment(reader, name, size, unlink_segments))
        missing: list[bytes] = []
        message = _read_value(reader, store, missing)
        if reader.position != len(view):
            raise reader.fail(f"{len(view) - reader.position} bytes after the message")
        if missing:
            sequence = -1
            if isinstance(message, _Incomplete) and message.cls is Envelope:
                sequence = message.items[0]
            raise MissingContent(tuple(dict.fromkeys(missing)), sequence)
        return message
    finally:
        if store is not None:
            store.trim()
        for segment in reader.segments:
            segment.close()
        if unlink_segments:
            for name in names:
                unlink_segment(name)


def unlink_segment(name: str) -> None:
    """Removes the shared-memory segment `name`, if it still exists."""
    try:
        segment = _open_segment(name, 0, tracked=True)
    except (ValueError, OSError):
        return
    _close_and_unlink(segment)


def _attach_segment(
    reader: _Reader, name: str, size: int, tracked: bool
) -> shared_memory.SharedMemory:
    if not name or "/" in name or len(name) > 200:
        raise reader.fail(f"{name!r} is not a shared-memory segment name")
    try:
        segment = _open_segment(name, 0, tracked)
    except (OSError, ValueError) as error:
        raise reader.fail(f"cannot open the shared-memory segment {name!r}: {error}") from None
    if segment.size < size:
        segment.close()
        raise reader.fail(f"the segment {name!r} has {segment.size} bytes, the frame says {size}")
    return segment


def _read_value(reader: _Reader, store: ContentStore | None, missing: list[bytes]) -> Any:
    stack: list[_Open] = []
    while True:
        if len(stack) > MAX_NESTING:
            raise reader.fail(f"values nest deeper than {MAX_NESTING} levels")
        tag = reader.u8("a value tag")
        value: Any
        if tag == 0x4E:  # N
            value = None
        elif tag == 0x54:  # T
            value = True
        elif tag == 0x46:  # F
            value = False
        elif tag == 0x69:  # i
            size = reader.u8("an integer's size")
            if not 1 <= size <= MAX_INT_BYTES:
                raise reader.fail(f"an integer of {size} bytes")
            value = int.from_bytes(reader.take(size, "an integer"), "little", signed=True)
        elif tag == 0x64:  # d
            value = _F64.unpack(reader.take(8, "a float"))[0]
        elif tag == 0x73:  # s
            value = reader.text("a string")
        elif tag == 0x79:  # y
            value = bytes(reader.take(reader.u64("a bytes length"), "bytes"))
        elif tag in (0x74, 0x6C):  # t, l
            count = reader.count("a tuple" if tag == 0x74 else "a list")
            kind = "tuple" if tag == 0x74 else "list"
            if count:
                stack.append(_Open(kind, count))
                continue
            value = () if kind == "tuple" else []
        elif tag == 0x61:  # a
            value = _read_array(reader)
        elif tag == 0x67:  # g
            dtype = _read_dtype(reader)
            raw = reader.take(dtype.itemsize, "a scalar")
            value = np.frombuffer(raw, dtype=dtype)[0]
            reader.array_bytes += dtype.itemsize
        elif tag == 0x72:  # r
            code = reader.u8("a record kind")
            record = _RECORD_BY_CODE.get(code)
            if record is None:
                raise reader.fail(f"unknown record kind {code}")
            if record.checks:
                stack.append(_Open("record", len(record.checks), record))
                continue
            value = record.cls()
        elif tag in (0x66, 0x76):  # f, v
            digest = bytes(reader.take(DIGEST_SIZE, "a digest"))
            included = reader.u8("a payload flag")
            kind = "function" if tag == 0x66 else "content"
            if included == 1:
                stack.append(_Open(kind, 1, digest, reader.array_bytes))
                continue
            if included != 0:
                raise reader.fail(f"a payload flag of {included}")
            value = _stored(reader, store, digest, missing, kind)
        else:
            raise reader.fail(f"unknown value tag {tag:#04x}")
        # A value is complete: hand it to the containers it completes, innermost first.
        while stack:
            top = stack[-1]
            top.items.append(value)
            if len(top.items) < top.count:
                break
            stack.pop()
            value = _close(reader, top, store, missing)
        else:
            return value


def _close(reader: _Reader, top: _Open, store: ContentStore | None, missing: list) -> Any:
    if top.kind == "tuple":
        return tuple(top.items)
    if top.kind == "list":
        return top.items
    if top.kind == "record":
        return _build_record(reader, top.extra, top.items, missing)
    (payload,) = top.items
    if top.kind == "function":
        block = _read_function(reader, top.extra, payload)
        if store is not None:
            store.put(top.extra, block, len(payload), trim=False)
        return block
    if store is not None and payload is not _MISSING and not isinstance(payload, _Incomplete):
        store.put(top.extra, payload, reader.array_bytes - top.start_bytes, trim=False)
    return payload


def _stored(
    reader: _Reader, store: ContentStore | None, digest: bytes, missing: list, kind: str
) -> Any:
    if store is None:
        raise reader.fail(f"a reference to {kind} {digest.hex()[:16]} without its payload")
    value = store.get(digest, _MISSING)
    if value is _MISSING:
        missing.append(digest)
    elif kind == "function" and not isinstance(value, BuildingBlock):
        raise reader.fail(f"the digest {digest.hex()[:16]} names a value, not a function")
    return value


def _read_function(reader: _Reader, digest: bytes, payload: Any) -> BuildingBlock:
    if type(payload) is not bytes:
        raise reader.fail(f"a function's payload is a {type(payload).__name__}, not IR bytes")
    if hashlib.sha256(payload).digest() != digest:
        raise reader.fail("a function's IR bytes do not match their sha256 digest")
    try:
        block = deserialize(payload)
    except FedccError as error:
        raise reader.fail(f"a function's IR bytes do not load: {error}") from None
    if not isinstance(block, BuildingBlock):
        raise reader.fail("a function's IR bytes hold a program, not a building block")
    return block


def _build_record(reader: _Reader, record: RecordKind, items: list, missing: list) -> Any:
    if missing:
        # Something inside is not here: the frame is answered with `Missing`, not acted on.
        return _Incomplete(record.cls, items)
    for index, (_, from_wire) in record.conversions.items():
        items[index] = from_wire(items[index])
    for name, check, item in zip(record.names, record.checks, items):
        if not check(item):
            raise reader.fail(
                f"field {name!r} of a {record.cls.__name__} record holds {_describe(item)}"
            )
    try:
        value = record.cls(*items)
    except (FedccError, ValueError, TypeError) as error:
        raise reader.fail(f"a {record.cls.__name__} record is invalid: {error}") from None
    if record.check_record is not None:
        problem = record.check_record(value)
        if problem is not None:
            raise reader.fail(problem)
    return value


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, (int, str, bool)) or value is None:
        return f"{type(value).__name__} {value!r}"[:80]
    return f"a {type(value).__name__}"


def _read_dtype(reader: _Reader) -> np.dtype:
    code = reader.u8("a dtype")
    if code >= len(_DTYPE_NAMES):
        raise reader.fail(f"unknown dtype code {code}")
    return _LITTLE[_DTYPE_NAMES[code]]


def _read_array(reader: _Reader) -> np.ndarray:
    dtype = _read_dtype(reader)
    rank = reader.u8("an array's rank")
    if rank > MAX_RANK:
        raise reader.fail(f"an array of rank {rank}, at most {MAX_RANK}")
    shape = tuple(reader.u64("an array dimension") for _ in range(rank))
    if any(dim > 2**48 for dim in shape):
        raise reader.fail(f"an array of shape {shape}")
    elements = math.prod(shape)
    expected = elements * dtype.itemsize
    storage = reader.u8("an array's storage")
    if storage == 0x49:  # I: inline
        size = reader.u64("an array's byte count")
        if size != expected:
            raise reader.fail(f"{size} bytes for an array of {dtype.name} {shape} ({expected})")
        raw = reader.take(size, "an array's data")
    elif storage == 0x53:  # S: in a segment
        index = reader.u8("a segment index")
        offset = reader.u64("a segment offset")
        size = reader.u64("an array's byte count")
        if index >= len(reader.segments):
            raise reader.fail(f"segment {index} of {len(reader.segments)}")
        if size != expected:
            raise reader.fail(f"{size} bytes for an array of {dtype.name} {shape} ({expected})")
        segment = reader.segments[index]
        if offset + size > segment.size:
            raise reader.fail(
                f"an array at bytes [{offset}, {offset + size}) of a {segment.size}-byte segment"
            )
        raw = segment.buf[offset : offset + size]
    else:
        raise reader.fail(f"unknown array storage {storage:#04x}")
    # A copy: the array owns aligned memory and outlives the frame and its segments.
    array = np.frombuffer(raw, dtype=dtype, count=elements).reshape(shape).copy()
    if raw.obj is not reader.data.obj:
        raw.release()
    array = array.astype(DTYPES[dtype.name], copy=False)
    array.flags.writeable = False
    reader.array_bytes += expected
    return array


# ---------------------------------------------------------------------------
# Frames on a stream socket: an 8-byte length, then the frame.

MAX_FRAME_BYTES = 1 << 40


def send_frame(sock: socket.socket, frame: EncodedFrame | bytes) -> int:
    """Writes one frame to `sock` (blocking, within the socket's timeout); returns its size."""
    buffers = frame.buffers if isinstance(frame, EncodedFrame) else [frame]
    size = sum(len(buffer) for buffer in buffers)
    sock.sendall(_U64.pack(size))
    for buffer in buffers:
        sock.sendall(buffer)
    return size


def receive_frame(sock: socket.socket) -> bytearray | None:
    """Reads one frame from `sock` (blocking); None if the peer closed the stream first."""
    header = _receive_exactly(sock, 8, allow_eof=True)
    if header is None:
        return None
    size = _U64.unpack(header)[0]
    if size > MAX_FRAME_BYTES:
        raise WireFormatError(f"a frame of {size} bytes announced, at most {MAX_FRAME_BYTES}")
    body = _receive_exactly(sock, size, allow_eof=False)
    assert body is not None
    return body


def frame_size(header: bytes) -> int:
    """The size announced by an 8-byte frame header; `WireFormatError` if it is absurd."""
    size = _U64.unpack(header)[0]
    if size > MAX_FRAME_BYTES:
        raise WireFormatError(f"a frame of {size} bytes announced, at most {MAX_FRAME_BYTES}")
    return size


class FrameReader:
    """Reads frames from a non-blocking socket piece by piece, as data arrives.

    `feed()` reads what the socket has; it returns a frame once one is
    complete, else None, and raises `EOFError` when the peer has closed the
    stream (a worker that died).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._header = bytearray()
        self._body: bytearray | None = None
        self._filled = 0

    def feed(self) -> bytearray | None:
        """Reads what is available; the frame, when this completes one."""
        while True:
            try:
                if self._body is None:
                    chunk = self.sock.recv(8 - len(self._header))
                    if not chunk:
                        raise EOFError("the stream ended")
                    self._header += chunk
                    if len(self._header) < 8:
                        continue
                    size = frame_size(bytes(self._header))
                    self._body = bytearray(min(size, 1 << 24))
                    self._size = size
                    self._filled = 0
                if self._filled == self._size:
                    return self._take()
                body = self._body
                if self._filled == len(body):
                    body.extend(bytes(min(len(body), self._size - len(body))))
                with memoryview(body) as view:
                    received = self.sock.recv_into(view[self._filled :], len(body) - self._filled)
                if received == 0:
                    raise EOFError(f"the stream ended after {self._filled} of {self._size} bytes")
                self._filled += received
                if self._filled == self._size:
                    return self._take()
            except (BlockingIOError, InterruptedError):
                return None

    def _take(self) -> bytearray:
        frame = self._body
        assert frame is not None
        self._header = bytearray()
        self._body = None
        self._filled = 0
        return frame


def _receive_exactly(sock: socket.socket, size: int, allow_eof: bool) -> bytearray | None:
    # Grows the buffer as data arrives, so a lying length allocates nothing up front.
    buffer = bytearray(min(size, 1 << 24))
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        if filled == len(buffer):
            view.release()
            buffer.extend(bytes(min(len(buffer), size - len(buffer))))
            view = memoryview(buffer)
        received = sock.recv_into(view[filled:], len(buffer) - filled)
        if received == 0:
            if allow_eof and filled == 0:
                return None
            raise WireFormatError(f"the stream ended after {filled} of {size} bytes of a frame")
        filled += received
    view.release()
    return buffer
