"""The user-facing computation API: every DESIGN §4 snippet verbatim, the type forms the
decorators take, polymorphism, gradients, randomness, backends and result containers."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

import fedcc as fc

# DESIGN §4, verbatim.
DESIGN_SNIPPET = '''
import numpy as np, fedcc as fc

@fc.numpy_computation("float32[?,784]", "float32[784,10]")
def logits(x, w):               # plain NumPy, traced into a local op graph
    return x @ w

@fc.federated_computation("{float32}@CLIENTS")
def mean(v):
    return fc.federated_mean(v)

mean([1.0, 2.0, 6.0])           # -> 3.0, on the default backend
str(mean.type_signature)        # '({float32}@CLIENTS -> float32@SERVER)'
'''


@pytest.fixture(scope="module")
def design() -> dict:
    namespace: dict = {}
    exec(compile(DESIGN_SNIPPET, "<DESIGN §4>", "exec"), namespace)
    return namespace


def test_the_design_snippet_runs_and_gives_the_documented_answers(design):
    assert design["mean"]([1.0, 2.0, 6.0]) == 3.0
    assert str(design["mean"].type_signature) == "({float32}@CLIENTS -> float32@SERVER)"


def test_several_parameters_are_one_struct_parameter_called_with_positional_parts(design):
    logits = design["logits"]
    assert str(logits.type_signature) == "(<float32[?,784],float32[784,10]> -> float32[?,10])"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 784)).astype(np.float32)
    w = rng.normal(size=(784, 10)).astype(np.float32)
    result = logits(x, w)
    assert result.dtype == np.float32 and result.tobytes() == (x @ w).tobytes()


def test_the_design_type_text_example_works_as_a_decorator_argument():
    @fc.federated_computation("{float32[10]}@CLIENTS")
    def total(v):
        return fc.federated_sum(v)

    assert str(total.type_signature) == "({float32[10]}@CLIENTS -> float32[10]@SERVER)"
    assert total([np.ones(10), np.arange(10)]).tolist() == list(np.arange(1.0, 11.0))


@pytest.mark.parametrize(
    "spec",
    [
        fc.TensorType(np.float32, (2,)),
        "float32[2]",
        fc.parse_type("float32[2]"),
    ],
)
def test_types_are_given_as_types_or_text(spec):
    @fc.numpy_computation(spec)
    def double(x):
        return x * 2

    assert str(double.type_signature) == "(float32[2] -> float32[2])"


def test_types_are_given_as_dtypes_and_containers():
    @fc.numpy_computation(np.int32, {"a": "float32", "b": np.float64}, ["int32", "bool"])
    def parts(n, named, unnamed):
        return n, named["b"], unnamed[1]

    assert str(parts.type_signature.parameter) == "<int32,<a=float32,b=float64>,<int32,bool>>"
    assert parts(3, {"a": 1.0, "b": 2.0}, (4, True)) == (3, 2.0, True)


def test_keyword_arguments_fill_parameters_by_name(design):
    logits = design["logits"]
    x, w = np.ones((1, 784), np.float32), np.ones((784, 10), np.float32)
    assert logits(x, w=w).tolist() == logits(w=w, x=x).tolist() == [[784.0] * 10]
    with pytest.raises(fc.FederatedTypeError, match="no parameter 'z'"):
        logits(x, z=w)


def test_a_computation_keeps_the_name_and_docstring_of_its_function():
    @fc.federated_computation("float32@SERVER")
    def documented(s):
        """Returns the server's value."""
        return s

    assert documented.__name__ == "documented" and documented.name == "documented"
    assert documented.__doc__ == "Returns the server's value."
    assert repr(documented) == "<Computation documented: (float32@SERVER -> float32@SERVER)>"


# --- polymorphism -----------------------------------------------------------------------------


def test_a_numpy_computation_without_types_is_traced_per_argument_type_and_cached():
    @fc.numpy_computation
    def add(x, y):
        return x + y

    assert add(np.float32(1), np.float32(2)) == np.float32(3)
    assert add(np.ones(3, np.int64), np.ones(3, np.int64)).tolist() == [2, 2, 2]
    assert add(np.float32(5), np.float32(6)) == np.float32(11)
    assert sorted(map(str, add.traced)) == ["<float32,float32>", "<int64[3],int64[3]>"]


# --- numpy computations -----------------------------------------------------------------------


Prediction = collections.namedtuple("Prediction", ["label", "score"])


@dataclasses.dataclass
class Summary:
    mean: object
    spread: object


def test_numpy_results_come_back_in_the_containers_the_code_built():
    @fc.numpy_computation("float32[4]")
    def summarize(x):
        return Summary(np.mean(x), np.max(x) - np.min(x)), Prediction(np.argmax(x), np.max(x))

    summary, prediction = summarize(np.array([1.0, 4.0, 2.0, 3.0], np.float32))
    assert summary == Summary(np.float32(2.5), np.float32(3.0))
    assert prediction == Prediction(np.int64(1), np.float32(4.0))


def test_a_numpy_computation_called_inside_another_joins_its_graph():
    @fc.numpy_computation("float32[3]")
    def squares(x):
        return {"sum": np.sum(x * x), "values": x * x}

    @fc.numpy_computation("float32[3]")
    def norm(x):
        return np.sqrt(squares(x)["sum"])

    assert norm.building_block.graph.ops  # one graph: the inner ops were inlined
    assert norm(np.array([3.0, 4.0, 0.0], np.float32)) == np.float32(5.0)


