"""MapReduceForm (DESIGN §7): a training round split into seven non-federated computations.

A round `next : (<S@SERVER, {D}@CLIENTS> -> <S@SERVER, M@SERVER>)` of the
shape broadcast -> client work -> aggregation -> server update becomes, as
in TFF's `tff.backends.mapreduce.MapReduceForm`:

| computation | type | what it does |
|---|---|---|
| `prepare` | `S -> C` | the value the server broadcasts |
| `work` | `<client_data=D, broadcast=C> -> W` | one client's work |
| `zero` | `( -> A)` | the accumulator's zero |
| `accumulate` | `<A, U> -> A` | folds one client's update into an accumulator |
| `merge` | `<A, A> -> A` | merges two accumulators |
| `report` | `A -> R` | the aggregate from the merged accumulator |
| `update` | `<state=S, aggregate=R, secure_sum_bitwidth=<..>, secure_sum=<..>> -> <S, M>` | |

where `W = <update=U, secure_sum_bitwidth=<..>, secure_sum=<..>>`, and
`update` is the server step: the new state and the metrics.

Secure sums. A round may also sum client values with `federated_secure_sum_bitwidth`
or `federated_secure_sum` (whose point is that the server learns only the
sum, so they cannot be folded by `accumulate`). `work` returns the value of
each such call, in program order, in its `secure_sum_bitwidth` and
`secure_sum` fields; the bounds of the calls (unplaced constants) are two
more computations, `secure_sum_bitwidth : ( -> <B_1, ...>)` and
`secure_sum_max_input : ( -> <M_1, ...>)`, as in TFF. A driver sums field i
of every client's `work` with the i-th bound by that intrinsic's own
semantics (range and overflow checks) and hands the sums to `update` in the
same fields. A round without secure sums has empty structs there, and its
program holds just the seven computations.

How (TFF's approach): lower sums and means to `federated_aggregate`
(`desugar-intrinsics`, bit-identical), merge maps, broadcasts and
aggregations (the level-2 passes), and bring the round to call-dominant form
(`to-call-dominant`): one `let` of intrinsic calls. Each binding is then
classified by what it computes (a server value, a client value, a broadcast,
an aggregation, an unplaced constant), the round's shape is checked, and the
program is cut at its broadcasts and aggregations: each piece is the
bindings it needs, with placements erased (`federated_map(<f, x>)` is
`f(x)`, `federated_zip(<a, b>)` is `<a, b>`, a value at SERVER is its
member), closed into a lambda over its inputs. Every binding computes
exactly what it computed before, so a driver that folds along the
runtime's canonical reduction tree gives the same bits as running `next`.

A round that cannot be written this way raises `MapReduceFormError` naming
the calls (by the names they are bound to in the call-dominant round, with
their intrinsics) and why.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedcc.compiler.pass_manager import optimize_with_report, run_passes
from fedcc.compiler.rewriting import NameSupply, with_children
from fedcc.compiler.verify import verify
from fedcc.ir import intrinsics
from fedcc.ir.analysis import free_references
from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Data,
    Intrinsic,
    Lambda,
    Reference,
    Selection,
    Struct,
    walk,
)
from fedcc.ir.errors import FedccError
from fedcc.ir.program import Program
from fedcc.ir.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementType,
    StructType,
    Type,
    is_assignable_from,
    walk_types,
)


class MapReduceFormError(FedccError):
    """A round that MapReduceForm cannot express, or computations that are not a MapReduceForm."""


# The passes that bring a round to the shape the split needs: sugar lowered to
# federated_aggregate (so aggregations can merge and be folded by a driver), then the
# level-2 rewrites (one map of client work, one broadcast, one aggregation), then
# call-dominant form (one let of calls).
LOWERING_PASS = "desugar-intrinsics"
CALL_DOMINANT_PASS = "to-call-dominant"
NORMALIZING_LEVEL = 2

# The names of the computations, in the order a program holds them.
FORM_COMPUTATIONS = ("prepare", "work", "zero", "accumulate", "merge", "report", "update")
SECURE_BOUND_COMPUTATIONS = ("secure_sum_bitwidth", "secure_sum_max_input")

# The fields of `work`'s result and of `update`'s parameter.
WORK_UPDATE, BITWIDTH_FIELD, MAX_INPUT_FIELD = "update", "secure_sum_bitwidth", "secure_sum"
STATE_FIELD, AGGREGATE_FIELD = "state", "aggregate"
CLIENT_DATA_FIELD, BROADCAST_FIELD = "client_data", "broadcast"

# Secure sums: the intrinsic, and the field of work/update (and the bound computation) it uses.
SECURE_SUMS = {
    "federated_secure_sum_bitwidth": (BITWIDTH_FIELD, "secure_sum_bitwidth"),
    "federated_secure_sum": (MAX_INPUT_FIELD, "secure_sum_max_input"),
}


# ---------------------------------------------------------------------------
# The form.


def _empty_function(parameter_type: Type | None, name: str = "unused") -> Lambda:
    """`( -> <>)` or `(x -> <>)`: a part the round does not use."""
    return Lambda(None if parameter_type is None else name, parameter_type, Struct([]))


@dataclass(frozen=True)
class MapReduceForm:
    """The parts of a round (see the module docstring), each a closed, non-federated function
    building block; `fc.serialize`, `fc.to_text` and `fc.save` take each part (or `to_program()`).

    Construction checks that the parts fit together and hold no placements.
    """

    prepare: BuildingBlock
    work: BuildingBlock
    zero: BuildingBlock
    accumulate: BuildingBlock
    merge: BuildingBlock
    report: BuildingBlock
    update: BuildingBlock
    secure_sum_bitwidth: BuildingBlock = field(default_factory=lambda: _empty_function(None))
    secure_sum_max_input: BuildingBlock = field(default_factory=lambda: _empty_function(None))

    def __post_init__(self) -> None:
        check_form(self)

    # -- types of the parts

    @property
    def state_type(self) -> Type:
        """S: the server state."""
        return self.prepare.type_signature.parameter

    @property
    def client_data_type(self) -> Type:
        """D: one client's data."""
        return self.work.type_signature.parameter[0]

    @property
    def metrics_type(self) -> Type:
        """M: the round's metrics."""
        return self.update.type_signature.result[1]

    @property
    def type_signature(self) -> FunctionType:
        """The type of the round the form computes: `(<S@SERVER, {D}@CLIENTS> -> <S@SERVER,
        M@SERVER>)`."""
        return FunctionType(
            StructType(
                [
                    FederatedType(self.state_type, SERVER),
                    FederatedType(self.client_data_type, CLIENTS),
                ]
            ),
            StructType(
                [FederatedType(self.state_type, SERVER), FederatedType(self.metrics_type, SERVER)]
            ),
        )

    @property
    def uses_secure_sums(self) -> bool:
        """Whether the round sums some client values with a secure sum."""
        secure = self.work.type_signature.result
        return len(secure[1]) + len(secure[2]) > 0

    # -- as a program

    def computations(self) -> dict[str, BuildingBlock]:
        """The parts by name: the seven, then the secure-sum bounds if the round has secure sums."""
        names = FORM_COMPUTATIONS + (SECURE_BOUND_COMPUTATIONS if self.uses_secure_sums else ())
        return {name: getattr(self, name) for name in names}

    def to_program(self, metadata: Mapping[str, str] | None = None) -> Program:
        """A `Program` holding `computations()`, what `fedcc compile --form mapreduce` writes."""
        return Program(self.computations(), {**(metadata or {}), "form": "mapreduce"})

    @classmethod
    def from_program(cls, program: Program) -> MapReduceForm:
        """The form a program written by `to_program` holds; raises `MapReduceFormError` if the
        program does not hold the seven computations (and the secure-sum bounds it needs)."""
        found = program.computations
        missing = [name for name in FORM_COMPUTATIONS if name not in found]
        if missing:
            raise MapReduceFormError(
                f"a MapReduceForm program holds {', '.join(FORM_COMPUTATIONS)}; this one has "
                f"{', '.join(found)} (missing {', '.join(missing)})"
            )
        extra = [n for n in found if n not in FORM_COMPUTATIONS + SECURE_BOUND_COMPUTATIONS]
        if extra:
            raise MapReduceFormError(
                f"a MapReduceForm program holds no computation named {', '.join(extra)}"
            )
        return cls(**found)


