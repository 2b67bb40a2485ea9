"""The dask backend against the reference backend: the same bits for 1, 2 and 3 workers.

The module starts its own local Dask cluster (three single-threaded worker
processes on 127.0.0.1) and connects backends of 1, 2 and 3 workers to it by
address; the tests of faults and of closing use a backend that starts and
stops its own two-worker cluster. Skipped only when dask.distributed is not
installed (`pip install 'fedcc[dask]'`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")  # installed with distributed

import fedcc as fc  # noqa: E402
from fedcc.ir.building_blocks import Data, walk  # noqa: E402
from fedcc.ir.types import (  # noqa: E402
    CLIENTS,
    SERVER,
    FederatedType,
    SequenceType,
    StructType,
    TensorType,
)
from fedcc.runtimes import client_data  # noqa: E402
from fedcc.runtimes.dask_backend import DaskBackend  # noqa: E402

# The scheduler of each local cluster serves /health on 8787 when it can, else elsewhere.
pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")

WORKER_COUNTS = (1, 2, 3)
GENERATED_PROGRAMS = 20


@pytest.fixture(scope="module")
def cluster():
    cluster = distributed.LocalCluster(
        n_workers=max(WORKER_COUNTS),
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def dask_backends(cluster):
    backends = {
        count: DaskBackend(workers=count, address=cluster.scheduler_address, timeout=120)
        for count in WORKER_COUNTS
    }
    yield backends
    for backend in backends.values():
        backend.close()


def same_bits(a, b) -> bool:
    """Whether two results are equal to the bit: same containers, dtypes, shapes and bytes."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_bits(a[k], b[k]) for k in a
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b) and len(a) == len(b) and all(map(same_bits, a, b))
        )
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def outcome(comp, *args, backend, **options):
    """The result of a run, or the class and message of the error it raised."""
    try:
        return ("result", fc.run(comp, *args, backend=backend, **options))
    except fc.FedccError as error:
        return ("error", type(error), str(error))


def assert_same_outcome(expected, found) -> None:
    """The same bits, or the same error followed by the worker and clients it came from."""
    assert expected[0] == found[0], (expected, found)
    if expected[0] == "result":
        assert same_bits(expected[1], found[1]), (expected[1], found[1])
    else:
        assert expected[1] is found[1]
        where = r" \[dask worker tcp://127\.0\.0\.1:\d+ \(clients \[\d+, \d+\)\)\]"
        # Errors raised on the server (not by a worker) are the same to the letter.
        assert found[2] == expected[2] or re.fullmatch(
            re.escape(expected[2]) + where, found[2], re.DOTALL
        ), found[2]


# --- hand-written programs -----------------------------------------------------------------

MODEL = fc.parse_type("<kernel=float32[5,3],bias=float32[3]>")
BATCH = fc.parse_type("<x=float32[?,5],y=int32[?]>")
ACCUMULATOR = fc.StructType([("model", MODEL), ("loss", "float32"), ("count", "float32")])
LABELS = np.arange(3, dtype=np.int32)


@fc.numpy_computation(MODEL, BATCH)
def batch_loss(model, batch):
    logits = batch["x"] @ model["kernel"] + model["bias"]
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    one_hot = (batch["y"][:, None] == LABELS).astype(np.float32)
    return np.mean(np.log(np.sum(np.exp(shifted), axis=-1)) - np.sum(one_hot * shifted, axis=-1))


loss_and_gradient = fc.value_and_grad(batch_loss)


@fc.numpy_computation(ACCUMULATOR, BATCH)
def sgd_step(accumulator, batch):
    loss, gradient = loss_and_gradient(accumulator["model"], batch)
    count = np.sum(np.ones_like(batch["y"])).astype(np.float32)
    model = accumulator["model"]
    rate = np.float32(0.1)
    return {
        "model": {
            "kernel": model["kernel"] - rate * gradient["kernel"],
            "bias": model["bias"] - rate * gradient["bias"],
        },
        "loss": accumulator["loss"] + loss * count,
        "count": accumulator["count"] + count,
    }


