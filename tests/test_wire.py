"""The wire format of the processes backend: every value kind round-trips, garbage is refused."""

from __future__ import annotations

import ast
import contextlib
import math
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcc.ir.building_blocks import LocalGraph
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.serialization import serialize
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import DTYPES
from fedcc.runtimes import wire
from fedcc.runtimes.backend import Aggregation, AllEqual, Handle, Selected, Zipped
from fedcc.runtimes.reduction import Subtree
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
)

RUNTIMES = Path(wire.__file__).parent


def add_one():
    builder = GraphBuilder("float32[3]")
    (x,) = builder.parameters()
    return LocalGraph(builder.build([builder.op("add", x, builder.constant(1.0, "float32"))]))


def fold_aggregation():
    # <accumulator, value> -> accumulator, and <accumulator, accumulator> -> accumulator: both add.
    builder = GraphBuilder("<float32[3],float32[3]>")
    a, b = builder.parameters()
    add = LocalGraph(builder.build([builder.op("add", a, b)]))
    return Aggregation(
        "federated_aggregate",
        "fold",
        parse_type("float32[3]"),
        zero=np.zeros(3, np.float32),
        accumulate=add,
        merge=add,
    )


def same(a, b) -> bool:
    """Equal values of equal kinds, arrays compared by dtype, shape and bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and a.tobytes() == b.tobytes()
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def round_trip(value, **options):
    return wire.decode(wire.encode_bytes(value, **options))


# --- round trips --------------------------------------------------------------------


PLAIN_VALUES = [
    None, True, False, 0, -1, 2**63, -(2**100), 1.5, -0.0, math.inf, "", "héllo wörld", b"",
    b"\x00\xff", (), [], (1, [2, (3,)]), [(), []],
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=repr)
def test_plain_values_round_trip(value):
    assert same(round_trip(value), value)


def test_a_nan_float_keeps_its_bits():
    value = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF))[0]
    assert struct.pack("<d", round_trip(value)) == struct.pack("<d", value)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_arrays_and_scalars_of_every_dtype_round_trip(dtype):
    rng = np.random.default_rng(0)
    for shape in [(), (0,), (3,), (2, 0, 4), (2, 3, 4)]:
        raw = rng.integers(0, 256, int(np.prod(shape)) * np.dtype(dtype).itemsize, np.uint8)
        array = raw.view(dtype).reshape(shape)
        back = round_trip(array)
        assert same(back, array) and not back.flags.writeable
        assert same(round_trip(array[()] if not shape else array[:0]), array[()] if not shape
                    else array[:0])
    scalar = np.dtype(dtype).type(1)
    assert same(round_trip(scalar), scalar)


def test_arrays_keep_negative_zero_nan_payloads_and_come_back_native_and_contiguous():
    floats = np.array([-0.0, np.inf, -np.inf], np.float32)
    nan = np.array([0x7FC0_1234], np.uint32).view(np.float32)
    for array in (floats, nan, np.arange(12.0).reshape(3, 4)[:, ::2], floats.astype(">f4")):
        back = round_trip(array)
        assert back.dtype == np.dtype(array.dtype.name) and back.flags.c_contiguous
        native = np.ascontiguousarray(array, array.dtype.newbyteorder("="))
        assert back.tobytes() == native.tobytes()


def test_every_record_kind_round_trips():
    aggregation = fold_aggregation()
    bounded = Aggregation("federated_secure_sum", "bounded_sum", parse_type("int32"), bounds=(7,))
    argument = Zipped((Handle(1), Selected(Handle(2), 0), AllEqual(np.float32(1))))
    function = add_one()
    requests = [
        PlaceRequest(3, [np.ones(2, np.float32), (np.int32(1), [np.zeros(0, np.int8)])]),
        BroadcastRequest(4, (np.ones(3, np.float32),)),
        LoadRequest(5, "npz-folder:/tmp/data?batch_size=2", parse_type("<x=float32[?,3]>")),
        MapRequest(6, "federated_map", function, argument),
        MapRequest(7, "federated_eval_at_clients", function, None),
        AggregateRequest(Handle(6), aggregation),
        AggregateRequest(Handle(6), bounded),
        MaskKeyRequest(b"\x07" * 16),
        MaskedSumRequest(Handle(6), bounded, b"\x07" * 16, 1, (b"\x02" * 256, b"\x03" * 256)),
        MaterializeRequest(Selected(Handle(6), 1)),
        ReleaseRequest((1, 2, 3)),
    ]
    for sequence, request in enumerate(requests):
        envelope = wire.Envelope(sequence, 9, 10, 2, 5, sequence % 2 == 0, request)
        back = round_trip(envelope)
        assert type(back.request) is type(request)
        assert wire.encode_bytes(back) == wire.encode_bytes(envelope)
    back = round_trip(MapRequest(6, "federated_map", function, argument))
    assert back.function == function and back.function.type_signature == function.type_signature
    assert same(back.argument.parts[2].value, np.float32(1))
    back = round_trip(AggregateRequest(Handle(0), aggregation))
    assert back.aggregation.member_type == aggregation.member_type
    assert back.aggregation.merge == aggregation.merge
    answer = wire.Answer(1, [(Subtree(2, 3), np.ones(2)), (Subtree(0, 12), np.int8(1))])
    back = round_trip(answer)
    assert back.sequence == 1 and [p[0] for p in back.value] == [Subtree(2, 3), Subtree(0, 12)]
    assert same([p[1] for p in back.value], [p[1] for p in answer.value])
    for message in [
        wire.Failure(2, "FederatedTypeError", "federated_map, client 3: bad"),
        wire.Missing(3, (b"\x01" * 32, b"\x02" * 32)),
        wire.Ready(1234, wire.PROTOCOL_VERSION),
        wire.Exit(),
    ]:
        assert round_trip(message) == message


# --- content: functions and client data sent once -------------------------------------


def test_functions_travel_as_their_ir_bytes_once_then_by_sha256():
    function = add_one()
    digest, data = wire.function_bytes(function)
    assert data == serialize(function)
    import hashlib

    assert digest == hashlib.sha256(data).digest()
    sent: set[bytes] = set()
    store = wire.ContentStore(1 << 20)
    request = MapRequest(0, "federated_map", function, Handle(0))
    first = wire.encode(request, sent=sent)
    second = wire.encode(request, sent=sent)
    assert first.functions_sent == 1 and second.functions_sent == 0
    assert first.size > len(data) > second.size
    assert wire.decode(first.to_bytes(), store=store).function == function
    assert wire.decode(second.to_bytes(), store=store).function == function
    # A receiver that does not hold it says which digest is missing, and for which request.
    with pytest.raises(wire.MissingContent) as missing:
        wire.decode(
            wire.encode_bytes(wire.Envelope(7, 0, 1, 0, 1, False, request), sent={digest}),
            store=wire.ContentStore(1 << 20),
        )
    assert missing.value.digests == (digest,) and missing.value.sequence == 7
    with pytest.raises(wire.WireFormatError, match="without its payload"):
        wire.decode(second.to_bytes())


def test_client_data_travels_by_content_and_the_store_is_bounded_in_bytes():
    values = [np.full(1000, k, np.float32) for k in range(3)]  # 4000 bytes each
    contents = [wire.Content(wire.content_digest(v), v) for v in values]
    sent: set[bytes] = set()
    store = wire.ContentStore(max_bytes=9000)
    first = wire.encode(PlaceRequest(0, contents), sent=sent)
    assert (first.values_sent, first.values_referenced) == (3, 0)
    assert same(wire.decode(first.to_bytes(), store=store).values, values)
    # Two of the three fit: the least recently used one was evicted.
    assert store.bytes == 8000 and len(store) == 2 and contents[0].digest not in store
    again = wire.encode(PlaceRequest(0, contents), sent=sent)
    assert (again.values_sent, again.values_referenced) == (0, 3)
    assert again.size < 200
    with pytest.raises(wire.MissingContent) as missing:
        wire.decode(again.to_bytes(), store=store)
    assert missing.value.digests == (contents[0].digest,)
    # Sent again with what was missing, it decodes to the same values: what a frame
    # names stays in the store while the frame is read, however small the store.
    sent.discard(contents[0].digest)
    resent = wire.encode(PlaceRequest(0, contents), sent=sent)
    assert resent.values_sent == 1
    assert same(wire.decode(resent.to_bytes(), store=store).values, values)
    assert store.bytes <= 9000
    tiny = wire.ContentStore(max_bytes=100)
    assert same(wire.decode(first.to_bytes(), store=tiny).values, values) and len(tiny) == 0


def test_content_digests_tell_apart_everything_the_values_differ_in():
    base = (np.array([0.0, 1.0], np.float32), [np.int32(2)])
    variants = [
        (np.array([-0.0, 1.0], np.float32), [np.int32(2)]),
        (np.array([0.0, 1.0], np.float64), [np.int32(2)]),
        (np.array([[0.0, 1.0]], np.float32), [np.int32(2)]),
        (np.array([0.0, 1.0], np.float32), (np.int32(2),)),
        (np.array([0.0, 1.0], np.float32), [np.array(2, np.int32)]),
        [np.array([0.0, 1.0], np.float32), [np.int32(2)]],
    ]
    digest = wire.content_digest(base)
    assert digest == wire.content_digest((base[0].copy(), [np.int32(2)]))
    assert len({digest, *(wire.content_digest(v) for v in variants)}) == len(variants) + 1


def test_writeable_arrays_are_hashed_again_frozen_ones_are_remembered():
    array = np.zeros(1000, np.float32)
    before = wire.content_digest(array)
    array[3] = 1.0
    assert wire.content_digest(array) != before
    frozen = np.arange(1000, dtype=np.float32)
    frozen.flags.writeable = False
    assert wire.is_frozen(frozen) and wire.is_frozen(frozen[10:20])
    assert not wire.is_frozen(np.arange(3)) and not wire.is_frozen(np.arange(3)[:2])
    view = np.arange(4.0)[:]
    view.flags.writeable = False
    assert not wire.is_frozen(view)  # its base can still change it
    assert not wire.is_frozen(np.frombuffer(bytearray(8)))  # memory of another object
    assert wire.array_digest(frozen) == wire.array_digest(frozen.copy())
    assert wire.content_digest(frozen) == wire.content_digest(frozen.copy())
    # Remembered by region: views made afresh are not hashed again, and views of
    # different regions or layouts get their own digests.
    for start, stop, step in [(10, 20, 1), (10, 20, 1), (10, 20, 2), (0, 1000, 1), (990, 1000, 1)]:
        part = frozen[start:stop:step]
        assert wire.array_digest(part) == wire.array_digest(part.copy())
    owner_key = id(frozen)
    assert len(wire._frozen_digests[owner_key][1]) == 4  # the whole array and 3 regions
    del frozen, part
    assert owner_key not in wire._frozen_digests


# --- shared memory --------------------------------------------------------------------


def segment_exists(name: str) -> bool:
    from multiprocessing import shared_memory

    try:
        segment = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return False
    segment.close()
    return True


def test_large_tensors_go_through_one_shared_memory_segment():
    big = np.arange(100_000, dtype=np.float64)
    small = np.ones(10, np.float32)
    frame = wire.encode([big, small, big[::2]], shared_memory_threshold=1 << 20)
    try:
        assert len(frame.segments) == 1 and frame.shared_bytes >= big.nbytes * 3 // 2
        assert frame.size < 1000
        assert same(wire.decode(frame.to_bytes()), [big, small, big[::2]])
        name = frame.segments[0].name
    finally:
        frame.release()
    assert not segment_exists(name)
    # Below the threshold, everything is inline.
    inline = wire.encode([big], shared_memory_threshold=10 << 20)
    assert not inline.segments and inline.size > big.nbytes


def test_a_receiver_that_unlinks_removes_the_segments_also_when_the_frame_is_bad():
    big = np.arange(10_000, dtype=np.float64)
    frame = wire.encode([big], shared_memory_threshold=0, receiver_unlinks=True)
    name = frame.segments[0].name
    for segment in frame.segments:
        segment.close()
    data = frame.to_bytes()
    with pytest.raises(wire.WireFormatError, match="after the message"):
        wire.decode(data + b"N", unlink_segments=True)
    assert not segment_exists(name)
    with pytest.raises(wire.WireFormatError, match="cannot open the shared-memory segment"):
        wire.decode(data)


# --- garbage ----------------------------------------------------------------------------


def sample_frames() -> list[bytes]:
    function = add_one()
    envelope = wire.Envelope(
        5, 1, 10, 0, 5, False,
        MapRequest(2, "federated_map", function, Zipped((Handle(0), Selected(Handle(1), 1)))),
    )
    return [
        wire.encode_bytes(envelope),
        wire.encode_bytes(wire.Answer(1, [(Subtree(1, 0), (np.ones((2, 2), np.float32), 3))])),
        wire.encode_bytes(AggregateRequest(Handle(1), fold_aggregation())),
        wire.encode_bytes(PlaceRequest(0, [wire.Content(b"\x07" * 32, np.ones(3))])),
    ]


def decode_or_refuse(data: bytes) -> None:
    # Either it decodes (a flipped data byte is still a frame) or it is refused: nothing else.
    with contextlib.suppress(wire.WireFormatError, wire.MissingContent):
        wire.decode(data, store=wire.ContentStore(1 << 20))


def test_every_truncation_of_a_frame_is_refused():
    for frame in sample_frames():
        for end in range(len(frame)):
            with pytest.raises(wire.WireFormatError):
                wire.decode(frame[:end], store=wire.ContentStore(1 << 20))


def test_corrupting_any_byte_of_a_frame_never_crashes_decoding():
    for frame in sample_frames():
        for position in range(len(frame)):
            for replacement in (0x00, 0x01, 0x7F, 0xFF, frame[position] ^ 0x20):
                decode_or_refuse(frame[:position] + bytes([replacement]) + frame[position + 1:])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused(data):
    with pytest.raises(wire.WireFormatError):
        wire.decode(data)
    decode_or_refuse(wire.MAGIC + b"\x00" + data)


def header(tag: bytes) -> bytes:
    return wire.MAGIC + b"\x00" + tag


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"FCW2\x00N", "not a fedcc wire frame"),
        (header(b"N") + b"N", "after the message"),
        (header(b"t") + struct.pack("<I", 5000) + b"N", "a tuple of 5000 elements"),
        (header(b"l\x01\x00\x00\x00" * 5000 + b"N"), "nest deeper"),
        (header(b"s\x02\x00\x00\x00\xff\xfe"), "not UTF-8"),
        (header(b"i\x20" + b"\x00" * 32), "an integer of 32 bytes"),
        (header(b"a\x63\x00I" + b"\x00" * 8), "unknown dtype code 99"),
        (header(b"a\x0a\x01" + struct.pack("<Q", 4) + b"I" + struct.pack("<Q", 4) + b"\x00" * 4),
         "4 bytes for an array of float32"),
        (header(b"a\x0a\x01" + struct.pack("<Q", 2**60) + b"I"), "an array of shape"),
        (header(b"a\x0a\x00S\x00" + b"\x00" * 16), "segment 0 of 0"),
        (header(b"a\x0a\x00X"), "unknown array storage"),
        (header(b"r\xc8"), "unknown record kind 200"),
        (header(b"r\x01s\x01\x00\x00\x00x"), "field 'id' of a Handle record holds str 'x'"),
        (header(b"r\x0ci\x01\x01"), "field 'handles' of a ReleaseRequest record holds int 1"),
        (header(b"f" + b"\x00" * 32 + b"\x01y" + struct.pack("<Q", 3) + b"abc"),
         "do not match their sha256"),
        (header(b"f" + b"\x00" * 32 + b"\x02"), "a payload flag of 2"),
        (header(b"Z"), "unknown value tag 0x5a"),
        (wire.MAGIC + b"\x01" + struct.pack("<I", 3) + b"x/y" + b"\x00" * 8 + b"N",
         "not a shared-memory segment name"),
        (wire.MAGIC + b"\x01" + struct.pack("<I", 12) + b"fedcc_absent" + b"\x00" * 8 + b"N",
         "cannot open the shared-memory segment"),
    ],
)
def test_malformed_frames_are_refused_saying_what_is_wrong(data, message):
    with pytest.raises(wire.WireFormatError, match=message):
        wire.decode(data)


def test_records_that_break_their_own_rules_are_refused():
    envelope = wire.Envelope(1, 0, 4, 3, 3, False, ReleaseRequest(()))
    with pytest.raises(wire.WireFormatError, match=r"clients \[3, 3\), not a shard of \[0, 4\)"):
        round_trip(envelope)
    aggregation = Aggregation("federated_aggregate", "fold", parse_type("float32"))
    with pytest.raises(wire.WireFormatError, match="without its accumulate and merge"):
        round_trip(AggregateRequest(Handle(0), aggregation))
    bad_kind = wire.encode_bytes(Aggregation("federated_sum", "sum", parse_type("float32")))
    bad_kind = bad_kind.replace(b"sum", b"mud")
    with pytest.raises(wire.WireFormatError, match="unknown aggregation kind"):
        wire.decode(bad_kind)
    bad_type = wire.encode_bytes(Aggregation("federated_sum", "sum", parse_type("float32")))
    with pytest.raises(wire.WireFormatError, match="does not parse"):
        wire.decode(bad_type.replace(b"float32", b"float99"))


def test_function_payloads_that_are_not_ir_are_refused():
    import hashlib

    junk = b"\x08\x01junk"
    frame = header(b"f" + hashlib.sha256(junk).digest() + b"\x01y")
    frame += struct.pack("<Q", len(junk)) + junk
    with pytest.raises(wire.WireFormatError, match="IR bytes do not load"):
        wire.decode(frame)


def test_values_that_cannot_travel_are_refused_when_encoding():
    from fedcc.ir.errors import BackendError

    with pytest.raises(BackendError, match="cannot send a object"):
        wire.encode_bytes(object())
    with pytest.raises(BackendError, match="a client value cannot hold"):
        wire.content_digest([add_one()])
    with pytest.raises(BackendError, match="not a fedcc dtype"):
        wire.encode_bytes(np.array(["a"]))


# --- frames on a stream ---------------------------------------------------------------


def test_frames_travel_on_a_socket_whole_or_piece_by_piece():
    left, right = socket.socketpair()
    with left, right:
        message = wire.Answer(4, (np.arange(50_000, dtype=np.int64), "done"))
        frame = wire.encode(message)
        sender = threading.Thread(target=wire.send_frame, args=(left, frame))
        sender.start()
        assert same(wire.decode(wire.receive_frame(right)).value, message.value)
        sender.join()
        # Piece by piece, as a server reads several workers at once.
        data = struct.pack("<Q", frame.size) + frame.to_bytes()
        right.setblocking(False)
        reader = wire.FrameReader(right)
        assert reader.feed() is None
        received = None
        for start in range(0, len(data), 7001):
            left.sendall(data[start : start + 7001])
            received = reader.feed()
        assert received is not None and same(wire.decode(received).value, message.value)
        left.sendall(data[:100])
        assert reader.feed() is None
        left.close()
        with pytest.raises(EOFError, match="ended after 92 of"):
            reader.feed()


def test_a_stream_that_ends_inside_a_frame_is_refused():
    left, right = socket.socketpair()
    with right:
        left.sendall(struct.pack("<Q", 100) + b"FCW1")
        left.close()
        with pytest.raises(wire.WireFormatError, match="ended after 4 of 100 bytes"):
            wire.receive_frame(right)
        assert wire.receive_frame(right) is None
    left, right = socket.socketpair()
    with left, right:
        left.sendall(struct.pack("<Q", 2**50))
        with pytest.raises(wire.WireFormatError, match="frame of"):
            wire.receive_frame(right)


# --- no pickle --------------------------------------------------------------------------

FORBIDDEN_MODULES = {
    "pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "copyreg",
    "multiprocessing.connection", "multiprocessing.reduction", "multiprocessing.pool",
}


@pytest.mark.parametrize(
    "module", ["wire.py", "processes.py", "process_worker.py", "threads.py"]
)
def test_the_transport_never_imports_pickle(module):
    tree = ast.parse((RUNTIMES / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not imported & FORBIDDEN_MODULES, imported & FORBIDDEN_MODULES
    # multiprocessing only for its shared memory (and the tracker that comes with it).
    assert {name for name in imported if name.startswith("multiprocessing")} <= {
        "multiprocessing", "multiprocessing.shared_memory", "multiprocessing.resource_tracker"
    }
    calls = {
        node.func.attr for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not calls & {"dumps", "loads", "Process", "Pipe", "Queue"}


def test_by_content_digests_large_placed_values_in_order_and_leaves_the_rest():
    rng = np.random.default_rng(4)
    values = [
        (rng.random(600).astype(np.float32), np.int32(index)) if index % 3 else np.int32(index)
        for index in range(40)
    ]
    requests = [
        PlaceRequest(0, values[:25]),
        ReleaseRequest((1,)),
        PlaceRequest(2, values[25:]),
    ]
    wrapped = wire.by_content(requests, min_bytes=2048)
    assert wrapped[1] is requests[1]
    placed = [*wrapped[0].values, *wrapped[2].values]
    for index, (value, sent) in enumerate(zip(values, placed, strict=True)):
        if index % 3:
            assert isinstance(sent, wire.Content) and sent.value is value
            assert sent.digest == wire.content_digest(value)  # the one-at-a-time digest
        else:
            assert sent is value  # too small to be worth a digest
