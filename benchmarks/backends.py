"""Backends against a hand-written NumPy loop, on the same machine in the same run (DESIGN §11).

Workloads (the same as the TFF peer kit's, `../shared/peers/tff/`):

- `mean`: `federated_mean` of a float32[1000] vector held by each of N
  clients; the NumPy baseline is `np.stack(values).mean(0)`.
- `fedavg`: one FedAvg round of 784->10 softmax regression from zero, each
  client with 100 examples (x ~ U[0,1), labels of a fixed random linear
  teacher), one epoch of SGD over batches of 20 at learning rate 0.1, the
  server adding the example-weighted mean of the clients' deltas. Written
  with the public API (`fc.federated_computation`, `fc.numpy_computation`,
  `fc.grad`, `fc.sequence_reduce`, `fc.federated_mean(..., weight=...)`);
  the NumPy baseline is the kit's loop (`bench_numpy.py`), the same math.
  Rows marked `(npz folder)` read the clients' data from a folder of
  per-client `.npz` files where the clients live (runtimes/client_data.py),
  instead of from lists in the server's memory.

Every row runs in a fresh process: one warm-up call (tracing, starting
workers, shipping functions and data), then `--repeats` timed calls (for
FedAvg, rounds 2.. of a training run, as the kit does); the table shows the
median, its ratio to the NumPy baseline of the same size, and the server
process's peak RSS while it ran (VmHWM, reset after the inputs were made, so
it counts the inputs the server holds plus what the run adds). `--growth-rounds
R` also trains R FedAvg rounds and reports the server's RSS at round 10 and
at round R. `--tff-python` runs the peer kit's TFF scripts in the same
session and adds TFF's rows.

    python benchmarks/backends.py                      # the full table (see benchmarks/README.md)
    python benchmarks/backends.py --quick              # about 2-3 minutes
    python benchmarks/backends.py --workloads mean --mean-clients 100000 --backends threads
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TFF_KIT = ROOT.parent / "shared" / "peers" / "tff"

# The workloads' constants, as in the TFF peer kit (common.py).
FEATURES, CLASSES = 784, 10
EXAMPLES_PER_CLIENT, BATCH_SIZE = 100, 20
LEARNING_RATE = 0.1
MEAN_DIM = 1000
SEED = 0

BACKENDS = ("reference", "threads", "processes", "dask")
# Backends whose workers are other processes: only they can read client data where it lives.
REMOTE_BACKENDS = ("processes", "dask")
# The driver's defaults; an option given on the command line wins.
FULL = {
    "mean_clients": [100, 1000, 10000, 100000], "fedavg_clients": [10, 100, 1000],
    "optimize": [0, 2], "repeats": 5, "growth_rounds": 200,
    "growth_backends": ["threads", "processes", "dask"],
}  # fmt: skip
# About 2-3 minutes on 2 cores: one optimization level, fewer timed calls and growth rounds.
QUICK = {
    "mean_clients": [100, 1000, 10000], "fedavg_clients": [10, 100, 1000], "optimize": [2],
    "repeats": 3, "growth_rounds": 50, "growth_backends": ["threads"],
}  # fmt: skip
# The TFF kit's mean runs up to 10**4 clients (a call at 10**5 takes about half a minute).
TFF_MAX_MEAN_CLIENTS = 10_000


# ---------------------------------------------------------------------------
# The data, as the kit makes it.


def make_fedavg_data(clients: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ U[0,1) float32 [C,100,784]; y int32 [C,100] from a fixed random linear teacher."""
    rng = np.random.default_rng(SEED)
    teacher = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    x = rng.random((clients, EXAMPLES_PER_CLIENT, FEATURES), dtype=np.float32)
    y = np.argmax(x @ teacher, axis=-1).astype(np.int32)
    return x, y


def make_mean_data(clients: int) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    return list(rng.standard_normal((clients, MEAN_DIM), dtype=np.float32))


def client_batches(x: np.ndarray, y: np.ndarray) -> list[list[dict[str, np.ndarray]]]:
    """Each client's examples in order, in batches of `BATCH_SIZE`."""
    return [
        [
            {"x": x[c, k : k + BATCH_SIZE], "y": y[c, k : k + BATCH_SIZE]}
            for k in range(0, EXAMPLES_PER_CLIENT, BATCH_SIZE)
        ]
        for c in range(x.shape[0])
    ]


