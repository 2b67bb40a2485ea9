"""The threads and processes backends give the reference backend's bits, for any worker count.

Each program runs on `reference` (the oracle) and on `threads` and
`processes` with 1, 2, 3 and 7 workers, and the results must be the same
bytes (or the same error): hand-written programs where summation order would
show (float magnitudes, weighted means, a non-associative merge in
`federated_aggregate`), a FedAvg round, a round loaded from a `.pb`, and
generated programs. Also: what travels between server and workers stays
small (one request a shard a step; functions and client data sent once).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from backend_checks import fingerprint, outcome

import fedcc as fc
from fedcc.ir.building_blocks import (
    Data,
    Lambda,
    Literal,
    LocalGraph,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
    walk,
)
from fedcc.ir.errors import BackendError, FederatedTypeError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import SERVER, FederatedType, SequenceType, StructType, TensorType
from fedcc.runtimes import get_backend, run
from fedcc.runtimes.reference import InProcessSession
from fedcc.runtimes.shard import MapRequest

WORKER_COUNTS = (1, 2, 3, 7)
CONFIGURATIONS = [(name, workers) for name in ("threads", "processes") for workers in WORKER_COUNTS]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLIENT_COUNTS = (1, 2, 5, 13)


@pytest.fixture(scope="module")
def backends():
    """One backend per configuration, shared by the module's tests (pools start once)."""
    made = {configuration: get_backend(configuration[0], workers=configuration[1])
            for configuration in CONFIGURATIONS}
    yield made
    for backend in made.values():
        backend.close()


def assert_same_on_every_backend(backends, comp, *args, **options):
    expected = outcome(comp, *args, backend="reference", **options)
    for configuration, backend in backends.items():
        found = outcome(comp, *args, backend=backend, **options)
        if expected[0] == "error":
            # The same error, also saying which worker it came from.
            assert found[0] == "error" and found[1] is expected[1], (configuration, found)
            assert expected[2] in found[2], (configuration, expected[2], found[2])
        else:
            assert found == expected, configuration
    return expected


def lam(name, t, body_of):
    t = parse_type(t) if isinstance(t, str) else t
    return Lambda(name, t, body_of(Reference(name, t)))


def graph(parameter_type, body):
    builder = GraphBuilder(parameter_type)
    outputs = body(builder, *builder.parameters())
    outputs = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
    return LocalGraph(builder.build(outputs))


# --- hand-written programs ----------------------------------------------------------


@pytest.mark.parametrize("clients", CLIENT_COUNTS)
def test_sums_and_means_of_float_magnitudes_where_order_matters(backends, clients):
    # Values of very different magnitudes: a different order of additions gives other bits.
    rng = np.random.default_rng(clients)
    values = [
        (rng.standard_normal(4) * 10.0 ** rng.integers(-8, 9, 4)).astype(np.float32)
        for _ in range(clients)
    ]
    for uri in ("federated_sum", "federated_mean", "federated_min", "federated_max"):
        comp = lam("v", "{float32[4]}@CLIENTS", lambda v, uri=uri: call_intrinsic(uri, v))
        kind, _ = assert_same_on_every_backend(backends, comp, values)
        assert kind == "value"
    # The order matters here indeed: a plain left-to-right sum differs from the tree's bits.
    if clients == 13:
        tree = run(lam("v", "{float32[4]}@CLIENTS", lambda v: call_intrinsic(
            "federated_sum", v)), values, backend="reference")
        sequential = values[0]
        for value in values[1:]:
            sequential = sequential + value
        assert tree.tobytes() != sequential.tobytes()


@pytest.mark.parametrize("clients", CLIENT_COUNTS)
def test_weighted_means(backends, clients):
    rng = np.random.default_rng(100 + clients)
    values = [
        {"w": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal(3)}
        for _ in range(clients)
    ]
    weights = list(rng.uniform(0.1, 100.0, clients).astype(np.float32))
    t = "<{<w=float32[2,3],b=float64[3]>}@CLIENTS,{float32}@CLIENTS>"
    comp = lam("x", t, lambda x: call_intrinsic(
        "federated_weighted_mean", Struct([Selection(x, 0), Selection(x, 1)])))
    kind, _ = assert_same_on_every_backend(backends, comp, values, weights)
    assert kind == "value"


