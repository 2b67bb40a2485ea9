"""The `dask` backend: the shard protocol of runtimes/shard.py on a Dask cluster (DESIGN §8).

Each Dask worker of the backend holds one `ShardHost`, a Dask actor created
once and pinned to that worker. A run over n clients splits them into one
contiguous shard a worker (`split_contiguous`): shard k lives in worker k's
host for the whole run, so client values stay where they were computed, and
only requests, aggregation partials and materialized results travel. Actor
calls go straight from this process to the worker, not through the
scheduler.

Requests and answers are frames of runtimes/wire.py (bytes, no pickle), and a
host serves them as a `processes` worker does (`process_worker.WorkerState`):
functions travel as their IR bytes and in-memory client data by content,
each sent to a worker only the first time (the server remembers which
digests each host holds; a host keeps an LRU store of `cache_bytes`). Client
data sets named by URI are loaded by the workers themselves, once, and stay
cached in the worker processes between runs (runtimes/client_data.py).

- `DaskBackend(workers=N)` starts a `LocalCluster` of N single-threaded
  worker processes on 127.0.0.1, without a dashboard, and stops it on
  `close()`, when the backend is forgotten, or when the interpreter exits.
- `DaskBackend(address="tcp://host:8786")` connects to a running scheduler
  and uses its workers (the first N in address order, with `workers=N`);
  `close()` disconnects and leaves the cluster running.

Secure sums are not masked here: each host sends its shard's checked partial
sums in the clear, as for any aggregation (the `processes` backend masks
them; the hosts could serve its masked-sum requests, but this session does
not run that protocol).

Faults: a worker that dies, or that does not answer a request within
`timeout` seconds, turns into a `BackendError` naming the worker and its
clients. A hung worker is restarted (Dask's nanny brings up a fresh
process); either way later runs get fresh hosts, so the backend stays
usable. Errors of the computation itself (a failing client, a client data
file that does not fit) keep their class and message, followed by the
worker and its clients.

Dask is imported only when a `DaskBackend` is made, so fedcc works without
the `fedcc[dask]` extra. (Dask itself pickles one thing: the `ShardHost`
class, by reference, when it starts an actor.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcc.ir import errors
from fedcc.ir.errors import BackendError, FedccError
from fedcc.runtimes import client_data, wire
from fedcc.runtimes.backend import Backend, ClientSession
from fedcc.runtimes.process_worker import WorkerState
from fedcc.runtimes.processes import CONTENT_MIN_BYTES, DEFAULT_CACHE_BYTES
from fedcc.runtimes.shard import ShardedSession, ShardRequest, split_contiguous

# A request none of whose clients answers within this many seconds counts as hung.
DEFAULT_TIMEOUT_SECONDS = 600.0
# How long starting a local cluster, or waiting for a scheduler's workers, may take.
STARTUP_TIMEOUT_SECONDS = 60.0
# How often a request is sent again because its host no longer held some content.
MISSING_CONTENT_RETRIES = 2
# What `DaskBackend.statistics()` counts: requests sent (one a shard), their bytes, and
# the functions and client values sent with their payload or referenced by digest only.
STATISTICS = (
    "requests", "bytes_sent", "bytes_received", "functions_sent", "values_sent",
    "values_referenced",
)  # fmt: skip
# The errors a worker's `Failure` may name; anything else arrives as a BackendError.
_ERROR_CLASSES: dict[str, type[FedccError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, FedccError)
}


# ---------------------------------------------------------------------------
# The worker side.


class ShardHost:
    """The shards one Dask worker holds, one a run; lives on the worker as a Dask actor.

    Dask calls its methods one at a time, in the worker's actor thread.
    """

    def __init__(self, worker: str, cache_bytes: int) -> None:
        client_data.set_worker_name(f"dask worker {worker}")
        self._state = WorkerState(cache_bytes)

    def handle(self, frame: bytes) -> bytes:
        """The reply frame (`Answer`, `Failure` or `Missing`) to one `Envelope` frame."""
        reply, _ = self._state.answer(frame)
        try:
            return wire.encode_bytes(reply)
        except FedccError as error:  # an answer that cannot travel
            sequence = getattr(reply, "sequence", -1)
            return wire.encode_bytes(wire.Failure(sequence, type(error).__name__, str(error)))

    def process_id(self) -> int:
        """The worker's process id."""
        return os.getpid()


# ---------------------------------------------------------------------------
# The server side.


