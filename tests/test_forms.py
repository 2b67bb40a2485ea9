"""MapReduceForm: splitting a round, running the form bit for bit like `next`, and refusing
rounds the form cannot express (DESIGN §7)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fedcc as fc
from fedcc.forms import MapReduceForm, MapReduceFormError, run_map_reduce_form, to_map_reduce_form
from fedcc.ir.building_blocks import Data, Lambda, Reference, Selection, Struct, call_intrinsic
from fedcc.ir.types import FederatedType, PlacementType, walk_types
from fedcc.learning import aggregators, models, optimizers
from fedcc.runtimes import reduction

ROOT = Path(__file__).resolve().parent.parent
D, K = 5, 3


def leaves(value) -> list[np.ndarray]:
    """Every tensor of a nested result (dicts, tuples, lists), in order."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (tuple, list)):
            stack.extend(reversed(item))
        else:
            found.append(np.asarray(item))
    return found


def assert_same_bits(actual, expected) -> None:
    actual, expected = leaves(actual), leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        # Bytes, not values: -0.0 and NaN payloads must match too.
        assert np.array_equal(
            np.frombuffer(a.tobytes(), np.uint8), np.frombuffer(e.tobytes(), np.uint8)
        ), (a, e)


def assert_rounds_match(next_fn, form, state, data_for_round, rounds: int = 3) -> None:
    """`rounds` rounds of `next` on the reference backend and of the form's driver agree bit
    for bit, each round continuing from its own previous state."""
    form_state = state
    for r in range(rounds):
        data = data_for_round(r)
        state, metrics = next_fn.run(state, data, backend="reference")
        form_state, form_metrics = run_map_reduce_form(form, form_state, data)
        assert_same_bits((form_state, form_metrics), (state, metrics))


def client_batches(seed: int, sizes=(7, 12, 3, 9, 1), batch_size: int = 4):
    rng = np.random.default_rng(seed)
    clients = []
    for size in sizes:
        x = rng.normal(size=(size, D)).astype(np.float32)
        y = rng.integers(0, K, size).astype(np.int32)
        clients.append(
            [
                {"x": x[i : i + batch_size], "y": y[i : i + batch_size]}
                for i in range(0, size, batch_size)
            ]
        )
    return clients


def has_placements(t) -> bool:
    return any(isinstance(inner, (FederatedType, PlacementType)) for inner in walk_types(t))


# ---------------------------------------------------------------------------
# Learning rounds.

AGGREGATORS = {
    "weighted_mean": aggregators.mean,
    "secure_mean": lambda: aggregators.secure_mean(8),
    "clipped_mean": lambda: aggregators.clipped_mean(0.05),
    "dp_mean": lambda: aggregators.dp_mean(0.5, 0.1, seed=3),
    "quantized_mean": lambda: aggregators.quantized_mean(6),
}


def build(algorithm: str, aggregator: str):
    model = models.logistic_regression(D, K)
    if algorithm == "fed_avg":
        return fc.learning.build_fed_avg(
            model,
            client_optimizer=optimizers.sgd(0.3),
            server_optimizer=optimizers.adam(0.05),
            aggregator=AGGREGATORS[aggregator](),
        )
    return fc.learning.build_fed_sgd(model, aggregator=AGGREGATORS[aggregator]())


@pytest.mark.parametrize("algorithm", ["fed_avg", "fed_sgd"])
@pytest.mark.parametrize("aggregator", ["weighted_mean", "secure_mean"])
def test_learning_rounds_run_as_forms_with_the_bits_of_next(algorithm, aggregator):
    process = build(algorithm, aggregator)
    form = to_map_reduce_form(process)
    assert_rounds_match(process.next, form, process.initialize(), client_batches)


@pytest.mark.parametrize("aggregator", ["clipped_mean", "dp_mean", "quantized_mean"])
def test_fed_avg_with_other_aggregators_runs_as_a_form_with_the_same_bits(aggregator):
    process = build("fed_avg", aggregator)
    form = to_map_reduce_form(process)
    assert_rounds_match(process.next, form, process.initialize(), client_batches, rounds=2)


