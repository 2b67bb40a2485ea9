"""Soundness of every registered pass and every optimization level, over random programs.

For each pass (the registry is iterated, so a new pass is covered without
editing this file) and each level, on random well-typed programs from
tests/strategies.py: the result keeps the type signature, passes `verify`,
is a fixed point (applying again changes nothing), and computes bit-identical
results on the reference backend for arguments drawn for the parameter type
(programs holding `Data` nodes cannot run and are only checked statically).
A program 3000 levels deep optimizes at every level without RecursionError.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    Chooser,
    HypothesisChooser,
    draw_array,
    federated_programs,
    programs,
)

from fedcc.compiler.pass_manager import LEVEL_2_PASSES, LEVELS, optimize
from fedcc.compiler.passes import PASSES
from fedcc.compiler.verify import verify
from fedcc.ir.building_blocks import (
    BuildingBlock,
    Call,
    Data,
    Lambda,
    Literal,
    LocalGraph,
    Reference,
    Selection,
    Struct,
    walk,
)
from fedcc.ir.errors import FedccError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    walk_types,
)
from fedcc.runtimes import run

NUM_CLIENTS = 3

SOUNDNESS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROGRAMS = st.one_of(
    programs(max_depth=3, max_nodes=30), federated_programs(max_depth=3, max_nodes=30)
)


# ---------------------------------------------------------------------------
# Arguments and results.


def draw_argument(chooser: Chooser, t: Type) -> Any:
    """A Python value of type `t`, as `fedcc.runtimes.run` takes it (NUM_CLIENTS clients)."""
    if isinstance(t, TensorType):
        return draw_array(chooser, t)
    if isinstance(t, StructType):
        return tuple(draw_argument(chooser, element) for element in t)
    if isinstance(t, SequenceType):
        return [draw_argument(chooser, t.element) for _ in range(chooser.integer(0, 3))]
    if isinstance(t, FederatedType):
        if t.placement is CLIENTS and not t.all_equal:
            return [draw_argument(chooser, t.member) for _ in range(NUM_CLIENTS)]
        return draw_argument(chooser, t.member)
    raise ValueError(f"no argument of type {t}")


def can_pass(t: Type | None) -> bool:
    """Whether an argument of type `t` can be given to a run (no functions, no placements)."""
    return t is None or not any(
        isinstance(inner, (FunctionType, PlacementType)) for inner in walk_types(t)
    )


def runnable(comp: BuildingBlock) -> bool:
    t = comp.type_signature
    result = t.result if isinstance(t, FunctionType) else t
    parameter = t.parameter if isinstance(t, FunctionType) else None
    return (
        can_pass(parameter)
        and not any(isinstance(inner, FunctionType) for inner in walk_types(result))
        and not any(isinstance(node, Data) for node in walk(comp))
    )


def bits(value: Any) -> Any:
    """A comparable form of a result that tells apart values differing in any bit."""
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        return ("tensor", array.dtype.str, array.shape, array.tobytes())
    if isinstance(value, dict):
        return ("dict", tuple((k, bits(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(bits(v) for v in value))
    return ("other", repr(value))


def run_bits(comp: BuildingBlock, arguments: tuple) -> Any:
    return bits(run(comp, *arguments, backend="reference", num_clients=NUM_CLIENTS))


def draw_arguments(data: st.DataObject, comp: BuildingBlock) -> tuple:
    t = comp.type_signature
    if not isinstance(t, FunctionType) or t.parameter is None:
        return ()
    return (draw_argument(HypothesisChooser(data.draw), t.parameter),)


def check_transformation(comp: BuildingBlock, transform, what: str, data: st.DataObject) -> None:
    """The checks every pass and level must pass on `comp`."""
    result = transform(comp)
    assert result.type_signature == comp.type_signature, f"{what} changed the type"
    verify(result)
    again = transform(result)
    assert again == result, f"{what} is not idempotent"
    if not runnable(comp):
        return
    arguments = draw_arguments(data, comp)
    try:
        expected = run_bits(comp, arguments)
    except FedccError:
        return  # the original fails at run time (e.g. shapes only known then)
    assert run_bits(result, arguments) == expected, f"{what} changed the result"


# ---------------------------------------------------------------------------
# The properties.

PASS_NAMES = sorted(PASSES)


@pytest.mark.parametrize("pass_name", PASS_NAMES)
@SOUNDNESS
@given(comp=PROGRAMS, data=st.data())
def test_every_pass_is_sound(pass_name: str, comp: BuildingBlock, data: st.DataObject) -> None:
    verify(comp)
    check_transformation(comp, PASSES[pass_name].apply, f"pass {pass_name}", data)


@pytest.mark.parametrize("level", sorted(LEVELS))
@SOUNDNESS
@given(comp=PROGRAMS, data=st.data())
def test_every_level_is_sound(level: int, comp: BuildingBlock, data: st.DataObject) -> None:
    verify(comp)
    check_transformation(comp, lambda c: optimize(c, level), f"level {level}", data)


def test_every_level_2_pass_is_registered():
    missing = [name for name in LEVEL_2_PASSES if name not in PASSES]
    assert not missing, f"level 2 names passes that are not registered: {missing}"


# ---------------------------------------------------------------------------
# Depth.


def _add_one() -> LocalGraph:
    g = GraphBuilder("float32")
    return LocalGraph(g.build([g.op("add", 0, g.constant(np.float32(1.0)))]))


def deep_program(levels: int) -> Lambda:
    """`(x -> f(f(...f(x))))` where each f is `(y -> <add_one(y), 2.0>[0])` called in place."""
    add_one = _add_one()
    two = Literal(np.float32(2.0))
    node: BuildingBlock = Reference("x", "float32")
    for _ in range(levels):
        body = Selection(Struct([Call(add_one, Reference("y", "float32")), two]), 0)
        node = Call(Lambda("y", "float32", body), node)
    return Lambda("x", "float32", node)


DEEP_ARGUMENT = np.float32(0.5)


@functools.cache
def deep_case() -> tuple[Lambda, Any]:
    """The deep program and its result, computed once for all levels."""
    comp = deep_program(3000)
    return comp, bits(run(comp, DEEP_ARGUMENT))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_a_program_3000_levels_deep_optimizes_at_every_level(level: int) -> None:
    comp, expected = deep_case()
    assert comp.depth >= 3000
    result = optimize(comp, level)
    verify(result)
    assert result.type_signature == comp.type_signature
    assert bits(run(result, DEEP_ARGUMENT)) == expected
    if level >= 1:
        assert result.depth < comp.depth
