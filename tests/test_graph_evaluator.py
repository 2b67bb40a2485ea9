"""The local-graph evaluator: hand-built graphs give exactly what direct NumPy gives."""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import numpy as np
import pytest
from strategies import sample_local_graphs
from test_passes_local import awkward_argument

from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.primitives import infer_result_type
from fedcc.ir.types import TensorType, tensor_leaves, to_type
from fedcc.runtimes.graph_evaluator import (
    _RUNS_BEFORE_COMPILING,
    _compiled,
    _release_plan,
    _run_steps,
    evaluate_graph,
)


def build(parameter_type: Any, ops: list[tuple], outputs: list[int], result_type: Any) -> Graph:
    """A graph from (primitive, inputs, attrs) triples; each op's type comes from its rule."""
    parameter = None if parameter_type is None else to_type(parameter_type)
    value_types = [] if parameter is None else tensor_leaves(parameter)
    built = []
    for primitive, inputs, attrs in ops:
        result = infer_result_type(primitive, [value_types[i] for i in inputs], attrs)
        built.append(Op(primitive, inputs, attrs, result))
        value_types.append(result)
    return Graph(parameter, built, outputs, result_type)


def logistic_regression_graph() -> Graph:
    # %0 x, %1 y, %2 kernel, %3 bias
    return build(
        "<x=float32[?,4],y=int32[?],kernel=float32[4,3],bias=float32[3]>",
        [
            ("matmul", [0, 2], {}),  # %4
            ("add", [4, 3], {}),  # %5 logits
            ("reduce_max", [5], {"axis": 1, "keepdims": True}),  # %6
            ("subtract", [5, 6], {}),  # %7 shifted
            ("exp", [7], {}),  # %8
            ("reduce_sum", [8], {"axis": 1, "keepdims": True}),  # %9
            ("log", [9], {}),  # %10
            ("subtract", [7, 10], {}),  # %11 log softmax
            ("one_hot", [1], {"depth": 3}),  # %12
            ("multiply", [12, 11], {}),  # %13
            ("reduce_sum", [13], {"axis": 1}),  # %14
            ("negative", [14], {}),  # %15
            ("reduce_mean", [15], {}),  # %16 loss
            ("argmax", [5], {"axis": 1}),  # %17 predictions
            ("cast", [1], {"dtype": "int64"}),  # %18
            ("equal", [17, 18], {}),  # %19
            ("cast", [19], {"dtype": "float32"}),  # %20
            ("reduce_mean", [20], {}),  # %21 accuracy
        ],
        [16, 21, 5],
        "<loss=float32,accuracy=float32,logits=float32[?,3]>",
    )


def logistic_regression_numpy(x, y, kernel, bias):
    logits = x @ kernel + bias
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    labels = np.eye(3, dtype=np.float32)[y]
    loss = np.mean(-np.sum(labels * log_softmax, axis=1))
    accuracy = np.mean((np.argmax(logits, axis=1) == y).astype(np.float32))
    return [loss, accuracy, logits]


def data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, 4)).astype(np.float32),
        rng.integers(0, 3, batch).astype(np.int32),
        rng.normal(size=(4, 3)).astype(np.float32),
        rng.normal(size=3).astype(np.float32),
    ]


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_logistic_regression_matches_numpy_bit_for_bit(batch):
    graph = logistic_regression_graph()
    arguments = data(batch, seed=batch)
    results = evaluate_graph(graph, arguments)
    expected = logistic_regression_numpy(*arguments)
    assert len(results) == 3
    for result, want in zip(results, expected, strict=True):
        want = np.asarray(want)
        assert result.dtype == want.dtype and result.shape == want.shape
        assert result.tobytes() == want.tobytes()


def test_outputs_may_repeat_and_may_be_parameters():
    graph = build(
        "<float32[3],float32[3]>",
        [("add", [0, 1], {}), ("multiply", [2, 2], {})],
        [3, 0, 3, 2],
        "<float32[3],float32[3],float32[3],float32[3]>",
    )
    a, b = np.float32([1, 2, 3]), np.float32([4, 5, 6])
    total, first, again, summed = evaluate_graph(graph, [a, b])
    np.testing.assert_array_equal(total, (a + b) * (a + b))
    assert first is a
    assert again is total
    np.testing.assert_array_equal(summed, a + b)


