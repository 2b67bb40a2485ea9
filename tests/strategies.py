"""Random well-typed fedcc types, local graphs and programs, for property tests.

Every generator here is written once against a small `Chooser` interface
(`integer`, `choice`, `boolean`) and offered two ways:

- as Hypothesis strategies (`types()`, `local_graphs()`, `programs()`, ...),
  which shrink a failing example towards the simplest one: choices are
  ordered simplest first, so shrinking picks literals over calls, short
  structs over long ones, `float32` over other dtypes;
- as plain seeded functions (`sample_programs(count, seed)`,
  `sample_local_graphs(...)`), deterministic and fast, for coverage
  assertions and benchmarks that need many programs at once.

Programs are built type-directed: `ProgramBuilder.expression(t, scope, depth)`
returns a node whose `type_signature` is exactly `t`, using only names bound
in `scope` (name -> type; a later binding of a name shadows an earlier one),
with at most `depth` levels of nested construction before it falls back to
the smallest node of that type. So `programs()` are closed and well-typed by
construction, and `programs("({float32}@CLIENTS -> float32@SERVER)")` gives
programs of a chosen type. Functions of unplaced type (what `federated_map`,
`federated_aggregate` and the sequence intrinsics run locally) are built
closed and free of federated values, like TFF's tf_computations, so a backend
can ship them to a worker as they are.

How to reuse it (from a test under tests/: `from strategies import programs`;
tests/ has no `__init__.py`, so pytest puts it on `sys.path`):

- Pass soundness: `@given(programs())` or `@given(federated_programs())`, run
  the pass, then `verify(result)` and check the type signature is unchanged;
  for equal values, run both on the reference backend (programs of unplaced
  types need no arguments: `programs(unplaced-type)`).
- Serialization and text round trips: `programs()`, `program_envelopes()`,
  `local_graphs()`; literals include -0.0, NaN and infinities, struct field
  names include keywords of the text syntax.
- Backends: `federated_programs()` gives lambdas of a federated parameter, the
  shape of a real computation. `Data` nodes name the fictional URIs of
  `DATA_URIS`: a backend test maps them to in-memory data sets, or skips
  programs that hold `Data`.
- Many programs at once, deterministically (coverage, benchmarks, fuzzing):
  `sample_programs(count, seed)`, `sample_local_graphs(count, seed)`.
- Extending: a new intrinsic needs an entry in `INTRINSIC_RECIPES` (the table
  that says which argument type gives a wanted result type), or
  tests/test_strategies.py fails; a new node kind needs a producer in
  `ProgramBuilder`. New primitives need nothing: local graphs draw from
  `fedcc.ir.primitives.PRIMITIVES` and keep only ops whose shape rule accepts
  the drawn inputs and attributes.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from hypothesis import strategies as st

from fedcc.ir import primitives
from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Data,
    Intrinsic,
    Lambda,
    Literal,
    LocalGraph,
    Placement,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.intrinsics import INTRINSICS
from fedcc.ir.local_graph import Graph, Op, struct_of_leaves
from fedcc.ir.program import Program
from fedcc.ir.types import (
    CLIENTS,
    DTYPES,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementLiteral,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    contains_federated,
    is_assignable_from,
    tensor_leaves,
    to_type,
    walk_types,
)

T = TypeVar("T")

# Simplest first: shrinking moves towards the front of each pool.
DTYPE_NAMES: tuple[str, ...] = ("float32", *(name for name in DTYPES if name != "float32"))
FLOAT_DTYPES = tuple(name for name in DTYPE_NAMES if DTYPES[name].kind == "f")
INT_DTYPES = tuple(name for name in DTYPE_NAMES if DTYPES[name].kind in "iu")
# Field names may be keywords of the text syntax ("in", "float32"): the printers must cope.
FIELD_NAMES = ("a", "b", "w", "x", "y", "kernel", "bias", "in", "float32")
VARIABLE_NAMES = ("x", "y", "z", "a", "b", "acc", "v", "state")
DATA_URIS = ("data/clients", "data/train.npz", "file:///tmp/fedcc/clients", "gs://bucket/shard")

# Literal elements per dtype kind: edge cases (negative zero, NaN, infinity) on purpose.
LITERAL_POOLS: dict[str, tuple[Any, ...]] = {
    "b": (False, True),
    "i": (0, 1, -1, 2, 127),
    "u": (0, 1, 2, 255),
    "f": (0.0, 1.0, -1.5, 0.5, -0.0, float("nan"), float("inf"), -float("inf")),
}


# ---------------------------------------------------------------------------
# Choosers: where the randomness comes from.


class Chooser(Protocol):
    """A source of choices; lower integers and earlier options are 'simpler'."""

    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...

    def boolean(self) -> bool: ...


class HypothesisChooser:
    """Draws every choice from Hypothesis, so examples shrink."""

    def __init__(self, draw: Callable[[st.SearchStrategy], Any]) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return options[self._draw(st.integers(0, len(options) - 1))]

    def boolean(self) -> bool:
        return self._draw(st.booleans())


class RandomChooser:
    """Draws every choice from a seeded `random.Random`: deterministic and fast."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self._random.randrange(len(options))]

    def boolean(self) -> bool:
        return self._random.random() < 0.5


def _one_in(chooser: Chooser, n: int) -> bool:
    """True with probability 1/n (and False when shrinking)."""
    return chooser.integer(0, n - 1) == n - 1


# ---------------------------------------------------------------------------
# Types.


def draw_tensor_type(
    chooser: Chooser,
    *,
    dtypes: Sequence[str] = DTYPE_NAMES,
    max_rank: int = 2,
    max_dim: int = 3,
    unknown_dims: bool = True,
) -> TensorType:
    """A tensor type of one of `dtypes`, rank up to `max_rank`, dims up to `max_dim` or `?`."""
    dtype = chooser.choice(dtypes)
    rank = chooser.integer(0, max_rank)
    dims = [
        None if unknown_dims and _one_in(chooser, 4) else chooser.integer(0, max_dim)
        for _ in range(rank)
    ]
    return TensorType(dtype, dims)


