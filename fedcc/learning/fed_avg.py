"""Federated Averaging (McMahan et al., 2017) and FedSGD as iterative processes (DESIGN §9).

A round of `build_fed_avg(model, client_optimizer, server_optimizer, aggregator)`:

1. the server broadcasts the model;
2. each client starts from it with a fresh client-optimizer state and runs
   one optimizer step a batch, over its batches in order (`sequence_reduce`);
   its delta is its final model minus the broadcast one, its weight its
   number of examples;
3. the aggregator (default: the weighted mean) gives the server the mean delta;
4. the server hands the negated mean delta to its optimizer as the gradient
   (with `sgd(1.0)` the new model is the old one plus the mean delta).

The server state is `<model=P, optimizer=O, aggregator=A, round=int64>`.
The round's metrics are `loss` (the clients' training loss, averaged over
all their examples: each batch's loss, before its step, weighted by its
size), `accuracy` (likewise, for models with logits), `examples`, `clients`
(float32 counts), and the aggregator's measurements.

`build_fed_sgd` is the special case in which a client makes no local steps:
its delta is minus its mean gradient over all its examples at the broadcast
model, which is what one step of `sgd(1.0)` over all of its data at once
would give.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fedcc as fc
from fedcc import FederatedType, StructType, TensorType
from fedcc.learning import aggregators as aggregators_module
from fedcc.learning import optimizers as optimizers_module
from fedcc.learning import tree
from fedcc.learning.iterative_process import IterativeProcess
from fedcc.learning.models import STATISTICS_TYPE, Model, check_model, count_examples

DEFAULT_CLIENT_LEARNING_RATE = 0.1
DEFAULT_SERVER_LEARNING_RATE = 1.0
RESERVED_METRICS = ("loss", "accuracy", "examples", "clients")


def _zero_statistics() -> dict[str, np.float32]:
    return {name: np.float32(0.0) for name in STATISTICS_TYPE.names()}


def _add_statistics(statistics: Any, loss: Any, correct: Any, examples: Any) -> dict[str, Any]:
    return {
        "loss_sum": statistics["loss_sum"] + loss.astype(np.float32) * examples,
        "correct": statistics["correct"] + correct,
        "examples": statistics["examples"] + examples,
    }


def _local_training(model: Model, optimizer: optimizers_module.Optimizer) -> fc.Computation:
    """`(params, batches*) -> <delta, weight, statistics>`: FedAvg's client work."""
    params_type = model.params_type
    optimizer_state = optimizer.initial_state(model.initial_params)
    accumulator_type = StructType(
        [
            ("params", params_type),
            ("optimizer", tree.tree_type(optimizer_state)),
            ("statistics", STATISTICS_TYPE),
        ]
    )
    loss_and_gradient = model.loss_and_gradient

    @fc.numpy_computation(accumulator_type, model.batch_type)
    def train_on_batch(accumulator, batch):
        params = accumulator["params"]
        loss, gradient = loss_and_gradient(params, batch)
        examples = count_examples(batch)
        correct = model.count_correct(params, batch)
        new_state, new_params = optimizer.step(accumulator["optimizer"], params, gradient)
        statistics = _add_statistics(accumulator["statistics"], loss, correct, examples)
        return {"params": new_params, "optimizer": new_state, "statistics": statistics}

    @fc.numpy_computation(params_type, accumulator_type)
    def client_result(initial, trained):
        delta = tree.map_leaves(np.subtract, trained["params"], initial)
        statistics = trained["statistics"]
        return {"delta": delta, "weight": statistics["examples"], "statistics": statistics}

    @fc.federated_computation(params_type, model.client_data_type)
    def local_training(params, batches):
        zero = {"params": params, "optimizer": optimizer_state, "statistics": _zero_statistics()}
        trained = fc.sequence_reduce(batches, zero, train_on_batch)
        return client_result(params, trained)

    return local_training


