"""The federated rewrites (desugar-intrinsics, merge-chained-maps, merge-parallel-maps,
dedupe-broadcasts, merge-aggregations): bit-identical results on the reference backend for
random round-shaped programs and awkward floats, the rewrites each promises, and a FedAvg
round written with the public API that -O2 brings to one broadcast, one map of client work
and one aggregation per aggregated quantity."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from strategies import RandomChooser, build_local_graph, sample_programs
from test_passes_local import awkward_floats, signalling_nan

import fedcc as fc
from fedcc.compiler.pass_manager import level_passes
from fedcc.compiler.passes import get_pass
from fedcc.compiler.passes._block_dataflow import RegionPattern
from fedcc.compiler.passes.federated_maps import ZipOfMaps, is_structural
from fedcc.compiler.verify import verify
from fedcc.ir import primitives
from fedcc.ir.analysis import count_intrinsic_calls
from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
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
from fedcc.ir.errors import BackendError, FedccError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.intrinsics import INTRINSICS, IntrinsicKind
from fedcc.ir.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    tensor_leaves,
)
from fedcc.runtimes import run

FEDERATED_PASSES = (
    "desugar-intrinsics",
    "merge-chained-maps",
    "merge-parallel-maps",
    "dedupe-broadcasts",
    "merge-aggregations",
)

# ---------------------------------------------------------------------------
# Arguments and results.


def awkward_value(t: Type, rng: np.random.Generator, clients: int) -> Any:
    """A Python argument of type `t`: awkward floats, small integers, `clients` per client list."""
    if isinstance(t, TensorType):
        shape = tuple(int(rng.integers(0, 3)) if d is None else d for d in t.shape)
        if t.dtype.kind == "f":
            return awkward_floats(t.dtype, shape, rng)
        return rng.integers(0, 5, shape).astype(t.dtype)
    if isinstance(t, StructType):
        return tuple(awkward_value(element, rng, clients) for element in t)
    if isinstance(t, SequenceType):
        return [awkward_value(t.element, rng, clients) for _ in range(int(rng.integers(0, 3)))]
    if isinstance(t, FederatedType):
        if t.placement is CLIENTS and not t.all_equal:
            return [awkward_value(t.member, rng, clients) for _ in range(clients)]
        return awkward_value(t.member, rng, clients)
    raise ValueError(f"no argument of type {t}")


def bits(value: Any) -> Any:
    """A form of a result that tells apart values differing in any bit."""
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        return (array.dtype.str, array.shape, array.tobytes())
    if isinstance(value, dict):
        return tuple((k, bits(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(bits(v) for v in value))
    return repr(value)


def run_bits(comp: BuildingBlock, argument: Any) -> Any:
    try:
        return bits(run(comp, argument, backend="reference"))
    except FedccError as error:
        return ("fails", type(error).__name__)


def check_rewrite(name: str, comp: BuildingBlock, arguments: list[Any]) -> BuildingBlock:
    """Runs pass `name` on `comp`: same type, verifies, idempotent, same bits on `arguments`."""
    compiler_pass = get_pass(name)
    result = compiler_pass.apply(comp)
    assert result.type_signature == comp.type_signature
    verify(result)
    assert compiler_pass.apply(result) == result, f"{name} is not idempotent"
    for argument in arguments:
        expected = run_bits(comp, argument)
        if expected[0] != "fails":
            assert run_bits(result, argument) == expected, name
    return result


# ---------------------------------------------------------------------------
# Random round-shaped programs: broadcasts, maps and zips of client values, aggregations of
# every kind, server updates, and (sometimes) a second round trip through the clients.

ROUND_PARAMETER = fc.parse_type(
    "<state=<w=float32[2],lr=float32>@SERVER,data={float32[2]}@CLIENTS,"
    "weight={float32}@CLIENTS,counts={int32[2]}@CLIENTS>"
)
MEMBER_TYPES = tuple(
    fc.parse_type(t) for t in ("float32[2]", "float32", "float64", "int32[2]", "<float32,float32>")
)


class RoundBuilder:
    """Builds a random `(arg -> let ... in <server values>)` over `ROUND_PARAMETER`."""

    def __init__(self, seed: int, stages: int = 2) -> None:
        self.random = random.Random(seed)
        self.chooser = RandomChooser(seed)
        self.stages = stages
        self.locals: list[tuple[str, BuildingBlock]] = []
        arg = Reference("arg", ROUND_PARAMETER)
        state = Selection(arg, 0)
        self.server = [state]
        self.clients = [Selection(arg, i) for i in (1, 2, 3)]
        self.broadcasts: list[BuildingBlock] = []
        self.inline: list[BuildingBlock] = []  # values left in place: each is used once

    def bind(self, value: BuildingBlock) -> Reference:
        name = f"v{len(self.locals)}"
        self.locals.append((name, value))
        return Reference(name, value.type_signature)

    def value(self, value: BuildingBlock) -> BuildingBlock:
        """Bound (usually), or left in place to be used once (then not reused)."""
        if self.random.random() < 0.75:
            return self.bind(value)
        self.inline.append(value)
        return value

    def use(self, value: BuildingBlock) -> None:
        """Notes that `value` was used: one left in place cannot be used again."""
        if any(value is once for once in self.inline):
            self.clients = [c for c in self.clients if c is not value]

    def graph(self, parameter: Type, result: Type) -> LocalGraph:
        try:
            graph = build_local_graph(self.chooser, parameter, result, max_ops=4)
        except ValueError:
            g = GraphBuilder(parameter)
            outputs = [g.constant(np.zeros(t.shape, t.dtype)) for t in tensor_leaves(result)]
            graph = g.build(outputs, result)
        return LocalGraph(graph)

    def broadcast(self) -> None:
        sent = call_intrinsic("federated_broadcast", self.random.choice(self.server))
        self.broadcasts.append(self.bind(sent))
        if self.random.random() < 0.3:  # the same value sent again
            self.broadcasts.append(self.bind(sent))

    def client_map(self) -> None:
        inputs = [self.random.choice(self.clients)]
        if self.random.random() < 0.5:
            inputs.append(self.random.choice(self.clients + self.broadcasts))
        value = inputs[0] if len(inputs) == 1 else call_intrinsic("federated_zip", Struct(inputs))
        member = value.type_signature.member
        if isinstance(member, StructType) and self.random.random() < 0.3:
            name = f"t{len(self.locals)}"
            parameter = Reference(name, member)
            index = self.random.randrange(len(member))
            function = Lambda(name, member, Selection(parameter, index))
        else:
            function = self.graph(member, self.random.choice(MEMBER_TYPES))
        mapped = self.value(call_intrinsic("federated_map", Struct([function, value])))
        for used in inputs:
            self.use(used)
        self.clients.append(mapped)

    def aggregate(self) -> None:
        value = self.random.choice(self.clients)
        member = value.type_signature.member
        floats = all(t.dtype.kind == "f" for t in tensor_leaves(member))
        kinds = ["federated_sum", "federated_min", "federated_max", "federated_aggregate"]
        if floats:
            kinds += ["federated_mean", "federated_weighted_mean"] * 2
        uri = self.random.choice(kinds)
        if uri == "federated_weighted_mean":
            weight = Selection(Reference("arg", ROUND_PARAMETER), 2)
            aggregated = call_intrinsic(uri, Struct([value, weight]))
        elif uri == "federated_aggregate":
            aggregated = call_intrinsic(uri, Struct(fold_of_sums(value)))
        else:
            aggregated = call_intrinsic(uri, value)
        self.server.append(self.bind(aggregated))
        self.use(value)

    def server_update(self) -> None:
        value = self.random.choice(self.server)
        function = self.graph(value.type_signature.member, self.random.choice(MEMBER_TYPES))
        self.server.append(self.bind(call_intrinsic("federated_apply", Struct([function, value]))))

    def build(self) -> Lambda:
        for stage in range(self.stages):
            if stage:
                # The next trip: broadcast something aggregated in the last one.
                sent = call_intrinsic("federated_broadcast", self.server[-1])
                self.broadcasts = [self.bind(sent)]
            self.broadcast()
            for _ in range(self.random.randint(2, 6)):
                self.random.choice([self.client_map] * 3 + [self.broadcast])()
            for _ in range(self.random.randint(1, 3)):
                self.aggregate()
            if self.random.random() < 0.5:
                self.server_update()
        results = self.random.sample(self.server[1:], min(2, len(self.server) - 1))
        return Lambda("arg", ROUND_PARAMETER, Block(self.locals, Struct(results)))


def fold_of_sums(value: BuildingBlock) -> list[BuildingBlock]:
    """A federated_aggregate's <value, zero, accumulate, merge, report> that sums `value`."""
    member = value.type_signature.member
    zero = Struct([Literal(np.zeros(t.shape, t.dtype)) for t in tensor_leaves(member)])
    pair = StructType([zero.type_signature, member])

    def add(parameter: Type) -> LocalGraph:
        g = GraphBuilder(parameter)
        leaves = g.parameters()
        half = len(leaves) // 2
        return LocalGraph(
            g.build([g.op("add", a, b) for a, b in zip(leaves[:half], leaves[half:])],
                    zero.type_signature)
        )

    report = Lambda("total", zero.type_signature, Reference("total", zero.type_signature))
    merge = add(StructType([zero.type_signature, zero.type_signature]))
    return [value, zero, add(pair), merge, report]