def test_graph_without_parameters_and_a_single_tensor_parameter():
    constant = build(
        None,
        [("constant", [], {"value": np.arange(4, dtype=np.int32)}), ("reduce_sum", [0], {})],
        [1],
        "int32",
    )
    assert evaluate_graph(constant, []) == [np.int32(6)]
    squared = build("float64[?]", [("square", [0], {})], [1], "float64[?]")
    (result,) = evaluate_graph(squared, [np.array([1.5, -2.0])])
    np.testing.assert_array_equal(result, [2.25, 4.0])
    (scalar,) = evaluate_graph(
        build("float32", [("negative", [0], {})], [1], "float32"), [np.float32(2)]
    )
    assert scalar.dtype == np.float32 and scalar.shape == () and scalar == -2


def test_keyed_randomness_in_a_graph_is_reproducible():
    graph = build(
        "<int64,int32>",
        [
            ("random_fold_in", [0, 1], {}),  # %2: a per-client seed
            ("random_normal", [2], {"shape": (5,)}),
        ],
        [3],
        "float32[5]",
    )
    first = evaluate_graph(graph, [np.int64(1), np.int32(7)])[0]
    again = evaluate_graph(graph, [np.int64(1), np.int32(7)])[0]
    other = evaluate_graph(graph, [np.int64(1), np.int32(8)])[0]
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


# ---------------------------------------------------------------------------
# Argument checks.


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (lambda d: d[:3], r"takes 4 parameter leaves, found 3 arguments"),
        (
            lambda d: [d[0].astype(np.float64), *d[1:]],
            r"parameter leaf 0 .* expects float32\[\?,4\], found an array of float64\[5,4\]",
        ),
        (
            lambda d: [d[0], d[1].astype(np.int64), *d[2:]],
            r"parameter leaf 1 .* expects int32\[\?\], found an array of int64\[5\]",
        ),
        (
            lambda d: [d[0], d[1], d[2][:3], d[3]],
            r"parameter leaf 2 .* expects float32\[4,3\], found an array of float32\[3,3\]",
        ),
        (
            lambda d: [d[0].reshape(-1), *d[1:]],
            r"parameter leaf 0 .* expects float32\[\?,4\], found an array of float32\[20\]",
        ),
        (
            lambda d: [d[0], d[1], d[2], d[3].tolist()],
            r"parameter leaf 3 .* expects an array of float32\[3\], found list",
        ),
    ],
)
def test_argument_errors_name_the_leaf_expected_and_found(arguments, message):
    with pytest.raises(FederatedTypeError, match=message):
        evaluate_graph(logistic_regression_graph(), arguments(data(5)))


def test_a_mismatch_hidden_by_unknown_dims_names_the_op():
    graph = build(
        "<float32[?],float32[?]>", [("add", [0, 1], {}), ("exp", [2], {})], [3], "float32[?]"
    )
    with pytest.raises(FederatedTypeError, match=r"op %2 .*'add' failed on inputs"):
        evaluate_graph(graph, [np.ones(2, np.float32), np.ones(3, np.float32)])


# ---------------------------------------------------------------------------
# Memory: values die at their last use.


def test_release_plan_frees_each_value_after_its_last_use_and_is_cached():
    graph = build(
        "<float32[3],float32[3]>",
        [
            ("add", [0, 1], {}),  # %2: last use of %1
            ("exp", [2], {}),  # %3: never used
            ("multiply", [2, 0], {}),  # %4: last use of %0 and %2
            ("negative", [4], {}),  # %5: last use of %4; an output, kept
        ],
        [5],
        "float32[3]",
    )
    assert _release_plan(graph) == ((1,), (3,), (0, 2), (4,))
    assert _release_plan(graph) is _release_plan(graph)


@pytest.mark.parametrize("path", ["step loop", "compiled"])
def test_a_long_chain_holds_only_live_values(path):
    size = 1 << 20  # 4 MiB of float32 per value
    chain = [("negative", [i], {}) for i in range(30)]
    graph = build("float32[?]", chain, [30], "float32[?]")
    if path == "compiled":
        evaluate_compiled(graph, [np.ones(4, np.float32)])
        run = evaluate_graph
    else:
        run = _run_steps
    argument = np.ones(size, np.float32)
    tracemalloc.start()
    try:
        (result,) = run(graph, [argument])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(result[:3], [1, 1, 1])
    # Holding all 30 intermediates would need 30 x 4 MiB; two live values suffice.
    assert peak < 4 * argument.nbytes


def test_equal_graphs_built_twice_evaluate_alike():
    first, second = logistic_regression_graph(), logistic_regression_graph()
    assert first == second and first is not second
    arguments = data(4)
    for a, b in zip(evaluate_graph(first, arguments), evaluate_graph(second, arguments),
                    strict=True):
        assert a.tobytes() == b.tobytes()


