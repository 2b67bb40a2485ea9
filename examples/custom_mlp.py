"""A user-defined model: a two-layer tanh network written in NumPy, trained with FedAvg.

The model is a dict of parameters plus a NumPy function of them
(`fc.learning.models.from_logits` adds the softmax cross-entropy loss and
accuracy). The data are Gaussian blobs on a ring, split among clients by a
Dirichlet(0.3) prior on labels, so each client sees mostly a few classes.
Clients run SGD with momentum; the server uses Adam and clips client
updates to a norm bound.

Run with `python examples/custom_mlp.py`.
"""

from __future__ import annotations

import numpy as np

import fedcc as fc
from fedcc.learning import aggregators, models, optimizers

NUM_CLASSES = 6
HIDDEN = 16


def logits(params, x):
    """Two tanh layers; plain NumPy, traced and differentiated by fedcc."""
    hidden = np.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return hidden @ params["output"]["kernel"] + params["output"]["bias"]


def initial_params(seed: int = 0) -> dict:
    """Small random weights, zero biases."""
    rng = np.random.default_rng(seed)
    return {
        "hidden": {
            "kernel": rng.normal(0.0, 0.5, (2, HIDDEN)).astype(np.float32),
            "bias": np.zeros(HIDDEN, np.float32),
        },
        "output": {
            "kernel": rng.normal(0.0, 0.5, (HIDDEN, NUM_CLASSES)).astype(np.float32),
            "bias": np.zeros(NUM_CLASSES, np.float32),
        },
    }


def ring_of_blobs(examples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around NUM_CLASSES centres on the unit circle; the label is the centre."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, examples)
    angles = 2 * np.pi * labels / NUM_CLASSES
    centres = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + rng.normal(0.0, 0.25, (examples, 2)), labels


def train(rounds: int = 20, num_clients: int = 12) -> tuple[list[float], float]:
    """Trains the network; returns each round's training loss and the final test accuracy."""
    x, y = ring_of_blobs(3000)
    data = fc.data.partition_dirichlet(x, y, num_clients=num_clients, alpha=0.3, seed=1)
    train_data, test_data = data.split(0.2, seed=2)
    model = models.from_logits(initial_params(), logits, input_shape=2, name="ring_mlp")
    process = fc.learning.build_fed_avg(
        model,
        client_optimizer=optimizers.sgd(0.1, momentum=0.9),
        server_optimizer=optimizers.adam(0.05),
        aggregator=aggregators.clipped_mean(clip=2.0),
    )
    evaluate = fc.learning.build_fed_eval(model)
    batches = train_data.batches(20, seed=3)
    state = process.initialize()
    losses = []
    for round_number in range(1, rounds + 1):
        state, metrics = process.next(state, batches)
        losses.append(float(metrics["loss"]))
        print(
            f"round {round_number:2d}: loss {losses[-1]:.4f}, accuracy "
            f"{float(metrics['accuracy']):.4f}, clipped {float(metrics['clipped_fraction']):.2f}"
        )
    accuracy = float(evaluate(process.get_model_weights(state), test_data.batches(100))["accuracy"])
    return losses, accuracy


def main() -> None:
    _, accuracy = train()
    print(f"test accuracy {accuracy:.4f} (chance {1 / NUM_CLASSES:.4f})")


if __name__ == "__main__":
    main()
