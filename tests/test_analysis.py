"""ir/analysis.py: exact counts on hand-built programs, properties on random ones."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from strategies import programs

from fedcc.ir.analysis import (
    constant_bytes,
    count_intrinsic_calls,
    count_local_ops,
    count_nodes,
    count_nodes_by_kind,
    free_references,
    program_stats,
)
from fedcc.ir.building_blocks import (
    Block,
    Call,
    Lambda,
    Literal,
    LocalGraph,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.program import Program
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import TensorType

F32 = TensorType(np.float32)
I32 = TensorType(np.int32)
CLIENT_VALUES = parse_type("{float32}@CLIENTS")


def _scale_graph() -> Graph:
    """(x -> x * 2 + x): a constant, a multiply and an add."""
    two = np.array(2.0, np.float32)
    ops = [
        Op("constant", [], {"value": two}, F32),
        Op("multiply", [0, 1], {}, F32),
        Op("add", [2, 0], {}, F32),
    ]
    return Graph(F32, ops, [3], F32)


def _mean_of_scaled() -> Lambda:
    """(x -> let a=federated_map(<scale,x>) in federated_mean(a))"""
    x = Reference("x", CLIENT_VALUES)
    mapped = call_intrinsic("federated_map", Struct([LocalGraph(_scale_graph()), x]))
    mean = call_intrinsic("federated_mean", Reference("a", CLIENT_VALUES))
    return Lambda("x", CLIENT_VALUES, Block([("a", mapped)], mean))


def test_counts_of_a_hand_built_computation():
    comp = _mean_of_scaled()
    assert count_nodes_by_kind(comp) == {
        "block": 1,
        "call": 2,
        "intrinsic": 2,
        "lambda": 1,
        "local_graph": 1,
        "reference": 2,
        "struct": 1,
    }
    assert count_nodes(comp) == 10
    assert count_intrinsic_calls(comp) == {"federated_map": 1, "federated_mean": 1}
    assert count_local_ops(comp) == {"add": 1, "constant": 1, "multiply": 1}
    assert constant_bytes(comp) == 4
    assert free_references(comp) == {}


def test_counts_are_per_occurrence_and_sorted():
    graph = LocalGraph(_scale_graph())
    comp = Struct([Call(graph, Literal(np.float32(1))), Call(graph, Literal(np.float32(2)))])
    assert count_local_ops(comp) == {"add": 2, "constant": 2, "multiply": 2}
    assert list(count_nodes_by_kind(comp)) == ["call", "literal", "local_graph", "struct"]
    assert constant_bytes(comp) == 4 * 2 + 4 * 2  # two literals, two constant attributes


def test_literal_bytes_count_every_element():
    comp = Struct([Literal(np.zeros((3, 4), np.float64)), Literal(np.zeros(5, np.int8))])
    assert constant_bytes(comp) == 3 * 4 * 8 + 5


def test_free_references_respect_lambdas_blocks_and_shadowing():
    assert free_references(
        Lambda("x", I32, Struct([Reference("x", I32), Reference("y", F32)]))
    ) == {"y": F32}
    # A local's value sees the outer binding of its own name, not itself.
    assert free_references(Block([("a", Reference("a", F32))], Reference("a", F32))) == {"a": F32}
    # Locals are visible to later locals and to the result.
    later = Block([("a", Literal(np.int32(1))), ("b", Reference("a", I32))], Reference("b", I32))
    assert free_references(later) == {}
    # A local is not visible after its block; the first free use gives the type.
    outside = Struct(
        [Block([("a", Literal(np.int32(1)))], Reference("a", I32)), Reference("a", F32)]
    )
    assert free_references(outside) == {"a": F32}
    # A parameterless lambda binds nothing.
    assert free_references(Lambda(None, None, Reference("z", I32))) == {"z": I32}


def test_program_stats_reports_each_computation_and_totals():
    initialize = Lambda(None, None, Literal(np.zeros(2, np.float32)))
    program = Program({"initialize": initialize, "next": _mean_of_scaled()}, {"passes": "none"})
    stats = program_stats(program)
    assert list(stats["computations"]) == ["initialize", "next"]
    following = stats["computations"]["next"]
    assert following["type"] == "({float32}@CLIENTS -> float32@SERVER)"
    assert following["nodes"] == 10
    assert following["depth"] == _mean_of_scaled().depth
    assert following["local_graphs"] == 1
    assert stats["computations"]["initialize"]["constant_bytes"] == 8
    total = stats["total"]
    assert total["nodes"] == 12
    assert total["constant_bytes"] == 12
    assert total["nodes_by_kind"]["lambda"] == 2
    assert total["nodes_by_kind"]["literal"] == 1
    assert total["intrinsic_calls"] == {"federated_map": 1, "federated_mean": 1}
    assert total["local_ops"] == {"add": 1, "constant": 1, "multiply": 1}
    assert total["depth"] == max(c.depth for c in program.computations.values())


def test_program_stats_of_a_bare_computation():
    stats = program_stats(_mean_of_scaled())
    assert list(stats["computations"]) == ["computation"]
    assert stats["total"]["nodes"] == 10


def test_analyses_of_a_program_sum_its_computations():
    program = Program({"a": _mean_of_scaled(), "b": _mean_of_scaled()})
    assert count_nodes(program) == 20
    assert count_intrinsic_calls(program) == {"federated_map": 2, "federated_mean": 2}


def test_analyses_handle_programs_deeper_than_the_recursion_limit():
    node = Reference("x", I32)
    for _ in range(5_000):
        node = Selection(Struct([Call(Lambda("x", I32, node), Reference("x", I32))]), 0)
    comp = Lambda("x", I32, node)
    assert comp.depth > 10_000
    assert count_nodes(comp) == 1 + 5_000 * 5 + 1
    assert free_references(comp) == {}
    assert free_references(node) == {"x": I32}
    assert program_stats(comp)["total"]["depth"] == comp.depth


@given(programs(scope={"w": "float32[2]", "clients": "{int32}@CLIENTS"}))
def test_kind_counts_add_up_and_free_names_come_from_the_scope(comp):
    assert sum(count_nodes_by_kind(comp).values()) == count_nodes(comp)
    assert sum(count_intrinsic_calls(comp).values()) == count_nodes_by_kind(comp).get(
        "intrinsic", 0
    )
    scope = {"w": parse_type("float32[2]"), "clients": parse_type("{int32}@CLIENTS")}
    for name, t in free_references(comp).items():
        assert scope[name] == t


def test_stats_are_plain_json_data():
    stats = program_stats(_mean_of_scaled())
    # `fedcc dump --stats` prints them: they must survive JSON unchanged.
    assert json.loads(json.dumps(stats)) == stats
