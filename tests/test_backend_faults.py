"""Faults on the threads and processes backends: clear errors in bounded time, then work as usual.

A worker killed mid-round, a worker that hangs past `timeout=`, one that
answers garbage, user code that raises on a worker, a client file that does
not fit its type: each is an error naming the worker and the clients, and the
next call works. With `retries=N` a lost shard is rebuilt on a new process
and the result is bit-identical. Ctrl-C and a killed server leave no worker
behind, and no test leaves a zombie.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from backend_checks import WorkerLedger, fingerprint

import fedcc as fc
from fedcc.ir.building_blocks import (
    Data,
    Lambda,
    Literal,
    LocalGraph,
    Reference,
    Struct,
    call_intrinsic,
)
from fedcc.ir.errors import BackendError, FedccError, FederatedTypeError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.type_text import parse_type
from fedcc.runtimes import run, wire
from fedcc.runtimes.processes import ProcessesBackend
from fedcc.runtimes.shard import AggregateRequest, ClientShard, MapRequest
from fedcc.runtimes.threads import ThreadsBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# Every fault must be reported within this many seconds (generous: CI machines are slow).
BOUND_SECONDS = 20.0
WORKERS = WorkerLedger()
remember = WORKERS.remember


@pytest.fixture(scope="module", autouse=True)
def no_processes_left_behind():
    """After the module: every worker started here is gone and reaped, and no zombie is left."""
    yield
    WORKERS.assert_all_gone(BOUND_SECONDS)


def lam(name, t, body_of):
    t = parse_type(t)
    return Lambda(name, t, body_of(Reference(name, t)))


def graph(parameter_type, body):
    builder = GraphBuilder(parameter_type)
    return LocalGraph(builder.build([body(builder, *builder.parameters())]))


def mean_of_squares():
    square = graph("float32[?]", lambda g, x: g.op("multiply", x, x))
    return lam("v", "{float32[?]}@CLIENTS", lambda v: call_intrinsic(
        "federated_mean", call_intrinsic("federated_map", Struct([square, v]))))


VALUES = [np.arange(k, k + 5, dtype=np.float32) / 7 for k in range(10)]


def is_expected(result) -> bool:
    expected = run(mean_of_squares(), VALUES, backend="reference")
    return result.dtype == expected.dtype and result.tobytes() == expected.tobytes()


def before_requests(backend, kind, action):
    """Calls `action()` once, just before the backend sends its first request of `kind`."""
    serve = backend._serve
    done = []

    def hooked(session, requests):
        if not done and isinstance(requests[0], kind):
            done.append(True)
            action()
        return serve(session, requests)

    backend._serve = hooked
    return done


def kill_after(pid: int, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


# --- a worker killed mid-round -----------------------------------------------------------


def test_a_worker_killed_while_computing_is_a_backend_error_naming_it_then_the_pool_works():
    with ProcessesBackend(workers=2) as backend:
        assert is_expected(run(mean_of_squares(), VALUES, backend=backend))
        remember(backend)
        victim = backend.worker_pids()[1]
        # Frozen just before the client work reaches it, then killed while it has the request.
        before_requests(backend, MapRequest, lambda: os.kill(victim, signal.SIGSTOP))
        timer = kill_after(victim, 0.5)
        started = time.monotonic()
        with pytest.raises(BackendError) as error:
            run(mean_of_squares(), VALUES, backend=backend)
        timer.join()
        assert time.monotonic() - started < BOUND_SECONDS
        message = str(error.value)
        assert f"worker 1 (pid {victim}) died (killed by SIGKILL)" in message, message
        assert "federated_map request for clients [5, 10)" in message, message
        # A new worker took its place; the next call works.
        assert is_expected(run(mean_of_squares(), VALUES, backend=backend))
        assert backend.worker_pids()[1] != victim and backend.statistics()["restarts"] == 1
        remember(backend)


def test_values_lost_with_a_killed_worker_are_named_when_next_needed():
    with ProcessesBackend(workers=3) as backend:
        run(mean_of_squares(), VALUES, backend=backend)
        remember(backend)
        victim = backend.worker_pids()[2]
        # Killed after the client work, before the aggregation needs its results.
        before_requests(backend, AggregateRequest, lambda: kill_worker(backend, 2))
        with pytest.raises(BackendError) as error:
            run(mean_of_squares(), VALUES, backend=backend)
        message = str(error.value)
        assert f"worker 2 (pid {victim}) died (killed by SIGKILL) between requests" in message
        assert "values of clients [6, 10) of this run were lost" in message
        assert "retries=N" in message
        assert is_expected(run(mean_of_squares(), VALUES, backend=backend))
        remember(backend)


def test_a_worker_that_died_between_runs_is_replaced_without_an_error():
    with ProcessesBackend(workers=2) as backend:
        run(mean_of_squares(), VALUES, backend=backend)
        remember(backend)
        kill_worker(backend, 0)
        assert is_expected(run(mean_of_squares(), VALUES, backend=backend))
        remember(backend)


def kill_worker(backend: ProcessesBackend, index: int) -> int:
    """Kills worker `index` and waits until it has exited; its pid."""
    process = backend._slots[index].process
    process.kill()
    process.wait(BOUND_SECONDS)
    return process.pid


# --- hangs ---------------------------------------------------------------------------------


def test_a_hung_worker_times_out_naming_it_and_is_replaced():
    with ProcessesBackend(workers=2, timeout=1.0) as backend:
        run(mean_of_squares(), VALUES, backend=backend)
        remember(backend)
        victim = backend.worker_pids()[0]
        before_requests(backend, MapRequest, lambda: os.kill(victim, signal.SIGSTOP))
        started = time.monotonic()
        with pytest.raises(BackendError) as error:
            run(mean_of_squares(), VALUES, backend=backend)
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < BOUND_SECONDS
        message = str(error.value)
        assert f"worker 0 (pid {victim}) did not answer within 1 s" in message, message
        assert "clients [0, 5)" in message
        assert is_expected(run(mean_of_squares(), VALUES, backend=backend))
        assert victim not in backend.worker_pids()
        remember(backend)


def test_a_hung_thread_times_out_naming_it_and_the_next_run_works(monkeypatch):
    release = threading.Event()
    handle = ClientShard.handle

    def hanging(shard, request):
        if isinstance(request, MapRequest) and shard.start > 0 and not release.is_set():
            release.wait(BOUND_SECONDS)
        return handle(shard, request)

    monkeypatch.setattr(ClientShard, "handle", hanging)
    with ThreadsBackend(workers=3, timeout=0.5) as backend:
        started = time.monotonic()
        with pytest.raises(BackendError) as error:
            run(mean_of_squares(), VALUES, backend=backend)
        assert time.monotonic() - started < BOUND_SECONDS
        message = str(error.value)
        assert "worker thread 1 did not finish the MapRequest for clients [3, 6) within 0.5 s" in (
            message
        )
        release.set()
        assert is_expected(run(mean_of_squares(), VALUES, backend=backend))


# --- garbage -------------------------------------------------------------------------------


def answer_with_garbage(backend: ProcessesBackend, index: int) -> threading.Thread:
    """Puts a fake worker that answers every request with garbage in slot `index`."""
    slot = backend._slots[index]
    server_end, fake_end = socket.socketpair()

    def fake() -> None:
        with fake_end, contextlib.suppress(OSError):
            while wire.receive_frame(fake_end) is not None:
                fake_end.sendall(b"\x10\x00\x00\x00\x00\x00\x00\x00FCW1\x00r\x0e\xff garbage!")

    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    slot.sock.close()
    slot.sock = server_end
    slot.reader = wire.FrameReader(server_end)
    return thread


def test_a_garbage_answer_is_a_backend_error_and_the_worker_is_replaced():
    with ProcessesBackend(workers=2) as backend:
        run(mean_of_squares(), VALUES, backend=backend)
        remember(backend)
        fake = answer_with_garbage(backend, 1)
        with pytest.raises(BackendError) as error:
            run(mean_of_squares(), VALUES, backend=backend)
        message = str(error.value)
        assert "worker 1" in message and "answered with a malformed frame" in message, message
        assert "clients [5, 10)" in message
        fake.join(BOUND_SECONDS)
        assert not fake.is_alive()
        assert is_expected(run(mean_of_squares(), VALUES, backend=backend))
        remember(backend)


# --- user code that raises -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["threads", "processes"])
def test_user_code_raising_on_a_worker_names_the_client_and_the_worker(name):
    add = graph("float32[?]", lambda g, x: g.op("add", x, g.constant(np.ones(5, np.float32))))
    comp = lam("x", "{float32[?]}@CLIENTS", lambda x: call_intrinsic(
        "federated_map", Struct([add, x])))
    values = list(VALUES)
    values[7] = np.ones(4, np.float32)
    with fc.use_backend(name, workers=3) as backend:
        with pytest.raises(FederatedTypeError) as error:
            run(comp, values)
        message = str(error.value)
        assert message.startswith("federated_map, client 7: "), message
        assert "worker" in message and "clients [6, 10)" in message, message
        # The workers are still up, and the next call works.
        assert is_expected(run(mean_of_squares(), VALUES))
        if name == "processes":
            remember(backend)
            assert backend.statistics()["restarts"] == 0


def test_a_client_file_that_does_not_fit_names_the_file_client_and_worker(tmp_path):
    pytest.importorskip("fedcc.runtimes.client_data")
    for client in range(6):
        x = np.ones((4, 3), np.float32 if client != 4 else np.float64)
        np.savez(tmp_path / f"client_{client:02d}.npz", x=x)
    element = parse_type("<x=float32[?,3]>")
    data = fc.FederatedType(fc.SequenceType(element), fc.CLIENTS, all_equal=False)
    comp = call_intrinsic("federated_sum", call_intrinsic("federated_map", Struct([
        _count_examples(element), Data(f"npz-folder:{tmp_path}?batch_size=2", data)])))
    for name in ("threads", "processes"):
        with fc.use_backend(name, workers=2) as backend:
            with pytest.raises(FederatedTypeError) as error:
                run(comp)
            message = str(error.value)
            assert "client_04.npz" in message and "client 4" in message, message
            assert "worker" in message, message
            if name == "processes":
                assert "processes worker 1" in message, message
                remember(backend)


def _count_examples(element):
    # (<x=float32[?,3]>* -> int32): the number of examples, with sequence_reduce.
    sequence = fc.SequenceType(element)
    accumulate = graph(fc.StructType([fc.TensorType(np.int32), element]), lambda g, n, x: g.op(
        "add", n, g.op("cast", g.op("reduce_sum", g.op("ones_like", g.op(
            "reduce_sum", x, axis=1))), dtype="int32")))
    return lam("s", str(sequence), lambda s: call_intrinsic(
        "sequence_reduce", Struct([s, Literal(np.int32(0)), accumulate])))


# --- retries: a lost shard rebuilt elsewhere gives the same bits ------------------------------


def fedavg():
    from test_backends_threads_processes import fedavg_arguments, fedavg_example

    module = fedavg_example()
    return module.fedavg_round(), fedavg_arguments(module, clients=9, examples=10)


def same_bits(a, b) -> bool:

    return fingerprint(a) == fingerprint(b)


def test_with_retries_a_shard_lost_between_requests_is_rebuilt_bit_for_bit():
    comp, (state, data) = fedavg()
    reference = run(comp, state, data, backend="reference")
    with ProcessesBackend(workers=3, retries=1) as backend:
        run(comp, state, data, backend=backend)
        remember(backend)
        victim = backend.worker_pids()[1]
        # The client work is done; the worker that holds its results dies before the mean.
        before_requests(backend, AggregateRequest, lambda: kill_worker(backend, 1))
        assert same_bits(run(comp, state, data, backend=backend), reference)
        statistics = backend.statistics()
        assert statistics["restarts"] == 1 and victim not in backend.worker_pids()
        remember(backend)


def test_with_retries_a_worker_killed_mid_request_is_rerun_elsewhere_bit_for_bit():
    comp, (state, data) = fedavg()
    reference = run(comp, state, data, backend="reference")
    with ProcessesBackend(workers=3, retries=2) as backend:
        run(comp, state, data, backend=backend)
        remember(backend)
        victim = backend.worker_pids()[2]
        before_requests(backend, MapRequest, lambda: os.kill(victim, signal.SIGSTOP))
        timer = kill_after(victim, 0.3)
        assert same_bits(run(comp, state, data, backend=backend), reference)
        timer.join()
        assert backend.statistics()["restarts"] == 1
        remember(backend)


def test_with_retries_a_hang_and_garbage_are_rerun_too_and_retries_run_out():
    comp, (state, data) = fedavg()
    reference = run(comp, state, data, backend="reference")
    with ProcessesBackend(workers=2, retries=1, timeout=2.0) as backend:
        run(comp, state, data, backend=backend)
        remember(backend)
        victim = backend.worker_pids()[0]
        before_requests(backend, MapRequest, lambda: os.kill(victim, signal.SIGSTOP))
        assert same_bits(run(comp, state, data, backend=backend), reference)
        remember(backend)
        answer_with_garbage(backend, 1)
        assert same_bits(run(comp, state, data, backend=backend), reference)
        remember(backend)
        assert backend.statistics()["restarts"] == 2

        # A worker that fails every time, also once replaced: after the retries, the error.
        def start_garbage(indices, start=backend._start):
            failures = start(indices)
            remember(backend)
            if 1 in indices:
                answer_with_garbage(backend, 1)
            return failures

        answer_with_garbage(backend, 1)
        backend._start = start_garbage
        with pytest.raises(BackendError, match=r"worker 1 .*malformed frame.*after 1 retries"):
            run(comp, state, data, backend=backend)
        assert backend.statistics()["restarts"] == 4


# --- Ctrl-C and a killed server leave no worker behind -----------------------------------------

SERVER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fedcc.ir.building_blocks import Lambda, Reference, call_intrinsic
    from fedcc.ir.type_text import parse_type
    from fedcc.runtimes import run

    t = parse_type("{float32}@CLIENTS")
    comp = Lambda("v", t, call_intrinsic("federated_sum", Reference("v", t)))
    run(comp, [1.0, 2.0, 3.0], backend="processes", workers=2)
    from fedcc.runtimes.registry import shared_backend
    pids = shared_backend("processes", workers=2).worker_pids()
    print(" ".join(map(str, pids)), flush=True)
    while True:
        run(comp, [1.0, 2.0, 3.0], backend="processes", workers=2)
        time.sleep(0.01)
    """
)


def start_server_script():
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return process, [int(pid) for pid in line.split()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Not our child: once its parent is gone, init reaps it; a zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def wait_until_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {[p for p in pids if not gone(p)]} remain"
        time.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_server_interrupted_or_killed_leaves_no_worker_behind(how):
    process, pids = start_server_script()
    try:
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
        time.sleep(0.2)
        process.send_signal(how)
        process.wait(BOUND_SECONDS)
        if how == signal.SIGINT:
            assert "KeyboardInterrupt" in process.stderr.read()
        wait_until_gone(pids)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def test_closing_stops_the_workers_and_a_closed_backend_refuses_runs():
    backend = ProcessesBackend(workers=2)
    run(mean_of_squares(), VALUES, backend=backend)
    pids = remember(backend).worker_pids()
    backend.close()
    wait_until_gone(pids)
    with pytest.raises(FedccError, match="closed"):
        run(mean_of_squares(), VALUES, backend=backend)
