"""FedSGD on linear regression, with the gradient written by `fc.grad`.

Each client holds one batch of examples `{"x": float32[?,D], "y": float32[?]}`.
A round broadcasts the model `{"w": float32[D], "b": float32}`; each client
computes the gradient of its mean squared error with `fc.grad` of the loss
(reverse-mode autodiff of the NumPy graph) and its example count; the server
averages the gradients weighted by the counts and takes one SGD step. The
round also reports the clients' mean loss before the step.

Compile one round with `fedcc compile examples.fedsgd_linear_regression:fedsgd_round -o r.pb`;
train here with `python examples/fedsgd_linear_regression.py`.
"""

from __future__ import annotations

import numpy as np

import fedcc as fc

FEATURES = 3
LEARNING_RATE = 0.1

MODEL = fc.parse_type(f"<w=float32[{FEATURES}],b=float32>")
BATCH = fc.parse_type(f"<x=float32[?,{FEATURES}],y=float32[?]>")


@fc.numpy_computation(MODEL, BATCH)
def mean_squared_error(model, batch):
    """The mean squared error of the linear model `x @ w + b` on one batch."""
    predictions = batch["x"] @ model["w"] + model["b"]
    return np.mean((predictions - batch["y"]) ** 2)


loss_gradient = fc.grad(mean_squared_error, argnum=0)


@fc.numpy_computation(BATCH)
def example_count(batch):
    """The number of examples in a batch, as a float32 weight."""
    return np.sum(np.ones_like(batch["y"]))


@fc.numpy_computation(MODEL, MODEL)
def sgd_step(model, gradient):
    """One step of plain SGD."""
    return {
        "w": model["w"] - np.float32(LEARNING_RATE) * gradient["w"],
        "b": model["b"] - np.float32(LEARNING_RATE) * gradient["b"],
    }


@fc.federated_computation(fc.FederatedType(MODEL, fc.SERVER), fc.FederatedType(BATCH, fc.CLIENTS))
def fedsgd_round(model, data):
    """One FedSGD round: the new model and the clients' mean loss before the step."""
    model_at_clients = fc.federated_broadcast(model)
    counts = fc.federated_map(example_count, data)
    gradients = fc.federated_map(loss_gradient, [model_at_clients, data])
    losses = fc.federated_map(mean_squared_error, [model_at_clients, data])
    mean_gradient = fc.federated_mean(gradients, weight=counts)
    new_model = fc.federated_apply(sgd_step, fc.federated_zip([model, mean_gradient]))
    return {"model": new_model, "loss": fc.federated_mean(losses, weight=counts)}


def initial_model() -> dict[str, np.ndarray]:
    """The model at zero."""
    return {"w": np.zeros(FEATURES, np.float32), "b": np.float32(0.0)}


def client_data(num_clients: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Noisy examples of one linear function, a different number of examples a client."""
    rng = np.random.default_rng(seed)
    true_w = np.array([2.0, -1.0, 0.5], np.float32)
    data = []
    for _ in range(num_clients):
        size = int(rng.integers(5, 20))
        x = rng.normal(size=(size, FEATURES)).astype(np.float32)
        y = (x @ true_w + 0.3 + rng.normal(0.0, 0.1, size=size)).astype(np.float32)
        data.append({"x": x, "y": y})
    return data


def train(rounds: int, data: list[dict[str, np.ndarray]]) -> tuple[dict, list[float]]:
    """Runs `rounds` FedSGD rounds from the zero model; the final model and each round's loss."""
    model = initial_model()
    losses = []
    for _ in range(rounds):
        result = fedsgd_round(model, data)
        model = result["model"]
        losses.append(float(result["loss"]))
    return model, losses


def main() -> None:
    model, losses = train(10, client_data(8))
    for index, loss in enumerate(losses):
        print(f"round {index}: loss {loss:.5f}")
    print(f"w = {model['w']}, b = {model['b']:.4f}")


if __name__ == "__main__":
    main()