@dataclass(eq=False)
class _Host:
    """A shard host as the server sees it: its worker, the actor, what it was sent."""

    address: str
    actor: Any
    future: Any  # held, so that Dask keeps the actor
    sent: set[bytes] = field(default_factory=set)  # content digests the host holds


class _WorkerLost(BackendError):
    """A worker died or hung while serving a request: the run's values on it are gone."""


class DaskSession(ShardedSession):
    """One run: shard k on the k-th host, one request a shard at a time, all shards at once."""

    def __init__(self, backend: DaskBackend, num_clients: int, hosts: Sequence[_Host]) -> None:
        super().__init__(num_clients, split_contiguous(num_clients, len(hosts)))
        self._backend = backend
        self._hosts = tuple(hosts[: len(self.bounds)])
        self._run = backend.new_run_id()
        self._broken = False
        self._closing = False

    def dispatch(self, requests: Sequence[ShardRequest]) -> list[Any]:
        if self._broken:
            raise BackendError("this run lost a Dask worker earlier; start a new run")
        requests = wire.by_content(requests, CONTENT_MIN_BYTES)
        envelopes = [
            wire.Envelope(
                self._backend.new_sequence(), self._run, self.num_clients, start, stop,
                self._closing, request,
            )
            for (start, stop), request in zip(self.bounds, requests)
        ]  # fmt: skip
        replies: list[Any] = [None] * len(envelopes)
        pending = list(range(len(envelopes)))
        for _ in range(MISSING_CONTENT_RETRIES + 1):
            calls = [
                (self._hosts[k], self._backend.encode(envelopes[k], self._hosts[k]), self._where(k))
                for k in pending
            ]
            try:
                answers = self._backend.call_hosts(calls)
            except _WorkerLost:
                self._broken = True
                raise
            again = []
            for k, answer in zip(pending, answers):
                replies[k] = self._reply(k, envelopes[k], answer)
                if isinstance(replies[k], wire.Missing):
                    # The host no longer holds some content: send it along this time.
                    self._hosts[k].sent.difference_update(replies[k].digests)
                    again.append(k)
            pending = again
            if not pending:
                break
        else:
            raise BackendError(f"{self._where(pending[0])} keeps losing the content it is sent")
        # The first shard's error: the one naming the first client, as in the reference.
        for k, reply in enumerate(replies):
            if isinstance(reply, wire.Failure):
                cls = _ERROR_CLASSES.get(reply.error, BackendError)
                raise _located(cls(reply.message), self._where(k))
        return [reply.value for reply in replies]

    def close(self) -> None:
        if self._broken:
            return  # the hosts of this run are being replaced, and their values with them
        # The release is the run's last request: each host forgets the shard with it. A
        # worker lost now loses nothing the run still needs: the run's result stands.
        self._closing = True
        with contextlib.suppress(_WorkerLost):
            super().close()

    def _reply(self, k: int, envelope: wire.Envelope, answer: Any) -> Any:
        problem = None
        try:
            reply = wire.decode(answer)
        except wire.WireFormatError as error:
            problem = f"a malformed frame ({error})"
        else:
            if not isinstance(reply, (wire.Answer, wire.Failure, wire.Missing)):
                problem = f"a {type(reply).__name__} instead of an answer"
            elif reply.sequence not in (envelope.sequence, -1):
                problem = f"the answer to request {reply.sequence}, not {envelope.sequence}"
        if problem is not None:
            # A host that answers garbage is in an unknown state: later runs get a new one.
            self._broken = True
            self._backend.forget_hosts([self._hosts[k]], restart=True)
            raise _WorkerLost(
                f"{self._where(k)} answered with {problem}; the worker was restarted and its "
                "clients' values are gone: run again"
            )
        return reply

    def _where(self, k: int) -> str:
        start, stop = self.bounds[k]
        return f"dask worker {self._hosts[k].address} (clients [{start}, {stop}))"


def _located(error: FedccError, where: str) -> FedccError:
    # The same error, saying which worker and clients it came from.
    try:
        located = type(error)(f"{error} [{where}]")
    except TypeError:
        located = BackendError(f"{error} [{where}]")
    return located


