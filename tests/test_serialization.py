"""The protobuf file format: exact round trips, deterministic bytes, and a loader that refuses
malformed, inconsistent or hostile input with `IRFormatError` naming what is wrong and where."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import local_graphs, program_envelopes, programs

import fedcc as fc
from fedcc.ir import primitives, serialization
from fedcc.ir import types as types_module
from fedcc.ir.building_blocks import (
    NODE_CLASSES,
    Block,
    BuildingBlock,
    Call,
    Data,
    Lambda,
    Literal,
    LocalGraph,
    Placement,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
    walk,
)
from fedcc.ir.errors import IRFormatError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.program import FORMAT_VERSION, Program
from fedcc.ir.serialization import (
    MAX_NODE_DEPTH,
    SINGLE_COMPUTATION_KEY,
    deserialize,
    deserialize_program,
    serialize,
    serialize_program,
)
from fedcc.ir.tensors import little_endian_bytes
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import (
    CLIENTS,
    DTYPES,
    SERVER,
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
)
from fedcc.proto.fedcc.v1 import ir_pb2 as pb

TESTS_DIR = Path(__file__).resolve().parent

# ---------------------------------------------------------------- programs to store


def graph_of(parameter_type, steps, outputs, result_type=None) -> Graph:
    """A graph from `(primitive, inputs, attributes)` steps; result types come from the rules."""
    parameter_type = None if parameter_type is None else parse_type(parameter_type)
    value_types = [] if parameter_type is None else _leaves(parameter_type)
    ops = []
    for name, inputs, attributes in steps:
        result = primitives.infer_result_type(name, [value_types[i] for i in inputs], attributes)
        ops.append(Op(name, inputs, attributes, result))
        value_types.append(result)
    if result_type is None:
        result_type = StructType([value_types[o] for o in outputs])
        if len(outputs) == 1:
            result_type = value_types[outputs[0]]
    return Graph(parameter_type, ops, outputs, result_type)


def _leaves(t):
    return [t] if isinstance(t, TensorType) else [leaf for e in t for leaf in _leaves(e)]


def graph_with_every_attribute_kind() -> Graph:
    """Attributes of every kind the primitive registry uses: int, ints, axes (tuple and None),
    bool, dtype (a string), tensor and shape (with -1)."""
    weights = np.array([[1.5, -0.0], [np.nan, np.inf]], np.float32)
    return graph_of(
        "<x=float32[?,2],n=int32[3]>",
        [
            ("constant", [], {"value": weights}),  # %2
            ("matmul", [0, 2], {}),  # %3
            ("reduce_sum", [3], {"axis": (1,), "keepdims": True}),  # %4
            ("reduce_max", [3], {"axis": None}),  # %5
            ("cast", [4], {"dtype": "float64"}),  # %6
            ("reshape", [1], {"shape": (-1, 1)}),  # %7
            ("slice", [1], {"start": (0,), "stop": (2,), "step": (1,)}),  # %8
            ("expand_dims", [8], {"axis": 0}),  # %9
            ("concatenate", [9, 9], {"axis": 0}),  # %10
            ("one_hot", [1], {"depth": 4, "dtype": "float16"}),  # %11
        ],
        [6, 5, 7, 10, 11],
    )


def federated_program() -> Lambda:
    """`(x -> let m=federated_map(<graph,x>) ... in <...>)` using every kind of building block."""
    x_type = parse_type("{float32[3]}@CLIENTS")
    x = Reference("x", x_type)
    double = LocalGraph(graph_of("float32[3]", [("add", [0, 0], {})], [1]))
    mapped = call_intrinsic("federated_map", Struct([double, x]))
    block = Block(
        [
            ("m", mapped),
            ("mean", call_intrinsic("federated_mean", Reference("m", mapped.type_signature))),
            ("pair", Struct([("a", Literal(np.float32(2.5))), (None, Literal(np.int8(-3)))])),
            ("where", Placement(SERVER)),
            ("dataset", Data("data/clients/*.npz", "{int32[?]*}@CLIENTS")),
        ],
        Struct(
            [
                ("mean", Reference("mean", FederatedType(TensorType(np.float32, (3,)), SERVER))),
                ("first", Selection(Reference("pair", parse_type("<a=float32,int8>")), 0)),
                ("dataset", Reference("dataset", "{int32[?]*}@CLIENTS")),
            ]
        ),
    )
    return Lambda("x", x_type, block)


def no_parameter_call() -> Call:
    """`( -> 7)()`: a lambda and a call without parameter or argument."""
    return Call(Lambda(None, None, Literal(np.int64(7))))


def chain(depth: int) -> BuildingBlock:
    """`<<...<x>[0]...>` nested `depth` levels: structs and selections in turn."""
    node: BuildingBlock = Literal(np.int32(1))
    for level in range(depth - 1):
        node = Struct([node]) if level % 2 == 0 else Selection(node, 0)
    return node


def nan_with_payload(dtype: str, bits: int) -> np.ndarray:
    unsigned = {"float16": np.uint16, "float32": np.uint32, "float64": np.uint64}[dtype]
    return np.array([bits], unsigned).view(dtype)


def literal_examples() -> list[np.ndarray]:
    examples = []
    for dtype in DTYPES.values():
        examples.append(np.zeros((), dtype))  # 0-d
        examples.append(np.zeros((0, 3), dtype))  # empty
        examples.append(np.arange(6).astype(dtype).reshape(2, 3))
    examples.append(np.array([True, False, True]))
    examples.append(np.array([np.iinfo(np.int64).min, -1, np.iinfo(np.int64).max], np.int64))
    examples.append(np.array([np.iinfo(np.uint64).max], np.uint64))
    for name in ("float16", "float32", "float64"):
        examples.append(np.array([-0.0, np.inf, -np.inf, np.finfo(name).tiny / 2], name))
    examples.append(nan_with_payload("float16", 0x7E01))
    examples.append(nan_with_payload("float32", 0x7FC00001))
    examples.append(nan_with_payload("float32", 0xFF800001))  # signalling, negative
    examples.append(nan_with_payload("float64", 0x7FF0000000000001))  # signalling
    return examples


def round_trip(x):
    data = serialize(x)
    back = deserialize(data)
    assert type(back) is type(x)
    assert back == x
    assert serialize(back) == data, "re-serializing what was read must give the same bytes"
    return back


# ---------------------------------------------------------------- round trips


def test_a_program_with_every_node_kind_round_trips():
    program = federated_program()
    kinds = {type(node) for node in walk(program)}
    assert kinds == set(NODE_CLASSES)
    back = round_trip(program)
    assert str(back.type_signature) == str(program.type_signature)


def test_calls_and_lambdas_without_parameter_round_trip():
    back = round_trip(no_parameter_call())
    assert back.argument is None and back.function.parameter_name is None


@pytest.mark.parametrize("array", literal_examples(), ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_literals_of_every_dtype_round_trip_bit_for_bit(array):
    back = round_trip(Literal(array))
    assert back.value.dtype == array.dtype and back.value.shape == array.shape
    assert little_endian_bytes(back.value) == little_endian_bytes(array)
    assert not back.value.flags.writeable


def test_a_local_graph_with_every_attribute_kind_round_trips():
    graph = graph_with_every_attribute_kind()
    kinds = {type(value) for op in graph.ops for _, value in op.attributes}
    assert kinds >= {int, tuple, bool, str, np.ndarray, type(None)}
    back = round_trip(LocalGraph(graph))
    constant = back.graph.ops[0].attrs["value"]
    assert little_endian_bytes(constant) == little_endian_bytes(graph.ops[0].attrs["value"])
    assert back.graph.ops == graph.ops and back.graph.outputs == graph.outputs


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.5, float("inf"), -float("inf"), 1e-310, float("nan")]
)
def test_float_attributes_round_trip_bit_for_bit(value):
    # No registered primitive takes a float attribute yet; the format stores them all the same.
    attribute = pb.Attribute(name="alpha")
    serialization._ATTRIBUTE_ENCODERS[float](attribute, value)
    parsed = pb.Attribute.FromString(attribute.SerializeToString())
    back = serialization._ATTRIBUTE_DECODERS[parsed.WhichOneof("value")](parsed.float_value)
    assert np.float64(back).tobytes() == np.float64(value).tobytes()


def test_a_900_deep_program_round_trips():
    program = chain(900)
    assert program.depth == 900
    assert round_trip(program).depth == 900


def test_a_wide_struct_round_trips():
    elements = [(f"e{i}", Literal(np.int32(i))) for i in range(5000)]
    elements += [(None, Literal(np.float32(i))) for i in range(100)]
    back = round_trip(Struct(elements))
    assert len(back.elements) == 5100 and back.elements[4999][0] == "e4999"


def test_programs_round_trip_with_their_order_and_metadata():
    program = Program(
        [("next", federated_program()), ("initialize", no_parameter_call())],
        {"source_module": "examples.fedavg", "fedcc_version": "0.1.0", "passes": ""},
    )
    back = round_trip(program)
    assert list(back.computations) == ["next", "initialize"]
    assert back.metadata == program.metadata
    assert deserialize_program(serialize_program(program)) == program


def test_a_single_building_block_comes_back_as_itself_or_as_a_program_named_main():
    block = federated_program()
    data = serialize(block)
    assert isinstance(deserialize(data), Lambda)
    assert deserialize(bytearray(data)) == deserialize(memoryview(data)) == block
    as_program = deserialize_program(data)
    assert as_program == Program({"main": block})
    assert SINGLE_COMPUTATION_KEY not in as_program.metadata
    # A program of one computation named main is still a program.
    program = Program({"main": block})
    assert isinstance(deserialize(serialize(program)), Program)


def test_equal_subtrees_and_types_are_stored_once():
    def subtree() -> BuildingBlock:
        return Struct([Literal(np.float32(1.0)), Literal(np.float32(1.0))])

    program = Struct([subtree(), subtree(), Selection(subtree(), 1)])
    message = pb.Program.FromString(serialize(program))
    # literal, <lit,lit>, selection, outer struct: each stored once.
    assert len(message.nodes) == 4
    # float32, <float32,float32>, the outer struct's type.
    assert len(message.types) == 3
    assert round_trip(program) == program


def test_negative_zero_and_zero_literals_are_kept_apart():
    program = Struct([Literal(np.float32(0.0)), Literal(np.float32(-0.0))])
    back = round_trip(program)
    assert np.signbit(back.elements[1][1].value) and not np.signbit(back.elements[0][1].value)


# ---------------------------------------------------------------- determinism


def test_the_same_program_gives_the_same_bytes_every_time():
    assert serialize(federated_program()) == serialize(federated_program())
    program = Program({"b": chain(7), "a": no_parameter_call()}, {"z": "1", "a": "2"})
    reordered = Program({"b": chain(7), "a": no_parameter_call()}, {"a": "2", "z": "1"})
    assert serialize(program) == serialize(reordered)


_DIGEST_SCRIPT = textwrap.dedent(
    """
    import hashlib
    from strategies import sample_programs
    from test_serialization import federated_program, graph_with_every_attribute_kind
    from fedcc.ir.building_blocks import LocalGraph
    from fedcc.ir.program import Program
    from fedcc.ir.serialization import serialize
    digest = hashlib.sha256()
    for program in sample_programs(40, seed=7, federated=True):
        digest.update(serialize(program))
    digest.update(serialize(federated_program()))
    digest.update(serialize(LocalGraph(graph_with_every_attribute_kind())))
    digest.update(serialize(Program({"next": federated_program()}, {"b": "1", "a": "2"})))
    print(digest.hexdigest())
    """
)


def _digest_in_subprocess(hash_seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT],
        env=env,
        cwd=TESTS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_bytes_are_identical_across_processes_and_hash_seeds():
    first = _digest_in_subprocess("1")
    second = _digest_in_subprocess("2024")
    assert len(first) == 64
    assert first == second


# ---------------------------------------------------------------- property tests

_PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(programs())
def test_every_generated_program_round_trips(program):
    round_trip(program)


@_PROPERTY
@given(program_envelopes())
def test_every_generated_envelope_round_trips(program):
    round_trip(program)


@_PROPERTY
@given(local_graphs())
def test_every_generated_local_graph_round_trips(graph):
    round_trip(LocalGraph(graph))


# ---------------------------------------------------------------- writing refuses


def test_writing_refuses_programs_it_could_not_read_back():
    with pytest.raises(IRFormatError, match=f"more than {MAX_NODE_DEPTH} levels"):
        serialize(chain(MAX_NODE_DEPTH + 1))
    with pytest.raises(IRFormatError, match="computation 'deep'"):
        serialize(Program({"deep": chain(MAX_NODE_DEPTH + 1)}))
    # Shared objects: a small DAG in memory that unfolds to 3**20 nodes.
    node: BuildingBlock = Literal(np.int32(0))
    for _ in range(20):
        node = Block([("a", node), ("b", node)], node)
    with pytest.raises(IRFormatError, match="unfold"):
        serialize(node)


def test_writing_refuses_the_reserved_metadata_key_and_non_programs():
    with pytest.raises(IRFormatError, match="reserved"):
        serialize_program(Program({"main": chain(2)}, {SINGLE_COMPUTATION_KEY: "true"}))
    with pytest.raises(IRFormatError, match="expected a Program, found Lambda"):
        serialize_program(federated_program())


# ---------------------------------------------------------------- reading refuses


def message_of(x) -> pb.Program:
    return pb.Program.FromString(serialize(x))


def rejects(message: pb.Program, *fragments: str) -> str:
    """Deserializes `message`, expecting IRFormatError with every fragment in its message."""
    data = message.SerializeToString()
    with pytest.raises(IRFormatError) as caught:
        deserialize(data)
    text = str(caught.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    with pytest.raises(IRFormatError):
        deserialize_program(data)
    return text


def node_index(message: pb.Program, kind: str) -> int:
    return next(i for i, n in enumerate(message.nodes) if n.WhichOneof("kind") == kind)


def type_index(message: pb.Program, text: str) -> int:
    reader = serialization._Reader(message, 0)
    reader.read_types()
    return next(i for i, t in enumerate(reader.types) if str(t) == text)


def test_reading_refuses_malformed_and_truncated_bytes():
    for data in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x22\x80"):
        with pytest.raises(IRFormatError, match="malformed or truncated"):
            deserialize(data)
    data = serialize(federated_program())
    with pytest.raises(IRFormatError, match="malformed or truncated"):
        deserialize(data[: len(data) - 3])
    with pytest.raises(IRFormatError, match="expected the bytes of a program, found str"):
        deserialize("not bytes")


def test_reading_refuses_unknown_format_versions():
    message = message_of(chain(3))
    message.format_version = FORMAT_VERSION + 1
    rejects(message, "unknown format version", f"reads version {FORMAT_VERSION}", "has 2")
    with pytest.raises(IRFormatError, match="is this a fedcc program"):
        deserialize(b"")


def test_reading_refuses_child_indices_that_are_not_earlier():
    message = message_of(federated_program())
    call = node_index(message, "call")
    message.nodes[call].call.function = call
    rejects(message, f"node {call} (call, in computation 'main')", f"refers to node {call}")
    message.nodes[call].call.function = 10**6
    rejects(message, "refers to node 1000000", "only nodes before it")


def test_reading_refuses_type_indices_out_of_range_or_forward():
    message = message_of(federated_program())
    struct = next(i for i, t in enumerate(message.types) if t.WhichOneof("kind") == "struct")
    message.types[struct].struct.elements[0].type = struct
    rejects(message, f"type {struct} (struct)", "element 0", "only types before it")
    message = message_of(federated_program())
    message.nodes[0].type = len(message.types)
    rejects(message, "node 0", f"the type table has {len(message.types)} entries")


def test_reading_refuses_a_root_out_of_range_and_nodes_of_no_kind():
    message = message_of(chain(3))
    message.computations[0].root = 99
    rejects(message, "computation 'main' has root node 99", "node table has 3 entries")
    message = message_of(chain(3))
    message.nodes.add(type=0)
    rejects(message, "node 3 (None, used by no computation)", "no kind")


def test_reading_refuses_unknown_enum_values():
    message = message_of(federated_program())
    tensor = next(i for i, t in enumerate(message.types) if t.WhichOneof("kind") == "tensor")
    message.types[tensor].tensor.dtype = 99
    rejects(message, f"type {tensor} (tensor)", "unknown dtype code 99")

    message = message_of(federated_program())
    federated = next(i for i, t in enumerate(message.types) if t.WhichOneof("kind") == "federated")
    message.types[federated].federated.placement = 7
    rejects(message, f"type {federated} (federated)", "unknown placement code 7")

    message = message_of(Block([("p", Placement(CLIENTS))], Literal(np.int32(0))))
    placement = node_index(message, "placement")
    message.nodes[placement].placement.value = 0
    rejects(message, f"node {placement} (placement", "unknown placement code 0")

    message = message_of(Literal(np.float32(1)))
    message.nodes[0].literal.value.dtype = 42
    rejects(message, "node 0 (literal", "unknown dtype code 42")


def test_reading_refuses_bad_names():
    message = message_of(federated_program())
    reference = node_index(message, "reference")
    message.nodes[reference].reference.name = "let"
    rejects(message, f"node {reference} (reference", "'let' is not a valid variable name")

    message = message_of(Struct([("ok", Literal(np.int32(0)))]))
    message.nodes[-1].struct.elements[0].name = "not-a-name"
    rejects(message, "struct field name 'not-a-name' is not an identifier")

    message = message_of(Program({"next": chain(2)}))
    message.computations[0].name = "9lives"
    rejects(message, "invalid program", "'9lives' is not an identifier")

    message = message_of(Program({"a": chain(2), "b": chain(3)}))
    message.computations[1].name = "a"
    rejects(message, "computation names repeat")


def test_reading_refuses_a_stored_type_that_disagrees_with_construction():
    message = message_of(federated_program())
    call = node_index(message, "call")
    message.nodes[call].type = type_index(message, "float32")
    rejects(message, f"node {call} (call, in computation 'main')", "stored type float32 differs")

    message = message_of(federated_program())
    intrinsic = node_index(message, "intrinsic")
    message.nodes[intrinsic].type = type_index(message, "float32")
    rejects(message, f"node {intrinsic} (intrinsic", "needs a function type, found float32")


def test_reading_wraps_type_errors_of_construction():
    message = message_of(federated_program())
    selection = node_index(message, "selection")
    message.nodes[selection].selection.index = 5
    rejects(message, f"node {selection} (selection", "selection index 5 is out of range")

    message = message_of(no_parameter_call())
    message.nodes[-1].call.argument = 0  # a function of no parameter, called with an argument
    rejects(message, "(call, in computation 'main')", "takes no argument")


def test_reading_refuses_tensors_whose_bytes_do_not_match_their_shape():
    message = message_of(Literal(np.zeros((2, 3), np.float32)))
    message.nodes[0].literal.value.shape[:] = [1000]
    rejects(message, "node 0 (literal", "dtype float32 and shape [1000] needs 4000 bytes", "24")

    message.nodes[0].literal.value.shape[:] = [2**40, 2**40]
    rejects(message, "absurd shape")

    message.nodes[0].literal.value.shape[:] = [0, 2**62, 2**62]
    rejects(message, "absurd shape")

    message.nodes[0].literal.value.shape[:] = [1] * 65
    rejects(message, "65 dimensions")

    message = message_of(Literal(np.array([True, False])))
    message.nodes[0].literal.value.content = b"\x01\x02"
    rejects(message, "bool tensor holds bytes other than 0 and 1")


def test_reading_refuses_programs_nested_too_deep():
    message = message_of(chain(MAX_NODE_DEPTH))
    types = [message.nodes[-2].type, message.nodes[-1].type]
    for level in range(5000 - MAX_NODE_DEPTH):
        previous = len(message.nodes) - 1
        node = message.nodes.add(type=types[level % 2])
        if level % 2 == 0:
            node.selection.source = previous
        else:
            node.struct.elements.add(value=previous)
    message.computations[0].root = len(message.nodes) - 1
    rejects(message, f"node {MAX_NODE_DEPTH} (", f"more than {MAX_NODE_DEPTH} levels deep")


def test_reading_refuses_types_nested_too_deep():
    message = pb.Program(format_version=FORMAT_VERSION)
    message.types.add().tensor.dtype = pb.DTYPE_INT32
    for index in range(1, 250):
        message.types.add().struct.elements.add(type=index - 1)
    rejects(message, "type 200 (struct)", "201 levels deep")


def test_reading_refuses_shared_types_that_expand_exponentially():
    # Each type is a pair of the previous one: 60 small entries, 2**60 characters of text.
    message = pb.Program(format_version=FORMAT_VERSION)
    message.types.add().tensor.dtype = pb.DTYPE_INT32
    for index in range(1, 61):
        pair = message.types.add().struct
        pair.elements.add(type=index - 1)
        pair.elements.add(type=index - 1)
    rejects(message, "type text")


def _doubling_types(message: pb.Program, leaf: pb.TensorType, levels: int) -> int:
    """Adds `levels` types, each a pair of the previous one, over `leaf`: 2**levels leaves,
    text of millions of characters, from levels + 1 small entries. Returns the last index."""
    message.types.add().tensor.CopyFrom(leaf)
    for _ in range(levels):
        pair = message.types.add().struct
        pair.elements.add(type=len(message.types) - 2)
        pair.elements.add(type=len(message.types) - 2)
    return len(message.types) - 1


HUGE_LEVELS = 18  # 2**18 leaves: about 2 million characters of text, within the allowance
MANY_NODES = 20_000


def test_reading_charges_a_huge_type_once_however_many_nodes_refer_to_it(monkeypatch):
    # Before types were interned, each node charged the text of the types it touched: these
    # 20,000 nodes around one 2-million-character type were refused, and a wide program
    # (every selection carries the whole struct type) was refused the same way.
    message = pb.Program(format_version=FORMAT_VERSION)
    huge = _doubling_types(message, pb.TensorType(dtype=pb.DTYPE_INT32), HUGE_LEVELS)
    message.types.add().struct.elements.add(type=huge)
    message.nodes.add(type=huge).reference.name = "x"
    for _ in range(MANY_NODES):
        message.nodes.add(type=huge + 1).struct.elements.add(value=0)
    message.computations.add(name="main", root=len(message.nodes) - 1)
    data = message.SerializeToString()

    charged = []
    charge = serialization._Reader.charge_text
    monkeypatch.setattr(
        serialization._Reader,
        "charge_text",
        lambda reader, characters: (charged.append(characters), charge(reader, characters)),
    )

    def unfold(self, *args):
        raise AssertionError("reading built the text of a struct type: it unfolded a type")

    monkeypatch.setattr(StructType, "_make_text", unfold)
    started = time.perf_counter()
    loaded = deserialize_program(data)
    assert time.perf_counter() - started < 10  # seconds; was minutes with a charge a node
    assert loaded.computations["main"].type_signature.text_length > 2_000_000
    # One charge a type table entry (its text length), none a node.
    assert len(charged) == len(message.types)
    assert sum(charged) < 3 * loaded.computations["main"].type_signature.text_length


def test_reading_refuses_many_distinct_huge_types():
    # Each distinct type is charged its unfolded size once: 40 distinct types around a
    # 2-million-character one spend far more than a 1 kB file's allowance.
    message = pb.Program(format_version=FORMAT_VERSION)
    huge = _doubling_types(message, pb.TensorType(dtype=pb.DTYPE_INT32), HUGE_LEVELS)
    for dim in range(40):
        struct = message.types.add().struct
        struct.elements.add(type=huge)
        struct.elements.add(type=0, name=f"n{dim}")
    assert message.ByteSize() < 1024
    rejects(message, "type text")


def test_reading_refuses_many_local_graphs_that_unfold_a_huge_type():
    # A local graph lists its parameter's tensor leaves: each graph unfolds the type, so
    # each graph is charged its parameter's text. (Leaves of rank 1000 make the text long
    # and the unfolding quick: 1024 leaves, 2 million characters.)
    message = pb.Program(format_version=FORMAT_VERSION)
    leaf = pb.TensorType(dtype=pb.DTYPE_INT32, dims=[1] * 1000)
    huge = _doubling_types(message, leaf, 10)
    function = message.types.add().function
    function.parameter, function.result = huge, 0
    for _ in range(100):
        graph = message.nodes.add(type=huge + 1).local_graph
        graph.parameter_type, graph.result_type = huge, 0
        graph.outputs.append(0)
    message.computations.add(name="main", root=0)
    rejects(message, "type text", "(local_graph")


def test_reading_compares_two_different_huge_types_once(monkeypatch):
    # A call of a function on float32[?] leaves with an argument of float32[3] leaves checks
    # assignability, which walks both types: remembered, it walks them once, not per call.
    message = pb.Program(format_version=FORMAT_VERSION)
    unknown = _doubling_types(message, pb.TensorType(dtype=pb.DTYPE_FLOAT32, dims=[-1]), 17)
    known = _doubling_types(message, pb.TensorType(dtype=pb.DTYPE_FLOAT32, dims=[3]), 17)
    function = message.types.add().function
    function.parameter, function.result = unknown, unknown
    message.nodes.add(type=unknown).reference.name = "x"
    message.nodes.add(type=known).reference.name = "y"
    identity = getattr(message.nodes.add(type=len(message.types) - 1), "lambda")
    identity.parameter_name, identity.parameter_type, identity.result = "x", unknown, 0
    for _ in range(MANY_NODES):
        call = message.nodes.add(type=unknown).call
        call.function, call.argument = 2, 1
    message.computations.add(name="main", root=len(message.nodes) - 1)

    walked = []
    composite = types_module._is_assignable_composite
    monkeypatch.setattr(
        types_module,
        "_is_assignable_composite",
        lambda target, source: (walked.append(target), composite(target, source))[1],
    )
    started = time.perf_counter()
    loaded = deserialize_program(message.SerializeToString())
    assert time.perf_counter() - started < 10
    assert isinstance(loaded.computations["main"], Call)
    assert len(walked) <= 17  # one a level of the pair types, not one a leaf or a call


def _wide_computation(fields: int) -> fc.Computation:
    # A model of `fields` parameter tensors: every selection carries the whole struct type.
    @fc.numpy_computation("float32[4]")
    def step(x):
        return x * 2.0 + 1.0

    member = "<" + ",".join(f"f{i}=float32[4]" for i in range(fields)) + ">"

    @fc.federated_computation("{" + member + "}@CLIENTS")
    def wide(values):
        return {f"r{i}": fc.federated_sum(fc.federated_map(step, values[f"f{i}"]))
                for i in range(fields)}  # fmt: skip

    return wide


def test_a_wide_program_of_a_thousand_fields_round_trips_in_linear_size():
    fields = 1000
    wide = _wide_computation(fields)
    data = fc.serialize(wide)
    loaded = fc.deserialize(data)
    assert loaded == wide.building_block
    assert fc.serialize(loaded) == data
    text = fc.to_text(wide)
    assert fc.parse_text(text) == wide.building_block
    # Both forms grow with the fields, not with fields x selections (the struct type's
    # text is 16 characters a field and each of the 1000 selections would repeat it).
    assert len(data) < 1000 * fields
    assert len(text) < 1000 * fields
    assert text.count("f999=float32[4]") == 1


def test_reading_refuses_shared_subtrees_that_unfold_exponentially():
    # Each block binds the previous node twice and returns it: 3**k nodes unfolded.
    message = message_of(Literal(np.int32(0)))
    for index in range(1, 40):
        block = message.nodes.add(type=message.nodes[0].type).block
        block.locals.add(name="a", value=index - 1)
        block.locals.add(name="b", value=index - 1)
        block.result = index - 1
    message.computations[0].root = len(message.nodes) - 1
    rejects(message, "unfold to more than", "(block, in computation 'main')")


def test_reading_refuses_bad_local_graphs():
    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    graph = message.nodes[0].local_graph
    graph.ops[1].primitive = "no_such_primitive"
    rejects(message, "node 0 (local_graph", "op 1 ('no_such_primitive')", "unknown primitive")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    message.nodes[0].local_graph.ops[2].attributes.add(name="bogus", int_value=1)
    rejects(message, "op 2 ('reduce_sum')", "unknown attribute 'bogus'")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    keepdims = message.nodes[0].local_graph.ops[2].attributes[1]
    assert keepdims.name == "keepdims"
    keepdims.string_value = "yes"
    rejects(message, "op 2 ('reduce_sum')", "'keepdims' expects a bool")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    message.nodes[0].local_graph.ops[2].attributes.add(name="keepdims", bool_value=True)
    rejects(message, "attribute 'keepdims' appears more than once")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    message.nodes[0].local_graph.ops[1].inputs[0] = 7
    rejects(message, "node 0 (local_graph", "uses %7, which is not defined before it")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    message.nodes[0].local_graph.ops[1].result_type = type_index(
        message, "<x=float32[?,2],n=int32[3]>"
    )
    rejects(message, "op 1 ('matmul')", "is not a tensor type")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    message.nodes[0].local_graph.ops[1].attributes.add(name="alpha", float_value=0.5)
    rejects(message, "op 1 ('matmul')", "unknown attribute 'alpha'")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    message.nodes[0].local_graph.ops[0].attributes[0].tensor_value.shape[:] = [3, 3]
    rejects(message, "op 0 ('constant')", "needs 36 bytes, but 16 are stored")

    message = message_of(LocalGraph(graph_with_every_attribute_kind()))
    message.nodes[0].local_graph.outputs.append(2)
    rejects(message, "has 5 tensors, but the graph has 6 outputs")


def test_reading_refuses_duplicate_metadata_and_inconsistent_single_block_markers():
    message = message_of(Program({"next": chain(2)}, {"a": "1"}))
    message.metadata.add(key="a", value="2")
    rejects(message, "metadata key 'a' appears more than once")

    message = message_of(chain(2))
    message.metadata[0].value = "yes"
    rejects(message, f"metadata {SINGLE_COMPUTATION_KEY!r} is 'yes'")

    message = message_of(Program({"init": chain(2), "next": chain(3)}))
    message.metadata.add(key=SINGLE_COMPUTATION_KEY, value="true")
    rejects(message, "one computation named 'main'", "computations are ['init', 'next']")


def test_errors_name_the_computation_that_holds_the_bad_node():
    program = Program({"initialize": no_parameter_call(), "next": federated_program()})
    message = message_of(program)
    data_node = node_index(message, "data")
    message.nodes[data_node].data.uri = ""
    rejects(message, f"node {data_node} (data, in computation 'next')", "non-empty string")


def test_programs_of_other_types_are_not_misread():
    # A valid protobuf message of another schema is not a fedcc program.
    other = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1], content=b"\0\0\0\0")
    with pytest.raises(IRFormatError):
        deserialize(other.SerializeToString())


def test_a_float_nan_payload_in_a_tensor_attribute_survives():
    payload = nan_with_payload("float32", 0x7FA00001)  # signalling NaN with a payload
    graph = graph_of(None, [("constant", [], {"value": payload})], [0])
    back = round_trip(LocalGraph(graph))
    assert back.graph.ops[0].attrs["value"].view(np.uint32)[0] == 0x7FA00001


def test_hashes_of_read_programs_match_the_originals():
    program = federated_program()
    back = deserialize(serialize(program))
    assert hash(back) == hash(program)
    assert hashlib.sha256(serialize(back)).digest() == hashlib.sha256(serialize(program)).digest()


def test_sequence_and_function_types_with_unknown_dims_round_trip():
    t = FunctionType(SequenceType(parse_type("<x=float32[?,784],y=int32[?]>")), "float32")
    back = round_trip(Reference("f", t))
    assert back.type_signature == t
