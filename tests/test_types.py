"""Types (DESIGN §3): the text table, round trips, nesting rules, assignability, errors."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import HypothesisChooser, narrower, types, wider

from fedcc.ir.errors import FedccError, FederatedTypeError, TypeSyntaxError
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import (
    CLIENTS,
    DTYPES,
    MAX_TYPE_DEPTH,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    is_assignable_from,
    to_type,
)

F32 = TensorType(np.float32)
I32 = TensorType(np.int32)
X_BATCH = TensorType(np.float32, (None, 784))

# Every example of DESIGN §3's table (and the signatures in §4), with the value it denotes.
DESIGN_TABLE = [
    ("float32[784,10]", TensorType(np.float32, (784, 10))),
    ("float32[?,784]", X_BATCH),
    ("int32", I32),
    ("<w=float32[10],b=float32>", StructType([("w", TensorType(np.float32, (10,))), ("b", F32)])),
    ("<int32,float32>", StructType([I32, F32])),
    ("float32[?,784]*", SequenceType(X_BATCH)),
    (
        "<x=float32[?,784],y=int32[?]>*",
        SequenceType(StructType([("x", X_BATCH), ("y", TensorType(np.int32, (None,)))])),
    ),
    ("(int32 -> float32)", FunctionType(I32, F32)),
    ("( -> int32)", FunctionType(None, I32)),
    ("{float32}@CLIENTS", FederatedType(F32, CLIENTS)),
    ("float32@SERVER", FederatedType(F32, SERVER)),
    ("float32@CLIENTS", FederatedType(F32, CLIENTS, all_equal=True)),
    ("placement", PlacementType()),
    (
        "({float32}@CLIENTS -> float32@SERVER)",
        FunctionType(FederatedType(F32, CLIENTS), FederatedType(F32, SERVER)),
    ),
    (
        "(<float32[?,784],float32[784,10]> -> float32[?,10])",
        FunctionType(
            StructType([X_BATCH, TensorType(np.float32, (784, 10))]),
            TensorType(np.float32, (None, 10)),
        ),
    ),
    (
        "{<x=float32[?,5],y=int32[?]>*}@CLIENTS",
        FederatedType(
            SequenceType(
                StructType(
                    [("x", TensorType(np.float32, (None, 5))), ("y", TensorType(np.int32, (None,)))]
                )
            ),
            CLIENTS,
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), DESIGN_TABLE, ids=[t for t, _ in DESIGN_TABLE])
def test_design_table_row_parses_and_prints_exactly(text, expected):
    assert parse_type(text) == expected
    assert str(expected) == text
    assert str(parse_type(text)) == text


def test_federated_defaults_follow_the_placement():
    assert FederatedType(F32, CLIENTS).all_equal is False
    assert FederatedType(F32, SERVER).all_equal is True
    assert FederatedType(F32, "clients") == FederatedType(F32, CLIENTS)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (" { float32 [ 10 , ? ] } @ CLIENTS ", "{float32[10,?]}@CLIENTS"),
        ("(int32->float32)", "(int32 -> float32)"),
        ("(->int32)", "( -> int32)"),
        ("< a = int32 , float32 >", "<a=int32,float32>"),
        ("<>", "<>"),
        ("float32[0]", "float32[0]"),
        ("<in=int32,float32=float32,let=bool>", "<in=int32,float32=float32,let=bool>"),
        ("((int32 -> int32) -> ( -> placement))", "((int32 -> int32) -> ( -> placement))"),
        ("<{int32*}@CLIENTS,<>@SERVER>", "<{int32*}@CLIENTS,<>@SERVER>"),
    ],
)
def test_whitespace_and_keywords_as_field_names_parse_to_the_canonical_text(text, canonical):
    assert str(parse_type(text)) == canonical


@given(types())
def test_text_round_trip(t):
    parsed = parse_type(str(t))
    assert parsed == t
    assert hash(parsed) == hash(t)
    assert str(parsed) == str(t)


@given(types(), types())
def test_equality_is_structural_and_consistent_with_hash_and_text(a, b):
    assert (a == b) == (str(a) == str(b) and type(a) is type(b))
    if a == b:
        assert hash(a) == hash(b)
    assert a == parse_type(str(a))
    assert a != str(a)  # a type never equals its text


@given(types(), types())
def test_equal_types_are_one_instance_whose_text_length_is_known(a, b):
    # Interned: comparing or hashing a type never walks it, and a type built twice is one.
    assert (a == b) == (a is b)
    assert parse_type(str(a)) is a
    assert a.text_length == len(str(a))


def test_a_type_shared_inside_itself_is_compared_and_checked_without_unfolding():
    # 2**150 leaves: any walk of the unfolded type would never end.
    t = I32
    for _ in range(150):
        t = StructType([t, t])
    assert t.text_length > 2**150
    assert StructType([StructType([I32, I32])] * 2) is StructType([StructType([I32, I32])] * 2)
    assert FederatedType(t, CLIENTS).member is t
    assert is_assignable_from(t, t)


@given(types())
def test_types_pickle_to_equal_types(t):
    assert pickle.loads(pickle.dumps(t)) == t


@given(types(), st.data())
def test_every_type_is_assignable_from_itself_and_from_narrower_types(t, data):
    chooser = HypothesisChooser(data.draw)
    assert is_assignable_from(t, t)
    assert is_assignable_from(t, narrower(chooser, t))
    assert is_assignable_from(wider(chooser, t), t)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dtype", np.dtype("int8")),
        ("shape", (1,)),
        ("_text", "int8"),
    ],
)
def test_types_are_immutable(field, value):
    t = TensorType(np.float32, (3,))
    with pytest.raises(AttributeError):
        setattr(t, field, value)
    assert t == TensorType(np.float32, (3,))


def test_struct_and_federated_types_are_immutable():
    struct = StructType([("a", F32)])
    federated = FederatedType(F32, CLIENTS)
    with pytest.raises(AttributeError):
        struct.elements = ()
    with pytest.raises(AttributeError):
        federated.all_equal = True
    assert str(struct) == "<a=float32>"
    assert str(federated) == "{float32}@CLIENTS"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_supported_dtype_round_trips(dtype):
    t = TensorType(dtype, (None, 2))
    assert str(t) == f"{dtype}[?,2]"
    assert parse_type(str(t)) == t
    assert t.dtype == np.dtype(dtype)


# --- nesting rules -----------------------------------------------------------------------

FED = FederatedType(F32, CLIENTS)
FUNCTION = FunctionType(I32, I32)

NESTING_VIOLATIONS = [
    ("federated in federated", lambda: FederatedType(FED, SERVER)),
    ("function in federated", lambda: FederatedType(FUNCTION, CLIENTS)),
    ("function in a struct in federated", lambda: FederatedType(StructType([FUNCTION]), SERVER)),
    ("placement in federated", lambda: FederatedType(PlacementType(), SERVER)),
    ("federated in sequence", lambda: SequenceType(FED)),
    ("function in sequence", lambda: SequenceType(FUNCTION)),
    ("sequence in sequence", lambda: SequenceType(SequenceType(F32))),
    ("sequence in a struct in sequence", lambda: SequenceType(StructType([SequenceType(F32)]))),
    ("placement in sequence", lambda: SequenceType(PlacementType())),
    ("placement in struct", lambda: StructType([PlacementType()])),
    ("server value not all-equal", lambda: FederatedType(F32, SERVER, all_equal=False)),
]


@pytest.mark.parametrize(
    "build", [b for _, b in NESTING_VIOLATIONS], ids=[n for n, _ in NESTING_VIOLATIONS]
)
def test_nesting_rule_violations_are_rejected(build):
    with pytest.raises(FederatedTypeError):
        build()


@pytest.mark.parametrize(
    "text",
    [
        "{(int32 -> int32)}@CLIENTS",
        "<a=int32@CLIENTS>@SERVER",
        "{<float32,( -> int32)>}@CLIENTS",
        "(int32 -> int32)*",
        "<int32*>*",
        "{int32}@SERVER",
        "<placement>",
        "placement@SERVER",
    ],
)
def test_nesting_rule_violations_in_text_name_the_text(text):
    with pytest.raises(FedccError) as raised:
        parse_type(text)
    assert text in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "{int32*}@CLIENTS",  # a client's data set
        "<{int32}@CLIENTS,int32@SERVER>",  # placed values inside a struct
        "<a=(int32 -> int32)>",
        "(placement -> {int32}@CLIENTS)",
        "{<int32*,float32>}@CLIENTS",  # a sequence inside a struct inside a federated type
        "(( -> int32) -> int32@SERVER)",
    ],
)
def test_allowed_nestings_are_accepted(text):
    assert str(parse_type(text)) == text


# --- assignability -----------------------------------------------------------------------

ASSIGNABLE = [
    ("float32[?]", "float32[3]"),
    ("float32[?,?]", "float32[2,0]"),
    ("{float32}@CLIENTS", "float32@CLIENTS"),
    ("{float32[?]}@CLIENTS", "float32[4]@CLIENTS"),
    ("<float32,int32>", "<a=float32,b=int32>"),
    ("<a=float32,int32>", "<a=float32,b=int32>"),
    ("float32[?]*", "float32[5]*"),
    ("(float32[3] -> float32[?])", "(float32[?] -> float32[3])"),
    ("({float32}@CLIENTS -> float32@SERVER)", "({float32}@CLIENTS -> float32@SERVER)"),
    ("( -> float32[?])", "( -> float32[2])"),
    ("placement", "placement"),
]

NOT_ASSIGNABLE = [
    ("float32[3]", "float32[?]"),
    ("float32[3]", "float32[4]"),
    ("float32[?]", "float32"),
    ("float32[?]", "float64[3]"),
    ("float32@CLIENTS", "{float32}@CLIENTS"),
    ("float32@SERVER", "float32@CLIENTS"),
    ("{float32}@CLIENTS", "float32@SERVER"),
    ("float32@SERVER", "float32"),
    ("<a=float32>", "<float32>"),
    ("<a=float32>", "<b=float32>"),
    ("<float32>", "<float32,float32>"),
    ("float32[?,3]", "float32[2,?]"),
    ("float32*", "float32"),
    ("(float32[?] -> float32)", "(float32[3] -> float32)"),
    ("(float32 -> float32[3])", "(float32 -> float32[?])"),
    ("( -> float32)", "(float32 -> float32)"),
    ("(float32 -> float32)", "( -> float32)"),
    ("placement", "int32"),
]


@pytest.mark.parametrize(("target", "source"), ASSIGNABLE)
def test_assignable(target, source):
    assert is_assignable_from(parse_type(target), parse_type(source))


@pytest.mark.parametrize(("target", "source"), NOT_ASSIGNABLE)
def test_not_assignable(target, source):
    assert not is_assignable_from(parse_type(target), parse_type(source))


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("<int32,,float32>", 8),
        ("float31", 1),
        ("float32[10", 11),
        ("{float32}@CLIENT", 11),
        ("float32[-1]", 9),
        ("(int32 -> )", 11),
    ],
)
def test_syntax_errors_show_the_text_and_the_column(text, column):
    with pytest.raises(TypeSyntaxError) as raised:
        parse_type(text)
    message = str(raised.value)
    assert isinstance(raised.value, FedccError)
    assert isinstance(raised.value, ValueError)
    assert repr(text) in message
    assert f"column {column}" in message
    lines = message.splitlines()
    assert lines[-2] == f"  {text}"
    assert lines[-1] == "  " + " " * (column - 1) + "^"


def test_parse_type_of_a_non_string_is_a_federated_type_error():
    with pytest.raises(FederatedTypeError, match="expected the text of a type"):
        parse_type(42)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: TensorType(np.float32, (-1,)), "non-negative"),
        (lambda: TensorType(np.float32, (2.0,)), "non-negative"),
        (lambda: TensorType(np.float32, (True,)), "non-negative"),
        (lambda: TensorType(np.complex64), "unsupported dtype complex64"),
        (lambda: StructType([("a", F32), ("a", I32)]), "repeat"),
        (lambda: StructType([("1a", F32)]), "not an identifier"),
        (lambda: FederatedType(F32, "moon"), "CLIENTS or SERVER"),
        (lambda: to_type(object()), "expected a type"),
    ],
)
def test_constructor_errors_say_what_was_expected(build, fragment):
    with pytest.raises(FederatedTypeError, match=fragment):
        build()


def test_deep_types_parse_without_recursion_up_to_the_limit():
    depth = MAX_TYPE_DEPTH - 1
    text = "<" * depth + "int32" + ">" * depth
    t = parse_type(text)
    assert t.depth == depth + 1
    assert str(t) == text
    too_deep = "<" * (MAX_TYPE_DEPTH + 50) + "int32" + ">" * (MAX_TYPE_DEPTH + 50)
    with pytest.raises(FederatedTypeError, match="levels deep"):
        parse_type(too_deep)


# --- to_type -----------------------------------------------------------------------------

Point = collections.namedtuple("Point", ["x", "y"])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{float32[10]}@CLIENTS", "{float32[10]}@CLIENTS"),
        (np.float32, "float32"),
        (np.dtype("int64"), "int64"),
        (bool, "bool"),
        ([np.int32, "float32[2]"], "<int32,float32[2]>"),
        ((np.int32,), "<int32>"),
        ({"w": "float32[3]", "b": np.float32}, "<w=float32[3],b=float32>"),
        (Point(np.int32, "float32"), "<x=int32,y=float32>"),
        ([{"a": "int32*"}, ["( -> int32)"]], "<<a=int32*>,<( -> int32)>>"),
        (FederatedType(F32, SERVER), "float32@SERVER"),
    ],
)
def test_to_type_accepts_text_dtypes_and_containers(spec, expected):
    assert str(to_type(spec)) == expected


@pytest.mark.parametrize("text", ["float32[10", "<int32", "(int32 ->", "{int32}@", ""])
def test_truncated_text_points_past_its_end(text):
    with pytest.raises(TypeSyntaxError, match="ends too early") as raised:
        parse_type(text)
    assert f"column {len(text) + 1}" in str(raised.value)


def test_struct_names_and_positions_are_looked_up_not_searched():
    fields = [(f"f{i}", TensorType(np.float32)) for i in range(3000)]
    t = StructType([*fields, TensorType(np.int32)])
    assert t.names() is t.names() and t.names()[-1] is None and t.names()[2999] == "f2999"
    assert [t.index_of(f"f{i}") for i in (0, 1500, 2999)] == [0, 1500, 2999]
    with pytest.raises(FederatedTypeError, match="has no field named 'f3000'"):
        t.index_of("f3000")
