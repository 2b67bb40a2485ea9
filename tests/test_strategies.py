"""The random generators of tests/strategies.py: valid, of the requested type, and covering the IR.

The coverage tests draw a fixed, seeded sample and assert that every
intrinsic, node kind, primitive and kind of type appears, so the generator
cannot silently shrink to a corner of the language.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    INTRINSIC_RECIPES,
    RandomChooser,
    draw_type,
    federated_programs,
    federated_types,
    local_graphs,
    program_envelopes,
    programs,
    sample_local_graphs,
    sample_programs,
    tensor_types,
    types,
    unplaced_value_types,
)

from fedcc.compiler.verify import verify, verify_graph
from fedcc.ir import building_blocks as bb
from fedcc.ir.analysis import count_intrinsic_calls, count_nodes_by_kind, free_references
from fedcc.ir.intrinsics import INTRINSICS
from fedcc.ir.primitives import PRIMITIVES
from fedcc.ir.program import Program
from fedcc.ir.types import (
    CLIENTS,
    DTYPES,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    contains_federated,
    is_assignable_from,
    walk_types,
)

SAMPLE = 300


@pytest.fixture(scope="module")
def sampled_programs():
    return sample_programs(SAMPLE, seed=11) + sample_programs(SAMPLE, seed=12, federated=True)


# --- validity ----------------------------------------------------------------------------


@given(programs())
def test_programs_are_closed_and_verify(comp):
    assert free_references(comp) == {}
    verify(comp)


@given(st.data())
def test_programs_have_the_requested_type(data):
    t = data.draw(types(depth=3))
    comp = data.draw(programs(t, max_depth=2))
    assert comp.type_signature == t
    assert free_references(comp) == {}
    verify(comp)


@given(programs("({float32[?]}@CLIENTS -> float32[?]@SERVER)"))
def test_programs_of_a_type_given_as_text(comp):
    assert str(comp.type_signature) == "({float32[?]}@CLIENTS -> float32[?]@SERVER)"


SCOPE = {"w": "float32[2]", "clients": "{int32*}@CLIENTS"}


@given(programs(scope=SCOPE))
def test_programs_in_a_scope_use_only_its_names_at_their_types(comp):
    scope = SCOPE
    for name, t in free_references(comp).items():
        assert str(t) == scope[name]
    verify(comp, allow_free=scope)


@given(federated_programs())
def test_federated_programs_take_and_give_placed_values(comp):
    assert isinstance(comp, bb.Lambda)
    assert contains_federated(comp.parameter_type)
    assert contains_federated(comp.type_signature.result)
    assert free_references(comp) == {}
    verify(comp)


@given(program_envelopes())
def test_program_envelopes_hold_next_and_maybe_initialize(program):
    assert isinstance(program, Program)
    assert "next" in program.computations
    assert set(program.computations) <= {"initialize", "next"}
    if "initialize" in program.computations:
        state = program["initialize"].type_signature.result
        parameter = program["next"].type_signature.parameter
        assert state.placement is SERVER
        assert state in (parameter, getattr(parameter, "elements", [(None, None)])[0][1])
    verify(program)


@given(local_graphs())
def test_local_graphs_are_valid(graph):
    verify_graph(graph)
    assert all(op.primitive in PRIMITIVES for op in graph.ops)


@given(local_graphs("<float32[3],float32[3]>", "float32[?]"))
def test_local_graphs_of_requested_types(graph):
    assert str(graph.function_type) == "(<float32[3],float32[3]> -> float32[?])"
    verify_graph(graph)


@given(types())
def test_types_respect_the_nesting_rules(t):
    for inner in walk_types(t):
        if isinstance(inner, FederatedType):
            held = walk_types(inner.member)
            assert not any(isinstance(x, (FederatedType, FunctionType)) for x in held)
        if isinstance(inner, SequenceType):
            held = walk_types(inner.element)
            assert not any(isinstance(x, (FederatedType, FunctionType, SequenceType)) for x in held)


@given(unplaced_value_types())
def test_unplaced_value_types_can_be_placed(t):
    assert FederatedType(t, CLIENTS).member == t
    assert not contains_federated(t)


@given(tensor_types(dtypes=("int8",), max_rank=1, unknown_dims=False))
def test_tensor_type_options_are_honoured(t):
    assert t.dtype == np.int8 and t.rank <= 1 and t.is_fully_defined()


@given(federated_types())
def test_federated_types_are_placed(t):
    assert isinstance(t, FederatedType)
    assert t.all_equal or t.placement is CLIENTS


def test_samples_are_deterministic():
    first = sample_programs(20, seed=5)
    assert first == sample_programs(20, seed=5)
    assert first != sample_programs(20, seed=6)
    assert sample_local_graphs(20, seed=5) == sample_local_graphs(20, seed=5)


def test_sampled_programs_are_valid(sampled_programs):
    for comp in sampled_programs:
        assert free_references(comp) == {}
        verify(comp)


# --- coverage ----------------------------------------------------------------------------


def test_every_intrinsic_has_a_recipe():
    assert set(INTRINSIC_RECIPES) == set(INTRINSICS), (
        "add a recipe to tests/strategies.py INTRINSIC_RECIPES for each new intrinsic"
    )


def test_every_intrinsic_is_called_across_a_sample(sampled_programs):
    calls = Counter()
    for comp in sampled_programs:
        calls.update(count_intrinsic_calls(comp))
    assert set(calls) == set(INTRINSICS), f"never generated: {set(INTRINSICS) - set(calls)}"
    assert min(calls.values()) >= 3


def test_every_node_kind_appears_across_a_sample(sampled_programs):
    kinds = Counter()
    for comp in sampled_programs:
        kinds.update(count_nodes_by_kind(comp))
    expected = {node_class.kind for node_class in bb.NODE_CLASSES}
    assert set(kinds) == expected, f"never generated: {expected - set(kinds)}"
    assert min(kinds.values()) >= 10


def test_programs_use_their_inputs(sampled_programs):
    # The shape of a real computation: the body refers to the parameter.
    lambdas = sampled_programs[SAMPLE:]
    used = sum(
        any(isinstance(n, bb.Reference) and n.name == c.parameter_name for n in bb.walk(c))
        for c in lambdas
    )
    assert used >= len(lambdas) // 2


def test_literals_include_edge_case_values(sampled_programs):
    values = [
        v
        for comp in sampled_programs
        for node in bb.walk(comp)
        if isinstance(node, bb.Literal) and node.value.dtype.kind == "f"
        for v in node.value.ravel().tolist()
    ]
    assert any(math.isnan(v) for v in values)
    assert any(math.isinf(v) for v in values)
    assert any(v == 0 and math.copysign(1, v) < 0 for v in values)


def test_every_primitive_appears_across_a_sample_of_local_graphs():
    graphs = sample_local_graphs(1000, seed=13)
    used = Counter(op.primitive for graph in graphs for op in graph.ops)
    assert set(used) == set(PRIMITIVES), f"never generated: {set(PRIMITIVES) - set(used)}"
    assert sum(len(g.ops) for g in graphs) >= 1000


def test_every_kind_of_type_appears_across_a_sample():
    chooser = RandomChooser(17)
    seen = Counter()
    for _ in range(400):
        for t in walk_types(draw_type(chooser, 4)):
            seen[_type_feature(t)] += 1
            if isinstance(t, TensorType):
                seen[t.dtype.name] += 1
    features = {
        "tensor scalar",
        "tensor known dims",
        "tensor unknown dim",
        "struct empty",
        "struct named",
        "struct unnamed",
        "sequence",
        "function",
        "function no parameter",
        "clients",
        "clients all-equal",
        "server",
        "placement",
    }
    expected = features | set(DTYPES)
    assert expected <= set(seen), f"never generated: {expected - set(seen)}"


def _type_feature(t) -> str:
    if isinstance(t, TensorType):
        if not t.shape:
            return "tensor scalar"
        return "tensor known dims" if t.is_fully_defined() else "tensor unknown dim"
    if isinstance(t, StructType):
        if not len(t):
            return "struct empty"
        return "struct named" if any(n is not None for n in t.names()) else "struct unnamed"
    if isinstance(t, FunctionType):
        return "function" if t.parameter is not None else "function no parameter"
    if isinstance(t, FederatedType):
        if t.placement is SERVER:
            return "server"
        return "clients all-equal" if t.all_equal else "clients"
    if isinstance(t, PlacementType):
        return "placement"
    return "sequence"


def test_calls_pass_narrower_arguments_sometimes(sampled_programs):
    # Assignability, not equality, is what calls check: the generator must exercise it.
    narrower_arguments = 0
    for comp in sampled_programs:
        for node in bb.walk(comp):
            if isinstance(node, bb.Call) and node.argument is not None:
                parameter = node.function.type_signature.parameter
                if parameter != node.argument.type_signature:
                    assert is_assignable_from(parameter, node.argument.type_signature)
                    narrower_arguments += 1
    assert narrower_arguments >= 20
