"""The `processes` backend: a persistent pool of worker processes, one shard of clients each.

Shard k of every run lives in worker process k (runtimes/process_worker.py),
which keeps its clients' values between the steps of a computation. The
server sends one request a shard a step, in frames of runtimes/wire.py: no
pickle; functions as their IR bytes and client data by content, each sent to
a worker only the first time it needs them (sha256 digests; the worker keeps
an LRU store bounded in bytes); large tensors through shared memory. Workers
pre-aggregate their shards along the canonical tree, so only partial
aggregates come back. Placing client data hashes it (sha256) to find what a
worker already holds: frozen arrays once in their life, writeable ones each
time, since they may have changed; so the cheapest data to place round after
round is read-only (`array.flags.writeable = False`).

The pool starts on the first run, is reused by every later run (the
registry keeps one backend per name and options), and stops at `close()` or
when the interpreter exits. Workers ignore Ctrl-C; the server stops those it
was waiting for and raises `KeyboardInterrupt`, and a worker exits by itself
when the server process goes away, so nothing is left behind.

Secure sums (`federated_secure_sum`, `federated_secure_sum_bitwidth`) are
real secure aggregation, after Bonawitz et al. (CCS 2017), with one party a
worker (masks between clients of one shard would cancel inside the worker,
so the server's view is the same). Each secure sum is two steps: every
worker draws a fresh Diffie-Hellman key pair (RFC 3526 group 14, 256-bit
private exponent) and sends its public key; the server relays all public
keys to every worker, with a fresh nonce; each worker checks its clients'
values against the bounds, sums its shard exactly, and sends that partial
sum plus the SHAKE-256 masks it shares with every later worker, minus those
it shares with every earlier one, modulo M = 2**128 (two uint64 limbs an
element). The server adds the masked inputs modulo M; the masks cancel and
what is left is the exact total, checked for overflow of the dtype and
bit-identical to the reference backend. What the server sees: public keys
and uniformly random masked inputs whose sum is the total. What it cannot
compute: any pair's shared secret, hence any worker's partial sum or any
client's value. With one worker there is no pair and nothing to mask with:
the server then receives the total, which is the output anyway. Not covered:
dropout recovery (Bonawitz et al.'s secret sharing of keys) is not
implemented, so a worker lost mid-sum fails the sum (or, with `retries`,
restarts it with fresh keys on every worker); the threat model is an
honest-but-curious server, so one that substitutes public keys (a
man-in-the-middle) is out of scope; the clients of one worker trust that
worker; and a failing check reveals what the reference backend's message
says (an out-of-range value and its client, or that a shard's own sum
overflows). The `reference`, `threads` and `dask` backends compute the same
sums without masking.

Faults. A worker that dies, does not answer within `timeout` seconds, or
answers with a malformed frame is stopped and replaced by a new process.
Without `retries`, the request fails with a `BackendError` naming the worker
and the clients whose values were lost; with `retries=N`, the server (which
keeps each shard's history of requests for the run) rebuilds the shard on the
new process and sends the request again, up to N times: computations are
deterministic, so the result is the same, bit for bit. Errors raised by user
code on a worker keep their class and name the client (and the worker); the
worker stays up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from fedcc.ir import errors
from fedcc.ir.errors import BackendError, FedccError
from fedcc.runtimes import secure_aggregation, wire
from fedcc.runtimes.backend import Aggregation, Backend, ClientSession, ClientValue
from fedcc.runtimes.shard import (
    AggregateRequest,
    BroadcastRequest,
    LoadRequest,
    MapRequest,
    MaskedSumRequest,
    MaskKeyRequest,
    MaterializeRequest,
    PlaceRequest,
    ReleaseRequest,
    ShardedSession,
    ShardRequest,
    split_contiguous,
)

DEFAULT_SHARED_MEMORY_THRESHOLD = 1 << 20
DEFAULT_CACHE_BYTES = 1 << 30
# Client values with less tensor data than this travel inline each time: a
# digest and a round trip on a cache miss would cost more than they save.
CONTENT_MIN_BYTES = 4096
# How many digests of what a worker holds the server remembers at most.
MAX_SENT_DIGESTS = 1 << 16
# The backend's options and their defaults (workers: one a CPU).
OPTIONS: dict[str, Any] = {
    "workers": None,
    "timeout": None,
    "retries": 0,
    "shared_memory_threshold": DEFAULT_SHARED_MEMORY_THRESHOLD,
    "cache_bytes": DEFAULT_CACHE_BYTES,
}
# How long a new worker may take to import fedcc and say it is ready.
STARTUP_SECONDS = 120.0
# How long a worker asked to exit may take before it is killed.
EXIT_SECONDS = 5.0

# What each request is called in messages.
_REQUEST_NAMES: dict[type, Callable[[Any], str]] = {
    PlaceRequest: lambda request: "placement of client values",
    BroadcastRequest: lambda request: "broadcast",
    LoadRequest: lambda request: f"load of {request.uri!r}",
    MapRequest: lambda request: f"{request.intrinsic} request",
    AggregateRequest: lambda request: f"{request.aggregation.intrinsic} request",
    MaskKeyRequest: lambda request: "key exchange of a secure sum",
    MaskedSumRequest: lambda request: f"masked {request.aggregation.intrinsic}",
    MaterializeRequest: lambda request: "request for the client values",
    ReleaseRequest: lambda request: "release",
}
# Requests after which a shard holds something new: a rebuilt shard replays them.
_CHANGES_STATE = (PlaceRequest, BroadcastRequest, LoadRequest, MapRequest, ReleaseRequest)
# The errors a worker's `Failure` may name; anything else arrives as a BackendError.
_ERROR_CLASSES: dict[str, type[FedccError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, FedccError)
}


# What `_read_answer` gives while an answer is still arriving.
_PENDING = object()


class _WorkerLost(Exception):
    """A worker died, hung or sent garbage: it must be replaced. `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _SecureSumLost(Exception):
    """A worker of a masked secure sum was lost: the sum must start over with fresh keys.

    `error` is the `BackendError` to raise when no retry is left.
    """

    def __init__(self, error: BackendError) -> None:
        super().__init__(str(error))
        self.error = error


class WorkerProcess:
    """Slot `index` of the pool: the current worker process (replaced after a fault)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.reader: wire.FrameReader | None = None
        # Which process this is: a shard built on an older generation is lost.
        self.generation = 0
        # Digests of the functions and content this process holds (as far as we know).
        self.sent: set[bytes] = set()
        self.segment_prefix = ""
        # What happened to the last process replaced, for messages about lost shards.
        self.last_fault = ""

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive and its end of the connection still open."""
        if self.process is None or self.process.poll() is not None:
            return False
        # An idle worker sends nothing: a readable socket means it closed (it died).
        assert self.sock is not None
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return True
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def describe(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def launch(self, cache_bytes: int) -> None:
        """Starts a new process for this slot; `wait_ready` finishes the start."""
        self.generation += 1
        self.sent = set()
        self.segment_prefix = f"fc{os.getpid():x}w{self.index}g{self.generation}_"
        server_end, worker_end = socket.socketpair()
        command = [
            sys.executable,
            "-m",
            "fedcc.runtimes.process_worker",
            str(worker_end.fileno()),
            self.segment_prefix,
            str(cache_bytes),
            f"processes worker {self.index}",
        ]
        try:
            self.process = subprocess.Popen(
                command, pass_fds=[worker_end.fileno()], stdin=subprocess.DEVNULL
            )
        except OSError as error:
            server_end.close()
            raise BackendError(f"cannot start worker {self.index}: {error}") from error
        finally:
            worker_end.close()
        self.sock = server_end
        self.reader = wire.FrameReader(server_end)

    def wait_ready(self, deadline: float) -> None:
        """Waits for the new process's `Ready`; `_WorkerLost` if it does not come."""
        assert self.sock is not None
        try:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            frame = wire.receive_frame(self.sock)
            if frame is None:
                raise _WorkerLost(f"exited while starting ({self.exit_status()})")
            message = wire.decode(frame)
        except TimeoutError:
            raise _WorkerLost(f"did not start within {STARTUP_SECONDS:g} s") from None
        except (OSError, wire.WireFormatError) as error:
            raise _WorkerLost(f"failed while starting: {error}") from None
        if not isinstance(message, wire.Ready) or message.version != wire.PROTOCOL_VERSION:
            raise _WorkerLost(f"started with an unexpected greeting {message!r}")

    def send(
        self, message: Any, deadline: float | None, threshold: int, with_payloads: bool = False
    ) -> wire.EncodedFrame:
        """Encodes and sends `message`; the frame, whose segments the caller releases.

        Functions and content this process holds go by digest, unless `with_payloads`.
        """
        assert self.sock is not None
        if len(self.sent) > MAX_SENT_DIGESTS:
            # Forgetting costs only payloads sent again; remembering forever would grow.
            self.sent.clear()
        sent = None if with_payloads else self.sent
        frame = wire.encode(message, sent=sent, shared_memory_threshold=threshold)
        try:
            self.sock.settimeout(
                None if deadline is None else max(deadline - time.monotonic(), 0.001)
            )
            wire.send_frame(self.sock, frame)
        except TimeoutError:
            frame.release()
            raise _WorkerLost("did not read its request in time") from None
        except OSError as error:
            frame.release()
            raise _WorkerLost(f"died ({self.exit_status(wait=True)}; {error})") from None
        except BaseException:
            frame.release()
            raise
        return frame

    def exit_status(self, wait: bool = False) -> str:
        """How the process ended, in words ('still running' if it has not)."""
        if self.process is None:
            return "not started"
        code = self.process.poll()
        if code is None and wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.process.wait(timeout=1.0)
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def kill(self) -> None:
        """Stops the process at once and frees what it held (its segments included)."""
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.kill()
            self.process.wait()
        self._forget()

    def stop(self) -> None:
        """Asks the process to exit; kills it if it does not in `EXIT_SECONDS`."""
        if self.process is None:
            return
        if self.sock is not None and self.process.poll() is None:
            with contextlib.suppress(OSError, BackendError):
                self.sock.settimeout(1.0)
                wire.send_frame(self.sock, wire.encode_bytes(wire.Exit()))
        try:
            self.process.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._forget()

    def _forget(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.reader = None
        self.process = None
        self.sent = set()
        _unlink_segments_with_prefix(self.segment_prefix)


def _unlink_segments_with_prefix(prefix: str) -> None:
    # A worker stopped while answering may leave a segment nobody will read; on
    # systems that list segments as files (Linux), remove what it left.
    folder = "/dev/shm"
    if not prefix or not os.path.isdir(folder):
        return
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name.startswith(prefix):
                wire.unlink_segment(name)


def _stop_all(slots: list[WorkerProcess]) -> None:
    for slot in slots:
        slot.stop()


class ProcessSession(ShardedSession):
    """One run on the pool: shard k in worker k, with each shard's request history."""

    def __init__(self, backend: ProcessesBackend, num_clients: int) -> None:
        super().__init__(num_clients, split_contiguous(num_clients, backend.workers))
        self.backend = backend
        self.run_id = next(backend._run_ids)
        # The generation of the worker process that holds shard k's values (None: nothing yet).
        self.holders: list[int | None] = [None] * len(self.bounds)
        # The generation of the worker process last sent a request of shard k.
        self.contacted: list[int | None] = [None] * len(self.bounds)
        # Shard k's requests that changed what it holds, in order, to rebuild it elsewhere.
        self.history: list[list[ShardRequest]] = [[] for _ in self.bounds]
        self.closing = False

    def dispatch(self, requests: Sequence[ShardRequest]) -> list[Any]:
        if self.closing:
            self.backend._finish(self, requests)
            return [None] * len(requests)
        return self.backend._serve(self, requests)

    def aggregate(self, argument: ClientValue, aggregation: Aggregation) -> Any:
        if aggregation.kind != "bounded_sum" or self.num_clients == 0:
            return super().aggregate(argument, aggregation)
        return self.backend._secure_sum(self, self._sendable(argument), aggregation)

    def close(self) -> None:
        self.closing = True
        super().close()


class ProcessesBackend(Backend):
    """Client shards in a persistent pool of `workers` processes (default: one a CPU).

    Options: `timeout` (seconds a worker may take for one request; None: no
    limit), `retries` (how often a shard lost to a fault is rebuilt on a new
    process and its request sent again), `shared_memory_threshold` (bytes of
    large tensors in one message above which they travel through shared
    memory), `cache_bytes` (each worker's store of functions and client data).
    """

    name = "processes"

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise BackendError(
                f"the processes backend takes {', '.join(o + '=' for o in OPTIONS)}; "
                f"found {', '.join(unknown)}"
            )
        chosen = {name: options.get(name, default) for name, default in OPTIONS.items()}
        if chosen["workers"] is None:
            chosen["workers"] = os.cpu_count() or 1
        self.workers: int = _count_option("workers", chosen["workers"])
        self.timeout: float | None = _timeout_option(chosen["timeout"])
        self.retries: int = _count_option("retries", chosen["retries"], minimum=0)
        self.shared_memory_threshold: int = _count_option(
            "shared_memory_threshold", chosen["shared_memory_threshold"], minimum=0
        )
        self.cache_bytes: int = _count_option("cache_bytes", chosen["cache_bytes"], minimum=0)
        self._slots = [WorkerProcess(index) for index in range(self.workers)]
        self._lock = threading.RLock()
        self._run_ids = itertools.count()
        self._sequence = itertools.count(1)
        self._closed = False
        self._statistics = dict.fromkeys(
            (
                "requests",
                "bytes_sent",
                "shared_bytes_sent",
                "bytes_received",
                "functions_sent",
                "values_sent",
                "values_referenced",
                "missing_content",
                "restarts",
                "secure_sums",
            ),
            0,
        )
        # Stops the workers when the backend is collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _stop_all, self._slots)

    # -- the Backend interface ------------------------------------------------------

    def open_session(self, num_clients: int) -> ClientSession:
        if self._closed:
            raise BackendError("this processes backend is closed")
        return ProcessSession(self, num_clients)

    def close(self) -> None:
        """Stops every worker process; a closed backend runs nothing more."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def worker_pids(self) -> list[int | None]:
        """The process id of each worker (None for one not started)."""
        return [slot.pid for slot in self._slots]

    def statistics(self) -> dict[str, int]:
        """Counts since the backend was made: requests, bytes each way, content sent, restarts."""
        with self._lock:
            return dict(self._statistics)

    def __repr__(self) -> str:
        return f"<ProcessesBackend workers={self.workers} pids={self.worker_pids()}>"

    # -- serving a run's requests -----------------------------------------------------

    def _secure_sum(
        self, session: ProcessSession, argument: ClientValue, aggregation: Aggregation
    ) -> Any:
        """A bounded sum by pairwise masking (runtimes/secure_aggregation.py): the exact total.

        Two steps, back to back under the lock: every shard sends a fresh
        public key; then every shard, given all the keys, sends its masked
        partial sum. A worker lost in either step (or in between) leaves masks
        that cannot cancel: with `retries` both steps start over, with fresh
        keys and nonce, on every shard (a lost shard rebuilt first); without,
        a `BackendError` names the worker.
        """
        with self._lock:
            attempt = 0
            while True:
                # Fresh keys make every mask new; the nonce also separates aggregations.
                nonce = secrets.token_bytes(secure_aggregation.NONCE_BYTES)
                shards = len(session.bounds)
                try:
                    keys = self._serve(session, [MaskKeyRequest(nonce)] * shards, rerun_lost=False)
                    # The processes that hold the private keys must be the ones that answer.
                    holders = [self._slots[k].generation for k in range(shards)]
                    requests = [
                        MaskedSumRequest(argument, aggregation, nonce, k, tuple(keys))
                        for k in range(shards)
                    ]
                    masked = self._serve(session, requests, rerun_lost=False, holders=holders)
                except _SecureSumLost as lost:
                    if attempt >= self.retries:
                        raise BackendError(
                            f"{lost.error}. A secure sum needs every worker's masked input (the "
                            "masks cancel only in the sum of all of them), so no sum was computed"
                        ) from None
                    attempt += 1
                    continue
                self._statistics["secure_sums"] += 1
                names = [self._slots[k].describe() for k in range(shards)]
                return secure_aggregation.unmask(aggregation, masked, names)

    def _serve(
        self,
        session: ProcessSession,
        requests: Sequence[ShardRequest],
        rerun_lost: bool = True,
        holders: Sequence[int] | None = None,
    ) -> list[Any]:
        """Delivers `requests[k]` to shard k of `session`; their answers, in shard order.

        `rerun_lost=False`: a request lost with its worker is not sent again
        (a secure sum starts over instead); `_SecureSumLost` says which worker.
        `holders`: the generation of the process each request must reach (the
        one holding a secure sum's key); a shard whose process was replaced
        since is lost.
        """
        with self._lock:
            if self._closed:
                raise BackendError("this processes backend is closed")
            # Client data worth it travels by digest: a worker that holds it is not sent it again.
            requests = wire.by_content(requests, CONTENT_MIN_BYTES)
            attempts = [0] * len(requests)
            answers: dict[int, Any] = {}
            failures: dict[int, FedccError] = {}
            pending = list(range(len(requests)))
            while pending:
                jobs: dict[int, ShardRequest] = {}
                outcomes = self._start_missing(pending)
                keys_lost: list[int] = []
                for k in pending:
                    if k in outcomes:
                        continue
                    if holders is not None and self._slots[k].generation != holders[k]:
                        keys_lost.append(k)
                        continue
                    try:
                        self._rebuild_if_lost(session, k, attempts)
                        jobs[k] = requests[k]
                    except (_WorkerLost, FedccError) as error:
                        outcomes[k] = error
                if keys_lost:
                    raise _SecureSumLost(self._keys_lost_error(session, keys_lost[0], requests))
                outcomes.update(self._exchange(session, jobs))
                pending = []
                lost: list[int] = []
                for k, outcome in sorted(outcomes.items()):
                    if isinstance(outcome, _WorkerLost):
                        self._replace(k, outcome.reason)
                        if rerun_lost and attempts[k] < self.retries:
                            attempts[k] += 1
                            pending.append(k)
                        else:
                            failures[k] = self._lost_error(session, k, requests[k])
                            lost.append(k)
                    elif isinstance(outcome, FedccError):
                        failures[k] = outcome
                    else:
                        answers[k] = outcome
                        self._record(session, k, requests[k])
                if lost and not rerun_lost:
                    raise _SecureSumLost(failures[lost[0]])
            if failures:
                # The first shard's error: the one naming the first client, as in the reference.
                raise failures[min(failures)]
            return [answers[k] for k in range(len(requests))]

    def _start_missing(self, indices: list[int]) -> dict[int, _WorkerLost | FedccError]:
        # Replaces workers found dead, then starts every slot of `indices` without a process,
        # all at once; what went wrong, by slot.
        for k in indices:
            slot = self._slots[k]
            if slot.process is not None and not slot.running:
                self._replace(k, f"died ({slot.exit_status()}) between requests")
        return self._start([k for k in indices if self._slots[k].process is None])

    def _rebuild_if_lost(self, session: ProcessSession, k: int, attempts: list[int]) -> None:
        # Shard k's values were on a process that is gone: replays its history on the new one.
        slot = self._slots[k]
        holder = session.holders[k]
        if holder is None or holder == slot.generation:
            return
        start, stop = session.bounds[k]
        if not self.retries:
            raise BackendError(
                f"processes backend: worker {k} {slot.last_fault}, and the values of clients "
                f"[{start}, {stop}) of this run were lost with it; it was replaced by a new "
                "process (pass retries=N to rebuild lost clients there)"
            )
        if attempts[k] == 0:
            # A shard lost between requests costs one of this request's retries.
            attempts[k] = 1
        for request in session.history[k]:
            outcome = self._exchange(session, {k: request})[k]
            if isinstance(outcome, (_WorkerLost, FedccError)):
                raise outcome
        session.holders[k] = slot.generation

    def _record(self, session: ProcessSession, k: int, request: ShardRequest) -> None:
        if isinstance(request, _CHANGES_STATE):
            session.holders[k] = self._slots[k].generation
            if self.retries:
                session.history[k].append(request)

    def _start(self, indices: list[int]) -> dict[int, _WorkerLost | FedccError]:
        # Launches all, then waits for each to be ready; what failed, by slot.
        failures: dict[int, _WorkerLost | FedccError] = {}
        launched = []
        try:
            for k in indices:
                try:
                    self._slots[k].launch(self.cache_bytes)
                    launched.append(k)
                except FedccError as error:
                    failures[k] = error
            deadline = time.monotonic() + STARTUP_SECONDS
            for k in launched:
                try:
                    self._slots[k].wait_ready(deadline)
                except _WorkerLost as lost:
                    failures[k] = lost
        except BaseException:
            for k in launched:
                self._slots[k].kill()
            raise
        return failures

    def _replace(self, k: int, fault: str) -> None:
        # The process is in an unknown state: stop it; the next request starts a new one.
        slot = self._slots[k]
        slot.last_fault = f"(pid {slot.pid}) {fault}"
        slot.kill()
        self._statistics["restarts"] += 1

    def _lost_error(self, session: ProcessSession, k: int, request: ShardRequest) -> BackendError:
        start, stop = session.bounds[k]
        tries = "" if not self.retries else f" (after {self.retries} retries)"
        return BackendError(
            f"processes backend: worker {k} {self._slots[k].last_fault} during the "
            f"{_REQUEST_NAMES[type(request)](request)} for clients [{start}, {stop}){tries}; "
            "it was replaced by a new process, and its clients' values of this run are lost"
        )

    def _keys_lost_error(
        self, session: ProcessSession, k: int, requests: Sequence[ShardRequest]
    ) -> BackendError:
        start, stop = session.bounds[k]
        tries = "" if not self.retries else f" (after {self.retries} retries)"
        return BackendError(
            f"processes backend: worker {k} {self._slots[k].last_fault}, after the key exchange "
            f"of the {_REQUEST_NAMES[type(requests[k])](requests[k])} for clients "
            f"[{start}, {stop}){tries}; its private key was lost with it"
        )

    def _finish(self, session: ProcessSession, requests: Sequence[ShardRequest]) -> None:
        # The run is over: each worker that still holds its shard forgets it. Never raises
        # for a worker's fault; a worker that misbehaves is replaced.
        with self._lock:
            jobs = {
                k: request
                for k, request in enumerate(requests)
                if session.contacted[k] == self._slots[k].generation and self._slots[k].running
            }
            if not jobs or self._closed:
                return
            outcomes = self._exchange(session, jobs, final=True)
            for k, outcome in outcomes.items():
                if isinstance(outcome, _WorkerLost):
                    self._replace(k, outcome.reason)

    def _exchange(
        self, session: ProcessSession, jobs: dict[int, ShardRequest], final: bool = False
    ) -> dict[int, Any]:
        """Sends each job to its worker and waits for every answer (or fault).

        Returns, by shard, the answer's value, the `FedccError` the worker
        reported, or `_WorkerLost`.
        """
        outcomes: dict[int, Any] = {}
        envelopes: dict[int, wire.Envelope] = {}
        frames: dict[int, wire.EncodedFrame] = {}
        deadlines: dict[int, float | None] = {}
        try:
            for k, request in jobs.items():
                start, stop = session.bounds[k]
                envelope = wire.Envelope(
                    next(self._sequence), session.run_id, session.num_clients, start, stop,
                    final, request,
                )
                envelopes[k] = envelope
                session.contacted[k] = self._slots[k].generation
                try:
                    self._send(k, envelope, frames, deadlines)
                except _WorkerLost as lost:
                    outcomes[k] = lost
                except FedccError as error:
                    outcomes[k] = self._located(error, session, k)
            waiting = [k for k in frames if k not in outcomes]
            self._receive(session, waiting, envelopes, frames, deadlines, outcomes)
        except BaseException:
            # Ctrl-C (or a bug) with requests in flight: those workers' state is unknown.
            for k in frames:
                if k not in outcomes:
                    self._replace(k, "was stopped while serving an interrupted request")
            raise
        finally:
            for frame in frames.values():
                frame.release()
        return outcomes

    def _send(
        self,
        k: int,
        envelope: wire.Envelope,
        frames: dict[int, wire.EncodedFrame],
        deadlines: dict[int, float | None],
        with_payloads: bool = False,
    ) -> None:
        slot = self._slots[k]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        previous = frames.pop(k, None)
        if previous is not None:
            previous.release()
        frame = slot.send(envelope, deadline, self.shared_memory_threshold, with_payloads)
        frames[k] = frame
        deadlines[k] = deadline
        statistics = self._statistics
        statistics["requests"] += 1
        statistics["bytes_sent"] += frame.size
        statistics["shared_bytes_sent"] += frame.shared_bytes
        statistics["functions_sent"] += frame.functions_sent
        statistics["values_sent"] += frame.values_sent
        statistics["values_referenced"] += frame.values_referenced

    def _receive(
        self,
        session: ProcessSession,
        waiting: list[int],
        envelopes: dict[int, wire.Envelope],
        frames: dict[int, wire.EncodedFrame],
        deadlines: dict[int, float | None],
        outcomes: dict[int, Any],
    ) -> None:
        if not waiting:
            return
        selector = selectors.DefaultSelector()
        try:
            for k in waiting:
                sock = self._slots[k].sock
                assert sock is not None
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, k)
            remaining = set(waiting)
            while remaining:
                now = time.monotonic()
                for k in [k for k in remaining if _expired(deadlines[k], now)]:
                    outcomes[k] = _WorkerLost(f"did not answer within {self.timeout:g} s")
                    remaining.discard(k)
                    selector.unregister(self._slots[k].sock)
                if not remaining:
                    break
                limits = [d for k in remaining if (d := deadlines[k]) is not None]
                wait = None if not limits else max(min(limits) - now, 0.0)
                for key, _ in selector.select(wait):
                    k = key.data
                    outcome = self._read_answer(session, k, envelopes[k], frames, deadlines)
                    if outcome is not _PENDING:
                        outcomes[k] = outcome
                        remaining.discard(k)
                        selector.unregister(key.fileobj)
        finally:
            selector.close()
            for k in waiting:
                sock = self._slots[k].sock
                if sock is not None:
                    sock.setblocking(True)

    def _read_answer(
        self,
        session: ProcessSession,
        k: int,
        envelope: wire.Envelope,
        frames: dict[int, wire.EncodedFrame],
        deadlines: dict[int, float | None],
    ) -> Any:
        # The outcome of shard k once its answer is complete, else _PENDING (keep waiting).
        slot = self._slots[k]
        assert slot.reader is not None
        try:
            frame = slot.reader.feed()
        except (EOFError, ConnectionResetError):
            # A process that dies with a request unread resets the connection.
            return _WorkerLost(f"died ({slot.exit_status(wait=True)})")
        except (OSError, wire.WireFormatError) as error:
            return _WorkerLost(f"broke the connection ({error})")
        if frame is None:
            return _PENDING
        self._statistics["bytes_received"] += len(frame)
        try:
            reply = wire.decode(frame, unlink_segments=True)
        except wire.WireFormatError as error:
            return _WorkerLost(f"answered with a malformed frame ({error})")
        if not isinstance(reply, (wire.Answer, wire.Failure, wire.Missing)):
            return _WorkerLost(f"answered with a {type(reply).__name__} instead of an answer")
        if reply.sequence != envelope.sequence:
            if isinstance(reply, wire.Failure) and reply.sequence == -1:
                return BackendError(
                    f"processes backend: {slot.describe()} could not read a request: "
                    f"{reply.message}"
                )
            return _WorkerLost(
                f"answered request {reply.sequence} when request {envelope.sequence} was due"
            )
        if isinstance(reply, wire.Missing):
            # The worker no longer holds some content: send the request again with every
            # payload it names, so that it needs nothing from its store this time.
            self._statistics["missing_content"] += len(reply.digests)
            try:
                sock = slot.sock
                assert sock is not None
                sock.setblocking(True)
                self._send(k, envelope, frames, deadlines, with_payloads=True)
            except _WorkerLost as lost:
                return lost
            finally:
                if slot.sock is not None:
                    slot.sock.setblocking(False)
            return _PENDING
        if isinstance(reply, wire.Failure):
            cls = _ERROR_CLASSES.get(reply.error, BackendError)
            return self._located(cls(reply.message), session, k)
        return reply.value

    def _located(self, error: FedccError, session: ProcessSession, k: int) -> FedccError:
        # The same error, saying which worker and clients it came from.
        start, stop = session.bounds[k]
        where = f" [processes {self._slots[k].describe()}, clients [{start}, {stop})]"
        try:
            located = type(error)(f"{error}{where}")
        except TypeError:
            located = BackendError(f"{error}{where}")
        located.__cause__ = error.__cause__
        return located


def _expired(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


def _count_option(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BackendError(
            f"the processes backend's {name}= must be an int >= {minimum}, found {value!r}"
        )
    return value


def _timeout_option(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BackendError(
            f"the processes backend's timeout= must be a positive number of seconds or None, "
            f"found {value!r}"
        )
    return float(value)
