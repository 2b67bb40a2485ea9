"""Models in NumPy (DESIGN §9): parameters as a struct of tensors plus a NumPy loss.

A `Model` is data: its initial parameters (a dict of float arrays, nested
dicts allowed), the shape of one input example, a NumPy function
`loss(params, batch)` giving the mean loss over a batch, and optionally
`logits(params, x)` for accuracy. A batch is `{"x": float32[?,*input_shape],
"y": int32[?]}`. The functions are plain NumPy: fedcc traces them into local
graphs and differentiates them with `fc.value_and_grad`.

Define your own model in one of two ways:

```python
def logits(params, x):                       # plain NumPy
    hidden = np.maximum(x @ params["w1"] + params["b1"], 0.0)
    return hidden @ params["w2"] + params["b2"]

model = fc.learning.models.from_logits(initial_params, logits, input_shape=(60,))
# or, with any loss:
model = fc.learning.models.Model(initial_params, my_loss, input_shape=(60,), logits=logits)
```

`from_logits` uses the softmax cross-entropy of `softmax_cross_entropy`.
`logistic_regression` and `mlp` are ready-made.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import fedcc as fc
from fedcc import SequenceType, StructType, TensorType
from fedcc.learning import tree
from fedcc.learning.errors import check_int

BATCH_FEATURES = "x"
BATCH_LABELS = "y"
# What `Model.batch_statistics` returns: float32 sums over a batch's examples.
STATISTICS_TYPE = StructType(
    [(name, TensorType(np.float32)) for name in ("loss_sum", "correct", "examples")]
)


def softmax_cross_entropy(logits: Any, labels: Any) -> Any:
    """The softmax cross-entropy of `logits` [n, k] against int `labels` [n], averaged over n.

    Plain NumPy (traceable): the log-sum-exp subtracts each row's maximum, so
    large logits do not overflow. The maximum is a constant to autodiff: its
    gradient contributions cancel exactly in real arithmetic, and leaving them
    out spares each training step eight ops.
    """
    num_classes = logits.shape[-1]
    largest = fc.stop_gradient(np.max(logits, axis=-1, keepdims=True))
    log_normalizer = np.log(np.sum(np.exp(logits - largest), axis=-1)) + largest[:, 0]
    one_hot = (labels[:, None] == np.arange(num_classes, dtype=np.int32)).astype(logits.dtype)
    return np.mean(log_normalizer - np.sum(one_hot * logits, axis=-1))


def _float_params(params: Any, where: str) -> dict[str, Any]:
    if not isinstance(params, Mapping) or not params:
        raise fc.FederatedTypeError(
            f"{where}: a model's parameters are a non-empty dict of float arrays, "
            f"found {type(params).__name__}"
        )
    result = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise fc.FederatedTypeError(f"{where}: parameter names are identifiers, found {key!r}")
        if isinstance(value, Mapping):
            result[key] = _float_params(value, f"{where}.{key}")
            continue
        array = np.array(value)
        if array.dtype.kind != "f":
            raise fc.FederatedTypeError(
                f"{where}.{key}: a parameter is a float array, found dtype {array.dtype}"
            )
        array.flags.writeable = False
        result[key] = array
    return result


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A model: initial parameters, the input shape, a NumPy loss and optional logits.

    `loss(params, batch)` returns the loss averaged over the batch's examples
    (a float scalar); `logits(params, x)` returns `[n, num_classes]` scores
    whose argmax is the prediction. Both are plain NumPy functions.
    """

    initial_params: Mapping[str, Any]
    loss: Callable[[Any, Any], Any]
    input_shape: tuple[int, ...]  # an int is taken as (int,)
    logits: Callable[[Any, Any], Any] | None = None
    name: str = "model"

    def __post_init__(self) -> None:
        params = _float_params(self.initial_params, f"{self.name}: initial_params")
        object.__setattr__(self, "initial_params", params)
        given = self.input_shape
        shape = (given,) if isinstance(given, (int, np.integer)) else tuple(given)
        if not shape or any(
            isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0 for d in shape
        ):
            raise fc.FederatedTypeError(
                f"{self.name}: input_shape is a tuple of positive ints, found {self.input_shape!r}"
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in shape))
        if not callable(self.loss) or (self.logits is not None and not callable(self.logits)):
            raise fc.FederatedTypeError(f"{self.name}: loss and logits are Python functions")

    # -- types

    @functools.cached_property
    def params_type(self) -> StructType:
        """The named struct type of the parameters."""
        params_type = tree.tree_type(self.initial_params)
        assert isinstance(params_type, StructType)
        return params_type

    @functools.cached_property
    def batch_type(self) -> StructType:
        """`<x=float32[?,*input_shape],y=int32[?]>`."""
        return StructType(
            [
                (BATCH_FEATURES, TensorType(np.float32, (None, *self.input_shape))),
                (BATCH_LABELS, TensorType(np.int32, (None,))),
            ]
        )

    @property
    def client_data_type(self) -> SequenceType:
        """One client's data: a sequence of batches."""
        return SequenceType(self.batch_type)

    # -- computations, traced once per model

    @functools.cached_property
    def loss_computation(self) -> fc.Computation:
        """`(params, batch) -> float` as a numpy_computation."""
        loss = self.loss

        def model_loss(params, batch):
            return loss(params, batch)

        model_loss.__name__ = f"{self.name}_loss"
        return fc.numpy_computation(self.params_type, self.batch_type)(model_loss)

    @functools.cached_property
    def loss_and_gradient(self) -> fc.Computation:
        """`(params, batch) -> (loss, gradient with respect to params)`."""
        return fc.value_and_grad(self.loss_computation)

    @property
    def has_accuracy(self) -> bool:
        """Whether the model gives logits, so that accuracy can be measured."""
        return self.logits is not None

    def count_correct(self, params: Any, batch: Any) -> Any:
        """NumPy (traceable): how many examples' argmax of the logits is the label, as float32.

        Zero for a model without logits.
        """
        if self.logits is None:
            return np.float32(0.0) * count_examples(batch)
        predicted = np.argmax(self.logits(params, batch[BATCH_FEATURES]), axis=-1)
        hits = predicted == batch[BATCH_LABELS].astype(np.int64)
        return np.sum(hits.astype(np.float32))

    @functools.cached_property
    def batch_statistics(self) -> fc.Computation:
        """`(params, batch) -> {"loss_sum", "correct", "examples"}`, float32 sums over the batch."""
        loss = self.loss

        def statistics(params, batch):
            examples = count_examples(batch)
            return {
                "loss_sum": loss(params, batch).astype(np.float32) * examples,
                "correct": self.count_correct(params, batch),
                "examples": examples,
            }

        statistics.__name__ = f"{self.name}_batch_statistics"
        return fc.numpy_computation(self.params_type, self.batch_type)(statistics)