def draw_struct_type(
    chooser: Chooser, element: Callable[[], Type], max_size: int = 3
) -> StructType:
    """A struct of `element()` types: unnamed, named, or a mix; possibly empty."""
    size = chooser.integer(0, max_size)
    naming = chooser.choice(("none", "all", "some"))
    names = list(FIELD_NAMES)
    items: list[tuple[str | None, Type]] = []
    for _ in range(size):
        named = naming == "all" or (naming == "some" and chooser.boolean())
        name = None
        if named:
            name = chooser.choice(names)
            names.remove(name)
        items.append((name, element()))
    return StructType(items)


def draw_sequence_element_type(chooser: Chooser, depth: int = 2) -> Type:
    """A type a sequence can hold: a tensor or a (nested) struct of tensors."""
    if depth <= 1 or not _one_in(chooser, 3):
        return draw_tensor_type(chooser)
    return draw_struct_type(chooser, lambda: draw_sequence_element_type(chooser, depth - 1))


def draw_unplaced_value_type(chooser: Chooser, depth: int = 2) -> Type:
    """A type a federated value can hold: tensors, structs and sequences, no functions."""
    kind = chooser.choice(("tensor", "struct", "sequence")) if depth > 1 else "tensor"
    if kind == "tensor":
        return draw_tensor_type(chooser)
    if kind == "struct":
        return draw_struct_type(chooser, lambda: draw_unplaced_value_type(chooser, depth - 1))
    return SequenceType(draw_sequence_element_type(chooser, depth - 1))


def draw_federated_type(chooser: Chooser, depth: int = 2) -> FederatedType:
    """A value at SERVER, at CLIENTS one a client, or at CLIENTS all equal."""
    member = draw_unplaced_value_type(chooser, max(depth - 1, 1))
    where = chooser.choice(("clients", "server", "clients_all_equal"))
    if where == "server":
        return FederatedType(member, SERVER)
    return FederatedType(member, CLIENTS, all_equal=where == "clients_all_equal")


def draw_type(chooser: Chooser, depth: int = 3, *, placement: bool = True) -> Type:
    """Any valid type, respecting the nesting rules of DESIGN §3 (`placement=False`: no
    `placement` at the top, as inside a struct)."""
    kinds = ("tensor", "struct", "sequence", "function", "federated", "placement")
    if depth <= 1:
        kinds = ("tensor", "placement")
    kind = chooser.choice(kinds if placement else kinds[:-1])
    if kind == "tensor":
        return draw_tensor_type(chooser)
    if kind == "struct":
        return draw_struct_type(chooser, lambda: draw_type(chooser, depth - 1, placement=False))
    if kind == "sequence":
        return SequenceType(draw_sequence_element_type(chooser, depth - 1))
    if kind == "function":
        parameter = None if _one_in(chooser, 4) else draw_type(chooser, depth - 1)
        return FunctionType(parameter, draw_type(chooser, depth - 1))
    if kind == "federated":
        return draw_federated_type(chooser, depth)
    return PlacementType()


def narrower(chooser: Chooser, t: Type) -> Type:
    """A type assignable to `t`: unknown dims made concrete, `{T}@CLIENTS` made all-equal."""
    if isinstance(t, TensorType):
        return TensorType(
            t.dtype,
            [chooser.integer(0, 3) if d is None and chooser.boolean() else d for d in t.shape],
        )
    if isinstance(t, StructType):
        return StructType([(n, narrower(chooser, e)) for n, e in t.elements])
    if isinstance(t, SequenceType):
        return SequenceType(narrower(chooser, t.element))
    if isinstance(t, FederatedType):
        all_equal = t.all_equal or (t.placement is CLIENTS and _one_in(chooser, 3))
        return FederatedType(narrower(chooser, t.member), t.placement, all_equal=all_equal)
    return t


def wider(chooser: Chooser, t: Type) -> Type:
    """A type that accepts `t`: dims made unknown, struct names dropped, all-equal dropped."""
    if isinstance(t, TensorType):
        return TensorType(t.dtype, [None if _one_in(chooser, 3) else d for d in t.shape])
    if isinstance(t, StructType):
        drop = _one_in(chooser, 4)
        return StructType([(None if drop else n, wider(chooser, e)) for n, e in t.elements])
    if isinstance(t, SequenceType):
        return SequenceType(wider(chooser, t.element))
    if isinstance(t, FederatedType):
        all_equal = t.all_equal and not (t.placement is CLIENTS and _one_in(chooser, 3))
        return FederatedType(wider(chooser, t.member), t.placement, all_equal=all_equal)
    return t


def has_leaf_kinds(t: Type, kinds: str) -> bool:
    """Whether `t` is a struct of tensors whose dtypes are all of NumPy `kinds` (e.g. "iuf")."""
    for leaf in walk_types(t):
        if isinstance(leaf, StructType):
            continue
        if not isinstance(leaf, TensorType) or leaf.dtype.kind not in kinds:
            return False
    return True


def is_unplaced_value(t: Type) -> bool:
    """Whether `t` holds only tensors, structs and sequences (no placement, placed value or
    function)."""
    return not any(
        isinstance(inner, (FederatedType, FunctionType, PlacementType)) for inner in walk_types(t)
    )


def draw_array(chooser: Chooser, t: TensorType) -> np.ndarray:
    """A concrete array of tensor type `t` (unknown dims made concrete), from `LITERAL_POOLS`."""
    shape = tuple(chooser.integer(0, 3) if d is None else d for d in t.shape)
    pool = LITERAL_POOLS[t.dtype.kind]
    count = int(np.prod(shape, dtype=np.int64))
    values = [pool[0] if _one_in(chooser, 2) else chooser.choice(pool) for _ in range(count)]
    return np.array(values, dtype=t.dtype).reshape(shape)


# ---------------------------------------------------------------------------
# Local graphs.


def _shape_attribute(chooser: Chooser, first: TensorType) -> tuple[int, ...]:
    known = tuple(d if d is not None else 1 for d in first.shape)
    size = int(np.prod(known, dtype=np.int64))
    return chooser.choice((known, (size,), known[::-1], (1, *known), (-1,), ()))


