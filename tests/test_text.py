"""The text form of the IR: exact round trips through `to_text` and `to_compact_text`, golden
texts of hand-written programs, and parse errors that show the line, the column and the text.

Golden files live in tests/golden/text/NAME.txt, one for each entry of `GOLDEN_PROGRAMS`. After
an intended change of the text form, regenerate them and review the diff:

    FEDCC_UPDATE_GOLDEN=1 python -m pytest tests/test_text.py -k golden
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import local_graphs, program_envelopes, programs

from fedcc.ir import primitives
from fedcc.ir.building_blocks import (
    NODE_CLASSES,
    Block,
    BuildingBlock,
    Call,
    Data,
    Intrinsic,
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
from fedcc.ir.errors import TextSyntaxError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.program import Program
from fedcc.ir.text import parse_text, to_compact_text, to_text
from fedcc.ir.types import DTYPES, TensorType, to_type

GOLDEN_DIR = Path(__file__).parent / "golden" / "text"
UPDATE_GOLDEN = os.environ.get("FEDCC_UPDATE_GOLDEN") == "1"

CLIENT_FLOATS = "{float32}@CLIENTS"


def assert_round_trips(x: BuildingBlock | Program) -> None:
    """Both text forms parse back to `x`; the compact form of a building block is one line."""
    assert parse_text(to_text(x)) == x
    if isinstance(x, BuildingBlock):
        compact = to_compact_text(x)
        assert "\n" not in compact
        assert parse_text(compact) == x


def ref(name: str, type_text: str) -> Reference:
    return Reference(name, to_type(type_text))


def identity(name: str, type_text: str) -> Lambda:
    return Lambda(name, type_text, ref(name, type_text))


def tensor(dtype: str, *shape: int | None) -> TensorType:
    return TensorType(dtype, shape)


def op(primitive: str, inputs: list[int], result: TensorType, **attributes) -> Op:
    return Op(primitive, inputs, attributes, result)


# ---------------------------------------------------------------------------------------------
# Every node kind, in both forms.


def _every_node_kind() -> BuildingBlock:
    x = ref("x", CLIENT_FLOATS)
    negate = Graph("float32", [op("negative", [0], tensor("float32"))], [1], "float32")
    return Lambda(
        "x",
        CLIENT_FLOATS,
        Block(
            [
                ("negated", call_intrinsic("federated_map", Struct([LocalGraph(negate), x]))),
                ("mean", call_intrinsic("federated_mean", ref("negated", CLIENT_FLOATS))),
                ("pair", Struct([("m", ref("mean", "float32@SERVER"))])),
                ("where", Call(identity("p", "placement"), Placement("clients"))),
            ],
            Struct(
                [
                    Selection(ref("pair", "<m=float32@SERVER>"), 0),
                    Data("data/clients.npz", "{<x=float32[?,3]>*}@CLIENTS"),
                    Literal(np.array([1.5, -0.0], np.float32)),
                    Call(Lambda(None, None, Literal(np.int32(3)))),
                    Intrinsic("federated_sum", "({int32}@CLIENTS -> int32@SERVER)"),
                ]
            ),
        ),
    )


def test_every_node_kind_round_trips():
    program = _every_node_kind()
    assert {type(node) for node in walk(program)} == set(NODE_CLASSES)
    assert_round_trips(program)


def test_compact_form_is_tff_like():
    clients = ref("x", CLIENT_FLOATS)
    program = Lambda(
        "x",
        CLIENT_FLOATS,
        Block(
            [("a", call_intrinsic("federated_map", Struct([identity("v", "float32"), clients])))],
            call_intrinsic("federated_mean", ref("a", CLIENT_FLOATS)),
        ),
    )
    assert to_compact_text(program) == (
        "(x:{float32}@CLIENTS -> "
        "(let a=federated_map(<(v:float32 -> v),x>) in federated_mean(a)))"
    )
    assert str(program) == to_compact_text(program)
    assert repr(program) == f"<Lambda {to_compact_text(program)}>"


def test_multi_line_form_puts_each_binding_on_its_own_line():
    inner = Block([("c", Literal(np.int32(1)))], ref("c", "int32"))
    program = Block([("a", inner), ("b", ref("a", "int32"))], ref("b", "int32"))
    assert to_text(program) == (
        "(let\n"
        "  a=(let\n"
        "    c=int32(1)\n"
        "  in c),\n"
        "  b=a\n"
        "in b)"
    )
    assert_round_trips(program)


def test_struct_selection_call_and_empty_forms():
    empty = Struct([])
    assert to_compact_text(empty) == "<>"
    no_argument = Call(Lambda(None, None, empty))
    assert to_compact_text(no_argument) == "( -> <>)()"
    selected = Selection(Struct([("a", Literal(np.int32(1))), Literal(np.int8(2))]), 1)
    assert to_compact_text(selected) == "<a=int32(1),int8(2)>[1]"
    empty_block = Block([], Literal(np.int32(0)))
    assert to_compact_text(empty_block) == "(let in int32(0))"
    for node in (empty, no_argument, selected, empty_block):
        assert_round_trips(node)


# ---------------------------------------------------------------------------------------------
# References: bound, free, shadowed.


def test_free_references_print_with_their_type():
    open_program = Call(ref("f", "(int32 -> float32)"), ref("x", "int32"))
    assert to_compact_text(open_program) == "(f:(int32 -> float32))((x:int32))"
    assert_round_trips(open_program)


def test_a_bare_name_takes_the_type_of_its_innermost_binder():
    # The lambda parameter x shadows the block's x; the later binding of a re-binds it.
    program = Block(
        [
            ("x", Literal(np.int32(1))),
            ("a", ref("x", "int32")),
            ("a", Struct([ref("a", "int32")])),
        ],
        Lambda("x", "float32", Struct([ref("x", "float32"), ref("a", "<int32>")])),
    )
    assert to_compact_text(program) == (
        "(let x=int32(1),a=x,a=<a> in (x:float32 -> <x,a>))"
    )
    assert_round_trips(program)


def test_a_reference_whose_type_differs_from_its_binder_keeps_its_type():
    # Ill-scoped, but buildable IR: the text keeps it exactly as it is.
    program = Lambda("x", "int32", ref("x", "float32"))
    assert to_compact_text(program) == "(x:int32 -> (x:float32))"
    assert_round_trips(program)


def test_a_binding_does_not_see_itself():
    program = Lambda("a", "int32", Block([("a", Struct([ref("a", "int32")]))], ref("a", "<int32>")))
    assert to_compact_text(program) == "(a:int32 -> (let a=<a> in a))"
    assert_round_trips(program)


# ---------------------------------------------------------------------------------------------
# Intrinsics: bare when the argument gives the type, annotated otherwise.


def test_an_intrinsic_prints_bare_when_its_argument_gives_its_type():
    program = Lambda("x", CLIENT_FLOATS, call_intrinsic("federated_mean", ref("x", CLIENT_FLOATS)))
    assert to_compact_text(program) == "(x:{float32}@CLIENTS -> federated_mean(x))"
    assert_round_trips(program)


def test_an_intrinsic_more_general_than_its_argument_prints_its_type():
    general = "(<(int32[?] -> int32[?]),{int32[?]}@CLIENTS> -> {int32[?]}@CLIENTS)"
    program = Lambda(
        "x",
        "{int32[2]}@CLIENTS",
        Call(
            Intrinsic("federated_map", general),
            Struct([identity("v", "int32[?]"), ref("x", "{int32[2]}@CLIENTS")]),
        ),
    )
    assert to_compact_text(program) == (
        f"(x:{{int32[2]}}@CLIENTS -> federated_map:{general}(<(v:int32[?] -> v),x>))"
    )
    assert_round_trips(program)


def test_an_intrinsic_shadowed_by_a_variable_prints_its_type():
    program = Lambda(
        "federated_mean",
        "int32",
        Struct(
            [
                call_intrinsic("federated_mean", ref("x", CLIENT_FLOATS)),
                ref("federated_mean", "int32"),
            ]
        ),
    )
    assert to_compact_text(program) == (
        "(federated_mean:int32 -> <federated_mean:({float32}@CLIENTS -> float32@SERVER)"
        "((x:{float32}@CLIENTS)),federated_mean>)"
    )
    assert_round_trips(program)


def test_an_intrinsic_that_is_not_called_prints_its_type():
    program = Struct([Intrinsic("federated_broadcast", "(int32@SERVER -> int32@CLIENTS)")])
    assert to_compact_text(program) == "<federated_broadcast:(int32@SERVER -> int32@CLIENTS)>"
    assert_round_trips(program)


# ---------------------------------------------------------------------------------------------
# Names, data, placements.


def test_struct_field_names_may_be_keywords():
    program = Struct(
        [
            ("let", Literal(np.int32(1))),
            ("in", Literal(np.int32(2))),
            ("float32", Literal(np.int32(3))),
            ("CLIENTS", Literal(np.int32(4))),
            ("data", Literal(np.int32(5))),
        ]
    )
    assert to_compact_text(program) == (
        "<let=int32(1),in=int32(2),float32=int32(3),CLIENTS=int32(4),data=int32(5)>"
    )
    assert_round_trips(program)


@pytest.mark.parametrize("uri", ["data/clients", 'quote " and \\ and\nnewline', "é ünïcode 🙂"])
def test_data_uris_are_json_strings(uri: str):
    node = Data(uri, "{float32[?]*}@CLIENTS")
    assert to_compact_text(node).startswith('data("')
    assert_round_trips(node)


def test_variables_may_be_named_like_the_program_header_words():
    # "program", "metadata", "computation" are not reserved: only their position makes them words.
    program = Lambda(
        "program", "int32", Lambda("computation", "int32", Struct([ref("program", "int32")]))
    )
    assert_round_trips(program)
    assert_round_trips(Program({"metadata": program}))


# ---------------------------------------------------------------------------------------------
# Literals: every dtype, exact to the bit.

_SPECIAL_FLOATS = [0.0, -0.0, 1.5, -2.25, 0.1, 1e-30, 1e30, np.inf, -np.inf, np.nan]


def _literal_cases() -> list[np.ndarray]:
    cases = [np.array([True, False]), np.array(True)]
    for name, dtype in DTYPES.items():
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            cases.append(np.array([info.min, info.max, 0, 1], dtype))
        elif dtype.kind == "f":
            info = np.finfo(dtype)
            values = [*_SPECIAL_FLOATS, info.max, -info.max, info.tiny, info.smallest_subnormal]
            with np.errstate(over="ignore"):
                cases.append(np.array(values, dtype))
        cases.append(np.zeros((0,), dtype))  # empty
        cases.append(np.zeros((2, 0, 3), dtype))  # empty, rank 3
        cases.append(np.ones((), dtype))  # 0-d
        assert name == dtype.name
    return cases


@pytest.mark.parametrize("array", _literal_cases(), ids=lambda a: f"{a.dtype.name}{list(a.shape)}")
def test_literals_of_every_dtype_round_trip_exactly(array: np.ndarray):
    assert_round_trips(Literal(array))


def _with_bits(dtype: str, bits: list[int]) -> np.ndarray:
    unsigned = {"float16": np.uint16, "float32": np.uint32, "float64": np.uint64}[dtype]
    return np.array(bits, unsigned).view(dtype)


@pytest.mark.parametrize(
    ("dtype", "bits"),
    [
        ("float16", [0x7E00, 0x7E01, 0x7C01, 0xFE00]),
        ("float32", [0x7FC00000, 0x7FC00001, 0x7F800001, 0xFFC00000, 0x7FFFFFFF]),
        ("float64", [0x7FF8000000000000, 0x7FF0000000000001, 0xFFF8000000000000]),
    ],
)
def test_nan_payloads_round_trip(dtype: str, bits: list[int]):
    array = _with_bits(dtype, bits)
    text = to_compact_text(Literal(array))
    # The canonical quiet NaN prints as nan, every other NaN as its bits.
    assert text.count("nan:0x") == len(bits) - 1
    back = parse_text(text)
    assert back == Literal(array)
    assert back.value.view(array.view(f"u{array.itemsize}").dtype).tolist() == bits


def test_float_literals_read_like_numbers():
    node = Literal(np.array([1.0, -0.0, 0.1, 1e20, 1.5e-5, np.inf, np.nan], np.float32))
    assert to_compact_text(node) == "float32[7](1.0,-0.0,0.1,1e+20,1.5e-05,inf,nan)"
    assert to_compact_text(Literal(np.uint64(2**64 - 1))) == "uint64(18446744073709551615)"
    assert to_compact_text(Literal(np.array([[True], [False]]))) == "bool[2,1](true,false)"


def test_every_float16_round_trips():
    array = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    assert parse_text(to_compact_text(Literal(array))) == Literal(array)


def test_random_float32_bit_patterns_round_trip():
    bits = np.random.default_rng(0).integers(0, 2**32, 20_000, dtype=np.uint64)
    array = bits.astype(np.uint32).view(np.float32)
    assert parse_text(to_compact_text(Literal(array))) == Literal(array)


def test_random_float64_bit_patterns_round_trip():
    bits = np.random.default_rng(1).integers(0, 2**63, 20_000, dtype=np.uint64) * 2 + 1
    array = bits.view(np.float64)
    assert parse_text(to_compact_text(Literal(array))) == Literal(array)


def test_hand_written_literals_parse_to_the_nearest_value():
    assert parse_text("float32(0.1)") == Literal(np.float32(0.1))
    assert parse_text("float64[2]( 1 , 2e3 )") == Literal(np.array([1.0, 2000.0]))
    assert parse_text("int8[2,2](1,2,\n 3,-4)") == Literal(np.array([[1, 2], [3, -4]], np.int8))
    assert parse_text("float16(-nan)").value.view(np.uint16) == 0xFE00


# ---------------------------------------------------------------------------------------------
# Local graphs: one op a line, like a jaxpr.


def _example_graph() -> Graph:
    return Graph(
        "<float32[?,784],float32[784,10]>",
        [
            op("matmul", [0, 1], tensor("float32", None, 10)),
            op("add", [2, 2], tensor("float32", None, 10)),
            op("constant", [], tensor("float32", 2), value=np.array([1, 2], np.float32)),
            op("reduce_sum", [3], tensor("float32", None), axis=(1,), keepdims=False),
        ],
        [2, 5],
        "<float32[?,10],float32[?]>",
    )


def test_a_graph_prints_one_op_a_line():
    node = LocalGraph(_example_graph())
    assert to_text(node) == (
        "graph(<float32[?,784],float32[784,10]> -> <float32[?,10],float32[?]>) {\n"
        "  %2:float32[?,10] = matmul(%0, %1)\n"
        "  %3:float32[?,10] = add(%2, %2)\n"
        "  %4:float32[2] = constant() {value=float32[2](1.0,2.0)}\n"
        "  %5:float32[?] = reduce_sum(%3) {axis=(1), keepdims=false}\n"
        "  return (%2, %5)\n"
        "}"
    )
    assert to_compact_text(node) == (
        "graph(<float32[?,784],float32[784,10]> -> <float32[?,10],float32[?]>) {"
        "%2:float32[?,10] = matmul(%0, %1); %3:float32[?,10] = add(%2, %2); "
        "%4:float32[2] = constant() {value=float32[2](1.0,2.0)}; "
        "%5:float32[?] = reduce_sum(%3) {axis=(1), keepdims=false}; return (%2, %5)}"
    )
    assert_round_trips(node)


def test_a_one_tuple_attribute_stays_a_tuple():
    back = parse_text(to_text(LocalGraph(_example_graph())))
    reduce_sum = back.graph.ops[3]
    assert reduce_sum.attrs["axis"] == (1,)
    assert reduce_sum.attrs["keepdims"] is False


def test_graphs_inside_programs_indent_with_their_binding():
    program = Block([("g", LocalGraph(_example_graph()))], ref("g", "int32"))
    text = to_text(program)
    assert "\n  g=graph(" in text
    assert "\n    %2:float32[?,10] = matmul(%0, %1)\n" in text
    assert "\n  }\nin (g:int32))" in text
    assert_round_trips(program)


def test_graph_attributes_of_none_str_ints_and_tensors_round_trip():
    graph = Graph(
        "int32[2,3]",
        [
            op("transpose", [0], tensor("int32", 3, 2), perm=None),
            op("transpose", [0], tensor("int32", 3, 2), perm=(1, 0)),
            op("cast", [1], tensor("float16", 3, 2), dtype="float16"),
            op("reshape", [0], tensor("int32", 6), shape=(6,)),
            op("reduce_sum", [0], tensor("int32", 2, 3), axis=()),
            op("constant", [], tensor("float64", 0), value=np.zeros((0,))),
        ],
        [3],
        "float16[3,2]",
    )
    text = to_compact_text(LocalGraph(graph))
    assert "perm=none" in text and "perm=(1, 0)" in text and 'dtype="float16"' in text
    assert "axis=()" in text and "value=float64[0]()" in text
    assert_round_trips(LocalGraph(graph))


@pytest.fixture
def float_attribute_primitive(monkeypatch):
    """A primitive taking every attribute kind, float and str included, for this test only.

    No registered primitive takes a float or a free-form string yet; the text form must print
    and parse every value `_normalize_attribute` allows regardless.
    """
    base = primitives.PRIMITIVES["negative"]
    attribute = primitives.Attribute
    test_primitive = dataclasses.replace(
        base,
        name="text_test_attributes",
        shape_rule=lambda input_types, **_: base.shape_rule(input_types),
        attributes={
            "rate": attribute("float", 0.0),
            "label": attribute("str", ""),
            "flag": attribute("bool", False),
            "count": attribute("int", 0),
        },
    )
    monkeypatch.setitem(primitives.PRIMITIVES, test_primitive.name, test_primitive)
    return test_primitive.name


_NAN_WITH_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000123))[0]


@pytest.mark.parametrize(
    "rate", [0.1, -0.0, 1e300, 5e-324, float("inf"), float("-inf"), float("nan"), _NAN_WITH_PAYLOAD]
)
def test_float_and_string_attributes_round_trip_exactly(float_attribute_primitive, rate):
    result = tensor("float32", 2)
    graph = Graph(
        "float32[2]",
        [
            op(
                float_attribute_primitive,
                [0],
                result,
                rate=rate,
                label='a "quoted"\nlabel é',
                flag=True,
                count=-(2**63),
            )
        ],
        [1],
        "float32[2]",
    )
    text = to_compact_text(LocalGraph(graph))
    back = parse_text(text)
    assert back == LocalGraph(graph)
    parsed_rate = back.graph.ops[0].attrs["rate"]
    assert struct.pack("<d", parsed_rate) == struct.pack("<d", rate)
    assert "count=-9223372036854775808" in text


# ---------------------------------------------------------------------------------------------
# Programs.


def test_a_program_has_a_header_metadata_and_computations_in_order():
    program = Program(
        [("next", identity("x", "int32")), ("initialize", Lambda(None, None, Literal(np.int8(0))))],
        {"passes": "a,b", "fedcc_version": "0.1.0", "not an identifier": 'quote "'},
    )
    assert to_text(program) == (
        "program v1\n"
        'metadata fedcc_version = "0.1.0"\n'
        'metadata "not an identifier" = "quote \\""\n'
        'metadata passes = "a,b"\n'
        "\n"
        "computation next = (x:int32 -> x)\n"
        "\n"
        "computation initialize = ( -> int8(0))\n"
    )
    back = parse_text(to_text(program))
    assert back == program
    assert list(back.computations) == ["next", "initialize"]


def test_hand_written_text_with_comments_and_free_layout_parses():
    text = """
        # A mean over clients, written by hand.
        program v1
        metadata source_module = "examples.mean"   # where it came from
        computation mean = (x : {float32}@CLIENTS ->
            federated_mean( x ))
    """
    expected = Program(
        {"mean": _mean_program()["mean"]},
        {"source_module": "examples.mean"},
    )
    assert parse_text(text) == expected


# ---------------------------------------------------------------------------------------------
# Deep and large programs: no recursion, linear work.


def _deep_program(levels: int) -> BuildingBlock:
    node: BuildingBlock = ref("x", "int32")
    for level in range(levels):
        kind = level % 5
        if kind == 0:
            node = Lambda("x", "int32", node)
        elif kind == 1:
            node = Call(node, Literal(np.int32(level)))
        elif kind == 2:
            node = Block([("x", Literal(np.int32(level)))], node)
        elif kind == 3:
            node = Selection(Struct([("a", node)]), 0)
        else:
            node = Block([("y", node)], ref("y", node.type_signature))
    return Lambda("x", "int32", node)


@pytest.fixture
def default_recursion_limit():
    """Python's default recursion limit for one test, whatever other code raised it to."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield 1000
    sys.setrecursionlimit(previous)


