"""A mutation fuzzer for the loader: whatever the bytes, `deserialize` returns a valid program or
raises `IRFormatError`, quickly; never another exception, a hang or a huge allocation.

The corpus is a few valid files (federated programs, local graphs, literals, a two-computation
program). Each case mutates one of them (bit flips, byte substitutions, truncations, splices of
two files, inserted random bytes, lies in the wire format's length fields, and changes of one
parsed field, which get past the protobuf parser to the loader's own checks) with a seeded
`random.Random`, so every run tries the same cases. `FEDCC_FUZZ_CASES=100000` runs more;
`FEDCC_FUZZ_SEED` picks another sequence.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from strategies import sample_local_graphs, sample_programs
from test_serialization import federated_program, graph_with_every_attribute_kind

from fedcc.ir.building_blocks import BuildingBlock, Literal, LocalGraph, Struct
from fedcc.ir.errors import IRFormatError
from fedcc.ir.program import Program
from fedcc.ir.serialization import deserialize, serialize
from fedcc.proto.fedcc.v1 import ir_pb2 as pb

CASES = int(os.environ.get("FEDCC_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("FEDCC_FUZZ_SEED", "20240611"))
CASE_TIME_LIMIT = 2.0  # seconds for one deserialize (and the re-check of what it accepted)
TRUNCATION_STRIDE = 3

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x10, 0x12, 0x1A, 0x22, 0x2A)
INTERESTING_LENGTHS = (0, 1, 127, 128, 2**14, 2**31 - 1, 2**32, 2**63 - 1, 2**64 - 1)


def corpus() -> list[bytes]:
    """Valid files of every flavour, small enough that thousands of cases run in seconds."""
    literals = Struct(
        [
            ("f", Literal(np.array([1.5, -0.0, np.nan], np.float32))),
            ("i", Literal(np.arange(4, dtype=np.int64).reshape(2, 2))),
            ("b", Literal(np.array([True, False]))),
            ("h", Literal(np.float16(3.0))),
            ("e", Literal(np.zeros((0, 2), np.uint8))),
        ]
    )
    programs: list[BuildingBlock | Program] = [
        federated_program(),
        LocalGraph(graph_with_every_attribute_kind()),
        literals,
        Program(
            {"initialize": literals, "next": federated_program()},
            {"fedcc_version": "0.1.0", "passes": "canonicalize"},
        ),
    ]
    programs += sample_programs(4, seed=3, federated=True)
    programs += [LocalGraph(graph) for graph in sample_local_graphs(3, seed=5)]
    return [serialize(program) for program in programs]


# ---------------------------------------------------------------- the wire format


def read_varint(data: bytes, position: int) -> tuple[int, int] | None:
    """The varint at `position` and the position after it, or None if there is none."""
    value = shift = 0
    while position < len(data) and shift < 70:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return None


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_fields(data: bytes, start: int = 0, end: int | None = None, depth: int = 0):
    """(offset, size, value) of every length varint of the message in data[start:end], including
    those inside payloads that parse as messages; None if data[start:end] is not a message."""
    end = len(data) if end is None else end
    found = []
    position = start
    while position < end:
        key = read_varint(data, position)
        if key is None:
            return None
        tag, position = key
        wire_type = tag & 7
        if wire_type == 0:
            value = read_varint(data, position)
            if value is None:
                return None
            position = value[1]
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length = read_varint(data, position)
            if length is None:
                return None
            size, payload = length[0], length[1]
            if payload + size > end:
                return None
            found.append((position, payload - position, size))
            if depth < 8:
                found.extend(length_fields(data, payload, payload + size, depth + 1) or [])
            position = payload + size
        else:
            return None
    return found if position == end else None


# ---------------------------------------------------------------- the mutations


def flip_bits(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    mutated = bytearray(data)
    flips = [rng.randrange(len(data) * 8) for _ in range(rng.randint(1, 4))]
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    return bytes(mutated), f"flip bits {flips}"


def substitute_bytes(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    mutated = bytearray(data)
    changes = []
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(data))
        value = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
        mutated[position] = value
        changes.append((position, value))
    return bytes(mutated), f"substitute {changes}"


def truncate(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    length = rng.randrange(len(data))
    return data[:length], f"truncate to {length}"


def splice(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    cut, other_cut = rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
    return data[:cut] + other[other_cut:], f"splice [:{cut}] + other[{other_cut}:]"


def insert_random_bytes(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    position = rng.randrange(len(data) + 1)
    inserted = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return data[:position] + inserted + data[position:], f"insert {inserted.hex()} at {position}"


def lie_about_a_length(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    fields = length_fields(data)
    if not fields:  # an earlier mutation broke the wire format: nothing to lie about
        return substitute_bytes(rng, data, other)
    offset, size, value = rng.choice(fields)
    lie = rng.choice(
        (
            value + 1,
            max(value - 1, 0),
            value + rng.randint(2, 64),
            rng.randrange(value + 1),
            rng.choice(INTERESTING_LENGTHS),
        )
    )
    mutated = data[:offset] + varint(lie) + data[offset + size :]
    return mutated, f"length at {offset}: {value} -> {lie}"


FIELD_STRINGS = ("", "x", "let", "main", "federated_map", "add", "axis", "float32", "a-b")
FIELD_INTEGERS = (0, 1, 2, 3, 7, 64, 255, 2**31 - 1, 2**32 - 1)


def scalar_fields(message: Message) -> list[tuple[Message, FieldDescriptor, int | None]]:
    """Every scalar field (or repeated-field element) set anywhere in `message`."""
    found: list[tuple[Message, FieldDescriptor, int | None]] = []
    stack = [message]
    while stack:
        current = stack.pop()
        for field, value in current.ListFields():
            if isinstance(value, Message):
                stack.append(value)
            elif isinstance(value, (str, bytes, bool, int, float)):
                found.append((current, field, None))
            else:  # a repeated field
                for position, item in enumerate(value):
                    if isinstance(item, Message):
                        stack.append(item)
                    else:
                        found.append((current, field, position))
    return found


def change_a_field(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    """A structure-aware mutation: one stored index, enum, name, flag or tensor byte string
    changes, so the input gets past the protobuf parser to the loader's own checks."""
    message = pb.Program()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return substitute_bytes(rng, data, other)
    fields = scalar_fields(message)
    if not fields:
        return substitute_bytes(rng, data, other)
    holder, field, index = rng.choice(fields)
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        value = rng.choice(FIELD_STRINGS)
    elif kind == FieldDescriptor.TYPE_BYTES:
        value = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 4, 8))))
    elif kind == FieldDescriptor.TYPE_BOOL:
        value = rng.random() < 0.5
    elif kind == FieldDescriptor.TYPE_DOUBLE:
        value = rng.choice((0.0, -0.0, 1.0, float("nan"), float("inf")))
    elif kind == FieldDescriptor.TYPE_ENUM:
        value = rng.choice((0, 1, 2, 3, 12, 13, 99, -1, 2**31 - 1))
    elif kind in (FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_INT64):
        value = rng.choice((-2, -1, *FIELD_INTEGERS))
    else:
        value = rng.choice(FIELD_INTEGERS) if rng.random() < 0.3 else rng.randrange(40)
    if index is None:
        setattr(holder, field.name, value)
    else:
        getattr(holder, field.name)[index] = value
    return message.SerializeToString(), f"set {field.full_name}[{index}] = {value!r}"


