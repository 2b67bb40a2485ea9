"""Reverse-mode autodiff of local graphs: every gradient rule agrees with finite differences."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import fedcc as fc
from fedcc.compiler.autodiff import grad_graph, without_dead_ops
from fedcc.compiler.numpy_tracer import trace_numpy
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.local_graph import Graph
from fedcc.ir.primitives import PRIMITIVES, SLICE_TO_BEGINNING, SLICE_TO_END
from fedcc.ir.types import StructType, TensorType, to_type
from fedcc.runtimes.graph_evaluator import evaluate_graph

_data = np.random.default_rng(20240625)


def floats(*shape: int, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return _data.uniform(low, high, shape)


def positive(*shape: int) -> np.ndarray:
    return floats(*shape, low=0.5, high=2.0)


def type_of(array: np.ndarray) -> TensorType:
    return TensorType(array.dtype, array.shape)


@dataclass
class Case:
    """One call of a primitive: its inputs (float64 ones are differentiated), attributes, and
    optionally the graph's parameter types (to differentiate with unknown dims)."""

    inputs: tuple[np.ndarray, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    types: tuple[str, ...] | None = None


def case(*inputs: np.ndarray, types: tuple[str, ...] | None = None, **attrs: Any) -> Case:
    return Case(inputs, attrs, types)


X23, Y23, X3, X1_3 = floats(2, 3), floats(2, 3), floats(3), floats(1, 3)
X234 = floats(2, 3, 4)
CONDITION = np.array([[True, False, True], [False, False, True]])
INDICES = np.array([[2, 0], [-1, 2]], dtype=np.int32)
S = SLICE_TO_BEGINNING
E = SLICE_TO_END

GRADIENT_CASES: dict[str, list[Case]] = {
    "add": [case(X23, X3), case(floats(2, 1), X1_3),
            case(X23, X3, types=("float64[?,3]", "float64[3]"))],
    "subtract": [case(X23, X3), case(floats(3, 1), floats(2, 1, 3))],
    "multiply": [case(X23, X3), case(floats(2, 1), X1_3, types=("float64[?,1]", "float64[?,3]"))],
    "divide": [case(X23, positive(3)), case(positive(2, 1), floats(2, 3))],
    "mod": [case(positive(2, 3) * 3, floats(3, low=0.7, high=1.3))],
    "power": [case(positive(2, 3), floats(3)), case(positive(3), np.array(2.5))],
    "maximum": [case(X23, X3)],
    "minimum": [case(X23, X3, types=("float64[?,?]", "float64[?]"))],
    "negative": [case(X23)],
    "abs": [case(X23)],
    "exp": [case(X23)],
    "log": [case(positive(2, 3))],
    "log1p": [case(positive(2, 3))],
    "expm1": [case(X23)],
    "tanh": [case(X23)],
    "sqrt": [case(positive(2, 3))],
    "square": [case(X23)],
    "reciprocal": [case(positive(2, 3))],
    "sigmoid": [case(X23 * 3)],
    "sin": [case(X23)],
    "cos": [case(X23)],
    "reduce_sum": [case(X234), case(X234, axis=1), case(X234, axis=(0, 2), keepdims=True),
                   case(X234, axis=0, types=("float64[?,3,?]",))],
    "reduce_prod": [case(X234, axis=2),
                    case(np.array([[0.0, 2.0, 3.0], [0.0, 0.0, 1.5]]), axis=1),
                    case(np.array([1.5, 0.0, -2.0, 0.5]), keepdims=True)],
    "reduce_mean": [case(X234), case(X234, axis=(1,), keepdims=True),
                    case(X23, axis=0, types=("float64[?,3]",))],
    "reduce_max": [case(X234, axis=-1), case(X23), case(X23, axis=0, types=("float64[?,?]",))],
    "reduce_min": [case(X234, axis=(0, 1), keepdims=True)],
    "where": [case(CONDITION, X23, X3), case(CONDITION[0], X1_3, np.array(0.5))],
    "clip": [case(floats(2, 3, low=-3, high=3), floats(3, low=-1.5, high=-0.5),
                  np.array(0.8))],
    "cast": [case(X23, dtype="float64")],
    "matmul": [case(X23, floats(3, 4)), case(X3, floats(3, 2)), case(X23, X3), case(X3, X3),
               case(floats(2, 2, 3), floats(3, 4)), case(floats(1, 2, 3), floats(2, 3, 2)),
               case(floats(5, 3), floats(3, 2), types=("float64[?,3]", "float64[3,2]")),
               case(X3, floats(2, 3, 4))],
    "reshape": [case(X234, shape=(4, 6)), case(X234, shape=(-1, 4), types=("float64[?,3,4]",))],
    "transpose": [case(X234), case(X234, perm=(1, 2, 0))],
    "broadcast_to": [case(X1_3, shape=(2, 2, 3)), case(X3, shape=(4, 3), types=("float64[?]",))],
    "expand_dims": [case(X23, axis=1), case(X23, axis=-1)],
    "squeeze": [case(floats(2, 1, 3), axis=1),
                case(floats(2, 1, 3, 1), types=("float64[2,1,3,1]",)),
                case(floats(2, 1), axis=-1, types=("float64[?,1]",))],
    "concatenate": [case(X23, Y23, floats(2, 1), axis=1),
                    case(X23, floats(4, 3), types=("float64[?,3]", "float64[4,3]")),
                    case(X1_3, X23, X3.reshape(1, 3), types=("float64[1,3]", "float64[?,3]",
                                                             "float64[1,3]"))],
    "slice": [case(X234, start=(1, S, 3), stop=(E, 2, 0), step=(1, 1, -2)),
              case(X234, start=(0, 0, 2), stop=(1, E, 3), step=(1, 2, 1)),
              case(X3, start=(2,), stop=(1,), step=(1,)),
              case(floats(5, 3), start=(1, 1), stop=(-1, E), step=(1, 1),
                   types=("float64[?,?]",)),
              case(floats(4, 3), start=(-2, S), stop=(E, E), step=(1, 1),
                   types=("float64[?,3]",))],
    "take": [case(X234, INDICES, axis=1), case(floats(4, 3), np.array(-1, dtype=np.int64)),
             case(floats(4, 3), np.array([3, 3, 0], dtype=np.int8), axis=0,
                  types=("float64[4,?]", "int8[?]"))],
    "broadcast_like": [case(X3, X23), case(X1_3, X23, types=("float64[1,3]", "float64[?,3]"))],
    "reshape_like": [case(X23, floats(3, 2)), case(X23, floats(6), types=("float64[2,3]",
                                                                          "float64[?]"))],
    "sum_to_like": [case(X234, floats(3, 1)), case(X23, X3, types=("float64[?,3]", "float64[3]"))],
}


def primitive_loss_graph(name: str, example: Case) -> Graph:
    """sum(sin(name(*inputs))): a scalar whose gradient depends on every element of the result."""
    types = example.types or tuple(str(type_of(x)) for x in example.inputs)
    builder = GraphBuilder(StructType([to_type(t) for t in types]))
    result = builder.op(name, *builder.parameters(), **example.attrs)
    loss = builder.op("reduce_sum", builder.op("sin", result))
    return builder.build([loss])


def loss_value(graph: Graph, inputs: list[np.ndarray]) -> float:
    return float(evaluate_graph(graph, inputs)[0])


def numeric_gradient(graph: Graph, inputs: list[np.ndarray], index: int) -> np.ndarray:
    """Central finite differences in float64 with respect to input `index`."""
    step = 1e-6
    gradient = np.zeros_like(inputs[index])
    for position in np.ndindex(inputs[index].shape):
        shifted = []
        for sign in (1, -1):
            moved = [x.copy() for x in inputs]
            moved[index][position] += sign * step
            shifted.append(loss_value(graph, moved))
        gradient[position] = (shifted[0] - shifted[1]) / (2 * step)
    return gradient


DIFFERENTIABLE = sorted(name for name, p in PRIMITIVES.items() if p.differentiable)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_every_gradient_rule_matches_finite_differences(name):
    cases = GRADIENT_CASES.get(name)
    assert cases, f"add gradient cases for the differentiable primitive {name!r}"
    for example in cases:
        graph = primitive_loss_graph(name, example)
        inputs = [np.asarray(x) for x in example.inputs]
        for index, x in enumerate(inputs):
            gradient = evaluate_graph(grad_graph(graph, index), inputs)
            assert len(gradient) == 1
            if x.dtype.kind != "f":
                assert_zeros_like(gradient[0], x)  # integers and bools get no gradient
                continue
            assert gradient[0].dtype == x.dtype and gradient[0].shape == x.shape
            np.testing.assert_allclose(
                gradient[0], numeric_gradient(graph, inputs, index), rtol=1e-5, atol=1e-7,
                err_msg=f"{name} {example.attrs} {example.types}: input {index}",
            )


def test_gradient_cases_name_only_differentiable_primitives():
    assert set(GRADIENT_CASES) == set(DIFFERENTIABLE)


def assert_zeros_like(actual: np.ndarray, like: np.ndarray) -> None:
    assert actual.dtype == like.dtype and actual.shape == like.shape
    assert not actual.any()


# ---------------------------------------------------------------------------
# Traced NumPy: broadcasting, reductions, and a model with a closed-form gradient.


def traced_gradient(fn, types: list[str], argnum: int | None = 0, with_value=False) -> Graph:
    return grad_graph(trace_numpy(fn, types).graph, argnum, with_value=with_value)


def test_broadcasting_and_reductions_with_an_unknown_batch():
    def loss(w, b, x, y):
        error = x @ w + b - y[:, None]
        return (error ** 2).mean() + 0.1 * np.abs(w).sum() - error.max(axis=0).sum()

    types = ["float64[3,2]", "float64[2]", "float64[?,3]", "float64[?]"]
    w, b, x, y = floats(3, 2), floats(2), floats(5, 3), floats(5)
    forward = trace_numpy(loss, types).graph
    for argnum, value in ((0, w), (1, b)):
        (gradient,) = evaluate_graph(grad_graph(forward, argnum), [w, b, x, y])
        np.testing.assert_allclose(
            gradient, numeric_gradient(forward, [w, b, x, y], argnum), rtol=1e-5, atol=1e-7
        )
        assert gradient.shape == value.shape


def softmax_cross_entropy(params, batch):
    logits = batch["x"] @ params["kernel"] + params["bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    labels = (batch["y"][:, None] == np.arange(logits.shape[1])).astype(logits.dtype)
    return -(labels * log_probs).sum(axis=1).mean()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logistic_regression_gradient_is_the_closed_form(dtype):
    params_type = f"<kernel={dtype}[4,3],bias={dtype}[3]>"
    batch_type = f"<x={dtype}[?,4],y=int32[?]>"
    gradient_graph = traced_gradient(softmax_cross_entropy, [params_type, batch_type])
    assert str(gradient_graph.result_type) == params_type
    kernel, bias = floats(4, 3).astype(dtype), floats(3).astype(dtype)
    x, y = floats(8, 4).astype(dtype), _data.integers(0, 3, 8).astype(np.int32)
    grad_kernel, grad_bias = evaluate_graph(gradient_graph, [kernel, bias, x, y])
    logits = x.astype(np.float64) @ kernel + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    residual = (probabilities - np.eye(3)[y]) / len(y)
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    assert grad_kernel.dtype == np.dtype(dtype) and grad_bias.dtype == np.dtype(dtype)
    np.testing.assert_allclose(grad_kernel, x.T.astype(np.float64) @ residual, atol=tolerance)
    np.testing.assert_allclose(grad_bias, residual.sum(axis=0), atol=tolerance)


def test_with_value_gives_the_forward_value_bit_for_bit_and_the_gradient():
    forward = trace_numpy(softmax_cross_entropy, ["<kernel=float32[4,3],bias=float32[3]>",
                                                  "<x=float32[?,4],y=int32[?]>"]).graph
    both = grad_graph(forward, 0, with_value=True)
    assert str(both.result_type) == "<float32,<kernel=float32[4,3],bias=float32[3]>>"
    inputs = [floats(4, 3).astype(np.float32), floats(3).astype(np.float32),
              floats(6, 4).astype(np.float32), np.array([0, 1, 2, 2, 1, 0], np.int32)]
    value, grad_kernel, grad_bias = evaluate_graph(both, inputs)
    (expected,) = evaluate_graph(forward, inputs)
    assert value.tobytes() == expected.tobytes() and value.dtype == expected.dtype
    only_gradient = evaluate_graph(grad_graph(forward, 0), inputs)
    assert grad_kernel.tobytes() == only_gradient[0].tobytes()
    assert grad_bias.tobytes() == only_gradient[1].tobytes()


# ---------------------------------------------------------------------------
# Which parameter, integer leaves, and errors.


def test_argnum_picks_an_element_of_several_parameters_and_a_named_struct_whole():
    several = trace_numpy(lambda a, b: (a * b).sum(), ["float64[3]", "float64[3]"]).graph
    a, b = floats(3), floats(3)
    assert_same(evaluate_graph(grad_graph(several, 1), [a, b])[0], a)
    assert_same(evaluate_graph(grad_graph(several, 0), [a, b])[0], b)
    whole = grad_graph(several, None)
    assert str(whole.result_type) == "<float64[3],float64[3]>"
    named = trace_numpy(lambda p: (p["u"] * p["v"]).sum(), ["<u=float64[3],v=float64[3]>"])
    gradient = grad_graph(named.graph)
    assert str(gradient.result_type) == "<u=float64[3],v=float64[3]>"
    assert_same(evaluate_graph(gradient, [a, b])[1], a)
    with pytest.raises(FederatedTypeError, match=r"argnum 1 is out of range.*1 parameter"):
        grad_graph(named.graph, 1)
    with pytest.raises(FederatedTypeError, match=r"argnum 2 is out of range.*2 parameter"):
        grad_graph(several, 2)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_integer_leaves_get_zeros_of_their_own_dtype():
    def loss(p):
        return (p["w"] * p["scale"].astype(np.float64)).sum() + p["flag"].sum() * 0.0

    gradient = traced_gradient(loss, ["<w=float64[2],scale=int32[2],flag=bool[2]>"])
    w, scale, flag = floats(2), np.array([2, 3], np.int32), np.array([True, False])
    grad_w, grad_scale, grad_flag = evaluate_graph(gradient, [w, scale, flag])
    assert_same(grad_w, scale.astype(np.float64))
    assert_zeros_like(grad_scale, scale)
    assert_zeros_like(grad_flag, flag)


def test_piecewise_constant_primitives_pass_no_gradient():
    gradient = traced_gradient(lambda x: (np.floor(x) * x + np.sign(x) + np.round(x)).sum(),
                               ["float64[4]"])
    x = np.array([0.3, 1.7, -2.2, 3.5])
    assert_same(evaluate_graph(gradient, [x])[0], np.floor(x))


def test_stop_gradient_is_the_value_and_a_constant_to_autodiff():
    def loss(x):
        return (x * fc.stop_gradient(x * x)).sum()

    forward = trace_numpy(loss, ["float64[4]"]).graph
    x = floats(4)
    assert evaluate_graph(forward, [x])[0] == (x * (x * x)).sum()
    # d/dx of x * c, with c = x * x held constant, is c (not 3x²).
    assert_same(evaluate_graph(grad_graph(forward), [x])[0], x * x)
    assert_same(fc.stop_gradient(x), x)


def test_a_log_sum_exp_with_a_stopped_maximum_has_the_same_gradient():
    def log_sum_exp(x, largest):
        return (np.log(np.exp(x - largest).sum(axis=1)) + largest[:, 0]).sum()

    def plain(x):
        return log_sum_exp(x, x.max(axis=1, keepdims=True))

    def stopped(x):
        return log_sum_exp(x, fc.stop_gradient(x.max(axis=1, keepdims=True)))

    x = floats(5, 3)
    gradients = [
        evaluate_graph(traced_gradient(f, ["float64[?,3]"]), [x])[0] for f in (plain, stopped)
    ]
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-12)


def test_a_result_that_does_not_depend_on_the_parameter_has_zero_gradient():
    gradient = traced_gradient(lambda x, y: (y * 2).sum(), ["float64[3]", "float64[2]"])
    assert_zeros_like(evaluate_graph(gradient, [floats(3), floats(2)])[0], floats(3))


def test_the_output_must_be_a_scalar_float():
    for result, fn in (("float64[3]", lambda x: x * 2), ("int32", lambda x: x.argmax().astype(
            np.int32)), ("<float64,float64>", lambda x: (x.sum(), x.mean()))):
        graph = trace_numpy(fn, ["float64[3]"]).graph
        with pytest.raises(FederatedTypeError, match=rf"scalar float result.*{re.escape(result)}"):
            grad_graph(graph)
    constant = trace_numpy(lambda: np.float64(1.0), []).graph
    with pytest.raises(FederatedTypeError, match="needs a parameter"):
        grad_graph(constant)


def test_a_rule_that_needs_a_known_dim_names_the_op():
    graph = trace_numpy(lambda x, i: np.take(x, i, axis=0).sum(), ["float64[?]", "int32[2]"])
    with pytest.raises(FederatedTypeError, match=r"cannot differentiate op %\d+ \(take of "
                                                 r"float64\[\?\], int32\[2\]\).*known"):
        grad_graph(graph.graph)


def test_ops_the_gradient_does_not_need_are_dropped():
    graph = trace_numpy(lambda x: (x.sum(), np.exp(x).max())[0], ["float64[3]"]).graph
    gradient = grad_graph(graph)
    assert {op.primitive for op in gradient.ops}.isdisjoint({"exp", "reduce_max"})
    assert_same(evaluate_graph(gradient, [floats(3)])[0], np.ones(3))


def test_without_dead_ops_renumbers_and_keeps_results():
    builder = GraphBuilder("float64[2]")
    (x,) = builder.parameters()
    builder.op("exp", x)
    kept = builder.op("negative", x)
    pruned = without_dead_ops(builder.build([kept, x]))
    assert [op.primitive for op in pruned.ops] == ["negative"] and pruned.outputs == (1, 0)


def test_deep_graphs_do_not_recurse():
    builder = GraphBuilder("float64")
    (value,) = builder.parameters()
    for _ in range(3000):
        value = builder.op("sin", value)
    gradient = grad_graph(builder.build([value]))
    x = np.array(0.5)
    expected = 1.0
    for _ in range(3000):
        expected *= np.cos(x)
        x = np.sin(x)
    np.testing.assert_allclose(evaluate_graph(gradient, [np.array(0.5)])[0], expected)


def test_ties_share_the_gradient_equally():
    x = np.array([1.0, 2.0, 2.0])
    gradient = traced_gradient(lambda a, b: np.maximum(a, b).sum() + a.max(), ["float64[3]"] * 2)
    grad_a, = evaluate_graph(gradient, [x, np.array([1.0, 0.0, 5.0])])
    # maximum: a tie (index 0) gives half; max: the two maxima of a share the cotangent.
    assert_same(grad_a, np.array([0.5 + 0.0, 1.0 + 0.5, 0.0 + 0.5]))
