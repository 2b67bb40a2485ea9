"""The local-graph passes (local-dce, local-cse, fold-constants, simplify-algebra, fuse-local):
each keeps every output bit for bit on awkward inputs (signed zeros, NaN payloads quiet and
signalling, infinities, subnormals, huge and tiny magnitudes), is idempotent, and does the
rewrites it promises — and none of those it must not make."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import local_graphs, sample_local_graphs

from fedcc.compiler.passes import get_pass
from fedcc.compiler.passes.fuse_local import fuse_local
from fedcc.compiler.passes.local_graphs import (
    BIT_MOVING,
    FRESH_RESULTS,
    GAPPY_VIEWS,
    MAX_FOLDED_ELEMENTS,
    QUIETING,
    VIEWS_OF_INPUT,
    fold_constants,
    has_signalling_nan,
    local_cse,
    local_dce,
    simplify_algebra,
)
from fedcc.compiler.verify import verify
from fedcc.ir import primitives
from fedcc.ir.building_blocks import Call, Lambda, LocalGraph, Reference, Selection, Struct, walk
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.local_graph import Graph
from fedcc.ir.types import TensorType
from fedcc.runtimes import run
from fedcc.runtimes.graph_evaluator import evaluate_graph

GRAPH_PASSES = (local_dce, local_cse, fold_constants, simplify_algebra)
UNSIGNED = {2: np.uint16, 4: np.uint32, 8: np.uint64}

# ---------------------------------------------------------------------------
# Awkward values.


def signalling_nan(dtype, payload: int = 1, negative: bool = False) -> np.generic:
    """A signalling NaN of a float dtype: exponent all ones, quiet bit clear, `payload` set."""
    dtype = np.dtype(dtype)
    bits = 8 * dtype.itemsize
    mantissa = np.finfo(dtype).nmant
    exponent = ((1 << (bits - 1 - mantissa)) - 1) << mantissa
    word = exponent | payload | (int(negative) << (bits - 1))
    return np.array(word, UNSIGNED[dtype.itemsize]).view(dtype)[()]


def quiet_nan(dtype, payload: int = 3) -> np.generic:
    dtype = np.dtype(dtype)
    return np.array(
        int(np.array(np.nan, dtype).view(UNSIGNED[dtype.itemsize])) | payload,
        UNSIGNED[dtype.itemsize],
    ).view(dtype)[()]


def awkward_floats(dtype, shape, rng: np.random.Generator) -> np.ndarray:
    """Floats of `dtype` drawn from the values that break inexact rewrites."""
    dtype = np.dtype(dtype)
    finfo = np.finfo(dtype)
    pool = [
        0.0, -0.0, 1.0, -1.0, 0.5, np.inf, -np.inf, float(finfo.max), float(finfo.tiny),
        float(finfo.smallest_subnormal), -float(finfo.smallest_subnormal), 1e-30, 1e30, 3.0,
    ]  # fmt: skip
    with np.errstate(all="ignore"):
        values = np.array(pool, np.float64).astype(dtype).tolist()
    values += [quiet_nan(dtype), signalling_nan(dtype), signalling_nan(dtype, 5, negative=True)]
    count = int(np.prod(shape, dtype=np.int64))
    picks = rng.integers(0, len(values), count)
    flat = np.empty(count, dtype)
    bits = flat.view(UNSIGNED[dtype.itemsize])
    for position, pick in enumerate(picks):
        bits[position] = np.array(values[pick], dtype).view(UNSIGNED[dtype.itemsize])
    return flat.reshape(shape)


def awkward_argument(t: TensorType, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(rng.integers(0, 4)) if d is None else d for d in t.shape)
    if t.dtype.kind == "f":
        return awkward_floats(t.dtype, shape, rng)
    if t.dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    info = np.iinfo(t.dtype)
    pool = np.array([0, 1, 2, info.max, info.min, info.max // 2], dtype=t.dtype)
    return rng.choice(pool, shape)


def output_bits(graph: Graph, arguments: list[np.ndarray]):
    """Each output's dtype, shape and bytes, or the error's type."""
    try:
        outputs = evaluate_graph(graph, arguments)
    except FederatedTypeError:
        return "fails"
    return [(a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()) for a in outputs]


def check_pass_keeps_bits(graph_pass, graph: Graph, rng: np.random.Generator) -> Graph:
    result = graph_pass(graph)
    assert result.function_type == graph.function_type
    assert graph_pass(result) == result, f"{graph_pass.__name__} is not idempotent"
    for _ in range(3):
        arguments = [awkward_argument(t, rng) for t in graph.parameter_leaves]
        expected = output_bits(graph, arguments)
        if expected != "fails":
            assert output_bits(result, arguments) == expected, graph_pass.__name__
    return result


# ---------------------------------------------------------------------------
# Soundness on random graphs.


@pytest.mark.parametrize("graph_pass", GRAPH_PASSES, ids=lambda p: p.__name__)
def test_each_pass_keeps_the_bits_of_sampled_graphs(graph_pass):
    rng = np.random.default_rng(7)
    changed = 0
    for graph in sample_local_graphs(400, seed=41):
        changed += check_pass_keeps_bits(graph_pass, graph, rng) is not graph
    assert changed > 0, f"{graph_pass.__name__} changed no sampled graph"


def test_the_passes_in_sequence_keep_the_bits_of_sampled_graphs():
    rng = np.random.default_rng(8)
    for graph in sample_local_graphs(200, seed=42, max_ops=10):
        result = graph
        for graph_pass in (fold_constants, simplify_algebra, local_cse, local_dce):
            result = check_pass_keeps_bits(graph_pass, result, rng)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=local_graphs(max_ops=8))
def test_each_pass_keeps_the_bits_of_generated_graphs(graph):
    rng = np.random.default_rng(9)
    for graph_pass in GRAPH_PASSES:
        check_pass_keeps_bits(graph_pass, graph, rng)


# ---------------------------------------------------------------------------
# The facts the rewrites rely on, checked on this machine.


def test_every_primitive_has_one_layout_class():
    tables = (FRESH_RESULTS, VIEWS_OF_INPUT, GAPPY_VIEWS)
    for name in primitives.PRIMITIVES:
        assert sum(name in table for table in tables) == 1, name
    assert set().union(*tables) == set(primitives.PRIMITIVES)
    assert set(primitives.PRIMITIVES) >= QUIETING | BIT_MOVING


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_arithmetic_quiets_signalling_nans_and_moving_bits_keeps_them(dtype):
    s = np.array([signalling_nan(dtype), signalling_nan(dtype, 9, True)], dtype)
    one = np.ones(2, dtype)
    assert has_signalling_nan(s) and not has_signalling_nan(np.array([quiet_nan(dtype)]))
    for name in ("add", "subtract", "multiply", "divide"):
        assert not has_signalling_nan(primitives.evaluate(name, [s, one], {}))
    for name in sorted(QUIETING & {"sqrt", "square", "reciprocal", "floor", "ceil", "round"}):
        assert not has_signalling_nan(primitives.evaluate(name, [s], {}))
    for name in ("reduce_sum", "reduce_prod", "reduce_mean"):
        assert not has_signalling_nan(primitives.evaluate(name, [s], {"axis": None}))
    # What simplify-algebra keeps: bit moves leave a signalling NaN as it is.
    negated = primitives.evaluate("negative", [primitives.evaluate("negative", [s], {})], {})
    assert negated.tobytes() == s.tobytes()
    same = primitives.evaluate("cast", [s], {"dtype": dtype})
    assert same.tobytes() == s.tobytes()
    smallest = primitives.evaluate("minimum", [s, np.full(2, np.inf, dtype)], {})
    assert smallest.tobytes() == s.tobytes()


def test_a_reduction_of_a_transposed_view_differs_from_one_of_a_contiguous_copy():
    # Why folding a transpose (or dropping a copy of a view) is not allowed.
    a = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    view, copy = a.T, np.ascontiguousarray(a.T)
    assert np.array_equal(view, copy)
    assert np.sum(view, axis=1).tobytes() != np.sum(copy, axis=1).tobytes()


# ---------------------------------------------------------------------------
# What each pass does.


def graph_of(parameter, build, result_type=None) -> Graph:
    g = GraphBuilder(parameter)
    outputs = build(g, *g.parameters())
    return g.build(outputs if isinstance(outputs, list) else [outputs], result_type)


def primitives_of(graph: Graph) -> list[str]:
    return [op.primitive for op in graph.ops]


def test_local_dce_drops_ops_no_output_needs():
    def build(g, x):
        g.op("exp", g.op("negative", x))
        return g.op("abs", x)

    once = local_dce(graph_of("float32[3]", build))
    assert primitives_of(once) == ["abs"]
    assert local_dce(once) is once


def test_local_cse_computes_equal_ops_once_including_equal_constants():
    def build(g, x):
        a = g.op("add", x, g.op("constant", value=np.float32(2.0)))
        b = g.op("add", x, g.op("constant", value=np.float32(2.0)))
        c = g.op("add", x, g.op("constant", value=np.float32(-0.0)))
        return [g.op("multiply", a, b), c]

    result = local_dce(local_cse(graph_of("float32[3]", build)))
    assert primitives_of(result).count("add") == 2  # 2.0 twice is one; -0.0 stays apart
    assert primitives_of(result).count("constant") == 2


def test_fold_constants_evaluates_small_results_and_leaves_large_ones():
    def build(g, x):
        small = g.op("exp", g.constant(np.full(4, 2.0, np.float32)))
        large = g.op("exp", g.constant(np.ones(MAX_FOLDED_ELEMENTS + 1, np.float32)))
        return [g.op("add", x, small), g.op("reduce_sum", large)]

    result = local_dce(fold_constants(graph_of("float32[4]", build)))
    assert primitives_of(result).count("exp") == 1  # the large one
    folded = [op.attrs["value"] for op in result.ops if op.primitive == "constant"]
    assert any(v.shape == (4,) and v.tobytes() == np.exp(np.full(4, 2, np.float32)).tobytes()
               for v in folded)


def test_fold_constants_folds_keyed_randomness_with_a_constant_seed():
    def build(g, x):
        noise = g.op("random_normal", g.constant(np.int64(7)), shape=(3,), dtype="float32")
        return g.op("add", x, noise)

    graph = graph_of("float32[3]", build)
    result = local_dce(fold_constants(graph))
    assert "random_normal" not in primitives_of(result)
    x = np.arange(3, dtype=np.float32)
    assert output_bits(result, [x]) == output_bits(graph, [x])


def test_fold_constants_leaves_views_and_failing_ops():
    def build(g, x):
        matrix = g.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
        transposed = g.op("transpose", matrix)  # a strided view: folding changes its layout
        out_of_range = g.op("take", matrix, g.constant(np.array([5], np.int64)), axis=0)
        return [g.op("reduce_sum", g.op("add", transposed, x), axis=1), out_of_range]

    result = fold_constants(graph_of("float32[3,2]", build, "<float32[3],float32[1,3]>"))
    assert "transpose" in primitives_of(result) and "take" in primitives_of(result)


def test_simplify_algebra_drops_identities_on_quiet_gap_free_values():
    def build(g, x):
        y = g.op("sqrt", x)  # fresh, and quiet (IEEE arithmetic quiets NaNs)
        one, zero = g.constant(np.float32(1.0)), g.constant(np.float32(0.0))
        negative_zero = g.constant(np.float32(-0.0))
        z = g.op("subtract", g.op("divide", g.op("multiply", one, y), one), zero)
        z = g.op("add", z, negative_zero)
        z = g.op("negative", g.op("negative", z))
        z = g.op("cast", z, dtype="float32")
        z = g.op("minimum", z, g.constant(np.float32(np.inf)))
        return g.op("transpose", g.op("transpose", z, perm=(1, 0)), perm=(1, 0))

    graph = graph_of("float32[2,3]", build)
    result = local_dce(simplify_algebra(graph))
    assert primitives_of(result) == ["sqrt"]
    check_pass_keeps_bits(simplify_algebra, graph, np.random.default_rng(3))


def test_simplify_algebra_keeps_arithmetic_identities_on_parameters():
    # A parameter may hold a signalling NaN (x * 1 would quiet it) or be a view.
    def build(g, x):
        return g.op("multiply", x, g.constant(np.float32(1.0)))

    graph = graph_of("float32[3]", build)
    assert simplify_algebra(graph) is graph
    s = np.array([signalling_nan(np.float32)] * 3, np.float32)
    assert output_bits(graph, [s]) != [(s.dtype.str, s.shape, s.tobytes())]


def test_simplify_algebra_never_drops_adding_positive_zero_to_floats():
    def build(g, x):
        return g.op("add", g.op("exp", x), g.constant(np.float32(0.0)))

    graph = graph_of("float32[3]", build)
    assert simplify_algebra(graph) is graph


def test_simplify_algebra_keeps_copies_of_views():
    # negative(negative(transpose(x))) is a fresh array, transpose(x) a strided view.
    def build(g, x):
        t = g.op("transpose", x)
        return g.op("reduce_sum", g.op("negative", g.op("negative", t)), axis=1)

    graph = graph_of("float32[64,64]", build)
    assert simplify_algebra(graph) is graph


def test_simplify_algebra_on_integers_and_bools():
    def build(g, x, flag):
        zero, one = g.constant(np.int32(0)), g.constant(np.int32(1))
        y = g.op("abs", x)
        z = g.op("floor_divide", g.op("add", zero, g.op("multiply", y, one)), one)
        keep = g.op("logical_and", g.op("logical_not", g.op("logical_not", flag)),
                    g.constant(np.bool_(True)))
        return [g.op("abs", z), g.op("logical_not", keep)]

    graph = graph_of("<int32[3],bool[3]>", build)
    result = local_dce(simplify_algebra(graph))
    # not(not(flag)) stays (flag may be a view), but not(not(not(flag))) is not(flag).
    assert primitives_of(result) == ["abs", "logical_not"]
    check_pass_keeps_bits(simplify_algebra, graph, np.random.default_rng(4))


def test_simplify_algebra_removes_views_that_change_nothing():
    def build(g, x):
        y = g.op("reshape", x, shape=(2, 3))
        y = g.op("slice", y, start=(0, 0), stop=(5, primitives.SLICE_TO_END), step=(1, 1))
        y = g.op("squeeze", g.op("expand_dims", y, axis=-1), axis=(2,))
        return g.op("transpose", y, perm=(0, 1))

    graph = graph_of("float32[2,3]", build)
    assert local_dce(simplify_algebra(graph)).ops == ()


# ---------------------------------------------------------------------------
# fuse-local.


def local(parameter, build, result_type=None) -> LocalGraph:
    return LocalGraph(graph_of(parameter, build, result_type))


def local_graph_calls(comp) -> int:
    return sum(isinstance(n, Call) and isinstance(n.function, LocalGraph) for n in walk(comp))


def test_fuse_local_fuses_a_chain_and_struct_selection_glue():
    square = local("float32[?]", lambda g, x: g.op("square", x))
    split = local("float32[?]", lambda g, x: [g.op("exp", x), g.op("negative", x)])
    combine = local("<float32[?],float32[?]>", lambda g, a, b: g.op("add", a, b))
    p = Reference("p", "<float32[?],float32[?]>")
    inner = Call(split, Call(square, Selection(p, 0)))
    # combine(<split(square(p[0]))[1], square(p[1])>)
    argument = Struct([Selection(inner, 1), Call(square, Selection(p, 1))])
    comp = Lambda("p", p.type_signature, Call(combine, argument))
    fused = fuse_local(comp)
    verify(fused)
    assert local_graph_calls(comp) == 4 and local_graph_calls(fused) == 1
    assert fuse_local(fused) == fused
    rng = np.random.default_rng(5)
    for _ in range(5):
        a, b = awkward_floats("float32", (4,), rng), awkward_floats("float32", (4,), rng)
        expected = run(comp, a, b, backend="reference")
        assert np.asarray(run(fused, a, b, backend="reference")).tobytes() == expected.tobytes()


def test_fuse_local_retypes_ops_for_narrower_inputs():
    narrow = local("float32[3]", lambda g, x: g.op("exp", x))
    wide = local("float32[?]", lambda g, x: g.op("reduce_sum", g.op("abs", x)))
    comp = Lambda("x", "float32[3]", Call(wide, Call(narrow, Reference("x", "float32[3]"))))
    fused = fuse_local(comp)
    (graph,) = [n.graph for n in walk(fused) if isinstance(n, LocalGraph)]
    assert graph.value_types[-2] == TensorType(np.float32, (3,))  # abs now knows its shape
    assert fused.type_signature == comp.type_signature


def test_fuse_local_fuses_a_long_chain_into_one_graph_in_one_step():
    add_one = local("float32", lambda g, x: g.op("add", x, g.constant(np.float32(1.0))))
    node = Reference("x", "float32")
    for _ in range(3000):
        node = Call(add_one, node)
    comp = Lambda("x", "float32", node)
    fused = get_pass("fuse-local").apply(comp)
    assert local_graph_calls(fused) == 1
    (graph,) = [n.graph for n in walk(fused) if isinstance(n, LocalGraph)]
    assert len(graph.ops) == 6000
    assert run(fused, np.float32(0.5), backend="reference") == run(
        comp, np.float32(0.5), backend="reference"
    )


@pytest.mark.parametrize("name", ["local-dce", "local-cse", "fold-constants", "simplify-algebra"])
def test_registered_local_passes_rewrite_every_local_graph_of_a_computation(name):
    def build(g, x):
        dead = g.op("exp", x)
        twice = g.op("add", g.op("square", x), g.op("square", x))
        folded = g.op("exp", g.constant(np.float32(1.0)))
        g.op("negative", dead)
        return g.op("multiply", g.op("multiply", twice, folded), g.constant(np.float32(1.0)))

    graph = local("float32[2]", build)
    comp = Lambda("x", "float32[2]", Call(graph, Call(graph, Reference("x", "float32[2]"))))
    result = get_pass(name).apply(comp)
    verify(result)
    assert result != comp
    assert get_pass(name).apply(result) == result
    x = np.array([-0.0, 2.0], np.float32)
    assert run(result, x, backend="reference").tobytes() == run(
        comp, x, backend="reference"
    ).tobytes()