def test_result_types_are_those_of_the_graph():
    graph = logistic_regression_graph()
    results = evaluate_graph(graph, data(3))
    for leaf, result in zip(graph.result_type, results, strict=True):
        assert isinstance(leaf, TensorType)
        assert result.dtype == leaf.dtype and result.ndim == leaf.rank


def test_outputs_are_c_contiguous_even_when_an_op_returns_a_view():
    # A later reduction over a view can round differently from one over a copy,
    # and remote backends ship copies: outputs must not depend on memory layout.
    from fedcc.ir.graph_builder import GraphBuilder

    builder = GraphBuilder("float32[3,4]")
    (x,) = builder.parameters()
    graph = builder.build([builder.op("transpose", x)])
    source = np.arange(12, dtype=np.float32).reshape(3, 4)
    (result,) = evaluate_graph(graph, [source])
    assert result.flags.c_contiguous
    np.testing.assert_array_equal(result, source.T)


# ---------------------------------------------------------------------------
# A graph run often goes through its compiled form: the same bits, errors and memory.


def evaluate_compiled(graph: Graph, arguments: list[np.ndarray]) -> list[np.ndarray]:
    """`evaluate_graph` once the graph has run often enough to go through its compiled form."""
    for _ in range(_RUNS_BEFORE_COMPILING):
        with contextlib.suppress(FederatedTypeError):
            evaluate_graph(graph, arguments)
    return evaluate_graph(graph, arguments)


def run_compiled_form(graph: Graph, arguments: list[np.ndarray]) -> list[np.ndarray]:
    """The compiled form alone; an implementation's own error becomes a FederatedTypeError."""
    try:
        with np.errstate(all="ignore"):
            return _compiled(graph)(*arguments)
    except (ValueError, IndexError) as error:
        raise FederatedTypeError(f"the compiled form failed: {error}") from None


def bits_or_error(run, graph: Graph, arguments: list[np.ndarray]):
    try:
        outputs = run(graph, arguments)
    except FederatedTypeError as error:
        return str(error)
    return [(a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()) for a in outputs]


def test_the_compiled_form_gives_the_bits_and_errors_of_the_step_loop():
    rng = np.random.default_rng(11)
    graphs = sample_local_graphs(300, seed=43)
    failures = 0
    for graph in graphs:
        for _ in range(2):
            arguments = [awkward_argument(t, rng) for t in graph.parameter_leaves]
            looped = bits_or_error(_run_steps, graph, arguments)
            compiled = bits_or_error(run_compiled_form, graph, arguments)
            if isinstance(looped, str):
                failures += 1
                # The compiled form fails too; evaluate_graph then names the op, as the loop does.
                assert isinstance(compiled, str)
                assert bits_or_error(evaluate_compiled, graph, arguments) == looped
            else:
                assert compiled == looped
                assert bits_or_error(evaluate_compiled, graph, arguments) == looped
    assert failures < len(graphs)  # most sampled graphs run


def test_logistic_regression_compiled_matches_numpy_and_outputs_may_be_parameters():
    graph = logistic_regression_graph()
    for batch in (3, 3, 3, 5, 1):  # a new batch size passes the full result check again
        arguments = data(batch, seed=batch)
        results = evaluate_compiled(graph, arguments)
        for result, want in zip(results, logistic_regression_numpy(*arguments), strict=True):
            assert np.asarray(want).tobytes() == result.tobytes()
    pair = "<float32[3],float32[3]>"
    graph = build(pair, [("add", [0, 1], {})], [2, 0], pair)
    a, b = np.float32([1, 2, 3]), np.float32([4, 5, 6])
    total, first = evaluate_compiled(graph, [a, b])
    assert first is a
    np.testing.assert_array_equal(total, a + b)


def test_a_compiled_graph_still_names_the_op_that_failed():
    graph = build(
        "<float32[?],float32[?]>", [("add", [0, 1], {}), ("exp", [2], {})], [3], "float32[?]"
    )
    fine = [np.ones(2, np.float32), np.ones(2, np.float32)]
    evaluate_compiled(graph, fine)
    with pytest.raises(FederatedTypeError, match=r"op %2 .*'add' failed on inputs"):
        evaluate_graph(graph, [np.ones(2, np.float32), np.ones(3, np.float32)])
    np.testing.assert_array_equal(evaluate_graph(graph, fine)[0], np.exp(np.float32(2)))