def test_a_secure_mean_round_has_its_secure_sum_in_work_and_its_bounds_as_computations():
    form = to_map_reduce_form(build("fed_avg", "secure_mean"))
    work_result = form.work.type_signature.result
    assert work_result.names() == ("update", "secure_sum_bitwidth", "secure_sum")
    assert len(work_result[1]) == 1 and len(work_result[2]) == 0
    assert set(form.computations()) == {
        "prepare", "work", "zero", "accumulate", "merge", "report", "update",
        "secure_sum_bitwidth", "secure_sum_max_input",
    }  # fmt: skip
    # The model deltas go through the secure sum only: the fold carries the statistics.
    assert "kernel" not in str(form.accumulate.type_signature)


def test_a_fed_avg_form_broadcasts_the_model_and_updates_the_whole_state():
    process = build("fed_avg", "weighted_mean")
    form = to_map_reduce_form(process)
    model_type = process.state_type[0]
    assert form.prepare.type_signature.parameter == process.state_type
    assert form.prepare.type_signature.result == model_type
    assert form.work.type_signature.parameter[1] == model_type
    assert form.update.type_signature.result[0] == process.state_type
    assert list(form.computations()) == [
        "prepare", "work", "zero", "accumulate", "merge", "report", "update",
    ]  # fmt: skip


def test_every_part_is_unplaced_and_round_trips_through_bytes_and_text():
    form = to_map_reduce_form(build("fed_sgd", "secure_mean"))
    for name, part in form.computations().items():
        assert not has_placements(part.type_signature), name
        loaded = fc.deserialize(fc.serialize(part))
        assert loaded.building_block == part, name
        parsed = fc.parse_text(fc.to_text(part))
        assert parsed.building_block == part, name


def test_a_saved_form_program_loads_back_and_runs_with_the_same_bits(tmp_path):
    process = build("fed_avg", "weighted_mean")
    form = to_map_reduce_form(process)
    fc.save(form.to_program(), tmp_path / "form.pb")
    loaded = fc.load(tmp_path / "form.pb")
    assert list(loaded) == ["prepare", "work", "zero", "accumulate", "merge", "report", "update"]
    assert loaded.metadata["form"] == "mapreduce"
    assert MapReduceForm.from_program(loaded.program) == form
    assert_rounds_match(process.next, loaded, process.initialize(), client_batches, rounds=2)


# ---------------------------------------------------------------------------
# Hand-written rounds.

STATE = "<w=float32[4],steps=int32>@SERVER"
VALUES = "{float32[4]}@CLIENTS"


@fc.numpy_computation("float32[4]", "float32[4]")
def scaled_difference(value, w):
    return (value - w) * np.float32(0.5)


@fc.numpy_computation("<w=float32[4],steps=int32>", "float32[4]")
def server_step(state, mean):
    return {"w": state["w"] + mean, "steps": state["steps"] + np.int32(1)}


@fc.numpy_computation("float32[4]")
def weight_of(value):
    return value[0] * value[0] + np.float32(1.0)


@fc.federated_computation(STATE, VALUES)
def sugar_round(state, values):
    """Broadcast, client work, then every kind of sugar: unweighted and weighted mean, sum,
    min and max (all lowered to one federated_aggregate), and a server update."""
    w = fc.federated_broadcast(fc.federated_apply(lambda s: s["w"], state))
    differences = fc.federated_map(scaled_difference, [values, w])
    weights = fc.federated_map(weight_of, values)
    mean = fc.federated_mean(differences)
    new_state = fc.federated_apply(server_step, fc.federated_zip([state, mean]))
    metrics = fc.federated_zip(
        {
            "weighted": fc.federated_mean(differences, weight=weights),
            "total": fc.federated_sum(values),
            "lowest": fc.federated_min(differences),
            "highest": fc.federated_max(values),
        }
    )
    return new_state, metrics