def test_a_program_3000_levels_deep_round_trips_without_recursion(default_recursion_limit):
    program = _deep_program(3000)
    assert program.depth > 3 * default_recursion_limit
    assert_round_trips(program)


def test_nested_blocks_indent_at_most_a_bounded_amount():
    text = to_text(_deep_program(3000))
    longest_indent = max(len(line) - len(line.lstrip(" ")) for line in text.splitlines())
    assert longest_indent <= 64


def test_a_program_of_ten_thousand_nodes_round_trips():
    clients = ref("c", CLIENT_FLOATS)
    bindings = [
        (f"a{i}", call_intrinsic("federated_map", Struct([identity("v", "float32"), clients])))
        for i in range(2000)
    ]
    program = Lambda("c", CLIENT_FLOATS, Block(bindings, ref("a1999", CLIENT_FLOATS)))
    assert sum(1 for _ in walk(program)) > 10_000
    assert_round_trips(program)


# ---------------------------------------------------------------------------------------------
# Random programs from the shared generators.

_PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(programs())
def test_random_programs_round_trip(program: BuildingBlock):
    assert_round_trips(program)


@_PROPERTY
@given(program_envelopes())
def test_random_program_envelopes_round_trip(program: Program):
    assert_round_trips(program)


@_PROPERTY
@given(local_graphs())
def test_random_local_graphs_round_trip(graph: Graph):
    assert_round_trips(LocalGraph(graph))


