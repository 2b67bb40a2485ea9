"""The examples run and compute what NumPy computes directly."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sensor_average():
    return load_example("sensor_average")


@pytest.fixture(scope="module")
def sensors_over_threshold():
    return load_example("sensors_over_threshold")


@pytest.fixture(scope="module")
def fedsgd():
    return load_example("fedsgd_linear_regression")


def test_mean_temperature_is_the_mean_of_the_readings(sensor_average):
    readings = sensor_average.sensor_readings(13, seed=3)
    result = sensor_average.mean_temperature(readings)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, np.mean(np.array(readings, np.float32)), rtol=1e-6)


def test_sensor_average_main_prints_the_mean(sensor_average, capsys):
    sensor_average.main()
    expected = np.mean(np.array(sensor_average.sensor_readings(10), np.float32))
    assert f"{expected:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("threshold", [15.0, 20.0, 21.5, 40.0])
def test_fraction_over_threshold_counts_readings_over_it(sensors_over_threshold, threshold):
    readings = sensors_over_threshold.sensor_readings(25, seed=1)
    result = sensors_over_threshold.fraction_over_threshold(readings, np.float32(threshold))
    expected = np.mean(np.array(readings, np.float32) > np.float32(threshold))
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_sensors_over_threshold_main_prints_the_fraction(sensors_over_threshold, capsys):
    sensors_over_threshold.main()
    readings = np.array(sensors_over_threshold.sensor_readings(20), np.float32)
    assert f"{np.mean(readings > 21.0):.4f}" in capsys.readouterr().out


def numpy_fedsgd(data, rounds, learning_rate):
    """FedSGD on linear regression written directly in NumPy (float32)."""
    w = np.zeros(data[0]["x"].shape[1], np.float32)
    b = np.float32(0.0)
    losses = []
    for _ in range(rounds):
        counts = np.array([len(d["y"]) for d in data], np.float32)
        grads_w, grads_b, client_losses = [], [], []
        for d in data:
            residual = d["x"] @ w + b - d["y"]
            client_losses.append(np.mean(residual**2))
            grads_w.append(2.0 * d["x"].T @ residual / len(d["y"]))
            grads_b.append(2.0 * np.mean(residual))
        weights = counts / counts.sum()
        losses.append(float(np.sum(weights * np.array(client_losses))))
        w = (w - learning_rate * np.sum(weights[:, None] * np.array(grads_w), axis=0)).astype(
            np.float32
        )
        b = np.float32(b - learning_rate * np.sum(weights * np.array(grads_b)))
    return w, b, losses


def test_fedsgd_matches_a_numpy_fedsgd_loop(fedsgd):
    data = fedsgd.client_data(6, seed=5)
    model, losses = fedsgd.train(8, data)
    w, b, expected_losses = numpy_fedsgd(data, 8, fedsgd.LEARNING_RATE)
    assert model["w"].dtype == np.float32
    np.testing.assert_allclose(model["w"], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model["b"], b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))


def test_fedsgd_gradient_is_the_analytic_gradient(fedsgd):
    batch = fedsgd.client_data(1, seed=9)[0]
    model = {"w": np.array([0.5, -0.2, 1.0], np.float32), "b": np.float32(0.3)}
    gradient = fedsgd.loss_gradient(model, batch)
    residual = batch["x"] @ model["w"] + model["b"] - batch["y"]
    np.testing.assert_allclose(gradient["w"], 2 * batch["x"].T @ residual / len(residual), 1e-5)
    np.testing.assert_allclose(gradient["b"], 2 * np.mean(residual), rtol=1e-5)


def test_fedsgd_main_prints_decreasing_losses(fedsgd, capsys):
    fedsgd.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round")]
    losses = [float(line.split()[-1]) for line in lines]
    assert len(losses) == 10 and losses[-1] < losses[0] / 10
