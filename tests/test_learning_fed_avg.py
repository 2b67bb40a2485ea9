"""FedAvg and FedSGD (DESIGN §9) against an independent NumPy implementation of the definition,
and the process's life: compiled once, saved and loaded, checkpointed, the same on every backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fedcc as fc
from fedcc.learning import aggregators, models, optimizers

D, K = 6, 3


# --- an independent FedAvg, written from the definition in DESIGN §9 ----------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batch_loss_and_gradient(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Softmax cross-entropy averaged over the batch, and its gradient, by hand (float64)."""
    p = softmax(x @ w + b)
    one_hot = np.eye(w.shape[1])[y]
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    g = (p - one_hot) / len(y)
    return loss, x.T @ g, g.sum(axis=0)


def reference_fed_avg(params, client_batches, client_lr, server_lr, rounds):
    """Clients run SGD over their batches in order from the broadcast model and send deltas;
    the server averages the deltas weighted by example counts and applies SGD to minus it."""
    w, b = params["kernel"].astype(np.float64), params["bias"].astype(np.float64)
    losses = []
    for _ in range(rounds):
        deltas, weights, loss_sum = [], [], 0.0
        for batches in client_batches:
            cw, cb, count = w.copy(), b.copy(), 0
            for batch in batches:
                loss, gw, gb = batch_loss_and_gradient(cw, cb, batch["x"], batch["y"])
                loss_sum += loss * len(batch["y"])
                count += len(batch["y"])
                cw, cb = cw - client_lr * gw, cb - client_lr * gb
            deltas.append((cw - w, cb - b))
            weights.append(count)
        total = sum(weights)
        mean_w = sum(n * dw for n, (dw, _) in zip(weights, deltas)) / total
        mean_b = sum(n * db for n, (_, db) in zip(weights, deltas)) / total
        w, b = w - server_lr * -mean_w, b - server_lr * -mean_b
        losses.append(loss_sum / total)
    return {"kernel": w, "bias": b}, losses


def make_client_batches(seed: int, sizes=(7, 12, 3, 9), batch_size=4):
    rng = np.random.default_rng(seed)
    clients = []
    for size in sizes:
        x = rng.normal(size=(size, D)).astype(np.float32)
        y = rng.integers(0, K, size).astype(np.int32)
        clients.append(
            [
                {"x": x[i : i + batch_size], "y": y[i : i + batch_size]}
                for i in range(0, size, batch_size)
            ]
        )
    return clients


@pytest.fixture(scope="module")
def model():
    return models.logistic_regression(D, K)


@pytest.fixture(scope="module")
def fed_avg(model):
    return fc.learning.build_fed_avg(
        model, client_optimizer=optimizers.sgd(0.3), server_optimizer=optimizers.sgd(0.7)
    )