# ---------------------------------------------------------------------------------------------
# Errors: where, what, and the offending line.


def _error(text: str) -> str:
    with pytest.raises(TextSyntaxError) as caught:
        parse_text(text)
    return str(caught.value)


def _caret_column(message: str) -> int:
    caret_line = message.splitlines()[-1]
    return len(caret_line) - len(caret_line.lstrip(" ")) - 2 + 1


@pytest.mark.parametrize(
    ("text", "line", "column", "says"),
    [
        ("(x:int32 -> x", 1, 14, "unexpected end of text; expected '(', ')', '['"),
        ("(x:int32 -> x))", 1, 15, "unexpected ')'"),
        ("(x:int32 ->\n  x $ y)", 2, 5, "unexpected character '$'"),
        ("<a=int32(1),\n b=>", 2, 4, "unexpected '>'"),
        ("(let a=int32(1), in a)", 1, 18, "expected a name followed by '='"),
        ("float32[2](1.0)", 1, 11, "needs 2 values, found 1"),
        ("float32[3](1.0, 2.0,\n   abc)", 2, 4, "expected a number for float32, found 'abc'"),
        ("int8(300)", 1, 6, "300 is out of range for int8"),
        ("float32(1e39)", 1, 9, "1e39 is out of range for float32"),
        ("float32(nan:0x7f800000)", 1, 9, "is not the bits of a float32 NaN"),
        ("(x:int32 -> y)", 1, 13, "'y' is not bound here"),
        ("federated_mean", 1, 1, "intrinsic federated_mean needs its type here"),
        ("(let in=int32(1) in in)", 1, 6, "'in' is a reserved word"),
        ("program v2\ncomputation f = int32(1)", 1, 9, "unsupported format version v2"),
        ("program v1\ncomputation f = int32(1)\ncomputation f = int32(2)", 3, 13, "repeats"),
        ('data("a\\q"):int32', 1, 6, "invalid string"),
        ("(x:<{int32}@CLIENTS>@SERVER -> x)", 1, 29, "a federated type cannot hold"),
        (
            "graph(float32[2] -> float32[2]) {%2:float32[2] = negative(%0); return (%2)}",
            1,
            34,
            "expected %1, found %2",
        ),
        (
            "graph(float32 -> float32) {%1:float32 = negative(%0) {x=1, x=2}; return (%1)}",
            1,
            60,
            "attribute 'x' repeats",
        ),
    ],
)
def test_parse_errors_show_line_column_and_text(text: str, line: int, column: int, says: str):
    message = _error(text)
    assert says in message
    assert f"at line {line}, column {column}:" in message
    shown_line = message.splitlines()[-2]
    assert shown_line == "  " + text.splitlines()[line - 1]
    assert _caret_column(message) == column


