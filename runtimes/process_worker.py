"""One worker process of the `processes` backend: serves the shards of clients it is sent.

Started by `runtimes/processes.py` as `python -m fedcc.runtimes.process_worker
FD PREFIX CACHE_BYTES NAME`, it talks to the server over the inherited stream
socket FD, in frames of `runtimes/wire.py`: it says `Ready`, then answers
each `Envelope` with an `Answer`, a `Failure` or a `Missing`, until `Exit` or
the end of the stream.

It holds one `ClientShard` a run (by run id), so client values stay here
between the steps of a computation, and a `ContentStore` of functions and
client data received by content (at most CACHE_BYTES), so that neither is
sent again in later runs. Large answers go through shared-memory segments
named PREFIX + a counter, which the server unlinks after reading them (or,
for a worker it had to kill, by their prefix).

NAME is how errors of client data loaded here name the worker. It ignores
Ctrl-C (the server decides what happens to its workers) and exits by itself
when the server process goes away.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from fedcc.ir.errors import FedccError
from fedcc.runtimes import client_data, wire
from fedcc.runtimes.shard import ClientShard

# Answers with at least this many bytes of large tensors go through shared memory.
ANSWER_SHARED_MEMORY_BYTES = 1 << 20
# How often the worker checks that the server process is still there.
_PARENT_CHECK_SECONDS = 0.5


class WorkerState:
    """What one worker holds: its shards by run, and the content it was sent."""

    def __init__(self, cache_bytes: int) -> None:
        self.shards: dict[int, ClientShard] = {}
        self.store = wire.ContentStore(cache_bytes)

    def answer(self, frame: bytes | bytearray) -> tuple[Any, bool]:
        """The reply to one frame from the server, and whether to keep serving."""
        try:
            message = wire.decode(frame, store=self.store)
        except wire.MissingContent as missing:
            return wire.Missing(missing.sequence, missing.digests), True
        except wire.WireFormatError as error:
            failure = wire.Failure(-1, "BackendError", f"the worker got a malformed frame: {error}")
            return failure, True
        if isinstance(message, wire.Exit):
            return None, False
        if not isinstance(message, wire.Envelope):
            return wire.Failure(
                -1, "BackendError", f"the worker expected a request, found {type(message).__name__}"
            ), True
        return self.serve(message), True

    def serve(self, envelope: wire.Envelope) -> Any:
        """Performs the request of `envelope` on its run's shard; the `Answer` or `Failure`."""
        try:
            shard = self._shard(envelope)
            value = shard.handle(envelope.request)
        except FedccError as error:
            return wire.Failure(envelope.sequence, type(error).__name__, str(error))
        except Exception as error:
            # A bug, not the user's doing: say where, so that it can be reported.
            where = "".join(traceback.format_exception(error, limit=-3))
            return wire.Failure(
                envelope.sequence,
                "BackendError",
                f"internal error in the worker: {type(error).__name__}: {error}\n{where}",
            )
        finally:
            if envelope.final:
                self.shards.pop(envelope.run, None)
        return wire.Answer(envelope.sequence, value)

    def _shard(self, envelope: wire.Envelope) -> ClientShard:
        shard = self.shards.get(envelope.run)
        bounds = (envelope.num_clients, envelope.start, envelope.stop)
        if shard is None:
            shard = ClientShard(*bounds)
            self.shards[envelope.run] = shard
        elif (shard.num_clients, shard.start, shard.stop) != bounds:
            raise FedccError(
                f"run {envelope.run} holds clients [{shard.start}, {shard.stop}) of "
                f"{shard.num_clients} here, but a request is for [{envelope.start}, "
                f"{envelope.stop}) of {envelope.num_clients}"
            )
        return shard


def _watch_parent(parent: int) -> None:
    # The socket's end-of-stream tells an idle worker that the server is gone;
    # this tells a busy one.
    while True:
        time.sleep(_PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(0)


def serve(sock: socket.socket, segment_prefix: str, cache_bytes: int) -> None:
    """Answers frames on `sock` until `Exit` or the end of the stream."""
    state = WorkerState(cache_bytes)
    counter = itertools.count()

    def segment_name() -> str:
        return f"{segment_prefix}{next(counter)}"

    wire.send_frame(sock, wire.encode_bytes(wire.Ready(os.getpid(), wire.PROTOCOL_VERSION)))
    while True:
        try:
            frame = wire.receive_frame(sock)
        except (OSError, wire.WireFormatError):
            return
        if frame is None:
            return
        reply, keep_serving = state.answer(frame)
        del frame
        if not keep_serving:
            return
        encoded = _encode_reply(reply, segment_name)
        # The server unlinks the segments once it has read them; this process lets go now.
        for segment in encoded.segments:
            segment.close()
        try:
            wire.send_frame(sock, encoded)
        except OSError:
            return


def _encode_reply(reply: Any, segment_name: Any) -> wire.EncodedFrame:
    try:
        return wire.encode(
            reply,
            shared_memory_threshold=ANSWER_SHARED_MEMORY_BYTES,
            segment_name=segment_name,
            receiver_unlinks=True,
        )
    except FedccError as error:
        sequence = getattr(reply, "sequence", -1)
        return wire.encode(wire.Failure(sequence, type(error).__name__, str(error)))


def main(argv: list[str]) -> None:
    """The worker's entry point: `FD PREFIX CACHE_BYTES NAME`."""
    fd, segment_prefix, cache_bytes, name = int(argv[0]), argv[1], int(argv[2]), argv[3]
    client_data.set_worker_name(name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_watch_parent, args=(os.getppid(),), name="fedcc-parent-watch", daemon=True
    ).start()
    sock = socket.socket(fileno=fd)
    try:
        serve(sock, segment_prefix, cache_bytes)
    finally:
        sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