class DaskBackend(Backend):
    """Client shards on Dask workers: a local cluster of `workers` processes, or `address`'s.

    Options: `workers` (default: the number of CPUs for a local cluster, every
    worker of a running one), `address` of a running scheduler, `timeout`
    seconds a request may take before its worker counts as hung, and
    `cache_bytes` of functions and client data each worker keeps by content.
    """

    name = "dask"

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise BackendError(f"workers must be a positive int, found {workers!r}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise BackendError(f"timeout must be a positive number of seconds, found {timeout!r}")
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise BackendError(f"cache_bytes must be an int >= 0, found {cache_bytes!r}")
        if address is not None and not isinstance(address, str):
            raise BackendError(f"address must be a scheduler address string, found {address!r}")
        distributed = _import_distributed()
        self.timeout = float(timeout)
        self.cache_bytes = cache_bytes
        self._statistics = dict.fromkeys(STATISTICS, 0)
        self._run_ids = itertools.count()
        self._sequence = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        # The hosts of the current shard order, and every live host by worker address.
        self._hosts: list[_Host] | None = None
        self._hosts_by_address: dict[str, _Host] = {}
        self._hosts_lock = threading.Lock()
        cluster = None
        if address is None:
            self.workers = workers or os.cpu_count() or 1
            try:
                cluster = distributed.LocalCluster(
                    n_workers=self.workers,
                    processes=True,
                    threads_per_worker=1,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            except Exception as error:
                raise BackendError(f"cannot start a local Dask cluster: {error}") from error
        try:
            client = distributed.Client(
                cluster if address is None else address,
                set_as_default=False,
                direct_to_workers=True,
                timeout=STARTUP_TIMEOUT_SECONDS,
            )
        except Exception as error:
            if cluster is not None:
                cluster.close()
            where = "the local cluster" if address is None else f"the scheduler at {address}"
            raise BackendError(f"cannot connect to {where}: {error}") from error
        self._client = client
        # Stops the cluster when the backend is closed, forgotten, or the interpreter exits.
        self._finalizer = weakref.finalize(self, _shut_down, client, cluster)
        if address is not None:
            # Workers may still be joining: the first run waits for `workers` of them.
            available = len(client.scheduler_info()["workers"])
            if workers is None and available == 0:
                self.close()
                raise BackendError(f"the Dask scheduler at {address} has no workers")
            self.workers = workers or available
        self.address = client.scheduler.address

    # -- the backend interface

    def open_session(self, num_clients: int) -> ClientSession:
        if not self._finalizer.alive:
            raise BackendError("this dask backend is closed")
        return DaskSession(self, num_clients, self._ensure_hosts())

    def close(self) -> None:
        self._hosts = None
        self._hosts_by_address = {}
        self._finalizer()

    def __repr__(self) -> str:
        return f"<DaskBackend {self.workers} workers at {self.address}>"

    # -- for sessions

    def new_run_id(self) -> int:
        """A number for a new run; the hosts of this backend tell runs apart by it."""
        return next(self._run_ids)

    def new_sequence(self) -> int:
        """A number for a new request, to match its answer."""
        return next(self._sequence)

    @property
    def client(self) -> Any:
        """The `distributed.Client` the backend talks through (e.g. for `client.run`)."""
        return self._client

    def statistics(self) -> dict[str, int]:
        """Counts of what travelled since the backend started (see `STATISTICS`)."""
        return dict(self._statistics)

    def encode(self, envelope: wire.Envelope, host: _Host) -> bytes:
        """The frame of `envelope` for `host`: content it holds goes by digest only."""
        frame = wire.encode(envelope, sent=host.sent)
        statistics = self._statistics
        statistics["requests"] += 1
        statistics["bytes_sent"] += frame.size
        statistics["functions_sent"] += frame.functions_sent
        statistics["values_sent"] += frame.values_sent
        statistics["values_referenced"] += frame.values_referenced
        return frame.to_bytes()

    def worker_addresses(self) -> list[str]:
        """The addresses of the workers that hold the shards of the next run, shard 0's first."""
        return [host.address for host in self._ensure_hosts()]

    def call_hosts(self, calls: Sequence[tuple[_Host, bytes, str]]) -> list[bytes]:
        """Sends each `(host, frame, where)` to its host's `handle`, all at once; the replies.

        Waits at most `timeout` seconds. A host whose worker is gone or hung
        raises `_WorkerLost` naming its `where`; a hung worker is restarted,
        and the next run gets fresh hosts.
        """
        if not calls:
            return []

        async def call_all() -> tuple[list, set]:
            tasks = [
                asyncio.ensure_future(_call_actor(host.actor, "handle", (frame,)))
                for host, frame, _ in calls
            ]
            _, pending = await asyncio.wait(tasks, timeout=self.timeout)
            for task in pending:
                task.cancel()
            return tasks, pending

        tasks, pending = self._client.sync(call_all)
        if pending:
            hung = [k for k, task in enumerate(tasks) if task in pending]
            self.forget_hosts([calls[k][0] for k in hung], restart=True)
            raise _WorkerLost(
                f"{calls[hung[0]][2]} did not answer within {self.timeout:g} s; the worker was "
                "restarted and its clients' values are gone: run again"
            )
        for k, task in enumerate(tasks):
            error = task.exception()
            if error is not None:
                self.forget_hosts([calls[k][0]], restart=False)
                raise _WorkerLost(
                    f"{calls[k][2]} was lost ({type(error).__name__}: {error}); its clients' "
                    "values are gone: run again"
                ) from error
        replies = [task.result() for task in tasks]
        self._statistics["bytes_received"] += sum(len(reply) for reply in replies)
        return replies

    # -- hosts

    def _ensure_hosts(self) -> list[_Host]:
        with self._hosts_lock:
            if self._hosts is None:
                self._hosts = self._start_hosts()
            return self._hosts

    def _start_hosts(self) -> list[_Host]:
        # Workers that just died may still be listed for a moment: a host that does
        # not start is dropped and the worker list read again, until the deadline.
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        problem = "no attempt"
        while time.monotonic() < deadline:
            try:
                self._client.wait_for_workers(
                    self.workers, timeout=max(deadline - time.monotonic(), 1.0)
                )
            except Exception as error:
                problem = f"{type(error).__name__}: {error}"
                break
            addresses = sorted(self._client.scheduler_info()["workers"])[: self.workers]
            for gone in set(self._hosts_by_address) - set(addresses):
                del self._hosts_by_address[gone]
            missing = [a for a in addresses if a not in self._hosts_by_address]
            failed = self._start_actors(missing, deadline)
            if not failed:
                return [self._hosts_by_address[address] for address in addresses]
            problem = f"workers {', '.join(failed)} did not take a shard host"
            time.sleep(0.2)
        raise BackendError(
            f"cannot start fedcc's shard hosts on {self.workers} workers of the Dask cluster "
            f"at {self.address} within {STARTUP_TIMEOUT_SECONDS:g} s: {problem}"
        )

    def _start_actors(self, addresses: list[str], deadline: float) -> list[str]:
        """Starts a `ShardHost` actor on each worker of `addresses`; those that failed."""
        # The actor handles need a current client to call through.
        with self._client.as_current():
            futures = {
                address: self._client.submit(
                    ShardHost,
                    address,
                    self.cache_bytes,
                    actor=True,
                    workers=[address],
                    allow_other_workers=False,
                    pure=False,
                    key=f"fedcc-shard-host-{self._prefix}-{uuid.uuid4().hex[:8]}",
                )
                for address in addresses
            }
            failed = []
            for address, future in futures.items():
                try:
                    # A share of the time left, so that one dead worker cannot take all of it.
                    wait = max(min(deadline - time.monotonic(), 10.0), 1.0)
                    actor = future.result(timeout=wait)
                except Exception:
                    future.cancel()
                    failed.append(address)
                    continue
                self._hosts_by_address[address] = _Host(address, actor, future)
        return failed

    def forget_hosts(self, hosts: list[_Host], restart: bool) -> None:
        """Drops `hosts` (restarting their workers if `restart`); the next run gets new ones."""
        with self._hosts_lock:
            for host in hosts:
                if self._hosts_by_address.get(host.address) is host:
                    del self._hosts_by_address[host.address]
            if self._hosts is not None and any(host in self._hosts for host in hosts):
                self._hosts = None
        if restart:
            # A hung worker holds its actor thread: only a fresh process frees it.
            with contextlib.suppress(Exception):
                self._client.restart_workers(
                    [host.address for host in hosts],
                    timeout=STARTUP_TIMEOUT_SECONDS,
                    raise_for_error=False,
                )


async def _call_actor(actor: Any, method: str, arguments: tuple) -> Any:
    # Even looking the method up fails for an actor whose worker is gone: an error of the call.
    return await getattr(actor, method)(*arguments)


def _shut_down(client: Any, cluster: Any) -> None:
    with contextlib.suppress(Exception):
        client.close()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close()


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as error:
        raise BackendError(
            "the dask backend needs dask.distributed: pip install 'fedcc[dask]'"
        ) from error
    return distributed