def test_ill_typed_text_names_the_type_error_at_the_offending_call():
    text = "(x:float32@SERVER ->\n  <x, federated_mean(x)>)"
    message = _error(text)
    assert "federated_mean expects ({T}@CLIENTS -> T@SERVER)" in message
    assert "float32@SERVER is not placed at CLIENTS" in message
    assert "at line 2, column 7:" in message
    assert message.splitlines()[-2:] == ["    <x, federated_mean(x)>)", "        ^"]


def test_ill_typed_selection_points_at_the_index():
    message = _error("(x:int32[2]* -> (let a=x, b=a[0] in b))")
    assert "cannot select from a value of non-struct type int32[2]*" in message
    assert "column 31" in message


def test_an_ill_typed_graph_names_the_op():
    message = _error("graph(float32[2] -> float32[2]) {%1:float32[3] = negative(%0); return (%1)}")
    assert re.search(r"op %1 \(negative\) is declared float32\[3\]", message)


def test_parse_text_refuses_what_is_not_text():
    with pytest.raises(TextSyntaxError, match="expected the text of a program, found bytes"):
        parse_text(b"int32(1)")


# ---------------------------------------------------------------------------------------------
# Golden texts of hand-written programs.


def _mean_program() -> Program:
    mean = Lambda("x", CLIENT_FLOATS, call_intrinsic("federated_mean", ref("x", CLIENT_FLOATS)))
    return Program({"mean": mean}, {"fedcc_version": "0.1.0"})