@fc.numpy_computation(MODEL, ACCUMULATOR)
def client_result(initial, trained):
    return {
        "delta": {
            "kernel": trained["model"]["kernel"] - initial["kernel"],
            "bias": trained["model"]["bias"] - initial["bias"],
        },
        "loss": trained["loss"] / np.maximum(trained["count"], np.float32(1)),
        "count": trained["count"],
    }


@fc.federated_computation(MODEL, fc.SequenceType(BATCH))
def client_update(model, batches):
    zero = {"model": model, "loss": np.float32(0), "count": np.float32(0)}
    return client_result(model, fc.sequence_reduce(batches, zero, sgd_step))


@fc.numpy_computation(MODEL, MODEL)
def apply_delta(model, delta):
    return {"kernel": model["kernel"] + delta["kernel"], "bias": model["bias"] + delta["bias"]}


@fc.federated_computation(
    fc.FederatedType(MODEL, fc.SERVER), fc.FederatedType(fc.SequenceType(BATCH), fc.CLIENTS)
)
def fedavg_round(model, data):
    results = fc.federated_map(client_update, [fc.federated_broadcast(model), data])
    delta = fc.federated_mean(results["delta"], weight=results["count"])
    new_model = fc.federated_apply(apply_delta, fc.federated_zip([model, delta]))
    return {"model": new_model, "loss": fc.federated_mean(results["loss"], weight=results["count"])}


@fc.federated_computation("{float32[3]}@CLIENTS")
def mean_sum_min_max(values):
    return (
        fc.federated_mean(values),
        fc.federated_sum(values),
        fc.federated_min(values),
        fc.federated_max(values),
    )


@fc.numpy_computation("float32", "float32[3]")
def decaying_accumulate(accumulator, value):
    # Not associative: the result depends on the order of the clients and of the merges.
    return accumulator * np.float32(0.75) + np.sum(value) * np.float32(1.3)


@fc.numpy_computation("float32", "float32")
def decaying_merge(a, b):
    return a * np.float32(0.5) + b


@fc.numpy_computation("float32")
def report(total):
    return total * np.float32(3)


@fc.federated_computation("{float32[3]}@CLIENTS")
def non_associative_aggregate(values):
    return fc.federated_aggregate(
        values, np.float32(0.1), decaying_accumulate, decaying_merge, report
    )


@fc.federated_computation("{int32[2]}@CLIENTS")
def secure_sum(values):
    return fc.federated_secure_sum(values, np.int32(100))


@fc.numpy_computation("int64", "float32[3]")
def noisy(seed, value):
    return value + fc.random.normal(seed, (3,))


@fc.numpy_computation("float32[3]")
def scale(value):
    return value * np.float32(-2.5)


@fc.federated_computation("int64@SERVER", "{float32[3]}@CLIENTS")
def client_values_come_back(seed, values):
    noisy_values = fc.federated_map(noisy, [fc.federated_broadcast(seed), values])
    return fc.federated_map(scale, noisy_values)


def client_batches(count: int, seed: int) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(count):
        batches = []
        for _ in range(int(rng.integers(0, 4))):
            size = int(rng.integers(1, 6))
            batches.append({
                "x": rng.standard_normal((size, 5)).astype(np.float32),
                "y": rng.integers(0, 3, size).astype(np.int32),
            })
        data.append(batches)
    return data


def vectors(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(3).astype(np.float32) for _ in range(count)]


def initial_model(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "kernel": rng.standard_normal((5, 3)).astype(np.float32),
        "bias": rng.standard_normal(3).astype(np.float32),
    }