def test_grad_and_value_and_grad_differentiate_numpy_computations():
    @fc.numpy_computation("float32[3]", "float32[3]")
    def loss(w, x):
        return np.sum((w * x - 1.0) ** 2)

    w = np.array([1.0, 2.0, 0.5], np.float32)
    x = np.array([0.5, -1.0, 2.0], np.float32)
    expected_dw = 2 * (w * x - 1.0) * x
    expected_dx = 2 * (w * x - 1.0) * w
    dw = fc.grad(loss)(w, x)
    value, dx = fc.value_and_grad(loss, argnum=1)(w, x)
    assert np.allclose(dw, expected_dw) and np.allclose(dx, expected_dx)
    assert value.tobytes() == loss(w, x).tobytes()
    assert str(fc.grad(loss).type_signature) == "(<float32[3],float32[3]> -> float32[3])"


def test_grad_of_a_struct_parameter_is_a_struct_of_the_same_names():
    @fc.numpy_computation({"w": "float32[2]", "b": "float32"}, "float32[2]")
    def predict_loss(params, x):
        return (np.sum(params["w"] * x) + params["b"] - 1.0) ** 2

    gradient = fc.grad(predict_loss)({"w": [1.0, 1.0], "b": 0.0}, np.array([1.0, 2.0]))
    assert set(gradient) == {"w", "b"}
    assert np.allclose(gradient["w"], [4.0, 8.0]) and np.isclose(gradient["b"], 4.0)


def test_grad_needs_a_typed_numpy_computation():
    @fc.numpy_computation
    def untyped(x):
        return x

    with pytest.raises(fc.FederatedTypeError, match="polymorphic"):
        fc.grad(untyped)
    with pytest.raises(fc.FederatedTypeError, match="argnum"):
        fc.grad(fc.numpy_computation("float32")(lambda x: x * x), argnum=1)


def test_local_randomness_is_keyed_by_an_explicit_seed():
    @fc.numpy_computation("int64")
    def draw(seed):
        return fc.random.normal(seed, (3,)), fc.random.uniform(seed, (2, 2), np.float64)

    first, second = draw(np.int64(11)), draw(np.int64(11))
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].dtype == np.float64 and np.all((first[1] >= 0) & (first[1] < 1))
    assert draw(np.int64(12))[0].tobytes() != first[0].tobytes()
    assert fc.random.normal(np.int64(11), (3,)).tobytes() == first[0].tobytes()
    folded = fc.random.fold_in(np.int64(11), 1)
    assert folded.dtype == np.int64 and folded != fc.random.fold_in(np.int64(11), 2)


# --- federated computations -------------------------------------------------------------------


def test_federated_map_of_a_list_zips_the_placed_values_first():
    @fc.numpy_computation("float32", "float32")
    def weighted(value, weight):
        return value * weight

    @fc.federated_computation("{float32}@CLIENTS", "{float32}@CLIENTS")
    def products(a, b):
        return fc.federated_map(weighted, [a, b])

    assert products([1.0, 2.0], [3.0, 4.0]) == [3.0, 8.0]


def test_results_come_back_as_arrays_dicts_tuples_and_lists():
    @fc.federated_computation("{<x=float32[2],n=int32>}@CLIENTS", "float32[2]*")
    def shapes(v, s):
        return {"clients": v, "sums": (fc.federated_sum(v.x), fc.federated_sum(v.n)), "seq": s}

    result = shapes([{"x": [1, 2], "n": 1}, {"x": [3, 4], "n": 2}], [[0.5, 0.5]])
    assert isinstance(result, dict) and isinstance(result["sums"], tuple)
    assert isinstance(result["clients"], list) and isinstance(result["clients"][0], dict)
    assert isinstance(result["seq"], list) and isinstance(result["seq"][0], np.ndarray)
    assert result["sums"][0].tolist() == [4.0, 6.0] and result["sums"][1] == 3


def test_run_and_use_backend_choose_the_backend():
    @fc.federated_computation("{float32}@CLIENTS")
    def total(v):
        return fc.federated_sum(v)

    assert "reference" in fc.backends()
    assert fc.run(total, [1.0, 2.0], backend="reference") == np.float32(3.0)
    with fc.use_backend("reference"):
        assert total([1.0, 2.0]) == np.float32(3.0)


def test_a_polymorphic_numpy_computation_called_inside_another_is_traced_for_its_arrays():
    @fc.numpy_computation
    def scale(x, factor):
        return x * factor

    @fc.numpy_computation("float32[2]")
    def quadruple(x):
        return scale(scale(x, np.float32(2)), np.float32(2))

    assert quadruple(np.array([1.0, 2.0], np.float32)).tolist() == [4.0, 8.0]
    assert list(map(str, scale.traced)) == ["<float32[2],float32>"]


def test_a_federated_computation_cannot_be_called_inside_a_numpy_computation():
    @fc.federated_computation("float32")
    def identity(x):
        return x

    with pytest.raises(fc.FederatedTypeError, match="inside a numpy_computation"):

        @fc.numpy_computation("float32")
        def bad(x):
            return identity(x)