MODEL = "float32[3]"
BATCH = "<x=float32[?,3],y=float32[?]>"


def _sgd_step() -> LocalGraph:
    """One least-squares SGD step: (<w, batch> -> w - 0.1 * x^T (x w - y))."""
    return LocalGraph(
        Graph(
            f"<{MODEL},{BATCH}>",
            [
                op("matmul", [1, 0], tensor("float32", None)),
                op("subtract", [3, 2], tensor("float32", None)),
                op("transpose", [1], tensor("float32", 3, None), perm=None),
                op("matmul", [5, 4], tensor("float32", 3)),
                op("constant", [], tensor("float32"), value=np.float32(0.1)),
                op("multiply", [6, 7], tensor("float32", 3)),
                op("subtract", [0, 8], tensor("float32", 3)),
            ],
            [9],
            MODEL,
        )
    )


def _pairwise(primitive: str) -> LocalGraph:
    return LocalGraph(
        Graph(f"<{MODEL},{MODEL}>", [op(primitive, [0, 1], tensor("float32", 3))], [2], MODEL)
    )


def _client_update() -> Lambda:
    """A client's training: sequence_reduce of SGD steps over its batches, from the model."""
    argument_type = f"<model={MODEL},data={BATCH}*>"
    argument = ref("argument", argument_type)
    return Lambda(
        "argument",
        argument_type,
        Block(
            [("step", _sgd_step())],
            call_intrinsic(
                "sequence_reduce",
                Struct(
                    [
                        Selection(argument, 1),
                        Selection(argument, 0),
                        ref("step", f"(<{MODEL},{BATCH}> -> {MODEL})"),
                    ]
                ),
            ),
        ),
    )


