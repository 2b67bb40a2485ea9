"""Python values to runtime values and back, by type: dtypes, shapes, containers, placements."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import CLIENTS, SERVER
from fedcc.runtimes.backend import AllEqual, Handle
from fedcc.runtimes.values import (
    ClientList,
    Container,
    client_lists,
    container_of,
    from_runtime,
    replace_client_lists,
    to_runtime,
)

Point = collections.namedtuple("Point", ["x", "y"])


@dataclasses.dataclass
class Weights:
    w: np.ndarray
    b: float


def convert(value, text, where="parameter 'p'"):
    return to_runtime(value, parse_type(text), where)


# --- tensors and dtypes ---------------------------------------------------


def test_an_array_of_the_declared_dtype_is_used_as_it_is():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert convert(array, "float32[2,3]") is array
    assert convert(array, "float32[?,3]") is array


@pytest.mark.parametrize(
    ("value", "text", "expected_dtype"),
    [
        (1.5, "float32", np.float32),
        (3, "float32", np.float32),
        (3, "int32", np.int32),
        (True, "int8", np.int8),
        (True, "bool", np.bool_),
        ([1.0, 2.0], "float16[2]", np.float16),
        (np.arange(3), "int32[3]", np.int32),  # NumPy's int64 default
        (np.arange(3), "uint8[3]", np.uint8),
        (np.ones(3), "float32[3]", np.float32),  # NumPy's float64 default
        (np.arange(3, dtype=np.int16), "float64[3]", np.float64),
        (np.float64(2.5), "float32", np.float32),
        ([], "int32[?]", np.int32),  # empty data converts to any dtype
    ],
)
def test_data_converts_to_the_declared_dtype_without_loss_of_kind(value, text, expected_dtype):
    array = convert(value, text)
    assert isinstance(array, np.ndarray)
    assert array.dtype == expected_dtype
    np.testing.assert_array_equal(array, np.asarray(value).astype(expected_dtype))


@pytest.mark.parametrize(
    ("value", "text", "message"),
    [
        (np.ones(3), "int32[3]", "float64 data, which does not convert to int32"),
        (1.5, "int32", "float64 data"),
        (np.array([1, 0]), "bool[2]", "int64 data, which does not convert to bool"),
        ("abc", "float32", "found str 'abc'"),
        (np.array([1 + 2j]), "float32[1]", "complex128 data"),
        (np.array([300]), "uint8[1]", "the value 300, outside the range of uint8"),
        (np.array([-1]), "uint32[1]", "the value -1, outside the range of uint32"),
        (2**70, "int64", "object data"),
        ([[1, 2], [3]], "int32[2,?]", "not a rectangular array"),
        (np.ones((2, 3), np.float32), "float32[3,2]", "found shape (2, 3)"),
        (np.ones(3, np.float32), "float32", "found shape (3,)"),
        (1.0, "float32[1]", "found a scalar"),
        (None, "float32", "found a NoneType"),
    ],
)
def test_lossy_or_misshapen_data_is_refused_naming_the_parameter(value, text, message):
    with pytest.raises(FederatedTypeError, match="parameter 'p'") as caught:
        convert(value, text)
    assert message in str(caught.value)
    assert text in str(caught.value) or "expected" in str(caught.value)


# --- structs --------------------------------------------------------------


def test_tuples_and_lists_become_unnamed_structs():
    value = convert((1.0, [1, 2]), "<float32,int32[2]>")
    assert isinstance(value, tuple)
    assert value[0].dtype == np.float32
    np.testing.assert_array_equal(value[1], [1, 2])


def test_dicts_namedtuples_and_dataclasses_become_named_structs_matched_by_name():
    t = "<w=float32[2],b=float32>"
    for value in (
        {"b": 1.0, "w": [2.0, 3.0]},
        Weights(w=np.array([2.0, 3.0]), b=1.0),
        collections.OrderedDict([("w", [2.0, 3.0]), ("b", 1.0)]),
    ):
        w, b = convert(value, t)
        np.testing.assert_array_equal(w, np.array([2.0, 3.0], np.float32))
        assert b == np.float32(1.0)
    assert convert(Point(1, 2), "<x=int32,y=int32>") == (1, 2)
    assert convert(Point(1, 2), "<int32,int32>") == (1, 2)  # positional when unnamed


def test_struct_mismatches_name_the_field_and_what_is_missing():
    with pytest.raises(FederatedTypeError, match=r"missing b; unexpected c"):
        convert({"w": [1.0, 2.0], "c": 1.0}, "<w=float32[2],b=float32>")
    with pytest.raises(FederatedTypeError, match=r"parameter 'p'\.w: expected float32\[2\]"):
        convert({"w": [1.0], "b": 1.0}, "<w=float32[2],b=float32>")
    with pytest.raises(FederatedTypeError, match=r"parameter 'p'\[1\]: expected int32"):
        convert((1.0, 2.5), "<float32,int32>")
    with pytest.raises(FederatedTypeError, match=r"2 elements.*tuple of 3"):
        convert((1, 2, 3), "<int32,int32>")
    with pytest.raises(FederatedTypeError, match=r"not all named.*pass a tuple"):
        convert({"a": 1}, "<int32>")
    with pytest.raises(FederatedTypeError, match="expected <int32>, found int 5"):
        convert(5, "<int32>")


# --- sequences ------------------------------------------------------------


def test_iterables_become_sequences_of_converted_elements():
    sequence = convert((x for x in [1.0, 2.0]), "float32*")
    assert isinstance(sequence, list)
    assert [e.dtype for e in sequence] == [np.float32, np.float32]
    rows = convert(np.ones((3, 2)), "float32[2]*")
    assert len(rows) == 3 and rows[0].shape == (2,)
    batches = convert([{"x": [[1.0]], "y": [0]}], "<x=float32[?,1],y=int32[?]>*")
    assert batches[0][1].dtype == np.int32
    assert convert([], "int32*") == []


def test_non_iterables_strings_and_dicts_are_not_sequences():
    for value in ("abc", {"a": 1}, 3, np.float32(1)):
        with pytest.raises(FederatedTypeError, match=r"an iterable of elements"):
            convert(value, "float32*")
    with pytest.raises(FederatedTypeError, match=r"parameter 'p'\[1\]: expected float32"):
        convert([1.0, "x"], "float32*")


# --- placed values --------------------------------------------------------


def test_a_client_list_converts_each_client_value():
    value = convert([1, 2, 3], "{float32}@CLIENTS")
    assert isinstance(value, ClientList)
    assert value.where == "parameter 'p'"
    assert [v.dtype for v in value.values] == [np.float32] * 3
    assert convert(np.ones((4, 2)), "{float32[2]}@CLIENTS").values[3].shape == (2,)


def test_a_ragged_client_list_names_the_client():
    with pytest.raises(FederatedTypeError, match=r"parameter 'p', client 2: expected float32\[2\]"):
        convert([[1, 2], [3, 4], [5]], "{float32[2]}@CLIENTS")
    with pytest.raises(FederatedTypeError, match=r"client 1\.y: expected int32"):
        convert([{"x": 1.0, "y": 1}, {"x": 1.0, "y": 1.5}], "{<x=float32,y=int32>}@CLIENTS")


def test_a_single_value_for_a_client_list_is_the_wrong_placement():
    with pytest.raises(FederatedTypeError, match=r"\{float32\}@CLIENTS, a list with one value a"):
        convert(1.0, "{float32}@CLIENTS")


def test_a_client_list_for_a_server_value_is_the_wrong_placement():
    with pytest.raises(FederatedTypeError, match=r"parameter 'p' \(float32@SERVER\): expected"):
        convert([1.0, 2.0, 3.0], "float32@SERVER")


def test_server_and_all_equal_values_are_the_member_value():
    assert convert(2, "int32@SERVER") == np.int32(2)
    all_equal = convert(2, "int32@CLIENTS")
    assert isinstance(all_equal, AllEqual) and all_equal.value == 2


def test_client_lists_are_found_and_replaced_inside_structs():
    t = parse_type("<a={float32}@CLIENTS,b=float32@SERVER,c=<{int32}@CLIENTS>>")
    value = to_runtime({"a": [1.0], "b": 2.0, "c": ([1],)}, t, "x")
    found = client_lists(value, t)
    assert [c.where for c in found] == ["x.a", "x.c[0]"]
    placed = replace_client_lists(value, t, lambda c: Handle(len(c.values)))
    assert isinstance(placed[0], Handle) and placed[1] == 2.0 and isinstance(placed[2][0], Handle)


def test_placements_and_functions():
    assert convert("clients", "placement") is CLIENTS
    assert convert(SERVER, "placement") is SERVER
    with pytest.raises(FederatedTypeError, match="parameter 'p': expected a placement"):
        convert("moon", "placement")
    with pytest.raises(FederatedTypeError, match="functions cannot be passed"):
        convert(lambda x: x, "(int32 -> int32)")


# --- results --------------------------------------------------------------


def test_results_come_back_as_arrays_scalars_dicts_tuples_and_lists():
    t = parse_type("<w=float32[2],b=<int32,float32>,s=int32*>")
    literal = np.array([1.0, 2.0], np.float32)
    literal.flags.writeable = False
    value = (literal, (np.array(3, np.int32), np.float32(4.0)), [np.array(5, np.int32)])
    result = from_runtime(value, t)
    assert list(result) == ["w", "b", "s"]
    assert result["w"].flags.writeable  # read-only literals are copied
    np.testing.assert_array_equal(result["w"], literal)
    assert result["b"] == (3, 4.0)
    assert isinstance(result["b"][0], np.int32)  # rank 0 comes back as a NumPy scalar
    assert result["s"] == [5]


def test_a_struct_naming_only_some_elements_comes_back_as_a_tuple():
    assert from_runtime((np.int32(1), np.int32(2)), parse_type("<a=int32,int32>")) == (1, 2)


def test_placed_results_come_back_per_client_or_as_the_member():
    t = parse_type("<{float32}@CLIENTS,float32@CLIENTS,float32@SERVER>")
    handle = Handle(0)
    materialized = []

    def materialize(value):
        materialized.append(value)
        return [np.float32(1), np.float32(2)]

    result = from_runtime((handle, AllEqual(np.float32(7)), np.float32(9)), t, None, materialize)
    assert result == ([1.0, 2.0], 7.0, 9.0)
    assert materialized == [handle]  # the all-equal value needed no trip to the clients
    assert from_runtime(AllEqual(np.float32(3)), parse_type("{float32}@CLIENTS"), None,
                        lambda v: [v.value] * 2) == [3.0, 3.0]


def test_containers_rebuild_the_python_types_the_tracer_saw():
    t = parse_type("<x=int32,y=<w=float32[2],b=float32>>")
    seen = Point(1, Weights(np.zeros(2), 0.0))
    container = container_of(seen)
    value = (np.int32(5), (np.array([1.0, 2.0], np.float32), np.float32(3)))
    result = from_runtime(value, t, container)
    assert isinstance(result, Point) and result.x == 5
    assert isinstance(result.y, Weights) and result.y.b == 3.0
    listed = from_runtime((np.int32(1), np.int32(2)), parse_type("<int32,int32>"),
                          container_of([0, 0]))
    assert listed == [1, 2]
    ordered = from_runtime((np.int32(1),), parse_type("<a=int32>"),
                           container_of(collections.OrderedDict(a=0)))
    assert isinstance(ordered, collections.OrderedDict)


def test_a_container_that_does_not_fit_the_result_is_an_error():
    with pytest.raises(FederatedTypeError, match="has 3 elements, but the result type"):
        from_runtime((1, 2), parse_type("<int32,int32>"), container_of((0, 0, 0)))
    with pytest.raises(FederatedTypeError, match="unnamed elements"):
        from_runtime((1, 2), parse_type("<int32,int32>"), Container(dict, (None, None)))


def test_functions_have_no_python_value():
    with pytest.raises(FederatedTypeError, match="has no Python value"):
        from_runtime(None, parse_type("(int32 -> int32)"))
