"""The `threads` backend: client shards in this process, served by a pool of worker threads.

A run's clients are split into one contiguous shard a worker (runtimes/shard.py);
shard k stays in memory here, and each request to it runs on worker thread k
(shard 0 on the calling thread, when there is no timeout), so the shards'
client work runs in parallel wherever NumPy releases the GIL. Client data is
not copied: a shard holds the very arrays it was given. Reductions follow the
canonical tree, so results are bit-identical to the `reference` backend for
any number of workers. Secure sums are plain bounded sums here (every shard
lives in this process, so there is no server to hide them from); the
`processes` backend masks them.

The threads start on first use and are reused by every later run; they are
daemon threads, so they never keep the interpreter from exiting.

Faults: an error raised by user code keeps its class and names the client and
the worker thread. With `timeout=` seconds, a shard that has not answered in
time raises a `BackendError` naming the worker thread and its clients; a
thread cannot be stopped, so it is abandoned (it ends once its request does)
and a new thread takes its place, while the shard's values are lost for the
rest of that run. A later run is not affected.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from fedcc.ir.errors import BackendError, FedccError
from fedcc.runtimes.backend import Backend, ClientSession
from fedcc.runtimes.shard import ClientShard, ShardedSession, ShardRequest, split_contiguous

_OPTIONS = ("workers", "timeout")


class WorkerThread:
    """One daemon thread running the jobs put to it, one after another."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._loop, name=f"fedcc-threads-worker-{index}", daemon=True
        )
        self.thread.start()

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Runs `function(*args)` on this thread after the jobs before it; its future."""
        future: Future = Future()
        self._jobs.put((future, function, args))
        return future

    def stop(self) -> None:
        """Ends the thread once the jobs already given to it are done."""
        self._jobs.put(None)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # handed to the waiting caller
                future.set_exception(error)
            del job, future


class ThreadsSession(ShardedSession):
    """One run: shards in this process, each served by its worker thread."""

    def __init__(self, backend: ThreadsBackend, num_clients: int) -> None:
        super().__init__(num_clients, split_contiguous(num_clients, backend.workers))
        self.backend = backend
        self.shards = [ClientShard(num_clients, start, stop) for start, stop in self.bounds]
        # Shards whose thread was abandoned after a timeout, and why: their values are gone.
        self.lost: dict[int, str] = {}
        self.closing = False

    def dispatch(self, requests: Sequence[ShardRequest]) -> list[Any]:
        return self.backend._serve(self, requests)

    def close(self) -> None:
        self.closing = True
        super().close()


class ThreadsBackend(Backend):
    """Client shards in this process, run by `workers` threads (default: one a CPU).

    `timeout`: seconds a shard may take for one request (None: no limit).
    """

    name = "threads"

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise BackendError(
                f"the threads backend takes {', '.join(o + '=' for o in _OPTIONS)}; "
                f"found {', '.join(unknown)}"
            )
        workers = options.get("workers")
        self.workers = _workers_option((os.cpu_count() or 1) if workers is None else workers)
        self.timeout = _timeout_option(options.get("timeout"))
        self._threads: dict[int, WorkerThread] = {}
        self._lock = threading.Lock()
        self._closed = False

    def open_session(self, num_clients: int) -> ClientSession:
        if self._closed:
            raise BackendError("this threads backend is closed")
        return ThreadsSession(self, num_clients)

    def close(self) -> None:
        """Ends the worker threads once their current requests are done."""
        with self._lock:
            self._closed = True
            threads, self._threads = list(self._threads.values()), {}
        for worker in threads:
            worker.stop()

    def _thread(self, index: int) -> WorkerThread:
        with self._lock:
            worker = self._threads.get(index)
            if worker is None:
                worker = self._threads[index] = WorkerThread(index)
            return worker

    def _abandon(self, index: int, worker: WorkerThread) -> None:
        # The thread may run on for a while; it ends after its request, and another takes over.
        worker.stop()
        with self._lock:
            if self._threads.get(index) is worker:
                del self._threads[index]

    def _serve(self, session: ThreadsSession, requests: Sequence[ShardRequest]) -> list[Any]:
        """Runs `requests[k]` on shard k of `session`, in parallel; the answers in shard order."""
        if self._closed and not session.closing:
            raise BackendError("this threads backend is closed")
        failures: dict[int, FedccError] = {}
        futures: dict[int, tuple[WorkerThread, Future]] = {}
        inline = None
        for k, request in enumerate(requests):
            if k in session.lost:
                if not session.closing:
                    failures[k] = BackendError(session.lost[k])
                continue
            if k == 0 and self.timeout is None:
                inline = request  # runs on this thread, once the others are under way
                continue
            worker = self._thread(k)
            futures[k] = (worker, worker.submit(session.shards[k].handle, request))
        answers: dict[int, Any] = {}
        if inline is not None:
            try:
                answers[0] = session.shards[0].handle(inline)
            except FedccError as error:
                failures[0] = _located(error, "the calling thread", session.bounds[0])
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for k, (worker, future) in futures.items():
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                answers[k] = future.result(timeout=remaining)
            except FutureTimeout:
                failures[k] = self._timed_out(session, k, worker, requests[k])
            except FedccError as error:
                failures[k] = _located(error, f"worker thread {k}", session.bounds[k])
        if failures:
            # The first shard's error: the one naming the first client, as in the reference.
            raise failures[min(failures)]
        return [answers.get(k) for k in range(len(requests))]

    def _timed_out(
        self, session: ThreadsSession, k: int, worker: WorkerThread, request: ShardRequest
    ) -> BackendError:
        self._abandon(k, worker)
        start, stop = session.bounds[k]
        session.lost[k] = (
            f"threads backend: the values of clients [{start}, {stop}) of this run were lost "
            f"when worker thread {k} timed out"
        )
        return BackendError(
            f"threads backend: worker thread {k} did not finish the {type(request).__name__} "
            f"for clients [{start}, {stop}) within {self.timeout:g} s; the thread was "
            "abandoned and its clients' values of this run are lost"
        )


def _located(error: FedccError, worker: str, bounds: tuple[int, int]) -> FedccError:
    # The same error, saying which worker and clients it came from.
    start, stop = bounds
    message = f"{error} [threads backend, {worker}, clients [{start}, {stop})]"
    try:
        located = type(error)(message)
    except TypeError:
        located = BackendError(message)
    located.__cause__ = error.__cause__ if error.__cause__ is not None else error
    return located


def _workers_option(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackendError(f"the threads backend's workers= must be an int >= 1, found {value!r}")
    return value


def _timeout_option(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BackendError(
            "the threads backend's timeout= must be a positive number of seconds or None, "
            f"found {value!r}"
        )
    return float(value)