def _client_update_program() -> Program:
    return Program({"client_update": _client_update()}, {"fedcc_version": "0.1.0"})


def _fedavg_program() -> Program:
    """A FedAvg round: broadcast, local training, mean of deltas, server update."""
    state = f"{MODEL}@SERVER"
    client_data = f"{{{BATCH}*}}@CLIENTS"
    argument_type = f"<state={state},data={client_data}>"
    argument = ref("argument", argument_type)
    at_clients = f"{MODEL}@CLIENTS"
    each_client = f"{{{MODEL}}}@CLIENTS"

    def zipped(*values: BuildingBlock | tuple[str, BuildingBlock]) -> Call:
        return call_intrinsic("federated_zip", Struct(list(values)))

    update = _client_update()
    next_round = Lambda(
        "argument",
        argument_type,
        Block(
            [
                ("model", call_intrinsic("federated_broadcast", Selection(argument, 0))),
                ("update", update),
                (
                    "trained",
                    call_intrinsic(
                        "federated_map",
                        Struct(
                            [
                                Reference("update", update.type_signature),
                                zipped(
                                    ("model", ref("model", at_clients)),
                                    ("data", Selection(argument, 1)),
                                ),
                            ]
                        ),
                    ),
                ),
                (
                    "delta",
                    call_intrinsic(
                        "federated_map",
                        Struct(
                            [
                                _pairwise("subtract"),
                                zipped(ref("trained", each_client), ref("model", at_clients)),
                            ]
                        ),
                    ),
                ),
                ("mean_delta", call_intrinsic("federated_mean", ref("delta", each_client))),
                (
                    "new_state",
                    call_intrinsic(
                        "federated_apply",
                        Struct(
                            [
                                _pairwise("add"),
                                zipped(Selection(argument, 0), ref("mean_delta", state)),
                            ]
                        ),
                    ),
                ),
            ],
            Struct([("state", ref("new_state", state)), ("metrics", Struct([]))]),
        ),
    )
    initialize = Lambda(
        None,
        None,
        call_intrinsic("federated_value_at_server", Literal(np.zeros(3, np.float32))),
    )
    return Program(
        [("initialize", initialize), ("next", next_round)],
        {"fedcc_version": "0.1.0", "source_module": "tests.test_text"},
    )