def sugar_state():
    return {"w": np.array([0.25, -1.0, 3.0, 0.0], np.float32), "steps": np.int32(0)}


def float_clients(seed: int, count: int = 13):
    rng = np.random.default_rng(seed)
    # Magnitudes spread over many orders, so that the order of additions shows in the bits.
    scale = 10.0 ** rng.integers(-4, 6, size=(count, 1))
    return list((rng.normal(size=(count, 4)) * scale).astype(np.float32))


def test_a_round_of_every_sugar_runs_as_a_form_with_the_same_bits():
    form = to_map_reduce_form(sugar_round)
    assert_rounds_match(sugar_round, form, sugar_state(), float_clients, rounds=4)


@pytest.mark.parametrize("level", [0, 1])
def test_parts_left_less_optimized_give_the_same_bits(level):
    form = to_map_reduce_form(sugar_round, optimization_level=level)
    assert_rounds_match(sugar_round, form, sugar_state(), float_clients, rounds=2)


def test_the_driver_folds_along_the_canonical_tree_not_in_client_order():
    """The comparison above would not notice a driver that folds in client order only if the
    orders gave the same bits; for these clients they do not."""
    values = float_clients(7)
    in_order = values[0]
    for v in values[1:]:
        in_order = in_order + v
    tree = reduction.tree_reduce(values, np.add)
    assert not np.array_equal(in_order, tree)
    _, metrics = sugar_round.run(sugar_state(), values, backend="reference")
    assert np.array_equal(metrics["total"], tree)
    _, form_metrics = run_map_reduce_form(to_map_reduce_form(sugar_round), sugar_state(), values)
    assert np.array_equal(form_metrics["total"], tree)


@pytest.mark.parametrize("count", [1, 2, 5, 8])
def test_small_client_counts_give_the_same_bits(count):
    form = to_map_reduce_form(sugar_round)
    assert_rounds_match(sugar_round, form, sugar_state(), lambda r: float_clients(r, count), 2)


@fc.numpy_computation("float32", "float32")
def add(a, b):
    return a + b


@fc.federated_computation("float32@SERVER", "{float32}@CLIENTS")
def sum_round(state, values):
    total = fc.federated_sum(values)
    return fc.federated_apply(add, fc.federated_zip([state, total])), total


def test_a_sum_round_without_a_broadcast_keeps_signed_zeros_and_runs_over_zero_clients():
    form = to_map_reduce_form(sum_round)
    assert form.prepare.type_signature.result == fc.StructType([])  # nothing is broadcast
    for clients in ([np.float32(-0.0)], [], [np.float32(1.5), np.float32(-0.0), np.float32(2)]):
        expected = sum_round.run(np.float32(-0.0), clients, backend="reference")
        assert_same_bits(run_map_reduce_form(form, np.float32(-0.0), clients), expected)


@fc.numpy_computation("int32[3]", "int32")
def encode(value, shift):
    return value + shift


@fc.numpy_computation("int32[3]")
def to_float(value):
    return value.astype(np.float32)


@fc.federated_computation("<shift=int32,scale=float32>@SERVER", "{int32[3]}@CLIENTS")
def secure_round(state, values):
    """Two secure sums of each kind, next to an ordinary mean and a server-only metric."""
    shift = fc.federated_broadcast(fc.federated_apply(lambda s: s["shift"], state))
    encoded = fc.federated_map(encode, [values, shift])
    small = fc.federated_secure_sum(values, np.int32(100))
    shifted = fc.federated_secure_sum(encoded, np.int32(200))
    bits = fc.federated_secure_sum_bitwidth(values, np.int32(7))
    pair = fc.federated_secure_sum_bitwidth(
        fc.federated_zip([values, encoded]), (np.int32(8), np.int32(9))
    )
    as_float = fc.federated_map(to_float, values)
    mean = fc.federated_mean(as_float)
    metrics = fc.federated_zip(
        {"small": small, "shifted": shifted, "bits": bits, "pair": pair, "mean": mean}
    )
    return state, metrics


