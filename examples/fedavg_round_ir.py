"""Builds one FedAvg-shaped training round directly as fedcc IR and saves it as a `.pb` file.

The round, in TFF's compact form:

    (state -> let model = federated_broadcast(state[0]),
                  trained = federated_map(<client_update, federated_zip(<model, data>)>),
                  loss = federated_mean(trained[1])
              in <federated_apply(<server_update, <state, federated_mean(trained[0])>>), loss>)

Each client runs softmax regression SGD over its batches with `sequence_reduce`;
the server averages the models. The local math is written as local op graphs
with `GraphBuilder`. Usage: `python examples/fedavg_round_ir.py OUT.pb`.
"""

from __future__ import annotations

import sys

import fedcc as fc
from fedcc.ir import building_blocks as bb
from fedcc.ir.graph_builder import GraphBuilder

FEATURES, CLASSES, LEARNING_RATE = 60, 10, 0.1

MODEL = fc.parse_type(f"<kernel=float32[{FEATURES},{CLASSES}],bias=float32[{CLASSES}]>")
BATCH = fc.parse_type(f"<x=float32[?,{FEATURES}],y=int32[?]>")


def sgd_step_graph():
    """<model, loss_sum, count>, batch -> one SGD step on softmax cross-entropy."""
    accumulator = fc.StructType([("model", MODEL), ("loss", "float32"), ("count", "float32")])
    g = GraphBuilder(fc.StructType([accumulator, BATCH]))
    kernel, bias, loss_sum, count, x, y = g.parameters()
    logits = g.op("add", g.op("matmul", x, kernel), bias)
    shifted = g.op("subtract", logits, g.op("reduce_max", logits, axis=1, keepdims=True))
    exp = g.op("exp", shifted)
    total = g.op("reduce_sum", exp, axis=1, keepdims=True)
    probabilities = g.op("divide", exp, total)
    labels = g.op("one_hot", y, depth=CLASSES, dtype="float32")
    log_probabilities = g.op("subtract", shifted, g.op("log", total))
    batch_size = g.op("cast", g.op("reduce_sum", g.op("ones_like", y)), dtype="float32")
    loss = g.op(
        "negative", g.op("reduce_sum", g.op("multiply", labels, log_probabilities))
    )
    error = g.op("divide", g.op("subtract", probabilities, labels), batch_size)
    grad_kernel = g.op("matmul", g.op("transpose", x), error)
    grad_bias = g.op("reduce_sum", error, axis=0)
    rate = g.constant(LEARNING_RATE, "float32")
    new_kernel = g.op("subtract", kernel, g.op("multiply", rate, grad_kernel))
    new_bias = g.op("subtract", bias, g.op("multiply", rate, grad_bias))
    outputs = [new_kernel, new_bias, g.op("add", loss_sum, loss), g.op("add", count, batch_size)]
    return bb.LocalGraph(g.build(outputs, accumulator))


def client_update():
    """(<model, batches*> -> <model, mean loss>): SGD over the client's batches in order."""
    arg_type = fc.StructType([MODEL, fc.SequenceType(BATCH)])
    arg = bb.Reference("client_input", arg_type)
    model = bb.Selection(arg, 0)
    zero_loss = bb.Literal(0.0, "float32")
    zero = bb.Struct([("model", model), ("loss", zero_loss), ("count", zero_loss)])
    reduced = bb.call_intrinsic(
        "sequence_reduce", bb.Struct([bb.Selection(arg, 1), zero, sgd_step_graph()])
    )
    g = GraphBuilder(reduced.type_signature)
    kernel, bias, loss_sum, count = g.parameters()
    mean_loss = g.op("divide", loss_sum, g.op("maximum", count, g.constant(1.0, "float32")))
    finish = bb.LocalGraph(g.build([kernel, bias, mean_loss], fc.StructType([MODEL, "float32"])))
    return bb.Lambda("client_input", arg_type, bb.Call(finish, reduced))


def server_update():
    """(<state, mean model> -> state): the new global model is the clients' mean model."""
    arg_type = fc.StructType([fc.StructType([MODEL]), MODEL])
    arg = bb.Reference("server_input", arg_type)
    return bb.Lambda("server_input", arg_type, bb.Struct([bb.Selection(arg, 1)]))


def fedavg_round():
    state_type = fc.FederatedType(fc.StructType([MODEL]), fc.SERVER)
    data_type = fc.FederatedType(fc.SequenceType(BATCH), fc.CLIENTS, all_equal=False)
    parameter_type = fc.StructType([("state", state_type), ("data", data_type)])
    arg = bb.Reference("round_input", parameter_type)
    state, data = bb.Selection(arg, 0), bb.Selection(arg, 1)
    model_at_server = bb.call_intrinsic(
        "federated_apply",
        bb.Struct([_select_model(), state]),
    )
    model = bb.Reference("model", fc.FederatedType(MODEL, fc.CLIENTS, all_equal=True))
    trained_value = bb.call_intrinsic(
        "federated_map",
        bb.Struct([client_update(), bb.call_intrinsic("federated_zip", bb.Struct([model, data]))]),
    )
    trained = bb.Reference("trained", trained_value.type_signature)
    mean_model = bb.call_intrinsic("federated_mean", _map_select(trained, 0))
    loss = bb.call_intrinsic("federated_mean", _map_select(trained, 1))
    new_state = bb.call_intrinsic(
        "federated_apply",
        bb.Struct(
            [server_update(), bb.call_intrinsic("federated_zip", bb.Struct([state, mean_model]))]
        ),
    )
    body = bb.Block(
        [
            ("model", bb.call_intrinsic("federated_broadcast", model_at_server)),
            ("trained", trained_value),
        ],
        bb.Struct([("state", new_state), ("loss", loss)]),
    )
    return bb.Lambda("round_input", parameter_type, body)


def _select_model():
    state_type = fc.StructType([MODEL])
    return bb.Lambda("s", state_type, bb.Selection(bb.Reference("s", state_type), 0))


def _map_select(placed: bb.Reference, index: int):
    member = placed.type_signature.member
    element = bb.Lambda("t", member, bb.Selection(bb.Reference("t", member), index))
    return bb.call_intrinsic("federated_map", bb.Struct([element, placed]))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python examples/fedavg_round_ir.py OUT.pb", file=sys.stderr)
        return 2
    program = fc.Program({"next": fedavg_round()}, {"source_module": __name__})
    fc.save(program, argv[1])
    print(f"wrote {argv[1]}: next has type {program['next'].type_signature}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