def write_client_folder(folder: Path, clients: int) -> None:
    """One `.npz` a client (`x: float32[100,784]`, `y: int32[100]`), the layout fc.data writes."""
    x, y = make_fedavg_data(clients)
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(clients):
        np.savez(folder / f"client_{c:06d}.npz", x=x[c], y=y[c])


# ---------------------------------------------------------------------------
# The hand-written NumPy baselines.


def numpy_client_update(w, b, x, y):
    w0, b0 = w, b
    w, b = w.copy(), b.copy()
    for start in range(0, x.shape[0], BATCH_SIZE):
        xb, yb = x[start : start + BATCH_SIZE], y[start : start + BATCH_SIZE]
        logits = xb @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1.0
        p /= len(yb)  # d(mean cross-entropy) / d(logits)
        w -= np.float32(LEARNING_RATE) * (xb.T @ p)
        b -= np.float32(LEARNING_RATE) * p.sum(axis=0)
    return w - w0, b - b0, np.float32(x.shape[0])


def numpy_fedavg_round(w, b, x, y):
    dw, db, total = np.zeros_like(w), np.zeros_like(b), np.float32(0)
    for c in range(x.shape[0]):
        cw, cb, n = numpy_client_update(w, b, x[c], y[c])
        dw += n * cw
        db += n * cb
        total += n
    return w + dw / total, b + db / total


# ---------------------------------------------------------------------------
# The fedcc versions, with the public API.


def build_fedavg_round(optimize_level: int) -> Any:
    """One FedAvg round: `(model@SERVER, {batch*}@CLIENTS) -> model@SERVER`."""
    import fedcc as fc

    model_type = fc.parse_type(f"<w=float32[{FEATURES},{CLASSES}],b=float32[{CLASSES}]>")
    batch_type = fc.parse_type(f"<x=float32[?,{FEATURES}],y=int32[?]>")
    accumulator_type = fc.StructType([("model", model_type), ("count", "float32")])
    labels = np.arange(CLASSES, dtype=np.int32)
    rate = np.float32(LEARNING_RATE)

    @fc.numpy_computation(model_type, batch_type)
    def batch_loss(model, batch):
        logits = batch["x"] @ model["w"] + model["b"]
        # The row maximum is a constant to autodiff, as in the NumPy loop's gradient.
        shifted = logits - fc.stop_gradient(np.max(logits, axis=1, keepdims=True))
        log_normalizer = np.log(np.sum(np.exp(shifted), axis=1))
        one_hot = (batch["y"][:, None] == labels).astype(np.float32)
        return np.mean(log_normalizer - np.sum(one_hot * shifted, axis=1))

    loss_gradient = fc.grad(batch_loss)

    @fc.numpy_computation(accumulator_type, batch_type)
    def sgd_step(accumulator, batch):
        model = accumulator["model"]
        gradient = loss_gradient(model, batch)
        count = np.sum(np.ones_like(batch["y"])).astype(np.float32)
        return {
            "model": {
                "w": model["w"] - rate * gradient["w"],
                "b": model["b"] - rate * gradient["b"],
            },
            "count": accumulator["count"] + count,
        }

    @fc.numpy_computation(model_type, accumulator_type)
    def delta_and_count(initial, trained):
        return {
            "delta": {
                "w": trained["model"]["w"] - initial["w"],
                "b": trained["model"]["b"] - initial["b"],
            },
            "count": trained["count"],
        }

    @fc.federated_computation(model_type, fc.SequenceType(batch_type))
    def client_update(model, batches):
        trained = fc.sequence_reduce(batches, {"model": model, "count": np.float32(0)}, sgd_step)
        return delta_and_count(model, trained)

    @fc.numpy_computation(model_type, model_type)
    def apply_delta(model, delta):
        return {"w": model["w"] + delta["w"], "b": model["b"] + delta["b"]}

    @fc.federated_computation(
        fc.FederatedType(model_type, fc.SERVER),
        fc.FederatedType(fc.SequenceType(batch_type), fc.CLIENTS),
    )
    def fedavg_round(model, data):
        updates = fc.federated_map(client_update, [fc.federated_broadcast(model), data])
        mean_delta = fc.federated_mean(updates["delta"], weight=updates["count"])
        return fc.federated_apply(apply_delta, fc.federated_zip([model, mean_delta]))

    return fc.optimize(fedavg_round, optimize_level) if optimize_level else fedavg_round