HAND_WRITTEN = {
    "fedavg_round": (fedavg_round, lambda: (initial_model(0), client_batches(11, 1))),
    "mean_sum_min_max": (mean_sum_min_max, lambda: (vectors(13, 2),)),
    "non_associative_aggregate": (non_associative_aggregate, lambda: (vectors(9, 3),)),
    "secure_sum": (secure_sum, lambda: ([np.array([i, 2 * i], np.int32) for i in range(7)],)),
    "client_values_come_back": (client_values_come_back, lambda: (np.int64(5), vectors(5, 4))),
    "two_clients_for_three_workers": (mean_sum_min_max, lambda: (vectors(2, 5),)),
}


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_programs_give_the_reference_bits(dask_backends, name, workers):
    comp, arguments = HAND_WRITTEN[name]
    expected = outcome(comp, *arguments(), backend="reference")
    assert expected[0] == "result", expected
    assert_same_outcome(expected, outcome(comp, *arguments(), backend=dask_backends[workers]))


def test_a_fedavg_round_loaded_from_a_pb_gives_the_same_bits(dask_backends, tmp_path):
    fc.save(fedavg_round, tmp_path / "round.pb")
    loaded = fc.load(tmp_path / "round.pb")
    model, data = initial_model(7), client_batches(6, 8)
    for _ in range(3):
        expected = fc.run(fedavg_round, model, data, backend="reference")
        found = fc.run(loaded, model, data, backend=dask_backends[3])
        assert same_bits(expected, found)
        model = expected["model"]


def test_errors_in_client_work_name_the_same_client_as_the_reference(dask_backends):
    @fc.numpy_computation("float32[?]")
    def add_three(x):
        return x + np.ones(3, np.float32)

    @fc.federated_computation("{float32[?]}@CLIENTS")
    def broken(values):
        return fc.federated_sum(fc.federated_map(add_three, values))

    values = [np.ones(3, np.float32)] * 4 + [np.ones(4, np.float32)] + [np.ones(3, np.float32)]
    expected = outcome(broken, values, backend="reference")
    assert expected[0] == "error" and "client 4" in expected[2]
    for workers in WORKER_COUNTS:
        assert_same_outcome(expected, outcome(broken, values, backend=dask_backends[workers]))


# --- generated programs ----------------------------------------------------------------------


def python_value(t, rng, clients: int):
    """A Python argument of type `t` with `clients` values a client list."""
    if isinstance(t, TensorType):
        shape = tuple(int(rng.integers(0, 3)) if d is None else d for d in t.shape)
        if t.dtype.kind == "f":
            return rng.standard_normal(shape).astype(t.dtype)
        if t.dtype.kind == "b":
            return rng.integers(0, 2, shape).astype(bool)
        return rng.integers(0, 4, shape).astype(t.dtype)
    if isinstance(t, StructType):
        return tuple(python_value(element, rng, clients) for element in t)
    if isinstance(t, SequenceType):
        return [python_value(t.element, rng, clients) for _ in range(int(rng.integers(0, 3)))]
    if isinstance(t, FederatedType):
        if t.placement is SERVER or t.all_equal:
            return python_value(t.member, rng, clients)
        assert t.placement is CLIENTS
        return [python_value(t.member, rng, clients) for _ in range(clients)]
    raise AssertionError(f"no values of {t}")


def generated_programs():
    strategies = pytest.importorskip("strategies")
    found, seed = [], 0
    while len(found) < GENERATED_PROGRAMS:
        comp = strategies.build_federated_program(strategies.RandomChooser(1000 + seed))
        if not any(isinstance(node, Data) for node in walk(comp)):  # fictional URIs
            found.append((seed, comp))
        seed += 1
    return found


def test_generated_programs_give_the_reference_bits_for_every_worker_count(dask_backends):
    results = 0
    for seed, comp in generated_programs():
        argument = python_value(comp.type_signature.parameter, np.random.default_rng(seed), 5)
        expected = outcome(comp, argument, backend="reference", num_clients=5)
        results += expected[0] == "result"
        for workers in WORKER_COUNTS:
            found = outcome(comp, argument, backend=dask_backends[workers], num_clients=5)
            assert_same_outcome(expected, found)
    assert results >= GENERATED_PROGRAMS // 2  # most programs run to a result


# --- where client values live ----------------------------------------------------------------