@pytest.mark.parametrize("clients", CLIENT_COUNTS)
def test_federated_aggregate_with_non_associative_accumulate_and_merge(backends, clients):
    # accumulate(a, v) = a * 0.5 + v * v; merge(a, b) = a * 0.25 - b: neither is associative,
    # so only the one canonical tree gives the reference's bits.
    accumulate = graph("<float32[3],float32[3]>", lambda g, a, v: g.op(
        "add", g.op("multiply", a, g.constant(0.5, "float32")), g.op("multiply", v, v)))
    merge = graph("<float32[3],float32[3]>", lambda g, a, b: g.op(
        "subtract", g.op("multiply", a, g.constant(0.25, "float32")), b))
    report = graph("float32[3]", lambda g, a: g.op("negative", a))
    comp = lam("v", "{float32[3]}@CLIENTS", lambda v: call_intrinsic(
        "federated_aggregate",
        Struct([v, Literal(np.full(3, 0.125, np.float32)), accumulate, merge, report])))
    rng = np.random.default_rng(200 + clients)
    values = [rng.standard_normal(3).astype(np.float32) for _ in range(clients)]
    kind, found = assert_same_on_every_backend(backends, comp, values)
    assert kind == "value"
    if clients == 13:
        # Folding the clients' leaves left to right instead would give other bits.
        leaves = [np.float32(0.125) * np.float32(0.5) + v * v for v in values]
        folded = leaves[0]
        for leaf in leaves[1:]:
            folded = folded * np.float32(0.25) - leaf
        assert fingerprint(-folded) != found


def test_secure_sums_and_integer_overflow_errors(backends):
    comp = lam("v", "{int32[2]}@CLIENTS", lambda v: call_intrinsic(
        "federated_secure_sum_bitwidth", Struct([v, Literal(np.int32(8))])))
    values = [np.array([k, 2 * k], np.int32) for k in range(9)]
    assert assert_same_on_every_backend(backends, comp, values)[0] == "value"
    values[6] = np.array([1, 300], np.int32)
    kind, error, message = assert_same_on_every_backend(backends, comp, values)
    assert kind == "error" and error is BackendError and "outside the range [0, 255]" in message


def test_client_results_come_back_in_client_order(backends):
    square = graph("float64[?]", lambda g, x: g.op("multiply", x, x))
    comp = lam("v", "{float64[?]}@CLIENTS", lambda v: call_intrinsic(
        "federated_map", Struct([square, v])))
    values = [np.arange(k, dtype=np.float64) / 3 for k in range(11)]
    kind, value = assert_same_on_every_backend(backends, comp, values)
    assert kind == "value" and len(value[1]) == 11


def test_federated_eval_at_clients_and_zipped_selected_values(backends):
    constant = graph(None, lambda g: g.constant(np.array([1.5, -2.0], np.float32)))
    evaluated = lam("n", "{int32}@CLIENTS", lambda n: Struct([
        call_intrinsic("federated_eval_at_clients", constant),
        call_intrinsic("federated_sum", n),
    ]))
    assert assert_same_on_every_backend(backends, evaluated, list(range(6)))[0] == "value"
    swap = lam("z", "<float32,int32>", lambda z: Struct([Selection(z, 1), Selection(z, 0)]))
    add = graph("<int32,float32>", lambda g, a, b: g.op("add", g.op(
        "cast", a, dtype="float32"), b))
    t = "<{float32}@CLIENTS,{int32}@CLIENTS>"
    comp = lam("x", t, lambda x: call_intrinsic("federated_mean", call_intrinsic(
        "federated_map", Struct([add, call_intrinsic("federated_map", Struct([
            swap, call_intrinsic("federated_zip", Struct([Selection(x, 0), Selection(x, 1)]))
        ]))]))))
    rng = np.random.default_rng(3)
    kind, _ = assert_same_on_every_backend(
        backends, comp, list(rng.standard_normal(9).astype(np.float32)), list(range(9)))
    assert kind == "value"


def test_an_error_in_client_work_is_the_reference_error_naming_the_client(backends):
    add = graph("float32[?]", lambda g, x: g.op(
        "add", x, g.constant(np.ones(3, np.float32))))
    comp = lam("x", "{float32[?]}@CLIENTS", lambda x: call_intrinsic(
        "federated_map", Struct([add, x])))
    values = [np.ones(3, np.float32)] * 5 + [np.ones(4, np.float32)] + [np.ones(5)] * 3
    kind, error, message = assert_same_on_every_backend(backends, comp, values)
    assert kind == "error" and "federated_map, client 5" in message
    assert error is FederatedTypeError