def build_mean(optimize_level: int) -> Any:
    import fedcc as fc

    @fc.federated_computation(f"{{float32[{MEAN_DIM}]}}@CLIENTS")
    def mean(values):
        return fc.federated_mean(values)

    return fc.optimize(mean, optimize_level) if optimize_level else mean


# ---------------------------------------------------------------------------
# One measurement, in its own process.


def _status_megabytes(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _backend_options(backend: str, workers: int) -> dict[str, Any]:
    return {} if backend == "reference" else {"workers": workers}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Times one workload at one size on one backend; the record the table is made of."""
    record: dict[str, Any] = {
        "workload": args.workload, "clients": args.clients, "backend": args.backend,
        "folder": args.folder is not None, "optimize": args.optimize,
    }  # fmt: skip
    times: list[float] = []
    if args.workload == "mean":
        values = make_mean_data(args.clients)
        if args.backend == "numpy":
            _reset_peak_rss()
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                result = np.stack(values).mean(0)
                times.append(time.perf_counter() - start)
        else:
            import fedcc as fc

            mean = build_mean(args.optimize)
            _reset_peak_rss()
            with fc.use_backend(args.backend, **_backend_options(args.backend, args.workers)):
                for _ in range(args.repeats + 1):
                    start = time.perf_counter()
                    result = mean(values)
                    times.append(time.perf_counter() - start)
        record["checksum"] = float(np.abs(result).sum())
    else:
        w = np.zeros((FEATURES, CLASSES), np.float32)
        b = np.zeros(CLASSES, np.float32)
        if args.backend == "numpy":
            x, y = make_fedavg_data(args.clients)
            _reset_peak_rss()
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                w, b = numpy_fedavg_round(w, b, x, y)
                times.append(time.perf_counter() - start)
        else:
            import fedcc as fc
            from fedcc.runtimes.client_data import bind_client_data, npz_folder_uri

            fedavg_round = build_fedavg_round(args.optimize)
            if args.folder is not None:
                uri = npz_folder_uri(args.folder, batch_size=BATCH_SIZE)
                block = bind_client_data(fedavg_round.building_block, uri, 1)
                arguments: tuple = ()
            else:
                block = fedavg_round.building_block
                arguments = (client_batches(*make_fedavg_data(args.clients)),)
            model = {"w": w, "b": b}
            _reset_peak_rss()
            with fc.use_backend(args.backend, **_backend_options(args.backend, args.workers)):
                for round_number in range(max(args.repeats + 1, args.growth_rounds)):
                    start = time.perf_counter()
                    model = fc.run(block, model, *arguments)
                    times.append(time.perf_counter() - start)
                    if round_number + 1 == 10:
                        record["rss_round_10_mb"] = _status_megabytes("VmRSS")
            record["rss_last_round_mb"] = _status_megabytes("VmRSS")
            w = model["w"]
        record["checksum"] = float(np.abs(w).sum())
    record["first_s"] = times[0]
    record["median_s"] = statistics.median(times[1 : args.repeats + 1])
    record["peak_rss_mb"] = _status_megabytes("VmHWM")
    record["rounds"] = len(times)
    return record


# ---------------------------------------------------------------------------
# The driver: one process a row, TFF's rows from the kit, a markdown table.


def run_measurement(options: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "measure", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(options)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_tff(python: str, kit: Path, script: str, size: int) -> dict[str, Any] | None:
    """One TFF kit script at one size, run from a copy of the kit (it writes results/)."""
    with tempfile.TemporaryDirectory(prefix="fedcc-tff-kit-") as copy:
        for file in kit.glob("*.py"):
            shutil.copy(file, copy)
        done = subprocess.run(
            [python, script, str(size)], cwd=copy, capture_output=True, text=True, timeout=3600
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        print(f"TFF {script} {size} failed: {done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def _tff_memory(result: dict[str, Any]) -> dict[str, float]:
    # The server is TFF's Python process; its C++ worker_binary is counted apart.
    memory = result["mem"]
    workers = sum(child["peak_rss_mb"] or 0 for child in memory["children"])
    return {"peak_rss_mb": memory["python_peak_rss_mb"], "tff_worker_peak_rss_mb": workers}


def tff_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    records = []
    kit = Path(args.tff_kit)
    if "mean" in args.workloads:
        for clients in args.mean_clients:
            if clients > TFF_MAX_MEAN_CLIENTS:
                continue
            result = run_tff(args.tff_python, kit, "bench_mean.py", clients)
            if result:
                records.append({
                    "workload": "mean", "clients": clients, "backend": "TFF 0.87",
                    "folder": False,
                    "median_s": result["median_call_s"], "first_s": result["warmup_call_s"],
                    **_tff_memory(result),
                })  # fmt: skip
    if "fedavg" in args.workloads:
        for clients in args.fedavg_clients:
            result = run_tff(args.tff_python, kit, "bench_fedavg_lowlevel.py", clients)
            if result:
                records.append({
                    "workload": "fedavg", "clients": clients, "backend": "TFF 0.87",
                    "folder": False,
                    "median_s": result["median_round_2_6_s"], "first_s": result["first_round_s"],
                    **_tff_memory(result),
                    "checksum": result["w_checksum"],
                })  # fmt: skip
    return records


def row_name(record: dict[str, Any]) -> str:
    """How a row names what ran: the backend, its optimization level, where the data was."""
    if record["backend"] == "numpy":
        return "NumPy loop" if record["workload"] == "fedavg" else "np.stack(...).mean(0)"
    name = record["backend"]
    if record.get("optimize"):
        name += f" -O{record['optimize']}"
    return name + (" (npz folder)" if record.get("folder") else "")


def markdown_table(records: list[dict[str, Any]]) -> str:
    baselines = {
        (r["workload"], r["clients"]): r["median_s"] for r in records if r["backend"] == "numpy"
    }
    lines = [
        "| workload | clients | backend | median s | vs NumPy | first call s | server peak RSS MB "
        "| sum \\|w\\| |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        baseline = baselines.get((r["workload"], r["clients"]))
        ratio = f"{r['median_s'] / baseline:.2f}" if baseline else ""
        backend = row_name(r)
        checksum = f"{r['checksum']:.5f}" if "checksum" in r and r["workload"] == "fedavg" else ""
        peak = f"{r['peak_rss_mb']:.0f}"
        if "tff_worker_peak_rss_mb" in r:
            peak += f" (+{r['tff_worker_peak_rss_mb']:.0f} worker_binary)"
        lines.append(
            f"| {r['workload']} | {r['clients']} | {backend} | {r['median_s']:.4g} | {ratio} | "
            f"{r['first_s']:.3g} | {peak} | {checksum} |"
        )
    return "\n".join(lines)


def growth_table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | clients | rounds | server RSS MB at round 10 | at the last round "
        "| growth MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        growth = r["rss_last_round_mb"] - r["rss_round_10_mb"]
        lines.append(
            f"| {row_name(r)} | {r['clients']} | {r['rounds']} | {r['rss_round_10_mb']:.0f} | "
            f"{r['rss_last_round_mb']:.0f} | {growth:+.1f} |"
        )
    return "\n".join(lines)


def drive(args: argparse.Namespace) -> None:
    records: list[dict[str, Any]] = []
    common = ["--workers", str(args.workers), "--repeats", str(args.repeats)]
    # (workload, clients, backend, optimization level, read from an npz folder)
    plan: list[tuple[str, int, str, int, bool]] = []
    for workload, sizes in (("mean", args.mean_clients), ("fedavg", args.fedavg_clients)):
        if workload not in args.workloads:
            continue
        for clients in sizes:
            plan.append((workload, clients, "numpy", 0, False))
            for level in args.optimize:
                plan.extend((workload, clients, backend, level, False) for backend in args.backends)
                if workload == "fedavg" and args.folder:
                    plan.extend(
                        (workload, clients, backend, level, True)
                        for backend in args.backends
                        if backend in REMOTE_BACKENDS
                    )
    with tempfile.TemporaryDirectory(prefix="fedcc-bench-") as scratch:

        def folder_of(clients: int) -> str:
            path = Path(scratch) / f"clients_{clients}"
            if not path.exists():
                write_client_folder(path, clients)
            return str(path)

        for workload, clients, backend, level, folder in plan:
            options = ["--workload", workload, "--clients", str(clients), "--backend", backend,
                       "--optimize", str(level)]  # fmt: skip
            if folder:
                options += ["--folder", folder_of(clients)]
            started = time.perf_counter()
            record = run_measurement(options + common)
            records.append(record)
            print(
                f"  {workload} {clients} {row_name(record)}: median {record['median_s']:.4g} s "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        growth = []
        for backend in args.growth_backends if args.growth_rounds else ():
            for folder in (False, True) if backend in REMOTE_BACKENDS and args.folder else (False,):
                options = ["--workload", "fedavg", "--clients", str(args.growth_clients),
                           "--backend", backend, "--growth-rounds", str(args.growth_rounds),
                           "--optimize", str(max(args.optimize))]  # fmt: skip
                if folder:
                    options += ["--folder", folder_of(args.growth_clients)]
                growth.append(run_measurement(options + common))
                print(f"  growth {row_name(growth[-1])}: done", file=sys.stderr, flush=True)
    if args.tff_python:
        records += tff_records(args)
    order = {name: index for index, name in enumerate(("numpy", *BACKENDS, "TFF 0.87"))}
    records.sort(key=lambda r: (r["workload"] != "mean", r["clients"], r.get("optimize", 0),
                                order.get(r["backend"], 99), r.get("folder", False)))  # fmt: skip
    print(f"\nfedcc backends vs NumPy: {args.workers} workers, {args.repeats} timed calls a row, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print(markdown_table(records))
    if growth:
        print(f"\nServer memory over {args.growth_rounds} FedAvg rounds:\n")
        print(growth_table(growth))
    if args.json:
        Path(args.json).write_text(json.dumps(records + growth, indent=1))


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("measure", help="one row, in this process (used by the driver)")
    one.add_argument("--workload", choices=("mean", "fedavg"), required=True)
    one.add_argument("--clients", type=int, required=True)
    one.add_argument("--backend", choices=("numpy", *BACKENDS), required=True)
    one.add_argument("--folder", help="read FedAvg client data from this .npz folder")
    one.add_argument("--growth-rounds", type=int, default=0)
    one.add_argument("--optimize", type=int, default=0, help="fc.optimize level (0: none)")
    one.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    parser.add_argument("--optimize", type=_sizes, help="fc.optimize levels to run (0,2)")
    parser.add_argument("--repeats", type=int, help="timed calls after the warm-up (5)")
    for command in (parser, one):
        command.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="the QUICK preset (2-3 minutes)")
    parser.add_argument("--workloads", type=_names, default=["mean", "fedavg"])
    parser.add_argument("--backends", type=_names, default=list(BACKENDS))
    parser.add_argument("--mean-clients", type=_sizes, default=None)
    parser.add_argument("--fedavg-clients", type=_sizes, default=None)
    parser.add_argument("--no-folder", dest="folder", action="store_false",
                        help="skip the (npz folder) rows")  # fmt: skip
    parser.add_argument("--growth-rounds", type=int,
                        help="FedAvg rounds of the memory growth check (200; 0: skip it)")
    parser.add_argument("--growth-clients", type=int, default=100)
    parser.add_argument("--growth-backends", type=_names, help="(threads,processes,dask)")
    parser.add_argument("--tff-python", help="the TFF 0.87 venv's python: add TFF's rows")
    parser.add_argument("--tff-kit", default=str(TFF_KIT), help="the TFF peer kit's folder")
    parser.add_argument("--json", help="also write every record to this file")
    args = parser.parse_args(argv)
    if args.command is None:
        for name, value in (QUICK if args.quick else FULL).items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.command == "measure":
        print(json.dumps(measure(args)))
    else:
        drive(args)


if __name__ == "__main__":
    main()