def count_examples(batch: Any) -> Any:
    """NumPy (traceable): the number of examples in a batch, as float32."""
    return np.sum(np.ones_like(batch[BATCH_LABELS])).astype(np.float32)


def check_model(model: Any) -> Model:
    """`model`, after checking it is a `Model` (what the learning algorithms take)."""
    if not isinstance(model, Model):
        raise fc.FederatedTypeError(
            "expected a fc.learning.models.Model (e.g. models.logistic_regression(60, 10)), "
            f"found {type(model).__name__}"
        )
    return model


def from_logits(
    initial_params: Mapping[str, Any],
    logits: Callable[[Any, Any], Any],
    input_shape: int | Sequence[int],
    name: str = "model",
) -> Model:
    """A classifier from a NumPy `logits(params, x)`: softmax cross-entropy loss, and accuracy."""

    def loss(params, batch):
        return softmax_cross_entropy(logits(params, batch[BATCH_FEATURES]), batch[BATCH_LABELS])

    return Model(initial_params, loss, input_shape, logits=logits, name=name)


def _check_positive_ints(**values: Any) -> None:
    for name, value in values.items():
        check_int(name, value, 1)


def _linear_logits(params, x):
    return x @ params["kernel"] + params["bias"]


def logistic_regression(input_dim: int, num_classes: int) -> Model:
    """Multinomial logistic regression: `{"kernel": float32[d,k], "bias": float32[k]}`, zeros.

    Loss: softmax cross-entropy averaged over the batch (DESIGN §9).
    """
    _check_positive_ints(input_dim=input_dim, num_classes=num_classes)
    params = {
        "kernel": np.zeros((input_dim, num_classes), np.float32),
        "bias": np.zeros(num_classes, np.float32),
    }
    return from_logits(params, _linear_logits, input_dim, name="logistic_regression")


def _glorot_uniform(seed: int, fan_in: int, fan_out: int) -> np.ndarray:
    # fc.random gives the same bits on every platform, so the initial model is portable.
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return fc.random.uniform(np.int64(seed), (fan_in, fan_out), np.float32, -limit, limit)


def _mlp_logits(params, x):
    layers = list(params.values())
    activations = x
    for layer in layers[:-1]:
        activations = np.maximum(activations @ layer["kernel"] + layer["bias"], 0.0)
    return activations @ layers[-1]["kernel"] + layers[-1]["bias"]


def mlp(input_dim: int, hidden: int | Sequence[int], num_classes: int, seed: int = 0) -> Model:
    """A multilayer perceptron with ReLU hidden layers and a softmax cross-entropy loss.

    Parameters `{"dense_0": {"kernel", "bias"}, ..., "dense_L": {...}}`;
    kernels start Glorot-uniform from keyed randomness (`fc.random`, seeded
    by `seed` and the layer index), biases at zero.
    """
    hidden_sizes = [hidden] if isinstance(hidden, (int, np.integer)) else list(hidden)
    _check_positive_ints(input_dim=input_dim, num_classes=num_classes)
    _check_positive_ints(**{f"hidden[{i}]": size for i, size in enumerate(hidden_sizes)})
    sizes = [input_dim, *hidden_sizes, num_classes]
    params = {}
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layer_seed = int(fc.random.fold_in(np.int64(seed), np.int64(index)))
        params[f"dense_{index}"] = {
            "kernel": _glorot_uniform(layer_seed, fan_in, fan_out),
            "bias": np.zeros(fan_out, np.float32),
        }
    return from_logits(params, _mlp_logits, input_dim, name="mlp")