def _has_placements(t: Type) -> bool:
    return any(isinstance(inner, (FederatedType, PlacementType)) for inner in walk_types(t))


def _function_type(form: MapReduceForm, name: str, arity: int) -> FunctionType:
    part = getattr(form, name)
    if not isinstance(part, BuildingBlock):
        raise MapReduceFormError(f"{name} must be a building block, found {type(part).__name__}")
    t = part.type_signature
    if not isinstance(t, FunctionType) or (t.parameter is None) != (arity == 0):
        want = "a function of no argument" if arity == 0 else "a function of one argument"
        raise MapReduceFormError(f"{name} must be {want}, found {t}")
    if _has_placements(t):
        raise MapReduceFormError(f"{name} must not be federated, found {t}")
    if free_references(part):
        raise MapReduceFormError(
            f"{name} must be closed, found free names {', '.join(free_references(part))}"
        )
    return t


def _struct_of(t: Type, count: int, name: str, what: str) -> StructType:
    if not isinstance(t, StructType) or len(t) != count:
        raise MapReduceFormError(f"{name}: expected {what}, found {t}")
    return t


def _expect_accepts(name: str, target: Type, source: Type, what: str) -> None:
    if not is_assignable_from(target, source):
        raise MapReduceFormError(f"{name} takes {target} as {what}, which does not accept {source}")