def _aggregate_program() -> Program:
    """federated_aggregate with local graphs, and a map whose intrinsic type is more general."""
    values = "{int32[2]}@CLIENTS"
    add = LocalGraph(
        Graph(
            "<int32[2],int32[2]>", [op("add", [0, 1], tensor("int32", 2))], [2], "int32[2]"
        )
    )
    widened = Call(
        Intrinsic(
            "federated_map", "(<(int32[?] -> int32[?]),{int32[?]}@CLIENTS> -> {int32[?]}@CLIENTS)"
        ),
        Struct([identity("v", "int32[?]"), ref("x", values)]),
    )
    total = call_intrinsic(
        "federated_aggregate",
        Struct(
            [
                ref("x", values),
                Literal(np.zeros(2, np.int32)),
                add,
                add,
                identity("a", "int32[2]"),
            ]
        ),
    )
    return Program({"total": Lambda("x", values, Struct([total, widened]))})


def _literals_program() -> Program:
    """Literal values at the edges of their dtypes, NaN payloads and empty shapes included."""
    literals = [
        ("floats", np.array([0.1, -0.0, 1e-45, 3.4028235e38, np.inf, -np.inf, np.nan], np.float32)),
        ("payload_nans", _with_bits("float32", [0x7FC00001, 0xFFC00000])),
        ("halves", np.array([65504, 6e-8, -1.5], np.float16)),
        ("doubles", np.array([[0.1, 1e300], [5e-324, -2.5]], np.float64)),
        ("ints", np.array([-(2**63), 2**63 - 1], np.int64)),
        ("unsigned", np.array([0, 2**64 - 1], np.uint64)),
        ("small", np.array([-128, 127], np.int8)),
        ("flags", np.array([True, False])),
        ("scalar", np.array(7, np.int32)),
        ("empty", np.zeros((2, 0), np.float32)),
    ]
    values = Struct([(name, Literal(array)) for name, array in literals])
    return Program({"values": Lambda(None, None, values)})


