"""`with fc.eager():` runs the Python bodies on concrete values and gives the traced answers, bit
for bit; `print` and `pdb` work inside (DESIGN §4)."""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fedcc as fc
from fedcc.eager import ClientValues, SequenceValues

Batch = collections.namedtuple("Batch", ["x", "y"])
FEATURES = 4
MODEL = f"<w=float32[{FEATURES}],b=float32>"
BATCH = f"<x=float32[?,{FEATURES}],y=float32[?]>"


@fc.numpy_computation(MODEL, BATCH)
def sgd_step(model, batch):
    prediction = batch["x"] @ model["w"] + model["b"]
    error = prediction - batch["y"]
    scale = np.float32(0.1)
    return {
        "w": model["w"] - scale * (batch["x"].T @ error),
        "b": model["b"] - scale * np.sum(error),
    }


@fc.numpy_computation(f"<{MODEL},float32>", BATCH)
def train_step(state, batch):
    model, loss = state
    error = batch["x"] @ model["w"] + model["b"] - batch["y"]
    new_model = sgd_step(model, batch)
    return new_model, loss + np.mean(error * error)


@fc.federated_computation(MODEL, f"{BATCH}*")
def client_update(model, batches):
    trained, loss = fc.sequence_reduce(batches, (model, 0.0), train_step)
    return {"model": trained, "loss": loss}


@fc.numpy_computation("<float32,float32>")
def lossy_add(pair):
    a, b = pair
    return a + b * np.float32(1.0000001)


@fc.federated_computation(f"{MODEL}@SERVER", f"{{{BATCH}*}}@CLIENTS", "{float32}@CLIENTS")
def fed_round(model, data, weights):
    outputs = fc.federated_map(client_update, [fc.federated_broadcast(model), data])
    new_model = fc.federated_mean(outputs.model, weight=weights)
    losses = outputs["loss"]
    folded = fc.federated_aggregate(losses, 0.0, lossy_add, lossy_add, lambda total: total)
    return new_model, fc.federated_mean(losses), fc.federated_max(losses), folded


def round_arguments(num_clients: int = 5):
    rng = np.random.default_rng(7)
    model = {"w": rng.normal(size=FEATURES).astype(np.float32), "b": np.float32(0.5)}
    data = [
        [
            {"x": rng.normal(size=(n, FEATURES)).astype(np.float32),
             "y": rng.normal(size=n).astype(np.float32)}
            for n in rng.integers(1, 4, size=rng.integers(1, 4))
        ]
        for _ in range(num_clients)
    ]
    weights = rng.uniform(1, 3, size=num_clients).astype(np.float32)
    return model, data, list(weights)