def check_form(form: MapReduceForm) -> None:
    """Checks that the parts of `form` have the types of a MapReduceForm and fit together."""
    prepare = _function_type(form, "prepare", 1)
    work = _function_type(form, "work", 1)
    zero = _function_type(form, "zero", 0)
    accumulate = _function_type(form, "accumulate", 1)
    merge = _function_type(form, "merge", 1)
    report = _function_type(form, "report", 1)
    update = _function_type(form, "update", 1)
    bitwidths = _function_type(form, "secure_sum_bitwidth", 0).result
    max_inputs = _function_type(form, "secure_sum_max_input", 0).result
    work_in = _struct_of(work.parameter, 2, "work", "<client data, broadcast>")
    _expect_accepts("work", work_in[1], prepare.result, "the broadcast value")
    work_out = _struct_of(work.result, 3, "work", "<update, secure_sum_bitwidth, secure_sum>")
    secure_bitwidth, secure_max_input = work_out[1], work_out[2]
    for values, bounds, what in (
        (secure_bitwidth, bitwidths, "secure_sum_bitwidth"),
        (secure_max_input, max_inputs, "secure_sum_max_input"),
    ):
        if not isinstance(values, StructType) or not isinstance(bounds, StructType):
            raise MapReduceFormError(f"work's {what} values and their bounds must be structs")
        if len(values) != len(bounds):
            raise MapReduceFormError(
                f"work returns {len(values)} {what} value(s) but {what} gives "
                f"{len(bounds)} bound(s)"
            )
    accumulator = zero.result
    _expect_accepts(
        "accumulate",
        accumulate.parameter,
        StructType([accumulator, work_out[0]]),
        "<accumulator, client update>",
    )
    _expect_accepts("zero", accumulator, accumulate.result, "the accumulator (accumulate's result)")
    _expect_accepts(
        "merge",
        merge.parameter,
        StructType([accumulator, accumulator]),
        "<accumulator, accumulator>",
    )
    _expect_accepts("zero", accumulator, merge.result, "the accumulator (merge's result)")
    _expect_accepts("report", report.parameter, accumulator, "the accumulator")
    update_in = _struct_of(
        update.parameter,
        4,
        "update",
        "<state, aggregate, secure_sum_bitwidth sums, secure_sum sums>",
    )
    _expect_accepts("update", update_in[0], prepare.parameter, "the state")
    _expect_accepts("update", update_in[1], report.result, "the aggregate")
    _expect_accepts("update", update_in[2], secure_bitwidth, "the secure_sum_bitwidth sums")
    _expect_accepts("update", update_in[3], secure_max_input, "the secure_sum sums")
    update_out = _struct_of(update.result, 2, "update", "<new state, metrics>")
    _expect_accepts(
        "update", prepare.parameter, update_out[0], "the new state (prepare's parameter)"
    )


# ---------------------------------------------------------------------------
# Normalizing the round.


