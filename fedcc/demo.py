"""`fedcc demo`: the whole system in under a minute (DESIGN §10).

It generates Synthetic(1, 1) (the FedProx benchmark) for 30 clients, builds
FedAvg for multinomial logistic regression, saves it to a `.pb` file and
prints the file's statistics, loads the file back (training runs from the
loaded IR, not from the Python that built it), trains on a backend with a
progress bar and a per-round table of loss and accuracy, and prints the final
test accuracy and where the `.pb` file and the server-state checkpoint went.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import fedcc as fc

# Which backend the demo uses when none is named, best first.
PREFERRED_BACKENDS = ("processes", "threads", "reference")
DEFAULT_ROUNDS = 50
DEFAULT_CLIENTS = 30
DEFAULT_WORKERS = 2
DEFAULT_OUTPUT = "fedcc-demo"
ALPHA, BETA = 1.0, 1.0
TEST_FRACTION = 0.1
BATCH_SIZE = 32
CLIENT_LEARNING_RATE = 0.05
SERVER_LEARNING_RATE = 1.0
PROCESS_FILE, CHECKPOINT_FILE = "fedavg.pb", "state.npz"
OPTIMIZATION_LEVEL = 2  # what `fedcc compile` uses by default (DESIGN §7)


class DemoError(fc.FedccError):
    """A demo setting that cannot work (no such backend, a non-positive count)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on the `fedcc demo` subcommand's parser."""
    parser.add_argument(
        "--backend",
        default="auto",
        metavar="NAME",
        help="backend to train on; auto picks the first installed of "
        + ", ".join(PREFERRED_BACKENDS),
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help="workers for a backend that has them (not reference)",
    )
    parser.add_argument("--rounds", type=_positive_int, default=DEFAULT_ROUNDS, metavar="N")
    parser.add_argument("--clients", type=_positive_int, default=DEFAULT_CLIENTS, metavar="N")
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"folder for {PROCESS_FILE} and {CHECKPOINT_FILE}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")


def choose_backend(requested: str) -> str:
    """The backend to use: `requested`, or for `auto` the first installed preferred one."""
    installed = fc.backends()
    if requested != "auto":
        if requested not in installed:
            raise DemoError(f"no backend {requested!r}; installed: {', '.join(installed)}")
        return requested
    for name in PREFERRED_BACKENDS:
        if name in installed:
            return name
    raise DemoError(f"none of {', '.join(PREFERRED_BACKENDS)} is installed")


def _backend_options(backend: str, workers: int) -> dict[str, Any]:
    return {} if backend == "reference" else {"workers": workers}


def _print_data_summary(train: fc.data.ClientData, test: fc.data.ClientData) -> None:
    sizes = np.array(train.num_examples) + np.array(test.num_examples)
    print(
        f"data: Synthetic({ALPHA:g}, {BETA:g}), {train.num_clients} clients, "
        f"{sum(train.num_examples)} training and {sum(test.num_examples)} test examples "
        f"(a client holds {sizes.min()} to {sizes.max()}, median {int(np.median(sizes))})"
    )


def _print_program_statistics(path: Path) -> None:
    from fedcc.ir.analysis import program_stats

    program = fc.load(path).program
    stats = program_stats(program)
    passes = len([p for p in program.metadata.get("passes", "").split(",") if p])
    print(
        f"compiled FedAvg to {path} ({path.stat().st_size} bytes, -O {OPTIMIZATION_LEVEL}: "
        f"{passes} passes):"
    )
    for name, computation in stats["computations"].items():
        calls = ", ".join(
            f"{uri} x{count}" for uri, count in computation["intrinsic_calls"].items()
        )
        local_ops = sum(computation["local_ops"].values())
        print(
            f"  {name}: {computation['nodes']} nodes, {computation['local_graphs']} local graphs "
            f"({local_ops} ops), depth {computation['depth']}; intrinsics: {calls or 'none'}"
        )


def _row(cells: Sequence[str]) -> str:
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, (5, 10, 10, 10, 10)))


def run(args: argparse.Namespace) -> int:
    """Runs the demo with the parsed options; returns the exit status."""
    started = time.perf_counter()
    backend = choose_backend(args.backend)
    options = _backend_options(backend, args.workers)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    data = fc.data.synthetic(ALPHA, BETA, num_clients=args.clients, seed=args.seed)
    train, test = data.split(TEST_FRACTION)
    _print_data_summary(train, test)
    train_batches = train.batches(BATCH_SIZE, seed=args.seed)
    test_batches = test.batches(BATCH_SIZE)

    model = fc.learning.models.logistic_regression(data.input_shape[0], 10)
    built = fc.learning.build_fed_avg(
        model,
        client_optimizer=fc.learning.optimizers.sgd(CLIENT_LEARNING_RATE),
        server_optimizer=fc.learning.optimizers.sgd(SERVER_LEARNING_RATE),
    )
    process_path = output / PROCESS_FILE
    fc.save(fc.optimize(built, level=OPTIMIZATION_LEVEL), process_path)
    _print_program_statistics(process_path)
    # Train from the file: what runs is the saved IR, not the Python that built it.
    process = fc.learning.IterativeProcess.from_bundle(fc.load(process_path))
    evaluate = fc.learning.build_fed_eval(model)

    workers = f" with {options['workers']} workers" if options else ""
    print(f"training {args.rounds} rounds on the {backend} backend{workers}")
    print(_row(["round", "loss", "accuracy", "test loss", "test acc"]))
    with fc.use_backend(backend, **options):
        state = process.initialize()
        with tqdm(total=args.rounds, unit="round", leave=False) as bar:
            for round_number in range(1, args.rounds + 1):
                state, metrics = process.next(state, train_batches)
                tested = evaluate(process.get_model_weights(state), test_batches)
                bar.update(1)
                row = [str(round_number)] + [
                    f"{float(value):.4f}"
                    for value in (
                        metrics["loss"],
                        metrics["accuracy"],
                        tested["loss"],
                        tested["accuracy"],
                    )
                ]
                tqdm.write(_row(row))

    checkpoint_path = output / CHECKPOINT_FILE
    process.save_state(state, checkpoint_path)
    labels = np.concatenate(test.labels)
    majority = np.bincount(labels).max() / len(labels)
    elapsed = time.perf_counter() - started
    print(
        f"final test accuracy: {float(tested['accuracy']):.4f} "
        f"(chance 0.1000, most common label {majority:.4f})"
    )
    print(f"wrote {process_path} (initialize and next) and {checkpoint_path} (the server state)")
    print(f"done in {elapsed:.1f} s")
    return 0
