"""FedAvg on Synthetic(alpha, beta), the non-IID benchmark of the FedProx paper.

Thirty clients hold power-law-sized shares of data whose labelling model (alpha)
and inputs (beta) differ from client to client. FedAvg trains multinomial
logistic regression on them; the process is saved to a `.pb` file, trained,
evaluated on each client's held-out examples, and its server state is
checkpointed to `.npz`.

Run with `python examples/fedavg_synthetic.py [--rounds 30] [--backend threads]`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import fedcc as fc
from fedcc.learning import models, optimizers

BATCH_SIZE = 32


def make_data(alpha: float, beta: float, num_clients: int, seed: int = 0):
    """Synthetic(alpha, beta), split into each client's training and test examples."""
    return fc.data.synthetic(alpha, beta, num_clients=num_clients, seed=seed).split(0.1)


def build(learning_rate: float = 0.05) -> tuple[fc.learning.IterativeProcess, fc.Computation]:
    """FedAvg and federated evaluation of logistic regression on 60 features, 10 classes."""
    model = models.logistic_regression(60, 10)
    process = fc.learning.build_fed_avg(
        model,
        client_optimizer=optimizers.sgd(learning_rate),
        server_optimizer=optimizers.sgd(1.0),
    )
    return process, fc.learning.build_fed_eval(model)


def train(
    rounds: int,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 30,
    output: Path | None = None,
) -> list[float]:
    """Trains `rounds` rounds; returns the test accuracy after each round."""
    train_data, test_data = make_data(alpha, beta, num_clients)
    process, evaluate = build()
    if output is not None:
        fc.save(process, output / "fedavg.pb")
    train_batches = train_data.batches(BATCH_SIZE, seed=0)
    test_batches = test_data.batches(BATCH_SIZE)
    state = process.initialize()
    accuracies = []
    for round_number in range(1, rounds + 1):
        state, metrics = process.next(state, train_batches)
        tested = evaluate(process.get_model_weights(state), test_batches)
        accuracies.append(float(tested["accuracy"]))
        print(
            f"round {round_number:3d}: training loss {float(metrics['loss']):.4f}, "
            f"test accuracy {accuracies[-1]:.4f}"
        )
    if output is not None:
        process.save_state(state, output / "state.npz")
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--backend", default="reference")
    parser.add_argument("--output", type=Path, default=None, help="folder for the .pb and state")
    args = parser.parse_args()
    with fc.use_backend(args.backend), tempfile.TemporaryDirectory() as scratch:
        output = args.output or Path(scratch)
        output.mkdir(parents=True, exist_ok=True)
        accuracies = train(args.rounds, args.alpha, args.beta, output=output)
        labels = np.concatenate(make_data(args.alpha, args.beta, 30)[1].labels)
        print(
            f"final test accuracy {accuracies[-1]:.4f} "
            f"(most common label {np.bincount(labels).max() / len(labels):.4f})"
        )


if __name__ == "__main__":
    main()