def _check_round_type(comp: BuildingBlock) -> tuple[FederatedType, FederatedType]:
    """The state and client-data types of a round; `MapReduceFormError` if `comp` is not one."""
    expected = "a round (<S@SERVER, {D}@CLIENTS> -> <S@SERVER, M@SERVER>)"
    t = comp.type_signature
    if not isinstance(t, FunctionType) or not isinstance(comp, Lambda):
        raise MapReduceFormError(f"expected {expected}, found {t}")
    parameter, result = t.parameter, t.result
    if not isinstance(parameter, StructType) or len(parameter) != 2:
        raise MapReduceFormError(f"expected {expected}, found the parameter {parameter}")
    state, data = parameter
    if not isinstance(state, FederatedType) or state.placement is not SERVER:
        raise MapReduceFormError(
            f"expected {expected}, found the state {state}: it must be placed at SERVER"
        )
    if not isinstance(data, FederatedType) or data.placement is not CLIENTS:
        raise MapReduceFormError(
            f"expected {expected}, found the client data {data}: it must be placed at CLIENTS"
        )
    if not isinstance(result, StructType) or len(result) != 2:
        raise MapReduceFormError(f"expected {expected}, found the result {result}")
    for what, part in zip(("new state", "metrics"), result):
        if not isinstance(part, FederatedType) or part.placement is not SERVER:
            raise MapReduceFormError(
                f"expected {expected}, found the {what} {part}: the round's results must be "
                "placed at SERVER (client values can leave the clients only through an aggregation)"
            )
    if not is_assignable_from(state.member, result[0].member):
        raise MapReduceFormError(
            f"expected {expected}: the new state {result[0]} is not the state {state}"
        )
    return state, data


def normalize_round(comp: BuildingBlock) -> tuple[BuildingBlock, list[str]]:
    """`comp` with sugar lowered, level-2 rewrites applied and in call-dominant form; and the
    names of the passes that ran, in order."""
    lowered, lowering = run_passes(comp, [LOWERING_PASS])
    optimized, level = optimize_with_report(lowered, NORMALIZING_LEVEL)
    normalized, dominant = run_passes(optimized, [CALL_DOMINANT_PASS])
    applied = [
        *lowering.passes_applied(),
        *level.passes_applied(),
        *dominant.passes_applied(),
    ]
    return normalized, list(dict.fromkeys(applied))


# ---------------------------------------------------------------------------
# Classifying the bindings of the call-dominant round.


class Kind(enum.Enum):
    """What a binding of the round computes, which decides the piece it belongs to."""

    CONSTANT = "an unplaced value"
    SERVER = "a value at the server"
    CLIENTS = "a value at the clients"
    BROADCAST = "a broadcast"
    AGGREGATE = "an aggregation"
    SECURE_SUM = "a secure sum"


AGGREGATE_URI = "federated_aggregate"
BROADCAST_URIS = ("federated_broadcast",)

# Intrinsics a piece of the form runs with placements erased: uri -> how (see `_erase_call`).
_ERASABLE = {
    "federated_map",
    "federated_apply",
    "federated_zip",
    "federated_value_at_server",
    "federated_value_at_clients",
    "federated_eval_at_server",
    "federated_eval_at_clients",
}


def _uri(node: BuildingBlock) -> str | None:
    if isinstance(node, Call) and isinstance(node.function, Intrinsic):
        return node.function.uri
    return None


# Errors name calls as the normalized round binds them; this says where to see those names.
NAMES_HINT = (
    "names of the round after desugar-intrinsics, the -O 2 passes and to-call-dominant, "
    "where sums and means are federated_aggregate calls"
)


def _describe(name: str, value: BuildingBlock) -> str:
    uri = _uri(value)
    return f"{uri} `{name}`" if uri else f"`{name}`"


def _erase_type(t: Type) -> Type:
    """`t` without placements: a federated type is its member, a struct erased element-wise."""
    if isinstance(t, FederatedType):
        return t.member
    if isinstance(t, StructType):
        return StructType([(name, _erase_type(element)) for name, element in t.elements])
    return t


@dataclass
class _Round:
    """The call-dominant round: its bindings in order, each one's kind and direct dependencies."""

    state: str  # the name standing for the parameter's state, p[0]
    data: str  # the name standing for the parameter's client data, p[1]
    parameter: str
    bindings: list[tuple[str, BuildingBlock]]
    result: BuildingBlock
    kinds: dict[str, Kind] = field(default_factory=dict)
    uses: dict[str, set[str]] = field(default_factory=dict)  # name -> round names it reads

    @property
    def values(self) -> dict[str, BuildingBlock]:
        return dict(self.bindings)

    def names_read(self, node: BuildingBlock) -> set[str]:
        """The round's names (bindings, state, data) that `node` reads."""
        known = self.kinds.keys() | {self.state, self.data}
        return {name for name in free_references(node) if name in known}

    def upstream(self, names: set[str], stop: set[str] = frozenset()) -> set[str]:
        """Every binding `names` read, directly or not, not looking past the names in `stop`."""
        seen: set[str] = set()
        work = list(names)
        while work:
            name = work.pop()
            if name in seen:
                continue
            seen.add(name)
            if name not in stop:
                work.extend(self.uses.get(name, ()))
        return seen

    def of_kind(self, *kinds: Kind) -> list[str]:
        return [name for name, _ in self.bindings if self.kinds[name] in kinds]