MUTATIONS: tuple[Callable[[random.Random, bytes, bytes], tuple[bytes, str]], ...] = (
    flip_bits,
    substitute_bytes,
    truncate,
    splice,
    insert_random_bytes,
    lie_about_a_length,
    change_a_field,
)


# ---------------------------------------------------------------- running cases


class Outcomes:
    """Counts what the loader did with each case; remembers failures to report them all."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.slowest = 0.0

    def run(self, data: bytes, description: str) -> None:
        start = time.perf_counter()
        try:
            result = deserialize(data)
            # What the loader accepts is a real program: it can be written and read again.
            assert isinstance(result, (BuildingBlock, Program)), type(result)
            assert deserialize(serialize(result)) == result
            self.counts["valid"] += 1
        except IRFormatError:
            self.counts["rejected"] += 1
        except Exception as error:  # the property under test: nothing else escapes
            self.failures.append(f"{description}: {type(error).__name__}: {error}")
        elapsed = time.perf_counter() - start
        self.slowest = max(self.slowest, elapsed)
        if elapsed > CASE_TIME_LIMIT:
            self.failures.append(f"{description}: took {elapsed:.2f} s")

    def check(self, what: str, record_property) -> None:
        for outcome in ("valid", "rejected"):
            record_property(f"{what} {outcome}", self.counts[outcome])
        print(
            f"{what}: {sum(self.counts.values())} cases, {self.counts['valid']} valid, "
            f"{self.counts['rejected']} rejected, slowest {self.slowest * 1000:.1f} ms"
        )
        assert not self.failures, "\n".join(self.failures[:20])


def test_mutated_files_load_or_raise_ir_format_error(record_property):
    files = corpus()
    rng = random.Random(SEED)
    outcomes = Outcomes()
    by_mutation: Counter[str] = Counter()
    for case in range(CASES):
        source = rng.randrange(len(files))
        data, other = files[source], files[rng.randrange(len(files))]
        steps = []
        for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 3)):
            mutation = rng.choice(MUTATIONS)
            if data:
                data, step = mutation(rng, data, other)
                steps.append(step)
                by_mutation[mutation.__name__] += 1
        outcomes.run(data, f"case {case} (seed {SEED}, file {source}): {'; '.join(steps)}")
    print(f"mutations: {dict(sorted(by_mutation.items()))}")
    outcomes.check("mutation fuzzing", record_property)
    assert outcomes.counts["valid"] > 0 and outcomes.counts["rejected"] > 0


def test_truncations_at_every_few_offsets_are_rejected(record_property):
    outcomes = Outcomes()
    for source, data in enumerate(corpus()):
        for length in range(0, len(data), TRUNCATION_STRIDE):
            outcomes.run(data[:length], f"file {source} truncated to {length}")
    outcomes.check("truncation", record_property)
    # A prefix of a file is almost never a whole program; the empty file never is.
    assert outcomes.counts["rejected"] > 0.9 * sum(outcomes.counts.values())


def test_the_length_field_finder_sees_the_nested_fields():
    data = serialize(federated_program())
    fields = length_fields(data)
    assert fields is not None and len(fields) > 10
    # Every length it reports really delimits a payload inside the file.
    assert all(offset + size + value <= len(data) for offset, size, value in fields)
    offset, size, value = fields[0]
    assert read_varint(data, offset) == (value, offset + size)