def _axes_attribute(chooser: Chooser, first: TensorType) -> tuple[int, ...] | None:
    axes = [a for a in range(first.rank) if chooser.boolean()]
    return None if not axes and chooser.boolean() else tuple(axes)


def _ints_attribute(chooser: Chooser, first: TensorType) -> tuple[int, ...]:
    # E.g. slice bounds: mostly one per dim of the input.
    length = chooser.integer(0, 2) if _one_in(chooser, 3) else first.rank
    return tuple(chooser.integer(0, 2) for _ in range(length))


# Plausible values per attribute kind, given the op's first input (the shape rule has the
# last word). A kind missing here makes the generator skip primitives that require it.
ATTRIBUTE_VALUES: dict[str, Callable[[Chooser, TensorType], Any]] = {
    "int": lambda chooser, first: chooser.integer(-1, 2),
    "ints": _ints_attribute,
    "axes": _axes_attribute,
    "float": lambda chooser, first: chooser.choice((0.0, 1.0, 0.5, -2.0)),
    "bool": lambda chooser, first: chooser.boolean(),
    "dtype": lambda chooser, first: chooser.choice(DTYPE_NAMES),
    "tensor": lambda chooser, first: draw_array(
        chooser, draw_tensor_type(chooser, unknown_dims=False)
    ),
    "shape": _shape_attribute,
}


class GraphBuilder:
    """Builds random well-typed local graphs from whatever `PRIMITIVES` holds."""

    def __init__(self, chooser: Chooser, max_ops: int = 5, attempts: int = 4) -> None:
        self.chooser = chooser
        self.max_ops = max_ops
        self.attempts = attempts

    def build(self, parameter_type: Type | None, result_type: Type | None = None) -> Graph | None:
        """A graph taking `parameter_type`, of `result_type` if given; None if it cannot be made."""
        chooser = self.chooser
        leaves = [] if parameter_type is None else tensor_leaves(parameter_type)
        value_types: list[TensorType] = list(leaves)
        ops: list[Op] = []
        for _ in range(chooser.integer(0, self.max_ops)):
            # Fresh constants widen the input types on offer (e.g. integer seeds, floats).
            if _one_in(chooser, 4):
                op = self._constant_op(draw_tensor_type(chooser, unknown_dims=False), value_types)
            else:
                op = self._random_op(value_types)
            if op is not None:
                ops.append(op)
                value_types.append(op.result_type)
        if result_type is None:
            result_type, outputs = self._random_outputs(value_types)
        else:
            outputs = []
            for leaf in tensor_leaves(result_type):
                output = self._output_for(leaf, value_types, ops)
                if output is None:
                    return None
                outputs.append(output)
        return Graph(parameter_type, ops, outputs, result_type)

    def _random_op(self, value_types: list[TensorType]) -> Op | None:
        names = sorted(primitives.PRIMITIVES)
        if not names:
            return None
        for _ in range(self.attempts):
            primitive = primitives.PRIMITIVES[self.chooser.choice(names)]
            # Try each distinct input type as the first input, from a random start, so ops
            # that take only some dtypes (sqrt, logical_and, seeds) still find their inputs.
            for first in self._first_input_candidates(value_types):
                inputs = self._inputs(primitive, value_types, first)
                op = self._typed_op(primitive, inputs, value_types)
                if op is not None:
                    return op
        return None

    def _first_input_candidates(self, value_types: list[TensorType]) -> list[int | None]:
        if not value_types:
            return [None]
        by_type = list({t: i for i, t in enumerate(value_types)}.values())
        start = self.chooser.integer(0, len(by_type) - 1)
        return by_type[start:] + by_type[:start]

    def _inputs(
        self, primitive: primitives.Primitive, value_types: list[TensorType], first: int | None
    ) -> list[int]:
        count = primitive.num_inputs
        if count is None:
            count = self.chooser.integer(1, 3)
        if count == 0 or first is None:
            return []
        alike = [i for i, t in enumerate(value_types) if t == value_types[first]]
        inputs = [first]
        for _ in range(count - 1):
            pool = alike if not _one_in(self.chooser, 3) else range(len(value_types))
            inputs.append(self.chooser.choice(list(pool)))
        return inputs

    def _typed_op(self, primitive, inputs, value_types) -> Op | None:
        input_types = [value_types[i] for i in inputs]
        attributes = {}
        for name, attribute in sorted(primitive.attributes.items()):
            if attribute.default is not primitives.REQUIRED and self.chooser.boolean():
                continue
            make = ATTRIBUTE_VALUES.get(attribute.kind)
            if make is None:
                return None
            first = input_types[0] if input_types else TensorType("float32")
            attributes[name] = make(self.chooser, first)
        return self._checked_op(primitive.name, inputs, attributes, value_types)

    @staticmethod
    def _checked_op(name, inputs, attributes, value_types) -> Op | None:
        try:
            # The draft's canonical attributes are what the graph will check the op with.
            draft = Op(name, inputs, attributes, TensorType("float32"))
            result = primitives.infer_result_type(
                name, [value_types[i] for i in inputs], draft.attrs, where=f"%{len(value_types)}"
            )
        except FederatedTypeError:
            return None
        return Op(name, inputs, attributes, result)

    def _random_outputs(self, value_types: list[TensorType]) -> tuple[Type, list[int]]:
        if not value_types:
            return StructType([]), []
        count = self.chooser.integer(1, 2)
        outputs = [self.chooser.integer(0, len(value_types) - 1) for _ in range(count)]
        types = [wider(self.chooser, value_types[o]) for o in outputs]
        if count == 1 and self.chooser.boolean():
            return types[0], outputs
        return StructType(types), outputs

    def _output_for(self, leaf: TensorType, value_types: list[TensorType], ops: list[Op]):
        fitting = [i for i, t in enumerate(value_types) if is_assignable_from(leaf, t)]
        if fitting and not _one_in(self.chooser, 4):
            return self.chooser.choice(fitting)
        constant = self._constant_op(leaf, value_types)
        if constant is not None:
            ops.append(constant)
            value_types.append(constant.result_type)
            return len(value_types) - 1
        return self.chooser.choice(fitting) if fitting else None

    def _constant_op(self, leaf: TensorType, value_types: list[TensorType]) -> Op | None:
        """An op of no input that makes a constant of type `leaf`, if the registry has one."""
        for name in sorted(primitives.PRIMITIVES):
            primitive = primitives.PRIMITIVES[name]
            required = [
                (n, a) for n, a in primitive.attributes.items() if a.default is primitives.REQUIRED
            ]
            if primitive.num_inputs != 0 or [a.kind for _, a in required] != ["tensor"]:
                continue
            value = draw_array(self.chooser, leaf)
            op = self._checked_op(name, [], {required[0][0]: value}, value_types)
            if op is not None and is_assignable_from(leaf, op.result_type):
                return op
        return None