def _split_parameter(comp: Lambda) -> tuple[str, str, BuildingBlock]:
    """The body with `p[0]` and `p[1]` replaced by fresh names for the state and the client data.

    A round's code uses its parameter only through those selections (the state and the data
    are placed differently, so no intrinsic takes the whole struct).
    """
    names = NameSupply(comp)
    state, data = names.fresh("server_state"), names.fresh("client_data")
    parameter = comp.parameter_name
    state_type, data_type = comp.parameter_type
    replacements = {0: Reference(state, state_type), 1: Reference(data, data_type)}
    body = _rebuild_top_level(
        comp.result,
        lambda node: (
            replacements[node.index]
            if isinstance(node, Selection)
            and isinstance(node.source, Reference)
            and node.source.name == parameter
            else None
        ),
    )
    if parameter in free_references(body):
        raise MapReduceFormError(
            f"the round uses its parameter {parameter!r} ({comp.parameter_type}) other than "
            f"as {parameter}[0] (the state) and {parameter}[1] (the client data)"
        )
    return state, data, body


def _rebuild_top_level(node: BuildingBlock, replace) -> BuildingBlock:
    """`node` with each node for which `replace` returns a node replaced; lambdas (unplaced
    functions, which cannot read the round's placed values) are left as they are.

    Call-dominant code is shallow outside lambdas (arguments are names, selections and
    structs, nested at most as deep as their types), so recursion is bounded here.
    """
    replaced = replace(node)
    if replaced is not None:
        return replaced
    children = node.children()
    if not children or isinstance(node, Lambda):
        return node
    return with_children(node, [_rebuild_top_level(child, replace) for child in children])


def _classify(round_: _Round) -> None:
    for name, value in round_.bindings:
        uri = _uri(value)
        t = value.type_signature
        if uri == AGGREGATE_URI:
            kind = Kind.AGGREGATE
        elif uri in SECURE_SUMS:
            kind = Kind.SECURE_SUM
        elif uri in BROADCAST_URIS:
            kind = Kind.BROADCAST
        elif not _has_placements(t):
            kind = Kind.CONSTANT
        elif uri in _ERASABLE and isinstance(t, FederatedType):
            kind = Kind.SERVER if t.placement is SERVER else Kind.CLIENTS
        else:
            raise MapReduceFormError(_unsupported(name, value))
        if any(isinstance(node, Data) for node in walk(value)):
            raise MapReduceFormError(
                f"{_describe(name, value)} reads a data set by URI; a round reads its client "
                "data from its parameter"
            )
        round_.kinds[name] = kind
        round_.uses[name] = round_.names_read(value)


def _unsupported(name: str, value: BuildingBlock) -> str:
    uri = _uri(value)
    if uri is not None and intrinsics.lookup(uri).kind is intrinsics.IntrinsicKind.AGGREGATION:
        member = value.function.type_signature.parameter
        return (
            f"{uri} `{name}` ({member}) was not lowered to federated_aggregate: its value has a "
            "dimension of unknown size, so there is no zero to start a fold from; give the "
            "value a fully known shape"
        )
    return (
        f"{_describe(name, value)} of type {value.type_signature} cannot be placed in a "
        "MapReduceForm piece"
    )


def _path_through(round_: _Round, start: str, target: str, kinds: tuple[Kind, ...]) -> str | None:
    """A binding of one of `kinds` on a dependency path from `start` back to `target`."""
    for name in sorted(round_.upstream({start}) & set(round_.of_kind(*kinds))):
        if target in round_.upstream({name}):
            return name
    return None