def test_secure_sums_of_both_kinds_go_through_work_and_give_the_same_bits():
    form = to_map_reduce_form(secure_round)
    work_result = form.work.type_signature.result
    assert len(work_result[1]) == 2 and len(work_result[2]) == 2
    assert str(form.secure_sum_bitwidth.type_signature) == "( -> <int32,<int32,int32>>)"
    assert str(form.secure_sum_max_input.type_signature) == "( -> <int32,int32>)"
    state = {"shift": np.int32(3), "scale": np.float32(2.0)}
    rng = np.random.default_rng(0)
    assert_rounds_match(
        secure_round, form, state, lambda r: list(rng.integers(0, 60, size=(6, 3), dtype=np.int32))
    )


def test_a_secure_sum_out_of_range_fails_in_the_driver_as_in_next():
    form = to_map_reduce_form(secure_round)
    state = {"shift": np.int32(3), "scale": np.float32(2.0)}
    clients = [np.array([1, 2, 300], np.int32)]
    with pytest.raises(fc.BackendError, match="outside the range"):
        secure_round.run(state, clients, backend="reference")
    with pytest.raises(fc.BackendError, match="outside the range"):
        run_map_reduce_form(form, state, clients)


# ---------------------------------------------------------------------------
# Rounds a MapReduceForm cannot express.


@fc.numpy_computation("float32", "float32")
def centered(value, mean):
    return value - mean


@fc.numpy_computation("float32")
def square(value):
    return value * value


@fc.federated_computation("float32@SERVER", "{float32}@CLIENTS")
def variance_round(state, values):
    mean = fc.federated_mean(values)
    spread = fc.federated_map(centered, [values, fc.federated_broadcast(mean)])
    variance = fc.federated_mean(fc.federated_map(square, spread))
    return state, variance


def test_a_broadcast_of_an_aggregate_feeding_a_second_aggregation_is_refused_naming_both():
    with pytest.raises(MapReduceFormError) as raised:
        to_map_reduce_form(variance_round)
    message = str(raised.value)
    assert "two dependent aggregation rounds" in message
    later, earlier = re.findall(r"federated_aggregate `(\w+)`", message)[:2]
    assert later != earlier
    assert re.search(r"federated_broadcast `\w+` sends that result back to the clients", message)
    assert isinstance(raised.value, fc.FedccError)


@fc.numpy_computation("float32", "float32")
def is_above(value, mean):
    return (value > mean).astype(np.int32)


@fc.federated_computation("float32@SERVER", "{float32}@CLIENTS")
def secure_after_mean_round(state, values):
    mean = fc.federated_mean(values)
    above = fc.federated_map(is_above, [values, fc.federated_broadcast(mean)])
    return state, fc.federated_secure_sum(above, np.int32(1))


def test_a_secure_sum_of_values_computed_from_an_aggregate_is_refused():
    with pytest.raises(MapReduceFormError, match=r"federated_secure_sum `.*federated_aggregate `"):
        to_map_reduce_form(secure_after_mean_round)


@fc.federated_computation("float32@SERVER", "{float32}@CLIENTS")
def client_metrics_round(state, values):
    return state, values


@fc.federated_computation("float32@SERVER", "float32@SERVER")
def server_data_round(state, data):
    return state, data


@fc.federated_computation("{float32}@CLIENTS")
def not_a_round(values):
    return fc.federated_mean(values)


@pytest.mark.parametrize(
    "comp, expected",
    [
        (
            client_metrics_round,
            r"metrics \{float32\}@CLIENTS: the round's results must be placed at SERVER",
        ),
        (server_data_round, r"client data float32@SERVER: it must be placed at CLIENTS"),
        (not_a_round, r"expected a round .* found the parameter \{float32\}@CLIENTS"),
    ],
)
def test_rounds_of_the_wrong_type_are_refused_saying_what_was_expected(comp, expected):
    with pytest.raises(MapReduceFormError, match=expected):
        to_map_reduce_form(comp)


