"""The reference backend: every client in this process, one shard, one client after another.

It is the oracle the other backends are tested against: the same interpreter,
the same shard protocol and the same canonical reduction tree, with no
concurrency and no transport in the way. Secure sums are plain bounded sums
here (their range and overflow checks are the contract); the `processes`
backend masks them (runtimes/secure_aggregation.py), with the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedcc.ir.errors import BackendError
from fedcc.runtimes.backend import Backend, ClientSession
from fedcc.runtimes.shard import ClientShard, ShardedSession, ShardRequest, split_contiguous


class InProcessSession(ShardedSession):
    """Shards that live in this process and answer requests one after another, in order."""

    def __init__(self, num_clients: int, shards: int = 1) -> None:
        super().__init__(num_clients, split_contiguous(num_clients, shards))
        self.shards = [ClientShard(num_clients, start, stop) for start, stop in self.bounds]

    def dispatch(self, requests: Sequence[ShardRequest]) -> list[Any]:
        return [shard.handle(request) for shard, request in zip(self.shards, requests)]


class ReferenceBackend(Backend):
    """All clients in-process, in one shard, run sequentially. Takes no options."""

    name = "reference"

    def __init__(self, **options: Any) -> None:
        if options:
            raise BackendError(
                f"the reference backend takes no options, found {', '.join(sorted(options))}"
            )

    def open_session(self, num_clients: int) -> ClientSession:
        return InProcessSession(num_clients)
