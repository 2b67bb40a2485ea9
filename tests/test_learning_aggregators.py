"""Aggregators (DESIGN §9): each one's `next` on clients' values, against what it promises."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fedcc as fc
from fedcc.learning import aggregators, models, optimizers

VALUE_TYPE = fc.to_type({"w": "float32[3,4]", "b": "float32[4]"})


def client_values(seed: int, count: int = 5, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    values = [
        {
            "w": (scale * rng.normal(size=(3, 4))).astype(np.float32),
            "b": (scale * rng.normal(size=4)).astype(np.float32),
        }
        for _ in range(count)
    ]
    weights = rng.integers(1, 50, count).astype(np.float32)
    return values, weights


def weighted_mean(values, weights):
    total = float(np.sum(weights))
    return {
        key: sum(w * v[key].astype(np.float64) for v, w in zip(values, weights)) / total
        for key in ("w", "b")
    }


def run(factory, values, weights, state=None):
    aggregator = factory.create(VALUE_TYPE)
    result = aggregator.next(aggregator.initial_state if state is None else state, values, weights)
    return aggregator, result


def test_mean_is_the_weighted_mean():
    values, weights = client_values(0)
    aggregator, result = run(aggregators.mean(), values, weights)
    expected = weighted_mean(values, weights)
    for key in ("w", "b"):
        np.testing.assert_allclose(result["mean"][key], expected[key], rtol=1e-5)
    assert aggregator.measurement_names == () and result["state"] == ()
    assert str(aggregator.next.type_signature.parameter) == (
        "<<>@SERVER,{<w=float32[3,4],b=float32[4]>}@CLIENTS,{float32}@CLIENTS>"
    )


def norm(value) -> float:
    return math.sqrt(sum(float(np.sum(value[k].astype(np.float64) ** 2)) for k in ("w", "b")))


def test_clipped_mean_scales_each_client_to_the_norm_bound():
    values, weights = client_values(1)
    clip = 2.5
    aggregator, result = run(aggregators.clipped_mean(clip), values, weights)
    clipped = []
    for value in values:
        factor = min(1.0, clip / norm(value))
        clipped.append({k: value[k] * factor for k in value})
    expected = weighted_mean(clipped, weights)
    for key in ("w", "b"):
        np.testing.assert_allclose(result["mean"][key], expected[key], rtol=1e-5, atol=1e-7)
    over = np.mean([norm(v) > clip for v in values])
    assert 0 < over < 1
    assert float(result["measurements"]["clipped_fraction"]) == pytest.approx(over)
    assert aggregator.measurement_names == ("clipped_fraction",)


def test_clipped_mean_leaves_a_zero_value_alone():
    values = [{"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}]
    _, result = run(aggregators.clipped_mean(1.0), values, np.ones(1, np.float32))
    assert not np.any(result["mean"]["w"]) and np.all(np.isfinite(result["mean"]["w"]))


def test_clipped_mean_composes_with_an_inner_aggregator():
    values, weights = client_values(2, scale=0.1)
    inner = aggregators.quantized_mean(8)
    aggregator, result = run(aggregators.clipped_mean(100.0, inner=inner), values, weights)
    assert aggregator.measurement_names == ("bytes_saved", "clipped_fraction")
    expected = weighted_mean(values, weights)
    np.testing.assert_allclose(result["mean"]["w"], expected["w"], atol=0.01)


def test_dp_mean_is_reproducible_from_its_seed_and_moves_its_key_on():
    values, weights = client_values(3)
    factory = aggregators.dp_mean(noise_multiplier=0.5, clip=1.0, seed=7)
    aggregator, first = run(factory, values, weights)
    _, again = run(factory, values, weights)
    _, other_seed = run(aggregators.dp_mean(0.5, 1.0, seed=8), values, weights)
    assert first["mean"]["w"].tobytes() == again["mean"]["w"].tobytes()
    assert first["mean"]["w"].tobytes() != other_seed["mean"]["w"].tobytes()
    assert first["state"]["key"] != aggregator.initial_state["key"]
    _, next_round = run(factory, values, weights, state=first["state"])
    assert next_round["mean"]["w"].tobytes() != first["mean"]["w"].tobytes()


def test_dp_mean_without_noise_is_the_unweighted_mean_of_clipped_values():
    values, weights = client_values(4)
    _, result = run(aggregators.dp_mean(0.0, clip=1.5), values, weights)
    clipped = [{k: v[k] * min(1.0, 1.5 / norm(v)) for k in v} for v in values]
    expected = weighted_mean(clipped, np.ones(len(values)))
    for key in ("w", "b"):
        np.testing.assert_allclose(result["mean"][key], expected[key], rtol=1e-5, atol=1e-7)
    assert float(result["measurements"]["clipped_fraction"]) == 1.0


def test_dp_mean_noise_has_the_stated_standard_deviation():
    big = fc.to_type({"v": "float32[20000]"})
    aggregator = aggregators.dp_mean(noise_multiplier=2.0, clip=0.5, seed=1).create(big)
    zeros = [{"v": np.zeros(20000, np.float32)} for _ in range(4)]
    result = aggregator.next(aggregator.initial_state, zeros, np.ones(4, np.float32))
    # The noise on the sum has stddev noise_multiplier * clip = 1; the mean divides by 4 clients.
    noise = result["mean"]["v"].astype(np.float64) * 4
    assert abs(np.mean(noise)) < 0.03 and np.std(noise) == pytest.approx(1.0, rel=0.03)


def test_quantized_mean_is_within_half_a_step_and_counts_the_bytes_saved():
    values, weights = client_values(5)
    bits = 4
    aggregator, result = run(aggregators.quantized_mean(bits), values, weights)
    expected = weighted_mean(values, weights)
    half_steps = [
        max((v[k].max() - v[k].min()) / (2**bits - 1) / 2 for v in values) for k in ("w", "b")
    ]
    for key, half_step in zip(("w", "b"), half_steps):
        assert np.max(np.abs(result["mean"][key] - expected[key])) <= half_step * 1.001
    # 12 + 4 float32 elements a client, sent as 4-bit codes plus two float32 range values a tensor.
    saved_per_client = (48 - 6 - 8) + (16 - 2 - 8)
    assert int(result["measurements"]["bytes_saved"]) == 5 * saved_per_client
    encoded = aggregator.next.building_block
    assert "uint8" in fc.to_text(encoded)


def test_quantized_mean_of_a_constant_tensor_is_exact():
    values = [{"w": np.full((3, 4), 0.25, np.float32), "b": np.full(4, -1.0, np.float32)}] * 3
    _, result = run(aggregators.quantized_mean(2), values, np.array([1, 2, 3], np.float32))
    assert np.all(result["mean"]["w"] == np.float32(0.25))
    assert np.all(result["mean"]["b"] == np.float32(-1.0))


def test_secure_mean_goes_through_the_secure_sum_and_is_within_a_quantization_step():
    values, weights = client_values(6, scale=0.3)
    bitwidth, bound = 12, 2.0
    aggregator, result = run(aggregators.secure_mean(bitwidth, value_bound=bound), values, weights)
    assert "federated_secure_sum_bitwidth" in fc.to_text(aggregator.next)
    expected = weighted_mean(values, weights)
    step = 2 * bound / (2**bitwidth - 1)
    for key in ("w", "b"):
        assert np.max(np.abs(result["mean"][key] - expected[key])) <= step / 2 + 1e-6


def test_secure_mean_clips_to_the_value_bound_and_caps_weights():
    values = [
        {"w": np.full((3, 4), 5.0, np.float32), "b": np.full(4, -5.0, np.float32)},
        {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)},
    ]
    weights = np.array([1.0, 2.0**20], np.float32)  # the second weight caps at 2**4 - 1 = 15
    _, result = run(aggregators.secure_mean(8, value_bound=1.0, weight_bits=4), values, weights)
    # On the grid of 255 steps over [-1, 1], 0 rounds to code 128 (round half to even).
    zero = 128 * 2.0 / 255 - 1.0
    np.testing.assert_allclose(result["mean"]["w"], (1.0 + 15 * zero) / 16, atol=1e-6)
    np.testing.assert_allclose(result["mean"]["b"], (-1.0 + 15 * zero) / 16, atol=1e-6)


def test_fed_avg_runs_with_every_aggregator_and_reports_its_measurements():
    model = models.logistic_regression(4, 3)
    rng = np.random.default_rng(0)
    data = [
        [
            {
                "x": rng.normal(size=(5, 4)).astype(np.float32),
                "y": rng.integers(0, 3, 5).astype(np.int32),
            }
        ]
        for _ in range(4)
    ]
    factories = {
        "mean": aggregators.mean(),
        "clipped_mean": aggregators.clipped_mean(0.001),
        "dp_mean": aggregators.dp_mean(0.1, 0.001, seed=3),
        "quantized_mean": aggregators.quantized_mean(8),
        "secure_mean": aggregators.secure_mean(16),
    }
    plain_state, _ = fc.learning.build_fed_avg(model).next(
        fc.learning.build_fed_avg(model).initialize(), data
    )
    for name, factory in factories.items():
        process = fc.learning.build_fed_avg(
            model, client_optimizer=optimizers.sgd(0.1), aggregator=factory
        )
        state, metrics = process.next(process.initialize(), data)
        assert set(metrics) == {"loss", "accuracy", "examples", "clients"} | set(
            factory.create(model.params_type).measurement_names
        ), name
        assert np.all(np.isfinite(state["model"]["kernel"])), name
        close = np.allclose(state["model"]["kernel"], plain_state["model"]["kernel"], atol=1e-3)
        assert close == (name in ("mean", "quantized_mean", "secure_mean")), name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: aggregators.clipped_mean(0.0), "clipped_mean clip must be a number in"),
        (lambda: aggregators.dp_mean(-1.0, 1.0), "noise_multiplier"),
        (lambda: aggregators.dp_mean(1.0, float("inf")), "dp_mean clip"),
        (lambda: aggregators.quantized_mean(0), r"bits must be an integer in \[1, 16\]"),
        (lambda: aggregators.quantized_mean(17), r"bits must be an integer in \[1, 16\]"),
        (lambda: aggregators.secure_mean(50, weight_bits=20), "bitwidth \\+ weight_bits"),
        (lambda: aggregators.secure_mean(8, value_bound=-1), "value_bound"),
        (lambda: aggregators.clipped_mean(1.0, inner="mean"), "inner must be an aggregator"),
    ],
)
def test_settings_out_of_range_are_refused(make, message):
    with pytest.raises(fc.learning.LearningSettingError, match=message):
        make()


def test_aggregating_a_non_float_struct_is_refused():
    with pytest.raises(fc.FederatedTypeError, match="named structs of float tensors"):
        aggregators.mean().create(fc.to_type({"n": "int32"}))
    with pytest.raises(fc.learning.LearningSettingError, match="clipped_fraction twice"):
        aggregators.clipped_mean(1.0, inner=aggregators.clipped_mean(2.0)).create(VALUE_TYPE)
