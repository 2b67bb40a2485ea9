"""Models (DESIGN §9): the ready-made ones, their losses and gradients, and user-defined ones."""

from __future__ import annotations

import numpy as np
import pytest

import fedcc as fc
from fedcc.learning import models


def batch(seed: int, n: int = 8, d: int = 5, k: int = 4):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n, d)).astype(np.float32),
        "y": rng.integers(0, k, n).astype(np.int32),
    }


def numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def test_logistic_regression_has_the_contract_parameters_starting_at_zero():
    model = models.logistic_regression(5, 4)
    assert str(model.params_type) == "<kernel=float32[5,4],bias=float32[4]>"
    assert str(model.batch_type) == "<x=float32[?,5],y=int32[?]>"
    assert str(model.client_data_type) == "<x=float32[?,5],y=int32[?]>*"
    assert not model.initial_params["kernel"].any() and not model.initial_params["bias"].any()
    # At zero every class is equally likely.
    assert float(model.loss_computation(model.initial_params, batch(0))) == pytest.approx(
        np.log(4), rel=1e-6
    )


def test_logistic_regression_loss_and_gradient_are_softmax_cross_entropy():
    model = models.logistic_regression(5, 4)
    rng = np.random.default_rng(1)
    params = {
        "kernel": rng.normal(size=(5, 4)).astype(np.float32),
        "bias": rng.normal(size=4).astype(np.float32),
    }
    data = batch(2)
    loss, gradient = model.loss_and_gradient(params, data)
    logits = data["x"] @ params["kernel"] + params["bias"]
    assert float(loss) == pytest.approx(numpy_cross_entropy(logits, data["y"]), rel=1e-5)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    g = (shifted / shifted.sum(axis=1, keepdims=True) - np.eye(4)[data["y"]]) / len(data["y"])
    np.testing.assert_allclose(gradient["kernel"], data["x"].T @ g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gradient["bias"], g.sum(axis=0), rtol=1e-4, atol=1e-6)


def test_cross_entropy_does_not_overflow_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]], np.float32)

    @fc.numpy_computation("float32[?,3]", "int32[?]")
    def loss(z, y):
        return models.softmax_cross_entropy(z, y)

    assert float(loss(logits, np.array([0], np.int32))) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(logits, np.array([2], np.int32))) == pytest.approx(2000.0)


def test_batch_statistics_sum_loss_correct_and_examples():
    model = models.logistic_regression(5, 4)
    params = {
        "kernel": np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32),
        "bias": np.zeros(4, np.float32),
    }
    data = batch(4, n=11)
    stats = model.batch_statistics(params, data)
    logits = data["x"] @ params["kernel"]
    assert float(stats["examples"]) == 11.0
    assert float(stats["correct"]) == float(np.sum(np.argmax(logits, axis=1) == data["y"]))
    assert float(stats["loss_sum"]) == pytest.approx(
        11 * numpy_cross_entropy(logits, data["y"]), rel=1e-5
    )


def test_mlp_has_one_dense_layer_a_size_and_a_portable_seeded_start():
    model = models.mlp(5, [7, 6], 4, seed=3)
    assert str(model.params_type) == (
        "<dense_0=<kernel=float32[5,7],bias=float32[7]>,"
        "dense_1=<kernel=float32[7,6],bias=float32[6]>,"
        "dense_2=<kernel=float32[6,4],bias=float32[4]>>"
    )
    again = models.mlp(5, [7, 6], 4, seed=3).initial_params
    other = models.mlp(5, [7, 6], 4, seed=4).initial_params
    kernel = model.initial_params["dense_0"]["kernel"]
    assert kernel.tobytes() == again["dense_0"]["kernel"].tobytes()
    assert kernel.tobytes() != other["dense_0"]["kernel"].tobytes()
    limit = np.sqrt(6.0 / (5 + 7))
    assert np.all(np.abs(kernel) <= limit) and kernel.std() > limit / 4
    assert not model.initial_params["dense_0"]["bias"].any()


def test_mlp_logits_are_relu_layers():
    model = models.mlp(5, 7, 4, seed=1)
    params = model.initial_params
    data = batch(5)
    hidden = np.maximum(data["x"] @ params["dense_0"]["kernel"] + params["dense_0"]["bias"], 0)
    logits = hidden @ params["dense_1"]["kernel"] + params["dense_1"]["bias"]
    assert float(model.loss_computation(params, data)) == pytest.approx(
        numpy_cross_entropy(logits, data["y"]), rel=1e-5
    )


def test_a_user_model_from_a_params_struct_and_a_numpy_loss():
    def squared_hinge(params, batch):
        scores = batch["x"] @ params["w"]
        margin = np.where(batch["y"] == 1, scores, -scores)
        return np.mean(np.maximum(1.0 - margin, 0.0) ** 2)

    model = models.Model({"w": np.zeros(5, np.float32)}, squared_hinge, input_shape=(5,))
    data = batch(6, k=2)
    loss, gradient = model.loss_and_gradient(model.initial_params, data)
    assert float(loss) == pytest.approx(1.0)
    sign = np.where(data["y"] == 1, 1.0, -1.0)
    np.testing.assert_allclose(
        gradient["w"], -2 * (sign[:, None] * data["x"]).mean(axis=0), rtol=1e-5
    )
    assert not model.has_accuracy
    assert float(model.batch_statistics(model.initial_params, data)["correct"]) == 0.0


def test_a_user_model_from_logits_gets_cross_entropy_and_accuracy():
    def logits(params, x):
        return np.tanh(x @ params["hidden"]) @ params["out"]

    rng = np.random.default_rng(7)
    initial = {
        "hidden": rng.normal(size=(5, 3)).astype(np.float32),
        "out": rng.normal(size=(3, 4)).astype(np.float32),
    }
    model = models.from_logits(initial, logits, input_shape=5, name="tanh_net")
    data = batch(8)
    expected = np.tanh(data["x"] @ initial["hidden"]) @ initial["out"]
    assert float(model.loss_computation(initial, data)) == pytest.approx(
        numpy_cross_entropy(expected, data["y"]), rel=1e-5
    )
    assert model.has_accuracy and model.name == "tanh_net"


def test_models_refuse_what_cannot_be_a_model():
    with pytest.raises(fc.FederatedTypeError, match="non-empty dict of float arrays"):
        models.Model({}, lambda p, b: 0.0, input_shape=(2,))
    with pytest.raises(fc.FederatedTypeError, match=r"initial_params\.w: a parameter is a float"):
        models.Model({"w": np.zeros(2, np.int32)}, lambda p, b: 0.0, input_shape=(2,))
    with pytest.raises(fc.FederatedTypeError, match="input_shape is a tuple of positive ints"):
        models.Model({"w": np.zeros(2, np.float32)}, lambda p, b: 0.0, input_shape=(0,))
    with pytest.raises(fc.learning.LearningSettingError, match="num_classes must be an integer"):
        models.logistic_regression(3, 0)
    with pytest.raises(fc.learning.LearningSettingError, match=r"hidden\[1\]"):
        models.mlp(3, [4, -1], 2)


def test_initial_parameters_are_copied_and_read_only():
    kernel = np.zeros((2, 2), np.float32)
    model = models.from_logits({"kernel": kernel}, lambda p, x: x @ p["kernel"], input_shape=2)
    kernel[0, 0] = 5.0
    assert model.initial_params["kernel"][0, 0] == 0.0
    with pytest.raises(ValueError):
        model.initial_params["kernel"][0, 0] = 1.0