def _local_gradient(model: Model) -> fc.Computation:
    """`(params, batches*) -> <delta, weight, statistics>`: FedSGD's client work."""
    params_type = model.params_type
    accumulator_type = StructType(
        [("params", params_type), ("gradient_sum", params_type), ("statistics", STATISTICS_TYPE)]
    )
    loss_and_gradient = model.loss_and_gradient

    @fc.numpy_computation(accumulator_type, model.batch_type)
    def add_batch_gradient(accumulator, batch):
        params = accumulator["params"]
        loss, gradient = loss_and_gradient(params, batch)
        examples = count_examples(batch)
        correct = model.count_correct(params, batch)
        gradient_sum = tree.map_leaves(
            lambda total, g: total + g * examples, accumulator["gradient_sum"], gradient
        )
        statistics = _add_statistics(accumulator["statistics"], loss, correct, examples)
        return {"params": params, "gradient_sum": gradient_sum, "statistics": statistics}

    @fc.numpy_computation(accumulator_type)
    def client_result(accumulated):
        statistics = accumulated["statistics"]
        examples = statistics["examples"]
        # A client without examples sends a zero delta (and has weight zero).
        count = np.where(examples > 0, examples, np.float32(1.0))
        delta = tree.map_leaves(lambda total: -(total / count), accumulated["gradient_sum"])
        return {"delta": delta, "weight": examples, "statistics": statistics}

    zero_gradient = tree.zeros_of_type(params_type)

    @fc.federated_computation(params_type, model.client_data_type)
    def local_gradient(params, batches):
        zero = {"params": params, "gradient_sum": zero_gradient, "statistics": _zero_statistics()}
        return client_result(fc.sequence_reduce(batches, zero, add_batch_gradient))

    return local_gradient


def _server_update(
    model: Model, optimizer: optimizers_module.Optimizer, optimizer_state_type: Any
) -> fc.Computation:
    """`<model, optimizer, round, mean_delta> -> <model, optimizer, round>` at the server."""
    argument_type = StructType(
        [
            ("model", model.params_type),
            ("optimizer", optimizer_state_type),
            ("round", TensorType(np.int64)),
            ("mean_delta", model.params_type),
        ]
    )

    @fc.numpy_computation(argument_type)
    def server_update(argument):
        gradient = tree.map_leaves(np.negative, argument["mean_delta"])
        new_state, new_model = optimizer.step(argument["optimizer"], argument["model"], gradient)
        return {"model": new_model, "optimizer": new_state, "round": argument["round"] + 1}

    return server_update


def _round_metrics(has_accuracy: bool) -> fc.Computation:
    """`<statistics totals, clients> -> <loss, accuracy?, examples, clients>` at the server."""

    @fc.numpy_computation(STATISTICS_TYPE, TensorType(np.float32))
    def round_metrics(totals, clients):
        examples = totals["examples"]
        metrics = {"loss": totals["loss_sum"] / examples}
        if has_accuracy:
            metrics["accuracy"] = totals["correct"] / examples
        metrics.update(examples=examples, clients=clients)
        return metrics

    return round_metrics


@fc.numpy_computation(TensorType(np.float32))
def _one(weight):
    return np.ones_like(weight)