def assert_same_bits(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same_bits(a[key], b[key])
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_bits(x, y)
    else:
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_a_federated_round_gives_the_same_bits_eagerly_and_traced():
    arguments = round_arguments()
    traced = fed_round(*arguments)
    with fc.eager():
        eager = fed_round(*arguments)
    assert_same_bits(traced, eager)


def test_eager_bodies_see_concrete_client_values_and_can_print_them(capsys):
    @fc.federated_computation("{float32}@CLIENTS")
    def show(v):
        print("clients:", v)
        total = fc.federated_sum(v)
        print("total:", total)
        return total

    assert "clients: <Value v" in capsys.readouterr().out  # printed once, while tracing
    with fc.eager():
        assert show([1.0, 2.0, 3.5]) == np.float32(6.5)
    printed = capsys.readouterr().out
    assert "clients: ClientValues([np.float32(1.0), np.float32(2.0), np.float32(3.5)])" in printed
    assert "total: 6.5" in printed


def test_pdb_stops_inside_an_eager_body_and_shows_the_values():
    script = textwrap.dedent(
        """
        import pdb
        import fedcc as fc

        @fc.federated_computation("{int32}@CLIENTS")
        def total(v):
            pdb.set_trace()
            return fc.federated_sum(v)

        with fc.eager():
            print("result", total([4, 5]))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        input="p v\nc\np v\nc\n",  # it stops while tracing, then eagerly
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "<Value v" in completed.stdout
    assert "ClientValues([np.int32(4), np.int32(5)])" in completed.stdout
    assert "result 9" in completed.stdout


def test_numpy_bodies_run_as_numpy_in_eager_mode_and_are_traced_once_otherwise():
    calls = []

    @fc.numpy_computation("float32[2]")
    def double(x):
        calls.append(type(x).__name__)
        return x * 2

    assert calls == ["Tracer"]
    double(np.ones(2, np.float32))
    assert calls == ["Tracer"]  # a run does not call the Python body
    with fc.eager():
        result = double(np.ones(2, np.float32))
    assert calls == ["Tracer", "ndarray"]
    assert result.dtype == np.float32 and result.tolist() == [2.0, 2.0]


def test_nested_calls_keep_placements_and_the_top_level_returns_plain_values():
    seen = {}

    @fc.federated_computation("{float32}@CLIENTS")
    def identity(v):
        return v

    @fc.federated_computation("{float32}@CLIENTS")
    def outer(v):
        inner = identity(v)
        seen["inner"] = inner
        return fc.federated_sum(inner), inner

    with fc.eager():
        total, values = outer([1.0, 2.0])
    assert isinstance(seen["inner"], ClientValues)
    assert type(values) is list and values == [1.0, 2.0]
    assert total == np.float32(3.0)


def test_client_values_select_struct_elements_at_every_client_like_traced_values():
    seen = {}

    @fc.federated_computation("{<a=float32,b=int32>}@CLIENTS", "<lr=float32,n=int32>@SERVER")
    def select(v, server):
        a, b = v
        seen.update(a=a, by_name=v["b"], by_index=v[1], server=server)
        return fc.federated_sum(v.a), fc.federated_sum(b), server.n, server["lr"], server[0]

    arguments = ([{"a": 1.0, "b": 2}, {"a": 3.0, "b": 4}], {"lr": 0.5, "n": 3})
    traced = select(*arguments)
    with fc.eager():
        eager = select(*arguments)
    assert_same_bits(traced, eager)
    assert seen["a"].values == [1.0, 3.0] and seen["by_name"].values == [2, 4]
    assert seen["by_index"].values == [2, 4]
    assert seen["server"].n == 3 and seen["server"]["lr"] == np.float32(0.5)


INTRINSIC_BODIES = {
    "sum": ("{float32}@CLIENTS", lambda v: fc.federated_sum(v), [1.5, 2.25, 1e-8]),
    "mean": ("{float32}@CLIENTS", lambda v: fc.federated_mean(v), [1.5, 2.25, 1e-8]),
    "weighted": ("{float32}@CLIENTS", lambda v: fc.federated_mean(v, v), [1.5, 2.25, 0.5]),
    "min": ("{int32[2]}@CLIENTS", lambda v: fc.federated_min(v), [[1, 5], [3, -2]]),
    "max": ("{int32[2]}@CLIENTS", lambda v: fc.federated_max(v), [[1, 5], [3, -2]]),
    "secure": ("{int32}@CLIENTS", lambda v: fc.federated_secure_sum(v, 7), [1, 7, 3]),
    "bitwidth": ("{int32}@CLIENTS", lambda v: fc.federated_secure_sum_bitwidth(v, 3), [1, 7]),
    "zip": ("{float32}@CLIENTS", lambda v: fc.federated_zip({"a": v, "b": v}), [1.0, 2.0]),
    "nested_zip": ("{float32}@CLIENTS", lambda v: fc.federated_zip([v, (v, v)]), [1.0, 2.0]),
    "broadcast": ("float32@SERVER", lambda s: fc.federated_broadcast(s), 2.0),
    "value": ("float32", lambda x: fc.federated_value(x, fc.SERVER), 2.0),
    "apply": ("float32@SERVER", lambda s: fc.federated_map(lambda x: (x, x), s), 2.0),
    "eval": ("float32", lambda x: fc.federated_eval(lambda: x, fc.SERVER), 2.0),
    "sequence_map": ("float32*", lambda s: fc.sequence_map(lambda x: (x, x), s), [1.0, 2.0]),
    "sequence_sum": ("float32[2]*", lambda s: fc.sequence_sum(s), [[1.0, 2.0], [0.5, 0.0]]),
    "sequence_empty": ("float32[2]*", lambda s: fc.sequence_sum(s), []),
    "aggregate": ("{float32}@CLIENTS",
                  lambda v: fc.federated_aggregate(v, 0.0, lossy_add, lossy_add, lambda a: a),
                  [1e8, 1.0, -1e8, 3.0, 0.1, 7.0, 2.5]),
    "map_selection": ("{<x=float32,y=float32>}@CLIENTS",
                      lambda v: fc.federated_map(lossy_add, [v.y, v[0]]),
                      [{"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}]),
}


@pytest.mark.parametrize("name", sorted(INTRINSIC_BODIES))
def test_every_intrinsic_gives_the_traced_bits_eagerly(name):
    parameter, body, argument = INTRINSIC_BODIES[name]
    comp = fc.federated_computation(parameter)(lambda x: body(x))
    if "CLIENTS" in parameter:
        traced = comp(argument)
        with fc.eager():
            eager = comp(argument)
    else:  # without client arguments, the run and eager mode are told how many clients
        traced = comp.run(argument, num_clients=2)
        with fc.eager(num_clients=2):
            eager = comp(argument)
    assert_same_bits(traced, eager)


def test_federated_eval_at_clients_runs_once_per_client_of_the_call():
    @fc.federated_computation("{float32}@CLIENTS")
    def with_ones(v):
        return fc.federated_zip([v, fc.federated_eval(lambda: np.float32(1.0), fc.CLIENTS)])

    traced = with_ones([5.0, 6.0, 7.0])
    with fc.eager():
        eager = with_ones([5.0, 6.0, 7.0])
    assert_same_bits(traced, eager)
    assert len(eager) == 3


def test_randomness_gives_the_same_bits_eagerly():
    @fc.numpy_computation("int64", "float32[5]")
    def noisy(seed, x):
        key = fc.random.fold_in(seed, 3)
        return x + fc.random.normal(key, (5,)) + fc.random.uniform(seed, 5, minval=-1.0)

    seed, x = np.int64(42), np.linspace(0, 1, 5, dtype=np.float32)
    traced = noisy(seed, x)
    with fc.eager():
        eager = noisy(seed, x)
    assert_same_bits(traced, eager)


def test_eager_values_are_checked_like_run_arguments():
    @fc.federated_computation("{float32[2]}@CLIENTS")
    def total(v):
        return fc.federated_sum(v)

    with fc.eager(), pytest.raises(fc.FederatedTypeError, match="'v', client 1: expected"):
        total([[1.0, 2.0], [1.0]])


def test_eager_intrinsic_type_errors_are_the_traced_ones():
    with fc.eager(), pytest.raises(fc.FederatedTypeError, match=r"fc\.federated_sum") as info:
        fc.federated_sum(2.0)  # a value not at CLIENTS is at SERVER
    assert "float32@SERVER is not placed at CLIENTS" in str(info.value)
    assert f"{__file__}:" in str(info.value)


def test_sequences_are_sequence_values_with_their_element_type():
    seen = {}

    @fc.federated_computation("float32[2]*")
    def total(s):
        seen["s"] = s
        return fc.sequence_sum(s)

    with fc.eager():
        total([[1.0, 2.0]])
    assert isinstance(seen["s"], SequenceValues)
    assert str(seen["s"].element_type) == "float32[2]"


def test_eager_mode_ends_with_its_block():
    with fc.eager():
        assert fc.federated_sum(ClientValues([1.0, 2.0])) == np.float32(3.0)
    with pytest.raises(fc.FederatedTypeError, match=r"fc\.eager"):
        fc.federated_sum(ClientValues([1.0, 2.0]))