def _check_shape(round_: _Round) -> None:
    """Raises `MapReduceFormError` unless the round is broadcast, work, aggregation, update."""
    values = round_.values
    aggregations = round_.of_kind(Kind.AGGREGATE, Kind.SECURE_SUM)
    aggregation_set = set(aggregations)
    for later in aggregations:
        for earlier in sorted(round_.upstream(round_.uses[later]) & aggregation_set):
            through = _path_through(round_, later, earlier, (Kind.BROADCAST,))
            via = (
                f" ({_describe(through, values[through])} sends that result back to the clients)"
                if through
                else ""
            )
            raise MapReduceFormError(
                f"{_describe(later, values[later])} aggregates client values computed from the "
                f"result of {_describe(earlier, values[earlier])}{via}: the round has two "
                "dependent aggregation rounds, and a MapReduceForm has one broadcast before "
                f"one aggregation ({NAMES_HINT})"
            )
    # A broadcast computed from an aggregate whose client values no aggregation reads would be
    # dead code; the passes removed it. (Should anything else remain, cutting the pieces
    # refuses a piece that needs a binding of a kind it cannot compute.)
    folds = round_.of_kind(Kind.AGGREGATE)
    # merge-aggregations merges every two that do not depend on each other; this guards the
    # one fold the form has room for.
    if len(folds) > 1:
        raise MapReduceFormError(
            f"the round has {len(folds)} federated_aggregate calls that could not be merged "
            f"into one ({', '.join(f'`{n}`' for n in folds)}); a MapReduceForm has one"
        )


# ---------------------------------------------------------------------------
# Cutting the round into pieces.


class _Piece:
    """Builds one piece: the bindings its outputs need, placements erased, inputs replaced."""

    def __init__(
        self,
        round_: _Round,
        name: str,
        inputs: Mapping[str, BuildingBlock],
        allowed: tuple[Kind, ...],
    ) -> None:
        self.round = round_
        self.name = name
        self.inputs = dict(inputs)
        self.allowed = allowed

    def body(self, outputs: Sequence[BuildingBlock], result: BuildingBlock) -> BuildingBlock:
        """`result` (built from the erased `outputs`) under the bindings the outputs need."""
        needed = self.round.upstream(
            set().union(*(self.round.names_read(o) for o in outputs)) if outputs else set(),
            stop=set(self.inputs),
        )
        values = self.round.values
        bindings = []
        for name, value in self.round.bindings:
            if name not in needed or name in self.inputs:
                continue
            if self.round.kinds[name] not in self.allowed:
                raise MapReduceFormError(
                    f"{self.name} would need {_describe(name, value)} "
                    f"({self.round.kinds[name].value}), which it cannot compute"
                )
            bindings.append((name, self.erase(values[name])))
        for source in (self.round.state, self.round.data):
            if source in needed and source not in self.inputs:
                raise MapReduceFormError(
                    f"{self.name} would need the round's "
                    f"{'state' if source == self.round.state else 'client data'}, which it "
                    "cannot see"
                )
        return Block(bindings, result) if bindings else result

    def erase(self, node: BuildingBlock) -> BuildingBlock:
        """`node` (a top-level expression of the round) without placements (bounded recursion,
        see `_rebuild_top_level`)."""
        if isinstance(node, Reference):
            if node.name in self.inputs:
                return self.inputs[node.name]
            if node.name in self.round.kinds:
                return Reference(node.name, _erase_type(node.type_signature))
            return node
        if not _has_placements(node.type_signature) and not (
            self.round.names_read(node) & (set(self.inputs) | self._placed_names())
        ):
            return node  # unplaced code reading only unplaced values: as it is
        if isinstance(node, Selection):
            return Selection(self.erase(node.source), node.index)
        if isinstance(node, Struct):
            return Struct([(name, self.erase(value)) for name, value in node.elements])
        if isinstance(node, Call) and _uri(node) in _ERASABLE:
            return self._erase_call(node)
        raise MapReduceFormError(
            f"{self.name}: cannot erase the placements of {node} ({node.type_signature})"
        )

    def _placed_names(self) -> set[str]:
        return {name for name, kind in self.round.kinds.items() if kind is not Kind.CONSTANT} | {
            self.round.state,
            self.round.data,
        }

    def _erase_call(self, node: Call) -> BuildingBlock:
        uri = _uri(node)
        argument = self.erase(node.argument)
        if uri in ("federated_map", "federated_apply"):
            function, value = _parts(argument, 2)
            return Call(function, value)
        if uri in ("federated_eval_at_server", "federated_eval_at_clients"):
            return Call(argument)
        return argument  # zip (names kept), value_at_server, value_at_clients


def _parts(node: BuildingBlock, count: int) -> list[BuildingBlock]:
    if isinstance(node, Struct):
        return [value for _, value in node.elements]
    return [Selection(node, i) for i in range(count)]