# ---------------------------------------------------------------------------
# Programs.

Scope = Mapping[str, Type]


def _scope_paths(scope: Scope, max_depth: int = 3):
    """(name, selection indices, type) for every value reachable from `scope` by selections."""
    for name, t in scope.items():
        work: list[tuple[tuple[int, ...], Type]] = [((), t)]
        while work:
            path, current = work.pop()
            yield name, path, current
            if isinstance(current, StructType) and len(path) < max_depth:
                work.extend(((*path, i), e) for i, e in enumerate(current))


def _recipe_broadcast(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    if isinstance(t, FederatedType) and t.placement is CLIENTS and t.all_equal:
        return FederatedType(t.member, SERVER)
    return None


def _recipe_map(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    if not (isinstance(t, FederatedType) and t.placement is CLIENTS):
        return None
    source = b.member_type(scope, CLIENTS)
    value = FederatedType(source, CLIENTS, all_equal=t.all_equal)
    return StructType([FunctionType(wider(b.chooser, source), t.member), value])


def _recipe_apply(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    if not (isinstance(t, FederatedType) and t.placement is SERVER):
        return None
    source = b.member_type(scope, SERVER)
    function = FunctionType(wider(b.chooser, source), t.member)
    return StructType([function, FederatedType(source, SERVER)])


def _aggregation_recipe(kinds: str) -> Callable[[ProgramBuilder, Type, Scope], Type | None]:
    def recipe(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
        placed = isinstance(t, FederatedType) and t.placement is SERVER
        if placed and has_leaf_kinds(t.member, kinds):
            return FederatedType(t.member, CLIENTS, all_equal=_one_in(b.chooser, 4))
        return None

    return recipe


def _recipe_weighted_mean(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    value = _aggregation_recipe("f")(b, t, scope)
    if value is None:
        return None
    weight = TensorType(b.chooser.choice(FLOAT_DTYPES))
    return StructType([value, FederatedType(weight, CLIENTS, all_equal=_one_in(b.chooser, 4))])


def _recipe_aggregate(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    if not (isinstance(t, FederatedType) and t.placement is SERVER):
        return None
    member = b.member_type(scope, CLIENTS)
    accumulator = b.value_type(scope)
    pair = StructType([accumulator, accumulator])
    return StructType(
        [
            FederatedType(member, CLIENTS, all_equal=_one_in(b.chooser, 4)),
            accumulator,
            FunctionType(StructType([accumulator, member]), accumulator),
            FunctionType(wider(b.chooser, pair), accumulator),
            FunctionType(wider(b.chooser, accumulator), t.member),
        ]
    )


def _bound_like(b: ProgramBuilder, member: Type) -> Type:
    """A secure-sum bound: one integer scalar, or a struct of them shaped like `member`."""
    if isinstance(member, StructType) and b.chooser.boolean():
        return StructType([_bound_like(b, e) for e in member])
    return TensorType(b.chooser.choice(INT_DTYPES))


def _recipe_secure_sum(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    value = _aggregation_recipe("iu")(b, t, scope)
    if value is None:
        return None
    return StructType([value, _bound_like(b, t.member)])


def _recipe_zip(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    if not (isinstance(t, FederatedType) and isinstance(t.member, StructType) and len(t.member)):
        return None
    flags = [t.all_equal or b.chooser.boolean() for _ in t.member]
    if not t.all_equal and all(flags):
        flags[b.chooser.integer(0, len(flags) - 1)] = False
    return StructType(
        [
            (name, FederatedType(member, t.placement, all_equal=flag))
            for (name, member), flag in zip(t.member.elements, flags, strict=True)
        ]
    )


def _recipe_value_at(placement: PlacementLiteral):
    def recipe(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
        if isinstance(t, FederatedType) and t.placement is placement and t.all_equal:
            return t.member
        return None

    return recipe


def _recipe_eval_at(placement: PlacementLiteral):
    def recipe(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
        if (
            isinstance(t, FederatedType)
            and t.placement is placement
            and t.all_equal == (placement is SERVER)
        ):
            return FunctionType(None, t.member)
        return None

    return recipe


def _recipe_sequence_map(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    if not isinstance(t, SequenceType):
        return None
    source = b.sequence_element_type(scope)
    return StructType([FunctionType(wider(b.chooser, source), t.element), SequenceType(source)])


def _recipe_sequence_reduce(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    if not is_unplaced_value(t):
        return None
    element = b.sequence_element_type(scope)
    operator = FunctionType(wider(b.chooser, StructType([t, element])), t)
    return StructType([SequenceType(element), t, operator])


def _recipe_sequence_sum(b: ProgramBuilder, t: Type, scope: Scope) -> Type | None:
    return SequenceType(t) if has_leaf_kinds(t, "iuf") else None


# For each intrinsic: given the wanted result type, the type of an argument that gives it
# (or None when no call of that intrinsic has that type). Keep one entry per intrinsic.
INTRINSIC_RECIPES: dict[str, Callable[[ProgramBuilder, Type, Scope], Type | None]] = {
    "federated_broadcast": _recipe_broadcast,
    "federated_map": _recipe_map,
    "federated_apply": _recipe_apply,
    "federated_sum": _aggregation_recipe("iuf"),
    "federated_mean": _aggregation_recipe("f"),
    "federated_weighted_mean": _recipe_weighted_mean,
    "federated_min": _aggregation_recipe("iuf"),
    "federated_max": _aggregation_recipe("iuf"),
    "federated_aggregate": _recipe_aggregate,
    "federated_secure_sum": _recipe_secure_sum,
    "federated_secure_sum_bitwidth": _recipe_secure_sum,
    "federated_zip": _recipe_zip,
    "federated_value_at_clients": _recipe_value_at(CLIENTS),
    "federated_value_at_server": _recipe_value_at(SERVER),
    "federated_eval_at_clients": _recipe_eval_at(CLIENTS),
    "federated_eval_at_server": _recipe_eval_at(SERVER),
    "sequence_map": _recipe_sequence_map,
    "sequence_reduce": _recipe_sequence_reduce,
    "sequence_sum": _recipe_sequence_sum,
}


class ProgramBuilder:
    """Builds closed, well-typed programs type-directed: `expression(t, scope, depth)`."""

    def __init__(
        self, chooser: Chooser, *, max_depth: int = 3, max_nodes: int = 40, max_ops: int = 4
    ) -> None:
        self.chooser = chooser
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.graphs = GraphBuilder(chooser, max_ops=max_ops)
        self.nodes = 0
        # Inside a function of unplaced type (what federated_map and friends run on one
        # placement): no federated values, and built closed, as TFF's tf_computations.
        self.local = False

    def _starts_local_function(self, t: Type) -> bool:
        return not self.local and isinstance(t, FunctionType) and not contains_federated(t)

    @contextlib.contextmanager
    def _local_context(self) -> Iterator[None]:
        outer, self.local = self.local, True
        try:
            yield
        finally:
            self.local = outer

    def build(self, t: Type, scope: Scope | None = None) -> BuildingBlock:
        """A program of type `t` whose free names are bound in `scope`, `max_depth` deep."""
        return self.expression(t, scope or {}, self.max_depth)

    # -- auxiliary types, preferring what the scope already holds, so programs use their inputs

    def value_type(self, scope: Scope) -> Type:
        """An unplaced value type, often one a name in scope holds or places."""
        found = [
            t.member if isinstance(t, FederatedType) else t
            for _, _, t in _scope_paths(scope)
            if isinstance(t, (FederatedType, TensorType, SequenceType))
        ]
        if found and not _one_in(self.chooser, 3):
            return self.chooser.choice(found)
        return draw_unplaced_value_type(self.chooser, 2)

    def member_type(self, scope: Scope, placement: PlacementLiteral) -> Type:
        """A member type, often one a name in scope holds at `placement`."""
        found = [
            t.member
            for _, _, t in _scope_paths(scope)
            if isinstance(t, FederatedType) and t.placement is placement
        ]
        if found and not _one_in(self.chooser, 4):
            return self.chooser.choice(found)
        return draw_unplaced_value_type(self.chooser, 2)

    def sequence_element_type(self, scope: Scope) -> Type:
        """A sequence element type, often that of a sequence in scope."""
        found = []
        for _, _, t in _scope_paths(scope):
            if isinstance(t, FederatedType):
                t = t.member
            if isinstance(t, SequenceType):
                found.append(t.element)
        if found and not _one_in(self.chooser, 4):
            return self.chooser.choice(found)
        return draw_sequence_element_type(self.chooser, 2)

    # -- the type-directed generator

    def expression(self, t: Type, scope: Scope, depth: int) -> BuildingBlock:
        """A node of type exactly `t` whose free names are all bound in `scope` at their types."""
        if self._starts_local_function(t):
            with self._local_context():
                return self.expression(t, {}, depth)
        if self.local and contains_federated(t):
            raise AssertionError(f"generator bug: federated type {t} inside a local function")
        self.nodes += 1
        node = None
        if depth > 0 and self.nodes <= self.max_nodes and _one_in(self.chooser, 3):
            # Prefer what the scope holds, so programs use their parameters and locals.
            node = self._reference(t, scope) or self._selection_from_scope(t, scope)
        if node is None and depth > 0 and self.nodes <= self.max_nodes:
            producers = self._producers(t, scope, depth)
            while node is None and producers:
                node = producers.pop(self.chooser.integer(0, len(producers) - 1))()
        if node is None:
            node = self.smallest(t, scope)
        if node.type_signature != t:
            raise AssertionError(f"generator bug: wanted {t}, built {node.type_signature}")
        return node

    def _producers(self, t: Type, scope: Scope, depth: int) -> list[Callable[[], Any]]:
        inner = depth - 1
        producers: list[Callable[[], Any]] = [
            lambda: self._reference(t, scope),
            lambda: self._selection_from_scope(t, scope),
        ]
        if isinstance(t, TensorType) and t.is_fully_defined():
            producers.append(lambda: Literal(draw_array(self.chooser, t)))
        if isinstance(t, StructType):
            producers.append(
                lambda: Struct([(n, self.expression(e, scope, inner)) for n, e in t.elements])
            )
        if isinstance(t, SequenceType) or (
            isinstance(t, FederatedType) and isinstance(t.member, SequenceType)
        ):
            producers.append(lambda: Data(self.chooser.choice(DATA_URIS), t))
        if isinstance(t, FunctionType):
            producers.append(lambda: self._lambda(t, scope, inner))
            producers.append(lambda: self._local_graph_value(t))
            producers.append(lambda: self._intrinsic_value(t))
        if isinstance(t, PlacementType):
            producers.append(lambda: Placement(self.chooser.choice((CLIENTS, SERVER))))
        if struct_of_leaves(t):
            producers.append(lambda: self._local_graph_call(t, scope, inner))
        if isinstance(t, FederatedType):
            producers.append(lambda: self._placed_projection(t, scope, inner))
            producers.append(lambda: self._zip_of_projections(t, scope, inner))
        producers.extend(
            lambda uri=uri, recipe=recipe: self._intrinsic_call(uri, recipe, t, scope, inner)
            for uri, recipe in INTRINSIC_RECIPES.items()
        )
        producers.extend(
            [
                lambda: self._call_scope_function(t, scope, inner),
                lambda: self._block(t, scope, inner),
                lambda: self._called_lambda(t, scope, inner),
                lambda: self._selection_from_struct(t, scope, inner),
            ]
        )
        return producers

    def smallest(self, t: Type, scope: Scope) -> BuildingBlock:
        """A small node of type `t`: a reference if one fits, else the fewest constructions."""
        if self._starts_local_function(t):
            with self._local_context():
                return self.smallest(t, {})
        reference = self._reference(t, scope)
        if reference is not None:
            return reference
        if isinstance(t, TensorType):
            if t.is_fully_defined():
                return Literal(draw_array(self.chooser, t))
            # An argument of a concrete shape passed where the unknown one is expected.
            concrete = Literal(draw_array(self.chooser, t))
            name = self.chooser.choice(VARIABLE_NAMES)
            return Call(Lambda(name, t, Reference(name, t)), concrete)
        if isinstance(t, StructType):
            return Struct([(n, self.smallest(e, scope)) for n, e in t.elements])
        if isinstance(t, SequenceType):
            return Data(DATA_URIS[0], t)
        if isinstance(t, FunctionType):
            if t.parameter is None:
                return Lambda(None, None, self.smallest(t.result, scope))
            name = self.chooser.choice(VARIABLE_NAMES)
            inner = {**scope, name: t.parameter}
            return Lambda(name, t.parameter, self.smallest(t.result, inner))
        if isinstance(t, FederatedType):
            mapped = self._mapped_from_scope(t, scope) if self.chooser.boolean() else None
            if mapped is not None:
                return mapped
            if t.placement is SERVER:
                return call_intrinsic("federated_value_at_server", self.smallest(t.member, scope))
            if t.all_equal:
                return call_intrinsic("federated_value_at_clients", self.smallest(t.member, scope))
            if isinstance(t.member, SequenceType):
                return Data(DATA_URIS[0], t)
            function = self.smallest(FunctionType(None, t.member), scope)
            return call_intrinsic("federated_eval_at_clients", function)
        if isinstance(t, PlacementType):
            return Placement(CLIENTS)
        raise AssertionError(f"no construction for type {t}")

    def _mapped_from_scope(self, t: FederatedType, scope: Scope) -> BuildingBlock | None:
        """A small intrinsic call computing `t` from a placed value in scope, so that even the
        smallest programs use their federated inputs: `federated_map` at CLIENTS,
        `federated_apply` at SERVER, or `federated_aggregate` from CLIENTS to SERVER."""
        sources = {CLIENTS: [], SERVER: []}
        for name, path, found in _scope_paths(scope):
            # federated_map keeps all-equal-ness, so a map source must match it.
            if isinstance(found, FederatedType) and (
                found.placement is not t.placement or found.all_equal == t.all_equal
            ):
                sources[found.placement].append((name, path, found))
        if sources[t.placement]:
            value, member = self._placed_value(sources[t.placement], scope)
            function = self.smallest(FunctionType(member, t.member), scope)
            uri = "federated_apply" if t.placement is SERVER else "federated_map"
            return call_intrinsic(uri, Struct([function, value]))
        if t.placement is SERVER and sources[CLIENTS]:
            value, member = self._placed_value(sources[CLIENTS], scope)
            accumulator = t.member
            functions = (
                FunctionType(StructType([accumulator, member]), accumulator),
                FunctionType(StructType([accumulator, accumulator]), accumulator),
                FunctionType(accumulator, t.member),
            )
            parts = [value, self.smallest(accumulator, scope)]
            parts.extend(self.smallest(f, scope) for f in functions)
            return call_intrinsic("federated_aggregate", Struct(parts))
        return None

    def _placed_value(self, sources, scope: Scope) -> tuple[BuildingBlock, Type]:
        name, path, found = self.chooser.choice(sources)
        value: BuildingBlock = Reference(name, scope[name])
        for index in path:
            value = Selection(value, index)
        return value, found.member

    # -- producers: each returns a node of type t, or None when it does not apply

    def _reference(self, t: Type, scope: Scope) -> BuildingBlock | None:
        names = [name for name, bound in scope.items() if bound == t]
        return Reference(self.chooser.choice(names), t) if names else None

    def _selection_from_scope(self, t: Type, scope: Scope) -> BuildingBlock | None:
        paths = [(n, p) for n, p, found in _scope_paths(scope) if p and found == t]
        if not paths:
            return None
        name, path = self.chooser.choice(paths)
        node: BuildingBlock = Reference(name, scope[name])
        for index in path:
            node = Selection(node, index)
        return node

    def _lambda(self, t: FunctionType, scope: Scope, depth: int) -> BuildingBlock:
        if t.parameter is None:
            return Lambda(None, None, self.expression(t.result, scope, depth))
        name = self.chooser.choice(VARIABLE_NAMES)
        body = self.expression(t.result, {**scope, name: t.parameter}, depth)
        return Lambda(name, t.parameter, body)

    def _local_graph_value(self, t: FunctionType) -> BuildingBlock | None:
        if t.parameter is not None and not struct_of_leaves(t.parameter):
            return None
        if not struct_of_leaves(t.result):
            return None
        graph = self.graphs.build(t.parameter, t.result)
        return None if graph is None else LocalGraph(graph)

    def _local_graph_call(self, t: Type, scope: Scope, depth: int) -> BuildingBlock | None:
        parameter = None
        if not _one_in(self.chooser, 4):
            parameter = self._graph_parameter_type(scope)
        graph = self.graphs.build(parameter, t)
        if graph is None:
            return None
        if parameter is None:
            return Call(LocalGraph(graph))
        argument = self.expression(narrower(self.chooser, parameter), scope, depth)
        return Call(LocalGraph(graph), argument)

    def _graph_parameter_type(self, scope: Scope) -> Type:
        found = [t for _, _, t in _scope_paths(scope) if struct_of_leaves(t)]
        if found and self.chooser.boolean():
            return self.chooser.choice(found)
        return draw_struct_type(self.chooser, lambda: draw_tensor_type(self.chooser), 2)

    def _intrinsic_value(self, t: FunctionType) -> BuildingBlock | None:
        matching = []
        for uri, definition in INTRINSICS.items():
            try:
                if definition.result_type(t.parameter) == t.result:
                    matching.append(uri)
            except FederatedTypeError:
                continue
        return Intrinsic(self.chooser.choice(matching), t) if matching else None

    def _intrinsic_call(self, uri, recipe, t: Type, scope: Scope, depth: int):
        argument_type = recipe(self, t, scope)
        if argument_type is None:
            return None
        return call_intrinsic(uri, self.expression(argument_type, scope, depth))

    def _call_scope_function(self, t: Type, scope: Scope, depth: int) -> BuildingBlock | None:
        functions = [
            (name, bound)
            for name, bound in scope.items()
            if isinstance(bound, FunctionType) and bound.result == t
        ]
        if not functions:
            return None
        name, bound = self.chooser.choice(functions)
        if bound.parameter is None:
            return Call(Reference(name, bound))
        argument = self.expression(narrower(self.chooser, bound.parameter), scope, depth)
        return Call(Reference(name, bound), argument)

    def _local_type(self, t: Type, scope: Scope) -> Type:
        kinds = ("value", "result", "function", "federated")
        kind = self.chooser.choice(kinds[:-1] if self.local else kinds)
        if kind == "value":
            return self.value_type(scope)
        if kind == "result":
            return t
        if kind == "function":
            return FunctionType(self.value_type(scope), t)
        placement = self.chooser.choice((CLIENTS, SERVER))
        member = self.member_type(scope, placement)
        return FederatedType(member, placement, all_equal=placement is SERVER)

    def _block(self, t: Type, scope: Scope, depth: int) -> BuildingBlock:
        inner = dict(scope)
        bindings = []
        for _ in range(self.chooser.integer(1, 2)):
            name = self.chooser.choice(VARIABLE_NAMES)
            local_type = self._local_type(t, inner)
            bindings.append((name, self.expression(local_type, inner, depth)))
            inner.pop(name, None)  # keep insertion order meaningful for choices
            inner[name] = local_type
        return Block(bindings, self.expression(t, inner, depth))

    def _called_lambda(self, t: Type, scope: Scope, depth: int) -> BuildingBlock:
        if _one_in(self.chooser, 4):
            return Call(Lambda(None, None, self.expression(t, scope, depth)))
        name = self.chooser.choice(VARIABLE_NAMES)
        parameter = self._local_type(t, scope)
        body = self.expression(t, {**scope, name: parameter}, depth)
        argument = self.expression(narrower(self.chooser, parameter), scope, depth)
        return Call(Lambda(name, parameter, body), argument)

    def _placed_projection(self, t: FederatedType, scope: Scope, depth: int) -> BuildingBlock:
        """`map(<(x -> x[i]), v>)` (apply at SERVER) of a placed struct `v` holding `t`'s
        member at i: what tracing `state["model"]` gives, often of a zip."""
        others = [draw_tensor_type(self.chooser) for _ in range(self.chooser.integer(0, 2))]
        index = self.chooser.integer(0, len(others))
        member = StructType([*others[:index], t.member, *others[index:]])
        value = self.expression(FederatedType(member, t.placement, t.all_equal), scope, depth)
        return self._project(value, index)

    def _project(self, value: BuildingBlock, index: int) -> BuildingBlock:
        member = value.type_signature.member
        name = self.chooser.choice(VARIABLE_NAMES)
        function = Lambda(name, member, Selection(Reference(name, member), index))
        uri = "federated_apply" if value.type_signature.placement is SERVER else "federated_map"
        return call_intrinsic(uri, Struct([function, value]))

    def _zip_of_projections(
        self, t: FederatedType, scope: Scope, depth: int
    ) -> BuildingBlock | None:
        """`let v=... in federated_zip(<n_0=v[0], n_1=v[1], ...>)` (each `v[i]` a projection):
        a placed struct taken apart and built again, sometimes under other names."""
        if not isinstance(t.member, StructType) or not len(t.member):
            return None
        source_member = t.member
        if self.chooser.boolean():  # the same fields under no names: not `v` itself
            source_member = StructType(list(t.member))
        source_type = FederatedType(source_member, t.placement, t.all_equal)
        name = self.chooser.choice(VARIABLE_NAMES)
        value = self.expression(source_type, scope, depth)
        reference = Reference(name, source_type)
        parts = [
            (field, self._project(reference, i)) for i, (field, _) in enumerate(t.member.elements)
        ]
        return Block([(name, value)], call_intrinsic("federated_zip", Struct(parts)))

    def _selection_from_struct(self, t: Type, scope: Scope, depth: int) -> BuildingBlock | None:
        if isinstance(t, PlacementType):
            return None
        others = [draw_tensor_type(self.chooser) for _ in range(self.chooser.integer(0, 2))]
        index = self.chooser.integer(0, len(others))
        types = [*others[:index], t, *others[index:]]
        elements = [
            self.expression(e, scope, depth) if i == index else self.smallest(e, scope)
            for i, e in enumerate(types)
        ]
        return Selection(Struct(elements), index)


# ---------------------------------------------------------------------------
# Whole programs, and the Hypothesis strategies.


def build_program(
    chooser: Chooser,
    type_signature: Any = None,
    *,
    scope: Mapping[str, Any] | None = None,
    max_depth: int = 3,
    max_nodes: int = 40,
) -> BuildingBlock:
    """A well-typed program of `type_signature` (random if None), free names only from `scope`."""
    builder = ProgramBuilder(chooser, max_depth=max_depth, max_nodes=max_nodes)
    t = draw_type(chooser, 3) if type_signature is None else to_type(type_signature)
    return builder.build(t, {name: to_type(v) for name, v in (scope or {}).items()})


def draw_federated_signature(chooser: Chooser) -> FunctionType:
    """The type of a realistic federated computation: placed parameter(s) to placed result(s)."""
    state = FederatedType(draw_unplaced_value_type(chooser, 2), SERVER)
    data = FederatedType(SequenceType(draw_sequence_element_type(chooser, 2)), CLIENTS, False)
    parameter = chooser.choice(
        (
            FederatedType(draw_tensor_type(chooser), CLIENTS, all_equal=False),
            StructType([("state", state), ("data", data)]),
            state,
            data,
        )
    )
    metrics = FederatedType(draw_tensor_type(chooser), SERVER)
    result = chooser.choice(
        (
            state,
            StructType([state, metrics]),
            FederatedType(draw_unplaced_value_type(chooser, 2), CLIENTS, all_equal=False),
        )
    )
    return FunctionType(parameter, result)


def build_federated_program(chooser: Chooser, *, max_depth: int = 4, max_nodes: int = 50) -> Lambda:
    """A lambda of a federated parameter and a federated result: the shape of a computation."""
    t = draw_federated_signature(chooser)
    builder = ProgramBuilder(chooser, max_depth=max_depth, max_nodes=max_nodes)
    name = chooser.choice(VARIABLE_NAMES)
    return Lambda(name, t.parameter, builder.build(t.result, {name: t.parameter}))


def build_local_graph(
    chooser: Chooser,
    parameter_type: Any = "random",
    result_type: Any = None,
    *,
    max_ops: int = 6,
) -> Graph:
    """A random well-typed local graph; `parameter_type="random"` draws one (or none)."""
    if isinstance(parameter_type, str) and parameter_type == "random":
        parameter_type = None
        if not _one_in(chooser, 5):
            parameter_type = draw_struct_type(chooser, lambda: draw_tensor_type(chooser), 3)
            if len(parameter_type) == 1 and chooser.boolean():
                parameter_type = parameter_type[0]
    elif parameter_type is not None:
        parameter_type = to_type(parameter_type)
    result = None if result_type is None else to_type(result_type)
    graph = GraphBuilder(chooser, max_ops=max_ops).build(parameter_type, result)
    if graph is None:
        raise ValueError(f"cannot build a local graph of result {result} from the registry")
    return graph


@st.composite
def _from_chooser(draw, make: Callable[[Chooser], Any]) -> Any:
    return make(HypothesisChooser(draw))


def tensor_types(**options: Any) -> st.SearchStrategy[TensorType]:
    """Tensor types of every dtype; see `draw_tensor_type` for the options."""
    return _from_chooser(lambda c: draw_tensor_type(c, **options))


def unplaced_value_types(depth: int = 3) -> st.SearchStrategy[Type]:
    """Types a federated value can hold: tensors, structs, sequences."""
    return _from_chooser(lambda c: draw_unplaced_value_type(c, depth))


def federated_types(depth: int = 3) -> st.SearchStrategy[FederatedType]:
    """Federated types at CLIENTS (one a client or all equal) and SERVER."""
    return _from_chooser(lambda c: draw_federated_type(c, depth))


def types(depth: int = 4) -> st.SearchStrategy[Type]:
    """Valid types of every kind, nesting rules respected."""
    return _from_chooser(lambda c: draw_type(c, depth))


def local_graphs(
    parameter_type: Any = "random", result_type: Any = None, *, max_ops: int = 6
) -> st.SearchStrategy[Graph]:
    """Random well-typed local graphs over the registered primitives, constants included."""
    return _from_chooser(
        lambda c: build_local_graph(c, parameter_type, result_type, max_ops=max_ops)
    )


def programs(
    type_signature: Any = None,
    *,
    scope: Mapping[str, Any] | None = None,
    max_depth: int = 3,
    max_nodes: int = 40,
) -> st.SearchStrategy[BuildingBlock]:
    """Well-typed programs of `type_signature` (random if None); closed unless `scope` names
    free variables (name -> type) they may use."""
    return _from_chooser(
        lambda c: build_program(
            c, type_signature, scope=scope, max_depth=max_depth, max_nodes=max_nodes
        )
    )


def closed_programs(max_depth: int = 3, max_nodes: int = 40) -> st.SearchStrategy[BuildingBlock]:
    """Closed well-typed programs of random types."""
    return programs(max_depth=max_depth, max_nodes=max_nodes)


def federated_programs(max_depth: int = 4, max_nodes: int = 50) -> st.SearchStrategy[Lambda]:
    """Lambdas whose parameter and result are placed: the shape of a real computation."""
    return _from_chooser(
        lambda c: build_federated_program(c, max_depth=max_depth, max_nodes=max_nodes)
    )


def _build_envelope(chooser: Chooser) -> Program:
    next_round = build_federated_program(chooser, max_depth=3, max_nodes=30)
    computations = [("next", next_round)]
    parameter = next_round.parameter_type
    state = parameter[0] if isinstance(parameter, StructType) else parameter
    # An iterative process: `initialize` makes the server state that `next` takes.
    if isinstance(state, FederatedType) and state.placement is SERVER and chooser.boolean():
        initialize = build_program(chooser, FunctionType(None, state), max_depth=2, max_nodes=15)
        computations.insert(0, ("initialize", initialize))
    metadata = {"fedcc_version": "0.1.0"} if chooser.boolean() else {}
    if chooser.boolean():
        metadata["passes"] = "canonicalize,merge_chained_maps"
    return Program(computations, metadata)


def program_envelopes() -> st.SearchStrategy[Program]:
    """`Program`s as a `.pb` file holds them: `next`, maybe `initialize`, and metadata."""
    return _from_chooser(_build_envelope)


def sample_programs(
    count: int, seed: int = 0, *, federated: bool = False, **options: Any
) -> list[BuildingBlock]:
    """`count` programs drawn deterministically from `seed` (no Hypothesis, no shrinking)."""
    chooser = RandomChooser(seed)
    if federated:
        return [build_federated_program(chooser, **options) for _ in range(count)]
    return [build_program(chooser, **options) for _ in range(count)]


def sample_local_graphs(count: int, seed: int = 0, **options: Any) -> list[Graph]:
    """`count` local graphs drawn deterministically from `seed`."""
    chooser = RandomChooser(seed)
    return [build_local_graph(chooser, **options) for _ in range(count)]
