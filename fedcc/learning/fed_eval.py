"""Federated evaluation of a model's parameters on the clients' data (DESIGN §9)."""

from __future__ import annotations

import numpy as np

import fedcc as fc
from fedcc import FederatedType, StructType
from fedcc.learning.models import STATISTICS_TYPE, Model, check_model


def build_fed_eval(model: Model) -> fc.Computation:
    """`(params@SERVER, {batches*}@CLIENTS) -> <loss, accuracy?, examples>@SERVER`.

    Every client evaluates the broadcast parameters on all its batches; `loss`
    and `accuracy` are averaged over all the clients' examples (`accuracy`
    only for models with logits); `examples` is their float32 count.
    """
    model = check_model(model)
    statistics = model.batch_statistics
    has_accuracy = model.has_accuracy

    accumulator_type = StructType([("params", model.params_type), ("totals", STATISTICS_TYPE)])

    @fc.numpy_computation(accumulator_type, model.batch_type)
    def add_batch(accumulator, batch):
        totals = accumulator["totals"]
        batch_totals = statistics(accumulator["params"], batch)
        new_totals = {name: totals[name] + batch_totals[name] for name in STATISTICS_TYPE.names()}
        return {"params": accumulator["params"], "totals": new_totals}

    @fc.numpy_computation(accumulator_type)
    def totals_of(accumulator):
        return accumulator["totals"]

    zero_totals = {name: np.float32(0.0) for name in STATISTICS_TYPE.names()}

    @fc.federated_computation(model.params_type, model.client_data_type)
    def evaluate_client(params, batches):
        zero = {"params": params, "totals": zero_totals}
        return totals_of(fc.sequence_reduce(batches, zero, add_batch))

    @fc.numpy_computation(STATISTICS_TYPE)
    def summarize(totals):
        examples = totals["examples"]
        metrics = {"loss": totals["loss_sum"] / examples}
        if has_accuracy:
            metrics["accuracy"] = totals["correct"] / examples
        metrics["examples"] = examples
        return metrics

    @fc.federated_computation(
        FederatedType(model.params_type, fc.SERVER),
        FederatedType(model.client_data_type, fc.CLIENTS),
    )
    def evaluate(params, client_data):
        per_client = fc.federated_map(
            evaluate_client, [fc.federated_broadcast(params), client_data]
        )
        return fc.federated_map(summarize, fc.federated_sum(per_client))

    return evaluate