def _closed_function(piece: _Piece, function: BuildingBlock, parameter: str) -> BuildingBlock:
    """`function` (unplaced) as a closed function: the constants it reads bound around it."""
    body = piece.body([function], function)
    if body is function:
        return function
    fn_type = function.type_signature
    x = Reference(parameter, fn_type.parameter)
    return Lambda(parameter, fn_type.parameter, piece.body([function], Call(function, x)))


@dataclass(frozen=True)
class _Aggregations:
    """The round's aggregation calls: the one fold (or None) and the secure sums by field."""

    fold: tuple[str, list[BuildingBlock]] | None
    secure: dict[str, list[tuple[str, list[BuildingBlock]]]]


def _aggregations(round_: _Round) -> _Aggregations:
    values = round_.values
    fold = None
    secure: dict[str, list] = {BITWIDTH_FIELD: [], MAX_INPUT_FIELD: []}
    for name in round_.of_kind(Kind.AGGREGATE, Kind.SECURE_SUM):
        call = values[name]
        uri = _uri(call)
        if uri == AGGREGATE_URI:
            fold = (name, _parts(call.argument, 5))
        else:
            secure[SECURE_SUMS[uri][0]].append((name, _parts(call.argument, 2)))
    return _Aggregations(fold, secure)


def _name_supply(round_: _Round) -> NameSupply:
    """Fresh names for the pieces' parameters: none the round (or its parameter) uses."""
    supply = NameSupply(Block(round_.bindings, round_.result) if round_.bindings else round_.result)
    for reserved in (round_.state, round_.data, round_.parameter):
        supply.reserve(reserved)
    return supply


def _split(round_: _Round, state_type: Type, data_type: Type) -> dict[str, BuildingBlock]:
    """The pieces of a checked round, by computation name."""
    values = round_.values
    aggregations = _aggregations(round_)
    names = _name_supply(round_)
    server_kinds = (Kind.CONSTANT, Kind.SERVER)

    # prepare: S -> C, the broadcast values (one: itself; otherwise a struct of them).
    broadcasts = round_.of_kind(Kind.BROADCAST)
    s = names.fresh("state")
    prepare_piece = _Piece(
        round_, "prepare", {round_.state: Reference(s, state_type)}, server_kinds
    )
    sent = [values[name].argument for name in broadcasts]
    erased_sent = [prepare_piece.erase(value) for value in sent]
    broadcast_value = erased_sent[0] if len(erased_sent) == 1 else Struct(erased_sent)
    prepare = Lambda(s, state_type, prepare_piece.body(sent, broadcast_value))
    broadcast_type = prepare.type_signature.result

    # work: <D, C> -> <update=U, secure_sum_bitwidth=<...>, secure_sum=<...>>.
    w = names.fresh("client")
    work_type = StructType([(CLIENT_DATA_FIELD, data_type), (BROADCAST_FIELD, broadcast_type)])
    client = Reference(w, work_type)
    received = Selection(client, 1)
    work_inputs: dict[str, BuildingBlock] = {round_.data: Selection(client, 0)}
    for index, name in enumerate(broadcasts):
        work_inputs[name] = received if len(broadcasts) == 1 else Selection(received, index)
    work_piece = _Piece(round_, "work", work_inputs, (Kind.CONSTANT, Kind.CLIENTS))
    client_values = [] if aggregations.fold is None else [aggregations.fold[1][0]]
    secure_values = {
        field_name: [parts[0] for _, parts in calls]
        for field_name, calls in aggregations.secure.items()
    }
    outputs = client_values + secure_values[BITWIDTH_FIELD] + secure_values[MAX_INPUT_FIELD]
    work_result = Struct(
        [
            (WORK_UPDATE, work_piece.erase(client_values[0]) if client_values else Struct([])),
            (BITWIDTH_FIELD, Struct([work_piece.erase(v) for v in secure_values[BITWIDTH_FIELD]])),
            (
                MAX_INPUT_FIELD,
                Struct([work_piece.erase(v) for v in secure_values[MAX_INPUT_FIELD]]),
            ),
        ]
    )
    work = Lambda(w, work_type, work_piece.body(outputs, work_result))

    # zero, accumulate, merge, report: the fold's own functions, closed over the constants.
    constants = _Piece(round_, "the aggregation", {}, (Kind.CONSTANT,))
    if aggregations.fold is None:
        empty = StructType([])
        zero = _empty_function(None)
        accumulate = _empty_function(StructType([empty, empty]), "accumulator_and_update")
        merge = _empty_function(StructType([empty, empty]), "accumulators")
        report = _empty_function(empty, "accumulator")
    else:
        _, (_, zero_value, accumulate_fn, merge_fn, report_fn) = aggregations.fold
        zero = Lambda(None, None, constants.body([zero_value], constants.erase(zero_value)))
        accumulate = _closed_function(constants, accumulate_fn, names.fresh("accumulate_arg"))
        merge = _closed_function(constants, merge_fn, names.fresh("merge_arg"))
        report = _closed_function(constants, report_fn, names.fresh("report_arg"))

    # The bounds of the secure sums, in work's order.
    bounds = {}
    for field_name, computation in SECURE_SUMS.values():
        bound_values = [parts[1] for _, parts in aggregations.secure[field_name]]
        erased = Struct([constants.erase(v) for v in bound_values])
        bounds[computation] = Lambda(None, None, constants.body(bound_values, erased))

    # update: <state, aggregate, secure sums...> -> <S', M>.
    u = names.fresh("server")
    aggregate_type = report.type_signature.result
    secure_types = {
        field_name: StructType([_erase_type(values[name].type_signature) for name, _ in calls])
        for field_name, calls in aggregations.secure.items()
    }
    update_type = StructType(
        [
            (STATE_FIELD, state_type),
            (AGGREGATE_FIELD, aggregate_type),
            (BITWIDTH_FIELD, secure_types[BITWIDTH_FIELD]),
            (MAX_INPUT_FIELD, secure_types[MAX_INPUT_FIELD]),
        ]
    )
    server = Reference(u, update_type)
    update_inputs: dict[str, BuildingBlock] = {round_.state: Selection(server, 0)}
    if aggregations.fold is not None:
        update_inputs[aggregations.fold[0]] = Selection(server, 1)
    for position, field_name in ((2, BITWIDTH_FIELD), (3, MAX_INPUT_FIELD)):
        for index, (name, _) in enumerate(aggregations.secure[field_name]):
            update_inputs[name] = Selection(Selection(server, position), index)
    update_piece = _Piece(round_, "update", update_inputs, server_kinds)
    update = Lambda(
        u, update_type, update_piece.body([round_.result], update_piece.erase(round_.result))
    )
    return {
        "prepare": prepare,
        "work": work,
        "zero": zero,
        "accumulate": accumulate,
        "merge": merge,
        "report": report,
        "update": update,
        **bounds,
    }