# --- a FedAvg round, traced and loaded from a .pb -------------------------------------------


def fedavg_example():
    path = EXAMPLES / "fedavg_round_ir.py"
    spec = importlib.util.spec_from_file_location("fedavg_round_ir", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fedavg_arguments(module, clients, seed=0, examples=3):
    rng = np.random.default_rng(seed)
    state = ({
        "kernel": rng.standard_normal((module.FEATURES, module.CLASSES)).astype(np.float32) * 0.1,
        "bias": np.zeros(module.CLASSES, np.float32),
    },)
    data = []
    for client in range(clients):
        count = examples + client % 4 * 5
        x = rng.standard_normal((count, module.FEATURES)).astype(np.float32)
        y = rng.integers(0, module.CLASSES, count).astype(np.int32)
        data.append([{"x": x[i:i + 4], "y": y[i:i + 4]} for i in range(0, count, 4)])
    return state, data


def test_a_fedavg_round_and_its_loaded_pb_give_the_reference_bits(backends, tmp_path):
    module = fedavg_example()
    comp = module.fedavg_round()
    state, data = fedavg_arguments(module, clients=10)
    expected = assert_same_on_every_backend(backends, comp, state, data)
    assert expected[0] == "value"
    path = tmp_path / "round.pb"
    fc.save(fc.Program({"next": comp}), path)
    loaded = fc.load(path)["next"]
    for backend in backends.values():
        assert outcome(loaded.building_block, state, data, backend=backend) == expected
    # Three rounds, each starting from the last one's state.
    for configuration in (("threads", 3), ("processes", 7)):
        current = {name: state for name in ("reference", configuration)}
        for _ in range(3):
            current["reference"] = (run(comp, current["reference"], data,
                                        backend="reference")["state"])
            current[configuration] = (run(comp, current[configuration], data,
                                          backend=backends[configuration])["state"])
            assert fingerprint(current[configuration]) == fingerprint(current["reference"])


def test_computations_of_the_public_api_run_the_same(backends):
    @fc.numpy_computation("float32[3]", "float32")
    def times(value, scale):
        return value * scale

    @fc.federated_computation("{float32[3]}@CLIENTS", "float32@SERVER")
    def scaled_mean(values, scale):
        return fc.federated_mean(fc.federated_map(times, fc.federated_zip(
            [values, fc.federated_broadcast(scale)])))

    rng = np.random.default_rng(7)
    values = [rng.standard_normal(3).astype(np.float32) for _ in range(8)]
    expected = fingerprint(scaled_mean.run(values, np.float32(3.0), backend="reference"))
    for backend in backends.values():
        assert fingerprint(scaled_mean.run(values, np.float32(3.0), backend=backend)) == expected


# --- generated programs ---------------------------------------------------------------


def python_value(t, rng, clients):
    """A Python argument of type `t`, with `clients` values in each client list."""
    if isinstance(t, TensorType):
        shape = tuple(int(rng.integers(0, 3)) if d is None else d for d in t.shape)
        if t.dtype.kind == "f":
            return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)).astype(t.dtype)
        if t.dtype.kind == "b":
            return rng.integers(0, 2, shape).astype(bool)
        return rng.integers(0, 4, shape).astype(t.dtype)
    if isinstance(t, StructType):
        return tuple(python_value(e, rng, clients) for e in t)
    if isinstance(t, SequenceType):
        return [python_value(t.element, rng, clients) for _ in range(int(rng.integers(0, 3)))]
    if isinstance(t, FederatedType):
        if t.placement is SERVER or t.all_equal:
            return python_value(t.member, rng, clients)
        return [python_value(t.member, rng, clients) for _ in range(clients)]
    raise AssertionError(f"no values of {t}")


def generated_programs(count=50, seed=11):
    strategies = pytest.importorskip("strategies")
    chooser = strategies.RandomChooser(seed)
    found = []
    while len(found) < count:
        comp = strategies.build_federated_program(chooser)
        if not any(isinstance(node, Data) for node in walk(comp)):
            found.append(comp)
    return found


def test_generated_programs_give_the_reference_bits_or_error(backends):
    programs = generated_programs()
    values = errors = 0
    for index, comp in enumerate(programs):
        rng = np.random.default_rng(index)
        argument = python_value(comp.type_signature.parameter, rng, clients=9)
        expected = assert_same_on_every_backend(backends, comp, argument, num_clients=9)
        values += expected[0] == "value"
        errors += expected[0] == "error"
    # Most generated programs compute something; a few break their drawn values' rules.
    assert values >= 35, (values, errors)