GOLDEN_PROGRAMS: dict[str, Callable[[], Program]] = {
    "federated_mean": _mean_program,
    "client_update": _client_update_program,
    "fedavg_round": _fedavg_program,
    "aggregate": _aggregate_program,
    "literals": _literals_program,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_PROGRAMS))
def test_golden_text(name: str):
    program = GOLDEN_PROGRAMS[name]()
    path = GOLDEN_DIR / f"{name}.txt"
    text = to_text(program)
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{path} differs; see the module docstring to regenerate it"
    assert parse_text(expected) == program


def test_every_golden_file_has_a_program():
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.txt")) == sorted(GOLDEN_PROGRAMS)


# --- type aliases -------------------------------------------------------------------------

WIDE = to_type({f"field{i}": TensorType(np.float32, (10,)) for i in range(12)})


def _selections(struct_type, count: int) -> Struct:
    return Struct(
        [Lambda(f"s{i}", struct_type, Selection(Reference(f"s{i}", struct_type), i))
         for i in range(count)]
    )  # fmt: skip


def test_a_long_type_printed_twice_prints_once_by_alias():
    block = _selections(WIDE, 3)
    text = to_text(block)
    assert text.startswith(f"!t0 = {WIDE};\n<(s0:!t0 -> s0[0]),")
    assert text.count(str(WIDE)) == 1
    assert parse_text(text) == block
    assert parse_text(to_compact_text(block)) == block


def test_short_types_and_types_printed_once_print_in_full():
    assert "!" not in to_text(_selections(WIDE, 1))
    short = to_type({"a": np.float32, "b": np.int32})
    assert "!" not in to_text(_selections(short, 2))


def test_a_program_defines_its_aliases_once_for_all_its_computations():
    program = Program({"a": _selections(WIDE, 2), "b": _selections(WIDE, 1)})
    text = to_text(program)
    assert text.count(str(WIDE)) == 1
    assert text.index("!t0 = ") < text.index("computation a")
    assert parse_text(text) == program


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("(x:!t0 -> x)", "type alias !t0 is not defined before this use"),
        ("!t0 = int32; !t0 = int32; (x:!t0 -> x)", "type alias !t0 is defined twice"),
        ("(x:!t1 -> x)", "line 1, column 4"),
    ],
)
def test_alias_errors_name_the_alias_and_where_it_is(text, fragment):
    with pytest.raises(TextSyntaxError, match=re.escape(fragment)):
        parse_text(text)


def test_aliases_are_defined_only_in_program_text():
    from fedcc.ir.errors import FedccError
    from fedcc.ir.type_text import parse_type

    with pytest.raises(FedccError, match="aliases are defined in program text only"):
        parse_type("!t0")