def _check_piece(name: str, piece: BuildingBlock) -> None:
    """Each piece is closed, valid and free of placements and federated intrinsics."""
    verify(piece)
    for node in walk(piece):
        if isinstance(node, Intrinsic) and intrinsics.lookup(node.uri).kind is not (
            intrinsics.IntrinsicKind.SEQUENCE
        ):
            raise MapReduceFormError(f"{name} still calls the federated intrinsic {node.uri}")


@dataclass(frozen=True)
class FormResult:
    """A form and how it was made: the passes that normalized the round."""

    form: MapReduceForm
    passes: tuple[str, ...]


def build_map_reduce_form(next_round: BuildingBlock, optimization_level: int = 2) -> FormResult:
    """The MapReduceForm of the round `next_round` (see the module docstring).

    Each part is optimized at `optimization_level` (0, 1 or 2; it computes the
    same bits at every level). Raises `MapReduceFormError` if `next_round` is not
    a round, or names the calls that keep it from the form's shape.
    """
    state, data = _check_round_type(next_round)
    normalized, passes = normalize_round(next_round)
    state_name, data_name, body = _split_parameter(normalized)
    if isinstance(body, Block):
        bindings, result = list(body.locals), body.result
    else:
        bindings, result = [], body
    round_ = _Round(state_name, data_name, normalized.parameter_name, bindings, result)
    _classify(round_)
    round_.uses[round_.state] = set()
    round_.uses[round_.data] = set()
    _check_shape(round_)
    pieces = _split(round_, state.member, data.member)
    optimized = {}
    for name, piece in pieces.items():
        _check_piece(name, piece)
        result_piece, _ = optimize_with_report(piece, optimization_level)
        optimized[name] = result_piece
    return FormResult(MapReduceForm(**optimized), tuple(passes))