@fc.federated_computation("float32[?]@SERVER", "{float32[?]}@CLIENTS")
def unknown_shape_round(state, values):
    return state, fc.federated_sum(values)


def test_a_sum_of_values_of_unknown_shape_is_refused_naming_the_call():
    with pytest.raises(MapReduceFormError, match=r"federated_sum `\w+` .* unknown size"):
        to_map_reduce_form(unknown_shape_round)


def test_a_round_that_reads_a_data_set_by_uri_is_refused():
    parameter = fc.parse_type("<float32@SERVER,{float32}@CLIENTS>")
    p = Reference("p", parameter)
    total = call_intrinsic("federated_sum", Data("clients/", "{float32}@CLIENTS"))
    comp = Lambda("p", parameter, Struct([Selection(p, 0), total]))
    with pytest.raises(MapReduceFormError, match=r"federated_aggregate `\w+` reads a data set"):
        to_map_reduce_form(comp)


def test_a_program_without_the_seven_computations_is_not_a_form():
    program = fc.Program({"prepare": to_map_reduce_form(sum_round).prepare})
    with pytest.raises(MapReduceFormError, match="missing work, zero"):
        MapReduceForm.from_program(program)


def test_parts_that_do_not_fit_together_are_refused():
    form = to_map_reduce_form(sum_round)
    other = to_map_reduce_form(sugar_round)
    with pytest.raises(MapReduceFormError, match="accumulate takes"):
        MapReduceForm(**{**form.computations(), "accumulate": other.accumulate})
    with pytest.raises(MapReduceFormError, match="must not be federated"):
        MapReduceForm(**{**form.computations(), "prepare": sum_round.building_block})


# ---------------------------------------------------------------------------
# fedcc compile --form mapreduce.

PROCESS_MODULE = """
import fedcc as fc
from fedcc.learning import aggregators, models, optimizers

process = fc.learning.build_fed_avg(
    models.logistic_regression(5, 3),
    client_optimizer=optimizers.sgd(0.3),
    aggregator=aggregators.{aggregator},
)

@fc.federated_computation("{{float32}}@CLIENTS")
def mean(values):
    return fc.federated_mean(values)
"""


def fedcc_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedcc", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def write_module(folder: Path, aggregator: str):
    path = folder / "round_module.py"
    path.write_text(textwrap.dedent(PROCESS_MODULE.format(aggregator=aggregator)))
    spec = importlib.util.spec_from_file_location(f"round_module_{folder.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


@pytest.mark.parametrize(
    "aggregator, names",
    [("mean()", 7), ("secure_mean(8)", 9)],
)
def test_fedcc_compile_form_mapreduce_writes_a_program_the_driver_runs(tmp_path, aggregator, names):
    path, module = write_module(tmp_path, aggregator)
    out = tmp_path / "form.pb"
    result = fedcc_command("compile", f"{path}:process", "-o", str(out), "--form", "mapreduce",
                           cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "MapReduceForm" in result.stdout
    loaded = fc.load(out)
    assert len(loaded) == names and list(loaded)[:7] == [
        "prepare", "work", "zero", "accumulate", "merge", "report", "update",
    ]  # fmt: skip
    assert "desugar-intrinsics" in loaded.metadata["passes"]
    process = module.process
    assert_rounds_match(process.next, loaded, process.initialize(), client_batches, rounds=2)
    check = fedcc_command("check", str(out), cwd=tmp_path)
    assert check.returncode == 0, check.stderr


def test_fedcc_compile_form_of_something_that_is_not_a_round_is_one_error_line(tmp_path):
    path, _ = write_module(tmp_path, "mean()")
    result = fedcc_command("compile", f"{path}:mean", "-o", str(tmp_path / "x.pb"),
                           "--form", "mapreduce", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "expected a round" in lines[0], result.stderr
    assert not (tmp_path / "x.pb").exists()