ROUNDS = [RoundBuilder(seed).build() for seed in range(40)]


def round_arguments(comp: Lambda, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [awkward_value(comp.parameter_type, rng, clients) for clients in (1, 4)]


@pytest.mark.parametrize("name", FEDERATED_PASSES)
def test_each_federated_pass_keeps_the_bits_of_random_rounds(name):
    changed = 0
    for seed, comp in enumerate(ROUNDS):
        result = check_rewrite(name, comp, round_arguments(comp, seed))
        changed += result != comp
    assert changed >= len(ROUNDS) // 4, f"{name} changed only {changed} rounds"


GENERATED = [
    comp for comp in sample_programs(120, seed=31, federated=True, max_depth=4, max_nodes=60)
    if not any(isinstance(node, Data) for node in walk(comp))
]


@pytest.mark.parametrize("name", FEDERATED_PASSES)
def test_each_federated_pass_keeps_the_bits_of_generated_programs(name):
    for seed, comp in enumerate(GENERATED):
        comp = get_pass("uniquify-names").apply(comp)
        rng = np.random.default_rng(seed)
        check_rewrite(name, comp, [awkward_value(comp.parameter_type, rng, 3)])


def test_level_2_keeps_the_bits_of_random_rounds():
    for seed, comp in enumerate(ROUNDS[:12]):
        result = fc.optimize(comp, level=2)
        assert result.type_signature == comp.type_signature
        verify(result)
        for argument in round_arguments(comp, seed):
            expected = run_bits(comp, argument)
            if expected[0] != "fails":
                assert run_bits(result, argument) == expected, seed


def client_work_maps(comp: BuildingBlock) -> int:
    """Maps of client work: federated_maps giving a value a client with a function that does
    more than select and restructure."""
    count = 0
    for node in walk(comp):
        if isinstance(node, Call) and getattr(node.function, "uri", None) == "federated_map":
            t = node.type_signature
            if not t.all_equal and not is_structural(node.argument.elements[0][1]):
                count += 1
    return count


def test_level_2_leaves_one_map_of_client_work_in_a_round_of_one_trip():
    for seed in range(12):
        comp = RoundBuilder(1000 + seed, stages=1).build()
        result = fc.optimize(comp, level=2)
        assert client_work_maps(result) <= 1, fc.to_text(result)
        assert count_intrinsic_calls(result).get("federated_broadcast", 0) <= 1


# ---------------------------------------------------------------------------
# desugar-intrinsics: exactly the reference runtime's arithmetic.


def placed(member: str, all_equal: bool = False) -> FederatedType:
    return FederatedType(fc.parse_type(member), CLIENTS, all_equal=all_equal)


def sugar_program(uri: str, member: str, weight: str | None = None) -> Lambda:
    value_type = placed(member)
    if weight is None:
        x = Reference("x", value_type)
        return Lambda("x", value_type, call_intrinsic(uri, x))
    parameter = StructType([value_type, placed(weight)])
    x = Reference("x", parameter)
    return Lambda("x", parameter, call_intrinsic(uri, Struct([Selection(x, 0), Selection(x, 1)])))


SUGAR_CASES = [
    (uri, member)
    for uri in ("federated_sum", "federated_min", "federated_max")
    for member in ("<a=float16[3],b=<float32,float64[2]>>", "int32[2]", "uint8", "int64[2,2]")
] + [
    (uri, member)
    for uri in ("federated_mean", "federated_weighted_mean")
    for member in ("<a=float16[3],b=<float32,float64[2]>>", "float32[4]")
]


def awkward_member(t: Type, rng: np.random.Generator) -> Any:
    if isinstance(t, StructType):
        return tuple(awkward_member(element, rng) for element in t)
    if t.dtype.kind == "f":
        return awkward_floats(t.dtype, t.shape, rng)
    info = np.iinfo(t.dtype)
    return rng.choice(np.array([0, 1, info.max, info.min, info.max // 3], t.dtype), t.shape)


@pytest.mark.parametrize(("uri", "member"), SUGAR_CASES)
def test_desugared_aggregations_give_the_runtimes_bits(uri, member):
    weights = ("float16", "float32", "float64") if uri == "federated_weighted_mean" else (None,)
    rng = np.random.default_rng(abs(hash((uri, member))) % 2**32)
    for weight in weights:
        comp = sugar_program(uri, member, weight)
        desugared = check_rewrite("desugar-intrinsics", comp, [])
        assert count_intrinsic_calls(desugared).get(uri, 0) == 0
        assert count_intrinsic_calls(desugared)["federated_aggregate"] == 1
        value_type = comp.parameter_type if weight is None else comp.parameter_type[0]
        value_member = value_type.member
        for clients in (1, 2, 3, 5, 8, 13):
            values = [awkward_member(value_member, rng) for _ in range(clients)]
            if weight is None:
                arguments = (values,)
            else:
                arguments = (values, [awkward_floats(weight, (), rng) for _ in range(clients)])
            try:
                expected = bits(run(comp, *arguments, backend="reference"))
            except BackendError:
                continue  # the weights summed to 0
            assert bits(run(desugared, *arguments, backend="reference")) == expected, clients


def test_desugared_sequence_sum_adds_in_order_from_the_first_element():
    t = fc.parse_type("<float32[2],int32>*")
    comp = Lambda("s", t, call_intrinsic("sequence_sum", Reference("s", t)))
    desugared = check_rewrite("desugar-intrinsics", comp, [])
    rng = np.random.default_rng(3)
    for length in (0, 1, 2, 5):
        elements = [
            (awkward_floats("float32", (2,), rng), np.int32(rng.integers(-9, 9)))
            for _ in range(length)
        ]
        expected = bits(run(comp, elements, backend="reference"))
        assert bits(run(desugared, elements, backend="reference")) == expected


def test_desugared_forms_keep_a_lone_signalling_nan_and_negative_zero():
    comp = sugar_program("federated_sum", "float32[2]")
    desugared = get_pass("desugar-intrinsics").apply(comp)
    value = np.array([signalling_nan(np.float32, 7), -0.0], np.float32)
    assert bits(run(desugared, [value], backend="reference")) == bits(value)
    assert bits(run(comp, [value], backend="reference")) == bits(value)


def test_the_count_converts_to_each_float_dtype_as_the_runtime_does():
    # The runtime divides by D(n) for a Python int n; the desugared mean casts an int64 count.
    counts = [*range(1, 5000), 65519, 65520, 2**24 + 1, 2**31, 2**53 + 1]
    for dtype in ("float16", "float32", "float64"):
        cast = primitives.evaluate("cast", [np.array(counts, np.int64)], {"dtype": dtype})
        with np.errstate(over="ignore"):
            expected = np.array([np.dtype(dtype).type(count) for count in counts])
        assert cast.tobytes() == expected.tobytes(), dtype


def test_desugaring_over_zero_clients_sums_to_zeros_and_means_give_nan_not_an_error():
    total = sugar_program("federated_sum", "float32[2]")
    zeros = bits(run(get_pass("desugar-intrinsics").apply(total), [], backend="reference"))
    assert zeros == bits(run(total, [], backend="reference"))
    mean = sugar_program("federated_mean", "float32[2]")
    with pytest.raises(BackendError, match="zero clients"):
        run(mean, [], backend="reference")
    desugared = run(get_pass("desugar-intrinsics").apply(mean), [], backend="reference")
    assert np.isnan(desugared).all()  # documented: a report cannot raise


def test_members_with_unknown_dims_are_not_desugared():
    comp = sugar_program("federated_sum", "float32[?]")
    assert get_pass("desugar-intrinsics").apply(comp) is comp


# ---------------------------------------------------------------------------
# What the merges do.


def add_one_graph(t: str = "float32") -> LocalGraph:
    g = GraphBuilder(t)
    return LocalGraph(g.build([g.op("add", 0, g.constant(np.ones((), np.dtype(t))))]))


def ref(name: str, value: BuildingBlock) -> Reference:
    """A reference to `name`, bound to `value`."""
    return Reference(name, value.type_signature)


def first_of(placed_struct: BuildingBlock) -> Lambda:
    """`(p -> p[0])` for the members of a placed struct."""
    member = placed_struct.type_signature.member
    return Lambda("p", member, Selection(Reference("p", member), 0))


def federated(uri: str, *arguments: BuildingBlock) -> Call:
    return call_intrinsic(uri, arguments[0] if len(arguments) == 1 else Struct(list(arguments)))


def test_merge_chained_maps_composes_maps_in_place_and_through_structural_bindings():
    t = placed("<float32,float32>")
    x = Reference("x", t)
    first = Lambda("p", t.member, Selection(Reference("p", t.member), 0))
    selected = federated("federated_map", first, x)
    chain = federated(
        "federated_map",
        add_one_graph(),
        federated("federated_map", add_one_graph(), ref("s", selected)),
    )
    comp = Lambda("x", t, Block([("s", selected)], chain))
    result = check_rewrite("merge-chained-maps", comp, [
        ([(np.float32(1.5), np.float32(-0.0)), (np.float32(np.nan), np.float32(2))],),
    ])
    maps = count_intrinsic_calls(result)["federated_map"]
    assert maps == 2  # s stays bound (dce removes it); the chain is one map of x


def test_merge_chained_maps_composes_server_applies():
    s = FederatedType(fc.parse_type("float32"), SERVER)
    x = Reference("x", s)
    comp = Lambda("x", s, federated(
        "federated_apply", add_one_graph(), federated("federated_apply", add_one_graph(), x)
    ))
    result = check_rewrite("merge-chained-maps", comp, [(np.float32(0.25),)])
    assert count_intrinsic_calls(result)["federated_apply"] == 1


def two_trip_round() -> Lambda:
    """Clients map, the server means, broadcasts the mean, clients map again."""
    t = placed("float32")
    x = Reference("x", t)
    first = federated("federated_map", add_one_graph(), x)
    mean = federated("federated_mean", Reference("m", first.type_signature))
    again = federated("federated_broadcast", Reference("mean", mean.type_signature))
    second = federated("federated_map", LocalGraph(_add_pair()), federated(
        "federated_zip", Struct([Reference("m", first.type_signature),
                                 Reference("b", again.type_signature)])))
    return Lambda("x", t, Block(
        [("m", first), ("mean", mean), ("b", again), ("n", second)],
        federated("federated_sum", Reference("n", second.type_signature)),
    ))


def _add_pair():
    g = GraphBuilder("<float32,float32>")
    return g.build([g.op("add", 0, 1)])


def test_merge_parallel_maps_keeps_maps_apart_that_a_server_trip_separates():
    comp = two_trip_round()
    result = check_rewrite("merge-parallel-maps", comp, [([np.float32(v) for v in (1, -0.0, 3)],)])
    assert result == comp
    assert client_work_maps(result) == 2


def test_merge_parallel_maps_merges_independent_and_dependent_maps_of_one_trip():
    t = StructType([placed("float32"), placed("float32")])
    x = Reference("x", t)
    a = federated("federated_map", add_one_graph(), Selection(x, 0))
    b = federated("federated_map", add_one_graph(), Selection(x, 1))
    zipped = federated("federated_zip", Struct([ref("a", a), ref("b", b)]))
    c = federated("federated_map", LocalGraph(_add_pair()), zipped)
    comp = Lambda("x", t, Block(
        [("a", a), ("b", b), ("c", c)],
        Struct([federated("federated_sum", Reference("c", c.type_signature)),
                federated("federated_max", Reference("a", a.type_signature))]),
    ))
    values = ([np.float32(1.0), np.float32(-0.0)], [np.float32(np.inf), np.float32(2.5)])
    result = check_rewrite("merge-parallel-maps", comp, [values])
    assert client_work_maps(comp) == 3 and client_work_maps(result) == 1


def test_a_region_left_as_it_was_takes_no_names_and_later_runs_skip_it(monkeypatch):
    # The lone map inside `lone` is bound to a name while its region is read, and then
    # nothing merges there: that name is given back, so the merge of the two maps after it
    # names its values as if `lone` were not there, and a walk may skip `lone` once settled.
    t = StructType([placed("float32"), placed("float32")])
    x, y = Reference("x", t), Reference("y", placed("float32"))
    lone = Lambda("y", y.type_signature, federated(
        "federated_sum", federated("federated_map", add_one_graph(), y)))
    comp = Lambda("x", t, Struct([lone] + [
        federated("federated_sum", federated("federated_map", add_one_graph(), Selection(x, i)))
        for i in range(2)
    ]))
    result = get_pass("merge-parallel-maps").apply(comp)
    assert any(node is lone for node in walk(result))
    assert client_work_maps(comp) == 3 and client_work_maps(result) == 2  # lone's stays
    names = {node.name for node in walk(result) if isinstance(node, Reference)}
    assert {"client_value_1", "client_value_2"} <= names
    # Walking every region again (nothing settled, scope kept) gives the same programs.
    optimized = [fc.optimize(comp, 2)] + [get_pass(name).apply(comp) for name in REGION_PASSES]
    monkeypatch.setattr(RegionPattern, "context_free", False)
    monkeypatch.setattr(ZipOfMaps, "context_free", False)
    assert optimized == [fc.optimize(comp, 2)] + [
        get_pass(name).apply(comp) for name in REGION_PASSES
    ]


REGION_PASSES = ("merge-parallel-maps", "dedupe-broadcasts", "merge-aggregations")

def test_dedupe_broadcasts_sends_equal_and_zipped_broadcasts_once():
    s = StructType([FederatedType(fc.parse_type("float32"), SERVER),
                    FederatedType(fc.parse_type("int32"), SERVER), placed("float32")])
    x = Reference("x", s)
    one = federated("federated_broadcast", Selection(x, 0))
    other = federated("federated_broadcast", Selection(x, 1))
    zipped = federated("federated_zip", Struct([("a", one), ("d", Selection(x, 2)), ("b", other)]))
    comp = Lambda("x", s, Struct([
        federated("federated_sum", federated("federated_map", first_of(zipped), zipped)),
        federated("federated_sum", federated("federated_map", add_one_graph(), one)),
    ]))
    result = check_rewrite("dedupe-broadcasts", comp, [
        (np.float32(1.5), np.int32(3), [np.float32(-0.0), np.float32(2)]),
    ])
    assert count_intrinsic_calls(comp)["federated_broadcast"] == 3
    assert count_intrinsic_calls(result)["federated_broadcast"] == 2  # <x[0],x[1]> and x[0]


def test_merge_aggregations_merges_one_kind_and_leaves_dependent_ones():
    t = StructType([placed("float32[2]"), placed("float64"), placed("float32")])
    x = Reference("x", t)
    mean_a = federated("federated_mean", Selection(x, 0))
    mean_b = federated("federated_mean", Selection(x, 1))
    weighted_a = federated("federated_weighted_mean", Selection(x, 0), Selection(x, 2))
    weighted_b = federated("federated_weighted_mean", Selection(x, 1), Selection(x, 2))
    # A mean of values computed from another mean: it must wait for that one.
    later = federated("federated_mean", federated("federated_map", add_one_graph("float64"),
                                                  federated("federated_broadcast", mean_b)))
    comp = Lambda("x", t, Struct([mean_a, mean_b, weighted_a, weighted_b, later]))
    rng = np.random.default_rng(11)
    arguments = [
        ([awkward_floats("float32", (2,), rng) for _ in range(n)],
         [awkward_floats("float64", (), rng) for _ in range(n)],
         [np.float32(w) for w in rng.uniform(0.5, 2, n)])
        for n in (1, 4)
    ]
    result = check_rewrite("merge-aggregations", comp, arguments)
    counts = count_intrinsic_calls(result)
    assert counts["federated_mean"] == 2  # <a, b> merged; the later one apart
    assert counts["federated_weighted_mean"] == 1


def test_merge_aggregations_pairs_the_functions_of_federated_aggregates():
    t = StructType([placed("float32[2]"), placed("int32")])
    x = Reference("x", t)
    comp = Lambda("x", t, Struct([
        federated("federated_aggregate", *fold_of_sums(Selection(x, 0))),
        federated("federated_aggregate", *fold_of_sums(Selection(x, 1))),
    ]))
    rng = np.random.default_rng(12)
    arguments = [
        ([awkward_floats("float32", (2,), rng) for _ in range(n)],
         [np.int32(v) for v in rng.integers(-5, 5, n)])
        for n in (0, 1, 5)
    ]
    result = check_rewrite("merge-aggregations", comp, arguments)
    assert count_intrinsic_calls(result)["federated_aggregate"] == 1


# ---------------------------------------------------------------------------
# A FedAvg round written with the public API.

FEATURES, CLASSES = 5, 3
MODEL = f"<kernel=float32[{FEATURES},{CLASSES}],bias=float32[{CLASSES}]>"
BATCH = f"<x=float32[?,{FEATURES}],y=int32[?]>"


@fc.numpy_computation(f"<model={MODEL},loss=float32,count=float32>", BATCH)
def sgd_step(accumulator, batch):
    kernel, bias = accumulator["model"]["kernel"], accumulator["model"]["bias"]
    x, y = batch["x"], batch["y"]
    logits = x @ kernel + bias
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = np.sum(exp, axis=1, keepdims=True)
    labels = (y[:, None] == np.arange(CLASSES)).astype(np.float32)
    loss = -np.sum(labels * (shifted - np.log(total)))
    count = np.sum(np.ones_like(y)).astype(np.float32)
    error = (exp / total - labels) / count
    rate = np.float32(0.1)
    return {
        "model": {"kernel": kernel - rate * (x.T @ error), "bias": bias - rate * np.sum(error, 0)},
        "loss": accumulator["loss"] + loss,
        "count": accumulator["count"] + count,
    }


@fc.federated_computation(MODEL, f"{BATCH}*")
def client_update(model, batches):
    zero = {"model": model, "loss": np.float32(0.0), "count": np.float32(0.0)}
    return fc.sequence_reduce(batches, zero, sgd_step)


@fc.numpy_computation(MODEL, MODEL)
def model_delta(trained, initial):
    return {
        "kernel": trained["kernel"] - initial["kernel"],
        "bias": trained["bias"] - initial["bias"],
    }


@fc.numpy_computation("float32", "float32")
def mean_loss(loss, count):
    return loss / np.maximum(count, np.float32(1.0))


@fc.numpy_computation(MODEL, MODEL)
def apply_delta(model, delta):
    return {"kernel": model["kernel"] + delta["kernel"], "bias": model["bias"] + delta["bias"]}


@fc.federated_computation(f"{MODEL}@SERVER", f"{{{BATCH}*}}@CLIENTS")
def fedavg_round(model, data):
    trained = fc.federated_map(client_update, [fc.federated_broadcast(model), data])
    new_models = fc.federated_map(lambda t: t["model"], trained)
    deltas = fc.federated_map(model_delta, [new_models, fc.federated_broadcast(model)])
    counts = fc.federated_map(lambda t: t["count"], trained)
    losses = fc.federated_map(mean_loss, [fc.federated_map(lambda t: t["loss"], trained), counts])
    new_model = fc.federated_map(apply_delta, [model, fc.federated_mean(deltas, counts)])
    return new_model, fc.federated_mean(losses)


def aggregation_calls(comp: BuildingBlock) -> dict[str, int]:
    return {
        uri: count for uri, count in count_intrinsic_calls(comp).items()
        if INTRINSICS[uri].kind is IntrinsicKind.AGGREGATION
    }


def fedavg_arguments(seed: int, clients: int):
    rng = np.random.default_rng(seed)
    model = {
        "kernel": rng.standard_normal((FEATURES, CLASSES)).astype(np.float32),
        "bias": rng.standard_normal(CLASSES).astype(np.float32),
    }
    data = [
        [
            {"x": rng.standard_normal((n, FEATURES)).astype(np.float32),
             "y": rng.integers(0, CLASSES, n).astype(np.int32)}
            for n in rng.integers(1, 5, rng.integers(1, 4))
        ]
        for _ in range(clients)
    ]
    return model, data


def test_level_2_brings_a_fedavg_round_to_one_broadcast_one_client_map_one_aggregation_each():
    before = fedavg_round.building_block
    optimized = fc.optimize(fedavg_round, level=2)
    after = optimized.building_block
    verify(after)
    assert count_intrinsic_calls(before)["federated_broadcast"] == 2
    assert client_work_maps(before) == 3
    assert count_intrinsic_calls(after)["federated_broadcast"] == 1
    assert client_work_maps(after) == 1
    # One aggregation per aggregated quantity (the weighted mean of the deltas and the mean
    # of the losses); desugared, both are folds, merged into one federated_aggregate.
    if "desugar-intrinsics" in level_passes(2):
        assert aggregation_calls(after) == {"federated_aggregate": 1}
    else:
        assert aggregation_calls(after) == {"federated_mean": 1, "federated_weighted_mean": 1}
    for seed, clients in ((0, 1), (1, 3), (2, 7)):
        model, data = fedavg_arguments(seed, clients)
        assert bits(optimized(model, data)) == bits(fedavg_round(model, data))