# --- what travels ---------------------------------------------------------------------------


class CountingSession(InProcessSession):
    """In-process shards counting the steps of a run: one `dispatch` a step."""

    steps = 0
    maps = 0

    def dispatch(self, requests):
        CountingSession.steps += 1
        CountingSession.maps += isinstance(requests[0], MapRequest)
        return super().dispatch(requests)


def test_one_request_a_shard_a_step_and_data_and_functions_sent_once(backends):
    module = fedavg_example()
    comp = module.fedavg_round()
    # At least 20 examples a client: enough data to be worth sending by content.
    state, data = fedavg_arguments(module, clients=40, examples=20)
    backend = get_backend("processes", workers=3)
    try:
        reference = get_backend("reference")
        CountingSession.steps = CountingSession.maps = 0
        reference.open_session = lambda n: CountingSession(n)
        run(comp, state, data, backend=reference)
        steps = CountingSession.steps
        assert CountingSession.maps == 1  # the client update, once a shard
        run(comp, state, data, backend=backend)
        first = backend.statistics()
        assert first["requests"] == 3 * steps
        assert first["values_sent"] == 40 and first["functions_sent"] >= 1
        data_bytes = sum(b["x"].nbytes + b["y"].nbytes for client in data for b in client)
        assert first["bytes_sent"] + first["shared_bytes_sent"] > data_bytes
        # The next round: the same data and the same client function are not sent again.
        run(comp, state, data, backend=backend)
        second = {key: value - first[key] for key, value in backend.statistics().items()}
        assert second["requests"] == 3 * steps
        assert second["values_sent"] == 0 and second["values_referenced"] == 40
        assert second["functions_sent"] == 0 and second["missing_content"] == 0
        assert second["bytes_sent"] < data_bytes / 20
        # The server gets partial aggregates, not the clients' models.
        model_bytes = (module.FEATURES + 1) * module.CLASSES * 4
        assert second["bytes_received"] < 3 * steps * 200 + 3 * 2 * 8 * model_bytes
    finally:
        backend.close()


def test_a_store_too_small_for_the_data_still_gives_the_same_bits(backends):
    module = fedavg_example()
    comp = module.fedavg_round()
    state, data = fedavg_arguments(module, clients=12, seed=5)
    expected = fingerprint(run(comp, state, data, backend="reference"))
    with fc.use_backend("processes", workers=2, cache_bytes=10_000) as backend:
        for _ in range(2):
            assert fingerprint(run(comp, state, data)) == expected
        assert backend.statistics()["missing_content"] > 0


def test_large_client_data_travels_through_shared_memory(backends):
    values = [np.full((300, 1000), k, np.float32) for k in range(4)]  # 1.2 MB each
    comp = lam("v", "{float32[300,1000]}@CLIENTS", lambda v: call_intrinsic("federated_sum", v))
    with fc.use_backend("processes", workers=2) as backend:
        assert run(comp, values).tobytes() == run(comp, values, backend="reference").tobytes()
        statistics = backend.statistics()
    assert statistics["shared_bytes_sent"] >= 4 * values[0].nbytes
    assert statistics["bytes_sent"] < values[0].nbytes


def test_options_are_checked(backends):
    with pytest.raises(BackendError, match=r"processes backend takes .*found shards"):
        get_backend("processes", shards=2)
    with pytest.raises(BackendError, match="workers= must be an int >= 1, found 0"):
        get_backend("processes", workers=0)
    with pytest.raises(BackendError, match="timeout= must be a positive number"):
        get_backend("processes", timeout=-1)
    with pytest.raises(BackendError, match="retries= must be an int >= 0"):
        get_backend("processes", retries=1.5)
    with pytest.raises(BackendError, match="threads backend takes workers=, timeout=; found ret"):
        get_backend("threads", retries=1)
    with pytest.raises(BackendError, match="workers= must be an int >= 1, found True"):
        get_backend("threads", workers=True)
    closed = get_backend("threads", workers=2)
    closed.close()
    with pytest.raises(BackendError, match="closed"):
        run(lam("v", "{float32}@CLIENTS", lambda v: call_intrinsic("federated_sum", v)),
            [1.0], backend=closed)
