"""The federated tracer: proxies, containers, selection, calls, auto-zip, packed parameters,
polymorphism, and every intrinsic's trace-time type checks (DESIGN §4)."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import fedcc as fc
from fedcc.compiler.federated_tracer import FieldError, ParameterLayout, Value
from fedcc.compiler.verify import verify
from fedcc.ir import building_blocks as bb
from fedcc.ir.analysis import count_intrinsic_calls
from fedcc.ir.graph_builder import GraphBuilder

Point = collections.namedtuple("Point", ["x", "y"])


@dataclasses.dataclass
class Stats:
    total: object
    largest: object


def source_line(marker: str) -> str:
    """`file:line` of the line of this file that holds `marker` (a comment)."""
    lines = Path(__file__).read_text().splitlines()
    (number,) = [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith(f"# {marker}")]
    return f"{__file__}:{number}"


def local_computation(parameter: str, build, name: str) -> fc.Computation:
    """A NumPy-style computation made from a hand-built local graph."""
    builder = GraphBuilder(fc.parse_type(parameter))
    outputs = build(builder, *builder.parameters())
    graph = builder.build(outputs if isinstance(outputs, list) else [outputs])
    layout = ParameterLayout(graph.parameter_type, ("x",), False)
    return fc.Computation(bb.LocalGraph(graph), name=name, layout=layout)


add_one = local_computation(
    "float32", lambda g, x: g.op("add", x, g.constant(1.0, "float32")), "add_one"
)
add_pair = local_computation("<float32,float32>", lambda g, a, b: g.op("add", a, b), "add_pair")


# --- what tracing builds ----------------------------------------------------------------------


def test_a_mean_traces_to_one_intrinsic_call_on_the_parameter():
    @fc.federated_computation("{float32}@CLIENTS")
    def mean(v):
        return fc.federated_mean(v)

    t = fc.parse_type("{float32}@CLIENTS")
    expected = bb.Lambda("v", t, bb.call_intrinsic("federated_mean", bb.Reference("v", t)))
    assert mean.building_block == expected
    assert str(mean.type_signature) == "({float32}@CLIENTS -> float32@SERVER)"
    assert mean([1.0, 2.0, 6.0]) == np.float32(3.0)


def test_a_value_used_twice_is_bound_once_and_computed_once():
    @fc.federated_computation("{float32}@CLIENTS")
    def twice(v):
        total = fc.federated_sum(v)
        return total, total

    assert count_intrinsic_calls(twice.building_block) == {"federated_sum": 1}
    assert isinstance(twice.building_block.result, bb.Block)
    assert twice([1.0, 2.0]) == (np.float32(3.0), np.float32(3.0))


def test_traced_computations_pass_verify():
    @fc.federated_computation("{float32}@CLIENTS", "float32@SERVER")
    def round_trip(v, s):
        at_clients = fc.federated_broadcast(s)
        pairs = fc.federated_zip([v, at_clients])
        sums = fc.federated_map(add_pair, pairs)
        return fc.federated_mean(sums), fc.federated_map(add_one, s)

    verify(round_trip.building_block)
    assert round_trip([1.0, 3.0], 10.0) == (np.float32(12.0), np.float32(11.0))


# --- Python containers and structs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "result_type", "expected"),
    [
        (lambda s, m: {"total": s, "largest": m}, "<total=float32@SERVER,largest=float32@SERVER>",
         {"total": np.float32(6.0), "largest": np.float32(3.0)}),
        (lambda s, m: (s, m), "<float32@SERVER,float32@SERVER>",
         (np.float32(6.0), np.float32(3.0))),
        (lambda s, m: [s, m], "<float32@SERVER,float32@SERVER>",
         [np.float32(6.0), np.float32(3.0)]),
        (lambda s, m: Point(s, m), "<x=float32@SERVER,y=float32@SERVER>",
         Point(np.float32(6.0), np.float32(3.0))),
        (lambda s, m: Stats(s, m), "<total=float32@SERVER,largest=float32@SERVER>",
         Stats(np.float32(6.0), np.float32(3.0))),
    ],
    ids=["dict", "tuple", "list", "namedtuple", "dataclass"],
)
def test_containers_become_structs_and_results_come_back_in_the_same_container(
    make, result_type, expected
):
    @fc.federated_computation("{float32}@CLIENTS")
    def stats(v):
        return make(fc.federated_sum(v), fc.federated_max(v))

    assert str(stats.type_signature.result) == result_type
    result = stats([1.0, 2.0, 3.0])
    assert type(result) is type(expected)
    assert result == expected


def test_containers_of_constants_and_values_become_structs_of_literals_and_references():
    @fc.federated_computation("float32@SERVER")
    def with_constants(s):
        return {"value": s, "constants": (1.0, np.int64(2), True)}

    result_type = with_constants.type_signature.result
    assert str(result_type) == "<value=float32@SERVER,constants=<float32,int64,bool>>"
    assert with_constants(5.0) == {"value": np.float32(5.0), "constants": (1.0, 2, True)}


def test_a_result_container_is_rebuilt_through_a_call_of_the_computation():
    @fc.federated_computation("{float32}@CLIENTS")
    def inner(v):
        return Point(fc.federated_sum(v), fc.federated_min(v))

    @fc.federated_computation("{float32}@CLIENTS")
    def outer(v):
        return inner(v)

    assert outer([2.0, 5.0]) == Point(np.float32(7.0), np.float32(2.0))
    assert isinstance(outer([2.0, 5.0]), Point)


# --- selection --------------------------------------------------------------------------------


def test_attribute_name_index_and_negative_index_select_struct_elements():
    @fc.federated_computation("<a=float32,b=int32,c=bool>")
    def select(s):
        return s.a, s["b"], s[-1], s[0]

    assert select({"a": 1.5, "b": 2, "c": True}) == (np.float32(1.5), np.int32(2), True, 1.5)
    selections = [n for n in bb.walk(select.building_block) if isinstance(n, bb.Selection)]
    assert sorted(n.index for n in selections) == [0, 0, 1, 2]


def test_unpacking_and_slicing_a_struct():
    @fc.federated_computation("<float32,int32,bool>")
    def reorder(s):
        a, b, c = s
        return c, s[:2], b, a, len(s)

    assert str(reorder.type_signature.result) == "<bool,<float32,int32>,int32,float32,int32>"
    assert reorder((1.0, 2, False)) == (False, (np.float32(1.0), np.int32(2)), 2, 1.0, 3)


def test_selecting_from_a_placed_struct_maps_the_selection_over_the_placement():
    @fc.federated_computation("{<x=float32,y=int32>}@CLIENTS", "<lr=float32,steps=int32>@SERVER")
    def select(clients, server):
        return fc.federated_sum(clients.x), fc.federated_sum(clients[1]), server.steps

    assert count_intrinsic_calls(select.building_block) == {
        "federated_apply": 1,
        "federated_map": 2,
        "federated_sum": 2,
    }
    result = select([{"x": 1.0, "y": 2}, {"x": 3.0, "y": 4}], {"lr": 0.5, "steps": 7})
    assert result == (np.float32(4.0), np.int32(6), np.int32(7))


def test_selecting_a_missing_field_is_a_field_error_that_hasattr_understands():
    checked = {}

    @fc.federated_computation("<a=float32>")
    def probe(s):
        checked["has_a"] = hasattr(s, "a")
        checked["has_b"] = hasattr(s, "b")
        with pytest.raises(FieldError, match="no field named 'b'"):
            s["b"]
        with pytest.raises(fc.FederatedTypeError, match="out of range"):
            s[3]
        return s.a

    assert checked == {"has_a": True, "has_b": False}


def test_selecting_from_a_tensor_says_it_is_not_a_struct():
    with pytest.raises(fc.FederatedTypeError, match="float32 is not a struct"):

        @fc.federated_computation("float32")
        def bad(x):
            return x[0]


# --- calling computations ---------------------------------------------------------------------


def test_calling_a_federated_computation_inlines_its_lambda_as_a_call():
    @fc.federated_computation("{float32}@CLIENTS")
    def total(v):
        return fc.federated_sum(v)

    @fc.federated_computation("{float32}@CLIENTS")
    def twice_total(v):
        return total(v), total(v)

    calls = [
        n for n in bb.walk(twice_total.building_block)
        if isinstance(n, bb.Call) and n.function == total.building_block
    ]
    assert len(calls) == 2
    assert twice_total([1.0, 2.0]) == (np.float32(3.0), np.float32(3.0))


def test_calling_a_numpy_computation_inserts_its_local_graph():
    @fc.federated_computation("float32")
    def plus_two(x):
        return add_one(add_one(x))

    graphs = [n for n in bb.walk(plus_two.building_block) if isinstance(n, bb.LocalGraph)]
    assert len(graphs) == 2 and all(g == add_one.building_block for g in graphs)
    assert plus_two(1.0) == np.float32(3.0)


def test_a_computation_without_placements_is_a_valid_argument_to_federated_map():
    @fc.federated_computation("float32*")
    def client_total(data):
        return fc.sequence_reduce(data, 0.0, add_pair)

    @fc.federated_computation("{float32*}@CLIENTS")
    def totals(data):
        return fc.federated_map(client_total, data)

    assert str(totals.type_signature) == "({float32*}@CLIENTS -> {float32}@CLIENTS)"
    assert totals([[1.0, 2.0], [], [4.0]]) == [3.0, 0.0, 4.0]


def test_calling_a_local_computation_on_a_placed_value_suggests_federated_map():
    with pytest.raises(fc.FederatedTypeError, match=r"fc\.federated_map") as info:

        @fc.federated_computation("{float32}@CLIENTS")
        def bad(v):
            return add_one(v)  # <- local on placed

    message = str(info.value)
    assert "calling add_one" in message and "{float32}@CLIENTS" in message
    assert source_line("<- local on placed") in message


def test_several_parameters_are_one_struct_parameter_called_with_positional_parts():
    @fc.federated_computation("{float32}@CLIENTS", "float32@SERVER")
    def shifted_mean(values, shift):
        return fc.federated_map(add_pair, [values, fc.federated_broadcast(shift)])

    assert str(shifted_mean.type_signature.parameter) == "<{float32}@CLIENTS,float32@SERVER>"
    assert shifted_mean([1.0, 2.0], 10.0) == [11.0, 12.0]
    assert shifted_mean([1.0, 2.0], shift=10.0) == [11.0, 12.0]
    assert shifted_mean(values=[1.0], shift=1.0) == [2.0]


def test_one_struct_type_unpacks_into_several_parameters():
    @fc.federated_computation("<float32@SERVER,int32@SERVER>")
    def swap(a, b):
        return b, a

    assert str(swap.type_signature.parameter) == "<float32@SERVER,int32@SERVER>"
    assert swap(1.0, 2) == (np.int32(2), np.float32(1.0))


def test_a_python_function_given_to_an_intrinsic_is_traced_inline_with_the_member_type():
    @fc.federated_computation("{<a=float32,b=float32>}@CLIENTS")
    def pick(v):
        return fc.federated_map(lambda member: member.b, v), fc.federated_map(
            lambda a, b: add_pair((a, b)), v
        )

    lambdas = [n for n in bb.walk(pick.building_block) if isinstance(n, bb.Lambda)]
    assert str(lambdas[1].parameter_type) == "<a=float32,b=float32>"
    assert pick([{"a": 1.0, "b": 2.0}]) == ([2.0], [3.0])


# --- auto-zip and placements ------------------------------------------------------------------


def test_federated_map_of_a_list_of_placed_values_zips_them_first():
    @fc.federated_computation("{float32}@CLIENTS", "{float32}@CLIENTS")
    def add(a, b):
        return fc.federated_map(add_pair, [a, b])

    assert count_intrinsic_calls(add.building_block) == {"federated_map": 1, "federated_zip": 1}
    assert add([1.0, 2.0], [10.0, 20.0]) == [11.0, 22.0]


def test_federated_map_of_a_dict_of_placed_values_zips_them_with_names():
    @fc.federated_computation("{float32}@CLIENTS", "{float32}@CLIENTS")
    def zipped(a, b):
        return fc.federated_map(lambda pair: pair, {"first": a, "second": b})

    assert str(zipped.type_signature.result) == "{<first=float32,second=float32>}@CLIENTS"
    assert zipped([1.0], [2.0]) == [{"first": np.float32(1.0), "second": np.float32(2.0)}]


def test_federated_map_at_the_server_becomes_federated_apply_and_all_equal_stays_all_equal():
    @fc.federated_computation("float32@SERVER")
    def both(s):
        return fc.federated_map(add_one, s), fc.federated_map(add_one, fc.federated_broadcast(s))

    assert count_intrinsic_calls(both.building_block) == {
        "federated_apply": 1,
        "federated_broadcast": 1,
        "federated_map": 1,
    }
    assert str(both.type_signature.result) == "<float32@SERVER,float32@CLIENTS>"


# --- polymorphism -----------------------------------------------------------------------------


def test_a_polymorphic_computation_is_traced_once_per_argument_type():
    traces = []

    @fc.federated_computation
    def identity(x):
        traces.append(x.type_signature)
        return x

    assert isinstance(identity, fc.PolymorphicComputation)
    assert identity(np.float32(1.0)) == np.float32(1.0)
    assert identity(np.float32(2.0)) == np.float32(2.0)
    assert identity(np.arange(3, dtype=np.int64)).tolist() == [0, 1, 2]
    assert identity(3.0) == np.float32(3.0)  # a Python float is float32, like np.float32(...)
    assert [str(t) for t in traces] == ["float32", "int64[3]"]
    assert set(map(str, identity.traced)) == {"float32", "int64[3]"}


def test_a_polymorphic_computation_called_in_a_trace_is_traced_for_the_values_type():
    @fc.federated_computation
    def total(v):
        return fc.federated_sum(v)

    @fc.federated_computation("{int32}@CLIENTS", "{float32}@CLIENTS")
    def both(a, b):
        return total(a), total(b)

    assert str(both.type_signature.result) == "<int32@SERVER,float32@SERVER>"
    assert both([1, 2], [0.5, 0.25]) == (np.int32(3), np.float32(0.75))
    assert len(total.traced) == 2


def test_a_computation_of_no_parameter_is_traced_at_once():
    @fc.federated_computation
    def zero():
        return fc.federated_value(0.0, fc.SERVER)

    assert isinstance(zero, fc.Computation)
    assert str(zero.type_signature) == "( -> float32@SERVER)"
    assert zero() == np.float32(0.0)


# --- every intrinsic --------------------------------------------------------------------------

INTRINSIC_CASES = [
    ("{float32}@CLIENTS", lambda v: fc.federated_sum(v), "federated_sum", "float32@SERVER",
     [1.0, 2.0, 4.0], np.float32(7.0)),
    ("{float32}@CLIENTS", lambda v: fc.federated_mean(v), "federated_mean", "float32@SERVER",
     [1.0, 2.0, 6.0], np.float32(3.0)),
    ("{float32}@CLIENTS", lambda v: fc.federated_mean(v, weight=v), "federated_weighted_mean",
     "float32@SERVER", [1.0, 3.0], np.float32(2.5)),
    ("{int32}@CLIENTS", lambda v: fc.federated_min(v), "federated_min", "int32@SERVER",
     [4, -2, 9], np.int32(-2)),
    ("{int32}@CLIENTS", lambda v: fc.federated_max(v), "federated_max", "int32@SERVER",
     [4, -2, 9], np.int32(9)),
    ("{int32}@CLIENTS", lambda v: fc.federated_secure_sum(v, 10), "federated_secure_sum",
     "int32@SERVER", [4, 2, 9], np.int32(15)),
    ("{int32}@CLIENTS", lambda v: fc.federated_secure_sum_bitwidth(v, 4),
     "federated_secure_sum_bitwidth", "int32@SERVER", [4, 2, 9], np.int32(15)),
    ("float32@SERVER", lambda s: fc.federated_broadcast(s), "federated_broadcast",
     "float32@CLIENTS", 2.5, np.float32(2.5)),
    ("float32@SERVER", lambda s: fc.federated_map(add_one, s), "federated_apply",
     "float32@SERVER", 2.5, np.float32(3.5)),
    ("float32@SERVER", lambda s: fc.federated_apply(add_one, s), "federated_apply",
     "float32@SERVER", 2.5, np.float32(3.5)),
    ("{float32}@CLIENTS", lambda v: fc.federated_map(add_one, v), "federated_map",
     "{float32}@CLIENTS", [1.0, 2.0], [np.float32(2.0), np.float32(3.0)]),
    ("{float32}@CLIENTS", lambda v: fc.federated_zip((v, v)), "federated_zip",
     "{<float32,float32>}@CLIENTS", [1.0], [(np.float32(1.0), np.float32(1.0))]),
    ("float32", lambda x: fc.federated_value(x, fc.SERVER), "federated_value_at_server",
     "float32@SERVER", 1.5, np.float32(1.5)),
    ("float32", lambda x: fc.federated_value(x, fc.CLIENTS), "federated_value_at_clients",
     "float32@CLIENTS", 1.5, np.float32(1.5)),
    ("float32", lambda x: fc.federated_eval(lambda: x, fc.SERVER), "federated_eval_at_server",
     "float32@SERVER", 1.5, np.float32(1.5)),
    ("{int32}@CLIENTS",
     lambda v: fc.federated_aggregate(v, 0, lambda a, x: x, lambda a, b: b, lambda a: a),
     "federated_aggregate", "int32@SERVER", [3, 5, 8], np.int32(8)),
    ("float32*", lambda s: fc.sequence_map(add_one, s), "sequence_map", "float32*",
     [1.0, 2.0], [np.float32(2.0), np.float32(3.0)]),
    ("float32*", lambda s: fc.sequence_reduce(s, 0.0, add_pair), "sequence_reduce", "float32",
     [1.0, 2.0], np.float32(3.0)),
    ("float32*", lambda s: fc.sequence_sum(s), "sequence_sum", "float32", [1.0, 2.0],
     np.float32(3.0)),
]


@pytest.mark.parametrize(
    ("parameter", "body", "uri", "result", "argument", "expected"),
    INTRINSIC_CASES,
    ids=[case[2] + f"-{i}" for i, case in enumerate(INTRINSIC_CASES)],
)
def test_every_intrinsic_builds_its_call_with_the_right_type(
    parameter, body, uri, result, argument, expected
):
    comp = fc.federated_computation(parameter)(lambda x: body(x))
    assert uri in count_intrinsic_calls(comp.building_block)
    assert str(comp.type_signature.result) == result
    verify(comp.building_block)
    # A computation without client arguments is told how many clients there are.
    options = {} if "CLIENTS" in parameter or "CLIENTS" not in result else {"num_clients": 2}
    actual = comp.run(argument, **options)
    assert type(actual) is type(expected)
    assert np.array_equal(np.asarray(actual), np.asarray(expected))


def test_federated_eval_at_clients_runs_once_per_client():
    @fc.federated_computation
    def ones():
        return fc.federated_eval(lambda: np.float32(1.0), fc.CLIENTS)

    assert str(ones.type_signature) == "( -> {float32}@CLIENTS)"
    assert ones.run(num_clients=3) == [1.0, 1.0, 1.0]


def test_constants_take_the_dtype_the_typed_function_expects():
    sum_f64 = local_computation(
        "<float64,float64>", lambda g, a, b: g.op("add", a, b), "sum_f64"
    )

    @fc.federated_computation("float64*")
    def total(s):
        return fc.sequence_reduce(s, 0, sum_f64)  # the int 0 becomes a float64 zero

    literals = [n for n in bb.walk(total.building_block) if isinstance(n, bb.Literal)]
    assert [str(n.type_signature) for n in literals] == ["float64"]
    assert total([0.5, 0.25]) == np.float64(0.75)


# --- trace-time type errors -------------------------------------------------------------------


def test_federated_mean_of_a_server_value_is_a_located_type_error():
    with pytest.raises(fc.FederatedTypeError) as info:

        @fc.federated_computation("float32@SERVER")
        def bad(v):
            return fc.federated_mean(v)  # <- mean at server

    message = str(info.value)
    assert isinstance(info.value, TypeError)
    assert "fc.federated_mean" in message and "{T}@CLIENTS" in message
    assert "float32@SERVER" in message and source_line("<- mean at server") in message


@pytest.mark.parametrize(
    ("parameter", "body", "names"),
    [
        ("{float32}@CLIENTS", lambda v: fc.federated_broadcast(v),
         ["fc.federated_broadcast", "T@SERVER", "{float32}@CLIENTS"]),
        ("float32", lambda x: fc.federated_sum(x), ["fc.federated_sum", "{T}@CLIENTS", "float32"]),
        ("<{float32}@CLIENTS,float32@SERVER>", lambda p: fc.federated_zip(p),
         ["fc.federated_zip", "same placement", "<{float32}@CLIENTS,float32@SERVER>"]),
        ("{float32[3]}@CLIENTS", lambda v: fc.federated_map(add_one, v),
         ["fc.federated_map", "float32[3] is not assignable to float32"]),
        ("{float32}@CLIENTS", lambda v: fc.federated_secure_sum(v, 10),
         ["fc.federated_secure_sum", "float32", "not a integer tensor"]),
        ("{int32}@CLIENTS", lambda v: fc.federated_mean(v),
         ["fc.federated_mean", "int32", "floating-point"]),
        ("{float32}@CLIENTS", lambda v: fc.federated_mean(v, weight=fc.federated_map(
            local_computation("float32", lambda g, x: g.op("cast", x, dtype="int32"), "i"), v)),
         ["fc.federated_mean", "federated_weighted_mean", "the weight int32"]),
        ("int32*", lambda s: fc.sequence_reduce(s, 0.0, add_pair),
         ["fc.sequence_reduce", "<float32,int32> is not assignable to <float32,float32>"]),
        ("float32*", lambda s: fc.federated_sum(s), ["fc.federated_sum", "float32*"]),
        ("{float32}@CLIENTS", lambda v: fc.sequence_sum(v),
         ["fc.sequence_sum", "expects a sequence", "{float32}@CLIENTS"]),
        ("float32@SERVER", lambda s: fc.federated_apply(add_pair, s),
         ["fc.federated_apply", "float32 is not assignable to <float32,float32>"]),
    ],
)
def test_intrinsic_type_errors_name_the_intrinsic_the_types_and_the_line(parameter, body, names):
    with pytest.raises(fc.FederatedTypeError) as info:
        fc.federated_computation(parameter)(lambda x: body(x))
    message = str(info.value)
    for name in names:
        assert name in message
    assert f"{__file__}:" in message  # the line of the lambda that called the intrinsic


def test_an_error_inside_an_inline_function_points_at_its_line():
    with pytest.raises(fc.FederatedTypeError) as info:

        @fc.federated_computation("{float32}@CLIENTS")
        def bad(v):
            return fc.federated_map(
                lambda x: fc.federated_sum(x),  # <- inner sum
                v,
            )

    assert source_line("<- inner sum") in str(info.value)
    assert str(info.value).count(f"{__file__}:") == 1  # located once, at the innermost line


def test_an_intrinsic_outside_a_computation_says_where_it_can_be_called():
    with pytest.raises(fc.FederatedTypeError, match=r"fc\.eager"):
        fc.federated_sum([1.0, 2.0])


# --- misuse of traced values ------------------------------------------------------------------


def test_python_control_flow_on_a_traced_value_is_refused():
    with pytest.raises(fc.FederatedTypeError, match="control flow"):

        @fc.federated_computation("float32@SERVER")
        def bad(v):
            if v:
                return v
            return v


@pytest.mark.parametrize(
    "misuse", [lambda v: v + 1, lambda v: 2 * v, lambda v: -v, lambda v: np.asarray(v),
               lambda v: np.exp(v), lambda v: v < 1]
)
def test_arithmetic_and_numpy_on_traced_federated_values_point_to_numpy_computation(misuse):
    with pytest.raises(fc.FederatedTypeError, match="numpy_computation"):
        fc.federated_computation("float32@SERVER")(misuse)


def test_a_traced_value_cannot_escape_its_computation():
    leaked = []

    @fc.federated_computation("float32@SERVER")
    def leak(v):
        leaked.append(v)
        return v

    assert isinstance(leaked[0], Value)
    with pytest.raises(fc.FederatedTypeError, match="outside the function"):

        @fc.federated_computation("float32@SERVER")
        def use(v):
            return leaked[0]


def test_an_inline_function_cannot_capture_a_federated_value():
    with pytest.raises(fc.FederatedTypeError, match="pass it in as an argument"):

        @fc.federated_computation("{float32}@CLIENTS", "float32@SERVER")
        def bad(v, s):
            return fc.federated_map(lambda x: (x, s), v)


def test_a_function_returning_none_is_refused():
    with pytest.raises(fc.FederatedTypeError, match="returned None"):

        @fc.federated_computation("float32@SERVER")
        def bad(v):
            fc.federated_broadcast(v)


def test_a_wrong_number_of_types_names_the_parameters():
    with pytest.raises(fc.FederatedTypeError, match="takes 2 parameter"):

        @fc.federated_computation("float32")
        def two(a, b):
            return a


# --- deep programs ----------------------------------------------------------------------------


def test_a_long_chain_of_calls_is_a_flat_block_and_runs():
    steps = 1500

    @fc.federated_computation("float32@SERVER")
    def chain(s):
        for _ in range(steps):
            s = fc.federated_map(add_one, s)
        return s

    assert chain.building_block.depth < 10
    verify(chain.building_block)
    assert chain(0.0) == np.float32(steps)


def test_nested_python_containers_of_placed_values_are_zipped_inside_out():
    @fc.federated_computation("{float32}@CLIENTS", "{int32}@CLIENTS")
    def nested(a, b):
        return fc.federated_zip({"a": a, "pair": (b, a)})

    assert str(nested.type_signature.result) == "{<a=float32,pair=<int32,float32>>}@CLIENTS"
    assert count_intrinsic_calls(nested.building_block) == {"federated_zip": 2}
    assert nested([1.0], [2]) == [{"a": np.float32(1.0), "pair": (np.int32(2), np.float32(1.0))}]