def test_each_shard_lives_on_its_own_worker_process(dask_backends):
    backend = dask_backends[3]
    worker_pids = backend.client.run(os.getpid)
    addresses = backend.worker_addresses()
    assert sorted(addresses) == sorted(worker_pids) and len(set(addresses)) == 3
    assert len({worker_pids[address] for address in addresses}) == 3
    assert os.getpid() not in worker_pids.values()

    with backend.open_session(7) as session:
        handle = session.place([np.float32(i) for i in range(7)])
        assert session.bounds == ((0, 2), (2, 4), (4, 7))
        assert session.materialize(handle) == [np.float32(i) for i in range(7)]


def test_in_memory_client_data_and_functions_travel_once_per_worker(cluster):
    backend = DaskBackend(workers=2, address=cluster.scheduler_address)
    rng = np.random.default_rng(4)
    # Each client's batch holds more than a few kilobytes: worth sending by content.
    data = [
        [{"x": rng.standard_normal((300, 5)).astype(np.float32),
          "y": rng.integers(0, 3, 300).astype(np.int32)}]
        for _ in range(6)
    ]  # fmt: skip
    model = initial_model(1)
    try:
        before = backend.statistics()
        expected = fc.run(fedavg_round, model, data, backend="reference")
        assert same_bits(expected, fc.run(fedavg_round, model, data, backend=backend))
        first = backend.statistics()
        assert first["values_sent"] - before["values_sent"] == 6
        assert first["functions_sent"] > before["functions_sent"]
        model = expected["model"]
        expected = fc.run(fedavg_round, model, data, backend="reference")
        assert same_bits(expected, fc.run(fedavg_round, model, data, backend=backend))
        second = backend.statistics()
        assert second["values_sent"] == first["values_sent"]
        assert second["values_referenced"] - first["values_referenced"] == 6
        assert second["functions_sent"] == first["functions_sent"]
        # The second round sends digests, not the clients' 36 kB of examples.
        assert second["bytes_sent"] - first["bytes_sent"] < 20_000
    finally:
        backend.close()


def test_client_data_folders_are_loaded_once_per_worker(dask_backends, tmp_path):
    data = client_batches(7, 9)
    folder = tmp_path / "clients"
    folder.mkdir()
    for index, batches in enumerate(data):
        x = np.concatenate([b["x"] for b in batches]) if batches else np.zeros((0, 5), np.float32)
        y = np.concatenate([b["y"] for b in batches]) if batches else np.zeros(0, np.int32)
        np.savez(folder / f"client_{index:02d}.npz", x=x, y=y)
    # A batch size above any client's example count: one batch a client (none if it has none).
    rebatched = [
        [{"x": np.concatenate([b["x"] for b in batches]),
          "y": np.concatenate([b["y"] for b in batches])}] if batches else []
        for batches in data
    ]  # fmt: skip
    round_on_folder = client_data.bind_client_data(
        fedavg_round.building_block, client_data.npz_folder_uri(folder, batch_size=100), 1
    )
    backend = dask_backends[2]
    backend.client.run(client_data.clear_cache)
    model = initial_model(3)
    for _ in range(3):
        expected = fc.run(fedavg_round, model, rebatched, backend="reference")
        found = fc.run(round_on_folder, model, backend=backend)
        assert same_bits(expected, found)
        model = expected["model"]
    statistics = backend.client.run(client_data.load_statistics)
    loads = {address: statistics[address] for address in backend.worker_addresses()}
    # Worker 0 holds clients [0, 3), worker 1 clients [3, 7): each read its own files once.
    assert [s.files_read for s in loads.values()] == [3, 4]
    assert [s.cache_hits for s in loads.values()] == [2, 2]


