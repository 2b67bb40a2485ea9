"""What pairwise masking costs a secure sum on the `processes` backend.

Workloads, each timed with masking (the backend as it is) and without (the
same run with `ProcessSession.aggregate` replaced, in this process only, by
the plain sharded bounded sum that sends each worker's partial sums in the
clear, which is what `processes` did before masking):

- `fedavg`: one FedAvg round of 784->10 softmax regression
  (`fc.learning.build_fed_avg`, `aggregators.secure_mean(16)`), C clients of
  20 examples each, one batch of 20, SGD at learning rate 0.1.
- `secure_sum`: `federated_secure_sum` of an int32[N] vector a client.

One warm-up call, then `--repeats` timed calls; the median is printed.

    python benchmarks/secure_sum_masking.py                  # 100 clients, 2 and 4 workers
    python benchmarks/secure_sum_masking.py --clients 1000 --workers 7

Figures (2 CPUs, Python 3.11.7, NumPy 2.4.x; `--workers 2 4 7`):

    workload                                         workers  masked s   clear s  ratio
    fedavg round, secure_mean(16), 100 clients             2    0.0881    0.0881   1.00
    fedavg round, secure_mean(16), 100 clients             4    0.2118    0.1234   1.72
    fedavg round, secure_mean(16), 100 clients             7    0.4338    0.1204   3.60
    secure_sum int32[7850], 100 clients                    2    0.0187    0.0089   2.11
    secure_sum int32[7850], 100 clients                    4    0.0800    0.0146   5.47
    secure_sum int32[7850], 100 clients                    7    0.1997    0.0201   9.92

What they say: the cost is the key agreement, not the masks. Each worker
does one 2048-bit modular exponentiation for its key (about 4 ms here) and
one for each other worker (about 5.5 ms each): about 5·W ms of CPU a worker,
5·W² ms in all, whatever the number of clients. Here 7 workers share two
cores, so a secure sum costs about 0.2 s more; with a core a worker it would
be about 5·W ms. The masks (SHAKE-256, 16 bytes an element, W - 1 streams a
worker) cost about 0.5 ms per 7850 elements and peer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import fedcc as fc
from fedcc.ir.building_blocks import Lambda, Literal, Reference, Struct, call_intrinsic
from fedcc.ir.type_text import parse_type
from fedcc.learning import aggregators, models, optimizers
from fedcc.runtimes import get_backend
from fedcc.runtimes.processes import ProcessSession
from fedcc.runtimes.shard import ShardedSession


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fedavg_round(clients: int) -> tuple[Callable, tuple]:
    process = fc.learning.build_fed_avg(
        models.logistic_regression(784, 10),
        client_optimizer=optimizers.sgd(0.1),
        aggregator=aggregators.secure_mean(16),
    )
    rng = np.random.default_rng(0)
    data = [
        [{"x": rng.uniform(size=(20, 784)).astype(np.float32),
          "y": rng.integers(0, 10, 20).astype(np.int32)}]
        for _ in range(clients)
    ]
    return process.next, (process.initialize(), data)


def plain_secure_sum(clients: int, size: int) -> tuple[Callable, tuple]:
    t = parse_type(f"{{int32[{size}]}}@CLIENTS")
    x = Reference("x", t)
    comp = Lambda("x", t, call_intrinsic("federated_secure_sum",
                                         Struct([x, Literal(np.int32(1000))])))
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 1001, size).astype(np.int32) for _ in range(clients)]
    return comp, (values,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--size", type=int, default=7850, help="secure_sum: elements a client")
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    workloads = {
        f"fedavg round, secure_mean(16), {arguments.clients} clients": fedavg_round(
            arguments.clients
        ),
        f"secure_sum int32[{arguments.size}], {arguments.clients} clients": plain_secure_sum(
            arguments.clients, arguments.size
        ),
    }
    masked_aggregate = ProcessSession.aggregate
    print(f"{'workload':<48} {'workers':>7} {'masked s':>9} {'clear s':>9} {'ratio':>6}")
    for name, (comp, args) in workloads.items():
        for workers in arguments.workers:
            backend = get_backend("processes", workers=workers)
            try:
                def call(comp=comp, args=args, backend=backend) -> object:
                    return fc.run(comp, *args, backend=backend)

                ProcessSession.aggregate = masked_aggregate
                masked = median_seconds(call, arguments.repeats)
                ProcessSession.aggregate = ShardedSession.aggregate
                clear = median_seconds(call, arguments.repeats)
            finally:
                ProcessSession.aggregate = masked_aggregate
                backend.close()
            print(f"{name:<48} {workers:>7} {masked:>9.4f} {clear:>9.4f} {masked / clear:>6.2f}")


if __name__ == "__main__":
    main()
