"""Optimizers (DESIGN §9): pure state updates, the same traced as run on arrays."""

from __future__ import annotations

import numpy as np
import pytest

import fedcc as fc
from fedcc.learning import optimizers, tree

PARAMS_TYPE = fc.to_type({"w": "float32[3]", "layer": {"b": "float32[2]"}})


def params_and_gradients(seed: int, steps: int):
    rng = np.random.default_rng(seed)
    params = {
        "w": rng.normal(size=3).astype(np.float32),
        "layer": {"b": rng.normal(size=2).astype(np.float32)},
    }
    gradients = [
        {
            "w": rng.normal(size=3).astype(np.float32),
            "layer": {"b": rng.normal(size=2).astype(np.float32)},
        }
        for _ in range(steps)
    ]
    return params, gradients


def traced_step(optimizer, params):
    """The optimizer's step traced into a numpy_computation, as FedAvg uses it."""
    state = optimizer.initial_state(params)

    @fc.numpy_computation(tree.tree_type(state), PARAMS_TYPE, PARAMS_TYPE)
    def step(state, params, gradient):
        return optimizer.step(state, params, gradient)

    return state, step


def run_steps(optimizer, params, gradients):
    state, step = traced_step(optimizer, params)
    for gradient in gradients:
        state, params = step(state, params, gradient)
    return state, params


def test_sgd_steps_against_the_gradient():
    params, gradients = params_and_gradients(0, 3)
    state, result = run_steps(optimizers.sgd(0.1), params, gradients)
    expected = params["w"].astype(np.float64) - 0.1 * sum(g["w"] for g in gradients)
    np.testing.assert_allclose(result["w"], expected, rtol=1e-6)
    assert state == ()


def test_sgd_with_momentum_keeps_a_velocity():
    params, gradients = params_and_gradients(1, 4)
    state, result = run_steps(optimizers.sgd(0.1, momentum=0.9), params, gradients)
    velocity = np.zeros(2)
    b = params["layer"]["b"].astype(np.float64)
    for gradient in gradients:
        velocity = 0.9 * velocity + gradient["layer"]["b"]
        b = b - 0.1 * velocity
    np.testing.assert_allclose(result["layer"]["b"], b, rtol=1e-5)
    np.testing.assert_allclose(state["velocity"]["layer"]["b"], velocity, rtol=1e-5)


def test_adam_matches_the_published_update():
    params, gradients = params_and_gradients(2, 5)
    state, result = run_steps(optimizers.adam(0.01, beta_1=0.8, beta_2=0.95), params, gradients)
    w = params["w"].astype(np.float64)
    m = v = np.zeros(3)
    for t, gradient in enumerate(gradients, start=1):
        g = gradient["w"].astype(np.float64)
        m = 0.8 * m + 0.2 * g
        v = 0.95 * v + 0.05 * g * g
        w = w - 0.01 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.95**t)) + 1e-7)
    np.testing.assert_allclose(result["w"], w, rtol=1e-5)
    assert state["step"] == 5 and state["step"].dtype == np.int32


def test_the_traced_step_gives_the_bits_of_the_step_run_on_arrays():
    params, gradients = params_and_gradients(3, 1)
    optimizer = optimizers.adam(0.05)
    state, step = traced_step(optimizer, params)
    _, traced = step(state, params, gradients[0])
    _, direct = optimizer.step(state, params, gradients[0])
    assert traced["w"].tobytes() == np.asarray(direct["w"]).tobytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: optimizers.sgd(0.0), r"sgd learning_rate must be a number in \(0.0, inf\]"),
        (lambda: optimizers.sgd(-1.0), "sgd learning_rate"),
        (lambda: optimizers.sgd(0.1, momentum=1.0), r"momentum must be a number in \[0.0, 1.0\)"),
        (lambda: optimizers.adam(float("nan")), "adam learning_rate"),
        (lambda: optimizers.adam(0.1, beta_2=1.5), "adam beta_2"),
        (lambda: optimizers.adam(0.1, epsilon=0), "adam epsilon"),
        (lambda: optimizers.sgd("fast"), "found 'fast'"),
    ],
)
def test_settings_out_of_range_are_refused(make, message):
    with pytest.raises(fc.learning.LearningSettingError, match=message):
        make()