def test_fed_avg_matches_an_independent_numpy_implementation(fed_avg):
    data = make_client_batches(0)
    state = fed_avg.initialize()
    losses = []
    for _ in range(4):
        state, metrics = fed_avg.next(state, data)
        losses.append(float(metrics["loss"]))
    expected, expected_losses = reference_fed_avg(
        {"kernel": np.zeros((D, K)), "bias": np.zeros(K)}, data, 0.3, 0.7, rounds=4
    )
    weights = fed_avg.get_model_weights(state)
    assert weights["kernel"].dtype == np.float32
    np.testing.assert_allclose(weights["kernel"], expected["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights["bias"], expected["bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    assert state["round"] == 4
    assert float(metrics["examples"]) == 31.0 and float(metrics["clients"]) == 4.0


def test_the_process_has_the_contract_types(fed_avg, model):
    assert str(fed_avg.next.type_signature.parameter[1]) == "{<x=float32[?,6],y=int32[?]>*}@CLIENTS"
    assert str(model.params_type) == "<kernel=float32[6,3],bias=float32[3]>"
    assert fed_avg.initialize.type_signature.parameter is None
    state = fed_avg.initialize()
    assert set(state) == {"model", "optimizer", "aggregator", "round"}
    assert not state["model"]["kernel"].any() and not state["model"]["bias"].any()
    assert isinstance(fed_avg.initialize, fc.Computation)
    assert isinstance(fed_avg.next, fc.Computation)


def test_rounds_do_not_retrace(fed_avg, monkeypatch):
    from fedcc.compiler import federated_tracer, numpy_tracer

    def refuse(*args, **kwargs):
        raise AssertionError("a round traced Python code")

    monkeypatch.setattr(federated_tracer, "trace_function", refuse)
    monkeypatch.setattr(numpy_tracer, "trace_numpy", refuse)
    state = fed_avg.initialize()
    for _ in range(2):
        state, _ = fed_avg.next(state, make_client_batches(1))


def test_server_optimizer_state_lives_in_the_process_state(model):
    process = fc.learning.build_fed_avg(
        model, client_optimizer=optimizers.sgd(0.3), server_optimizer=optimizers.adam(0.1)
    )
    state = process.initialize()
    assert state["optimizer"]["step"] == 0
    state, _ = process.next(state, make_client_batches(2))
    state, _ = process.next(state, make_client_batches(3))
    assert state["optimizer"]["step"] == 2
    assert np.abs(state["optimizer"]["first_moment"]["kernel"]).sum() > 0


def test_client_momentum_restarts_every_round_and_changes_the_result(model):
    data = make_client_batches(4)
    plain = fc.learning.build_fed_avg(model, client_optimizer=optimizers.sgd(0.3))
    heavy = fc.learning.build_fed_avg(model, client_optimizer=optimizers.sgd(0.3, momentum=0.9))
    plain_state, _ = plain.next(plain.initialize(), data)
    heavy_state, _ = heavy.next(heavy.initialize(), data)
    # The client optimizer's state is not part of the server state.
    assert heavy_state["optimizer"] == ()
    assert not np.allclose(plain_state["model"]["kernel"], heavy_state["model"]["kernel"])


def test_fed_sgd_takes_one_step_on_the_weighted_mean_gradient(model):
    data = make_client_batches(5)
    process = fc.learning.build_fed_sgd(model, server_optimizer=optimizers.sgd(0.5))
    state, metrics = process.next(process.initialize(), data)
    w, b = np.zeros((D, K)), np.zeros(K)
    gw_total, gb_total, count = np.zeros((D, K)), np.zeros(K), 0
    for batches in data:
        for batch in batches:
            _, gw, gb = batch_loss_and_gradient(w, b, batch["x"], batch["y"])
            n = len(batch["y"])
            gw_total, gb_total, count = gw_total + n * gw, gb_total + n * gb, count + n
    np.testing.assert_allclose(state["model"]["kernel"], -0.5 * gw_total / count, atol=1e-6)
    np.testing.assert_allclose(state["model"]["bias"], -0.5 * gb_total / count, atol=1e-6)
    assert float(metrics["loss"]) == pytest.approx(np.log(K), rel=1e-6)


def test_fed_sgd_is_fed_avg_with_one_unit_step_when_each_client_has_one_batch(model):
    data = [
        [{"x": np.concatenate([b["x"] for b in c]), "y": np.concatenate([b["y"] for b in c])}]
        for c in make_client_batches(6)
    ]
    sgd_process = fc.learning.build_fed_sgd(model, server_optimizer=optimizers.sgd(0.4))
    avg_process = fc.learning.build_fed_avg(
        model, client_optimizer=optimizers.sgd(1.0), server_optimizer=optimizers.sgd(0.4)
    )
    sgd_state, avg_state = sgd_process.initialize(), avg_process.initialize()
    for _ in range(3):
        sgd_state, _ = sgd_process.next(sgd_state, data)
        avg_state, _ = avg_process.next(avg_state, data)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(
            sgd_state["model"][name], avg_state["model"][name], rtol=1e-5, atol=1e-6
        )


def test_fed_avg_reaches_an_accuracy_floor_on_synthetic_0_0():
    data = fc.data.synthetic(0.0, 0.0, num_clients=10, seed=0)
    train, test = data.split(0.2)
    model = models.logistic_regression(60, 10)
    process = fc.learning.build_fed_avg(model, client_optimizer=optimizers.sgd(0.05))
    evaluate = fc.learning.build_fed_eval(model)
    batches = train.batches(32, seed=0)
    state = process.initialize()
    for _ in range(10):
        state, _ = process.next(state, batches)
    accuracy = float(evaluate(process.get_model_weights(state), test.batches(64))["accuracy"])
    labels = np.concatenate(test.labels)
    majority = np.bincount(labels).max() / len(labels)
    assert accuracy >= 0.6 and accuracy > majority + 0.2


def test_fed_eval_averages_over_all_examples(model):
    data = make_client_batches(7)
    params = {
        "kernel": np.random.default_rng(0).normal(size=(D, K)).astype(np.float32),
        "bias": np.array([0.1, -0.2, 0.3], np.float32),
    }
    result = fc.learning.build_fed_eval(model)(params, data)
    x = np.concatenate([b["x"] for c in data for b in c]).astype(np.float64)
    y = np.concatenate([b["y"] for c in data for b in c])
    loss, _, _ = batch_loss_and_gradient(params["kernel"], params["bias"], x, y)
    accuracy = np.mean(np.argmax(x @ params["kernel"] + params["bias"], axis=1) == y)
    assert float(result["loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(result["accuracy"]) == pytest.approx(accuracy)
    assert float(result["examples"]) == len(y)


# --- saving, loading, checkpoints ---------------------------------------------------------------


def test_a_saved_process_is_one_pb_that_runs_without_the_python_source(fed_avg, tmp_path):
    path = tmp_path / "fedavg.pb"
    fc.save(fed_avg, path)
    data = make_client_batches(8)
    state, metrics = fed_avg.next(fed_avg.initialize(), data)
    np.savez(tmp_path / "expected.npz", kernel=state["model"]["kernel"], loss=metrics["loss"])
    script = textwrap.dedent(f"""
        import numpy as np, fedcc as fc
        process = fc.load({str(path)!r})
        assert sorted(process) == ["initialize", "next"]
        rng = np.random.default_rng(8)
        data = []
        for size in (7, 12, 3, 9):
            x = rng.normal(size=(size, {D})).astype(np.float32)
            y = rng.integers(0, {K}, size).astype(np.int32)
            data.append([{{"x": x[i:i+4], "y": y[i:i+4]}} for i in range(0, size, 4)])
        state, metrics = process.next(process.initialize(), data)
        expected = np.load({str(tmp_path / "expected.npz")!r})
        assert state["model"]["kernel"].tobytes() == expected["kernel"].tobytes()
        assert metrics["loss"].tobytes() == expected["loss"].tobytes()
        print("same bits")
    """)
    # The child imports no learning code: the file alone is the process.
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "same bits" in result.stdout


def test_a_loaded_bundle_is_an_iterative_process_again(fed_avg, tmp_path):
    fc.save(fed_avg, tmp_path / "p.pb")
    loaded = fc.learning.IterativeProcess.from_bundle(fc.load(tmp_path / "p.pb"))
    assert loaded.state_type == fed_avg.state_type
    assert loaded.metadata["algorithm"] == "fed_avg"
    state, _ = loaded.next(loaded.initialize(), make_client_batches(9))
    assert set(loaded.get_model_weights(state)) == {"kernel", "bias"}


def test_checkpoint_round_trip_resumes_with_the_same_bits(tmp_path, model):
    process = fc.learning.build_fed_avg(model, server_optimizer=optimizers.adam(0.05))
    data = make_client_batches(10)
    state, _ = process.next(process.initialize(), data)
    process.save_state(state, tmp_path / "state.npz")
    with np.load(tmp_path / "state.npz") as archive:
        assert "model.kernel" in archive.files and "optimizer.first_moment.bias" in archive.files
    restored = process.load_state(tmp_path / "state.npz")
    resumed, _ = process.next(restored, data)
    continued, _ = process.next(state, data)
    assert resumed["model"]["kernel"].tobytes() == continued["model"]["kernel"].tobytes()
    assert resumed["round"] == continued["round"] == 2


def test_a_checkpoint_of_another_state_is_refused_naming_the_key(tmp_path, model, fed_avg):
    adam_process = fc.learning.build_fed_avg(model, server_optimizer=optimizers.adam(0.05))
    adam_process.save_state(adam_process.initialize(), tmp_path / "adam.npz")
    with pytest.raises(fc.learning.CheckpointError, match=r"unexpected key.*optimizer"):
        fed_avg.load_state(tmp_path / "adam.npz")
    state = fed_avg.initialize()
    state["model"] = {"kernel": np.zeros((D + 1, K), np.float32), "bias": state["model"]["bias"]}
    np.savez(
        tmp_path / "bad.npz",
        **{
            "model.kernel": state["model"]["kernel"],
            "model.bias": state["model"]["bias"],
            "round": np.int64(0),
        },
    )
    with pytest.raises(
        fc.learning.CheckpointError, match=r"'model.kernel': expected float32\[6,3\]"
    ):
        fed_avg.load_state(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(fc.learning.CheckpointError, match="not a readable"):
        fed_avg.load_state(tmp_path / "junk.npz")


# --- backends -----------------------------------------------------------------------------------

OTHER_BACKENDS = [name for name in ("threads", "processes") if name in fc.backends()]


@pytest.mark.skipif(not OTHER_BACKENDS, reason="no backend besides reference is installed yet")
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_every_backend_gives_the_reference_bits(backend, model):
    process = fc.learning.build_fed_avg(
        model,
        client_optimizer=optimizers.sgd(0.2, momentum=0.5),
        server_optimizer=optimizers.adam(0.05),
        aggregator=aggregators.dp_mean(0.3, 1.0, seed=4),
    )
    data = make_client_batches(11, sizes=(5, 9, 2, 8, 6, 4, 7))
    results = {}
    for name in ("reference", backend):
        with fc.use_backend(name, **({} if name == "reference" else {"workers": 2})):
            state = process.initialize()
            for _ in range(3):
                state, metrics = process.next(state, data)
        results[name] = (state, metrics)
    (expected, expected_metrics), (found, found_metrics) = results["reference"], results[backend]
    for name in ("kernel", "bias"):
        assert found["model"][name].tobytes() == expected["model"][name].tobytes()
    assert found_metrics["loss"].tobytes() == expected_metrics["loss"].tobytes()


# --- errors -------------------------------------------------------------------------------------


def test_wrong_arguments_are_refused_clearly(model):
    with pytest.raises(fc.FederatedTypeError, match=r"expected a fc\.learning\.models\.Model"):
        fc.learning.build_fed_avg("logistic")
    with pytest.raises(fc.FederatedTypeError, match="client_optimizer"):
        fc.learning.build_fed_avg(model, client_optimizer=0.1)
    with pytest.raises(fc.FederatedTypeError, match="aggregator must be"):
        fc.learning.build_fed_avg(model, aggregator="mean")