def test_a_bad_client_file_names_the_file_the_client_and_the_worker(dask_backends, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for index in range(5):
        x = np.zeros((4, 5), np.float64 if index == 3 else np.float32)
        np.savez(folder / f"client_{index}.npz", x=x, y=np.zeros(4, np.int32))
    comp = client_data.bind_client_data(
        fedavg_round.building_block, client_data.npz_folder_uri(folder, batch_size=2), 1
    )
    backend = dask_backends[2]
    with pytest.raises(fc.FederatedTypeError) as caught:
        fc.run(comp, initial_model(0), backend=backend)
    message = str(caught.value)
    worker = backend.worker_addresses()[1]  # clients [2, 5)
    assert "client_3.npz: client 3" in message and f"dask worker {worker}" in message
    assert "expected float32[?,5]" in message and "found float64[4,5]" in message


# --- a backend with its own cluster: options, faults, closing ---------------------------------


@pytest.fixture(scope="module")
def own_cluster_backend():
    backend = DaskBackend(workers=2, timeout=60)
    yield backend
    backend.close()


def test_dask_is_installed_and_checks_its_options():
    assert "dask" in fc.backends()
    with pytest.raises(fc.BackendError, match="workers must be a positive int"):
        DaskBackend(workers=0)
    with pytest.raises(fc.BackendError, match="timeout must be a positive number"):
        DaskBackend(timeout=-1)


def test_a_dead_worker_is_an_error_naming_it_and_the_backend_stays_usable(own_cluster_backend):
    backend = own_cluster_backend
    values = vectors(6, 11)
    expected = fc.run(mean_sum_min_max, values, backend="reference")
    assert same_bits(expected, fc.run(mean_sum_min_max, values, backend=backend))
    session = backend.open_session(6)
    handle = session.place(values)
    victim = backend.worker_addresses()[1]
    os.kill(backend.client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
    with pytest.raises(fc.BackendError, match=rf"dask worker {victim} \(clients \[3, 6\)\)"):
        for _ in range(100):  # until the worker's death is noticed
            session.materialize(handle)
            time.sleep(0.1)
    session.close()
    assert same_bits(expected, fc.run(mean_sum_min_max, values, backend=backend))
    assert victim not in backend.worker_addresses()


def test_a_hung_worker_is_an_error_naming_it_and_is_restarted(own_cluster_backend):
    backend = own_cluster_backend
    values = vectors(4, 12)
    expected = fc.run(mean_sum_min_max, values, backend="reference")
    assert same_bits(expected, fc.run(mean_sum_min_max, values, backend=backend))
    victim = backend.worker_addresses()[0]
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    backend.client.run(block_the_event_loop, 30, workers=[victim], wait=False)
    backend.timeout = 1.0
    try:
        with pytest.raises(fc.BackendError, match=rf"dask worker {victim} .* within 1 s"):
            fc.run(mean_sum_min_max, values, backend=backend)
    finally:
        backend.timeout = 60.0
    assert same_bits(expected, fc.run(mean_sum_min_max, values, backend=backend))


def test_a_worker_answering_garbage_is_an_error_and_is_replaced(own_cluster_backend, monkeypatch):
    backend = own_cluster_backend
    values = vectors(5, 13)
    expected = fc.run(mean_sum_min_max, values, backend="reference")
    garbled = backend.worker_addresses()
    monkeypatch.setattr(backend, "call_hosts", lambda calls: [b"FCW1 garbage"] * len(calls))
    with pytest.raises(fc.BackendError, match=r"dask worker .* answered with a malformed frame"):
        fc.run(mean_sum_min_max, values, backend=backend)
    monkeypatch.undo()
    assert same_bits(expected, fc.run(mean_sum_min_max, values, backend=backend))
    assert backend.worker_addresses() != garbled  # the first worker was restarted


async def block_the_event_loop(seconds: float) -> None:
    # A worker that neither takes nor answers requests: its event loop is stuck.
    time.sleep(seconds)


def test_close_stops_the_backends_own_cluster():
    backend = DaskBackend(workers=1)
    pid = backend.client.run(os.getpid)
    (worker_pid,) = pid.values()
    assert fc.run(secure_sum, [np.array([1, 2], np.int32)], backend=backend).tolist() == [1, 2]
    backend.close()
    with pytest.raises(fc.BackendError, match="closed"):
        backend.open_session(1)
    deadline = time.monotonic() + 20
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