def _build(
    model: Model,
    client_work: fc.Computation,
    server_optimizer: optimizers_module.Optimizer,
    aggregator_factory: aggregators_module.AggregatorFactory,
    algorithm: str,
) -> IterativeProcess:
    if not isinstance(server_optimizer, optimizers_module.Optimizer):
        raise fc.FederatedTypeError(
            f"server_optimizer must be a fc.learning.optimizers optimizer, "
            f"found {server_optimizer!r}"
        )
    if not isinstance(aggregator_factory, aggregators_module.AggregatorFactory):
        raise fc.FederatedTypeError(
            f"aggregator must be a fc.learning.aggregators factory, found {aggregator_factory!r}"
        )
    aggregator = aggregator_factory.create(model.params_type)
    clashing = set(aggregator.measurement_names) & set(RESERVED_METRICS)
    if clashing:
        raise fc.FederatedTypeError(
            f"the aggregator's measurements {sorted(clashing)} clash with the round's metrics"
        )
    server_state = server_optimizer.initial_state(model.initial_params)
    server_state_type = tree.tree_type(server_state)
    initial_state = {
        "model": dict(model.initial_params),
        "optimizer": server_state,
        "aggregator": aggregator.initial_state,
        "round": np.int64(0),
    }
    state_type = StructType(
        [
            ("model", model.params_type),
            ("optimizer", server_state_type),
            ("aggregator", aggregator.state_type),
            ("round", TensorType(np.int64)),
        ]
    )
    server_update = _server_update(model, server_optimizer, server_state_type)
    round_metrics = _round_metrics(model.has_accuracy)

    @fc.federated_computation
    def initialize():
        return fc.federated_value(initial_state, fc.SERVER)

    @fc.federated_computation(
        FederatedType(state_type, fc.SERVER),
        FederatedType(model.client_data_type, fc.CLIENTS),
    )
    def next(state, client_data):
        model_at_clients = fc.federated_broadcast(state["model"])
        client_outputs = fc.federated_map(client_work, [model_at_clients, client_data])
        aggregated = aggregator.next(
            state["aggregator"], client_outputs["delta"], client_outputs["weight"]
        )
        updated = fc.federated_apply(
            server_update,
            fc.federated_zip(
                {
                    "model": state["model"],
                    "optimizer": state["optimizer"],
                    "round": state["round"],
                    "mean_delta": aggregated["mean"],
                }
            ),
        )
        totals = fc.federated_sum(client_outputs["statistics"])
        clients = fc.federated_sum(fc.federated_map(_one, client_outputs["weight"]))
        metrics = fc.federated_map(round_metrics, [totals, clients])
        measured = {name: metrics[name] for name in round_metrics.type_signature.result.names()}
        for name in aggregator.measurement_names:
            measured[name] = aggregated["measurements"][name]
        new_state = {
            "model": updated["model"],
            "optimizer": updated["optimizer"],
            "aggregator": aggregated["state"],
            "round": updated["round"],
        }
        return fc.federated_zip(new_state), fc.federated_zip(measured)

    metadata = {"fedcc_version": fc.__version__, "algorithm": algorithm, "model": model.name}
    return IterativeProcess(initialize, next, metadata)


def build_fed_avg(
    model: Model,
    client_optimizer: optimizers_module.Optimizer | None = None,
    server_optimizer: optimizers_module.Optimizer | None = None,
    aggregator: aggregators_module.AggregatorFactory | None = None,
) -> IterativeProcess:
    """Federated Averaging as an `IterativeProcess` (see the module docstring for a round).

    Defaults: `client_optimizer=sgd(0.1)`, `server_optimizer=sgd(1.0)`,
    `aggregator=mean()`. `initialize` and `next` are traced once, here.
    """
    model = check_model(model)
    client_optimizer = client_optimizer or optimizers_module.sgd(DEFAULT_CLIENT_LEARNING_RATE)
    if not isinstance(client_optimizer, optimizers_module.Optimizer):
        raise fc.FederatedTypeError(
            f"client_optimizer must be a fc.learning.optimizers optimizer, "
            f"found {client_optimizer!r}"
        )
    return _build(
        model,
        _local_training(model, client_optimizer),
        server_optimizer or optimizers_module.sgd(DEFAULT_SERVER_LEARNING_RATE),
        aggregator or aggregators_module.mean(),
        "fed_avg",
    )


def build_fed_sgd(
    model: Model,
    server_optimizer: optimizers_module.Optimizer | None = None,
    aggregator: aggregators_module.AggregatorFactory | None = None,
) -> IterativeProcess:
    """FedSGD: FedAvg whose clients send their negated mean gradient (no local steps).

    Default `server_optimizer=sgd(0.1)`: then a round is one step of gradient
    descent on the example-weighted mean gradient over all clients' data.
    """
    model = check_model(model)
    return _build(
        model,
        _local_gradient(model),
        server_optimizer or optimizers_module.sgd(DEFAULT_CLIENT_LEARNING_RATE),
        aggregator or aggregators_module.mean(),
        "fed_sgd",
    )
