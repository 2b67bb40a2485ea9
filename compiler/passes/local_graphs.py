"""Passes on local op graphs: local-dce, local-cse, fold-constants, simplify-algebra.

Each pass is a pure function `Graph -> Graph` that keeps the graph's function
type and every output bit for bit, on every input; registered, it rewrites
every `LocalGraph` of a computation. "Bit for bit" is stricter
than "the same values", in two ways that decide which rewrites are allowed:

- **Memory layout.** NumPy's float reductions (and matmul's BLAS or non-BLAS
  path) add in an order that depends on the input's memory layout: pairwise
  summation runs along the innermost memory axis, and gap-free axes coalesce.
  So replacing a value by another holding the same numbers but laid out
  differently can change the bits of a later `reduce_sum`. A rewrite here
  replaces a value only by one with the same layout: an op that makes a fresh
  array (in NumPy's "K" order, i.e. laid out like its input) is dropped only
  when its input is known to be gap-free (`_Facts.gap_free`), and folded
  constants must come out C-contiguous, as the frozen constant will be.
- **Signalling NaNs.** IEEE arithmetic quiets a signalling NaN (`x * 1` sets
  its quiet bit: checked on this machine for float16/32/64), so `x * 1 -> x`
  is exact only when `x` cannot hold one (`_Facts.quiet`). Moving bits
  (negation, `where`, `minimum`, casts to the same dtype) keeps them.

`x + 0.0 -> x` is never done for floats (`-0.0 + 0.0` is `+0.0`); `x + -0.0`
is exact and is done, under the two conditions above.

Dropping dead ops (and folding) may remove an op that would have failed at
run time (an index out of range): a program that failed may then succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedcc.compiler.passes import PatternPass, register_pass
from fedcc.compiler.rewriting import RewriteContext, RewritePattern
from fedcc.ir import primitives
from fedcc.ir.building_blocks import BuildingBlock, LocalGraph
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.types import TensorType

# Folding stops at results of more elements than this: a folded constant is stored in
# the program, and keyed randomness or a broadcast could otherwise blow it up.
MAX_FOLDED_ELEMENTS = 1024
# Folding evaluates the op at compile time; inputs larger than this are left to run time.
MAX_FOLDED_INPUT_ELEMENTS = 1 << 16

# ---------------------------------------------------------------------------
# What each primitive's result array is like, for the layout and NaN facts.
# tests/test_passes_local.py checks every registered primitive is in exactly one of
# the layout tables, so a new primitive needs a decision here.

# A new array without gaps, laid out like the inputs ("K" order) or C-ordered.
FRESH_RESULTS = frozenset(
    {
        "add", "subtract", "multiply", "divide", "floor_divide", "mod", "power",
        "maximum", "minimum", "equal", "not_equal", "less", "less_equal", "greater",
        "greater_equal", "logical_and", "logical_or", "logical_xor",
        "negative", "abs", "sign", "exp", "log", "log1p", "expm1", "tanh", "sqrt",
        "square", "reciprocal", "sigmoid", "floor", "ceil", "round", "sin", "cos",
        "logical_not", "reduce_sum", "reduce_prod", "reduce_mean", "reduce_max",
        "reduce_min", "argmax", "argmin", "where", "clip", "cast", "zeros_like",
        "ones_like", "matmul", "concatenate", "take", "constant",
        "one_hot", "random_uniform", "random_normal", "random_fold_in",
    }
)  # fmt: skip
# A view of input 0 that has gaps exactly when the input has (or, for sum_to_like, input 0
# itself when the shapes agree and a fresh array when they do not).
VIEWS_OF_INPUT = frozenset(
    {"reshape", "reshape_like", "transpose", "expand_dims", "squeeze", "stop_gradient",
     "sum_to_like"}
)  # fmt: skip
# A view that may have gaps or zero strides even when the input has none.
GAPPY_VIEWS = frozenset({"slice", "broadcast_to", "broadcast_like"})

# Float results of these are never signalling NaNs, whatever the inputs: basic IEEE
# arithmetic (which must quiet a NaN) and ops that make no NaN at all. Library functions
# (exp, expm1, ...) are left out: NumPy's float64 expm1 returns a signalling NaN unchanged.
QUIETING = frozenset(
    {
        "add", "subtract", "multiply", "divide", "sqrt", "square", "reciprocal", "floor",
        "ceil", "round", "reduce_sum", "reduce_prod", "reduce_mean", "zeros_like", "ones_like",
        "one_hot", "random_uniform", "random_normal",
    }
)  # fmt: skip
# Float results of these are bits moved (or with the sign bit changed) from their float
# inputs: quiet when those are.
BIT_MOVING = frozenset(
    {
        "negative", "abs", "maximum", "minimum", "clip", "where", "cast", "reshape",
        "reshape_like", "transpose", "expand_dims", "squeeze", "slice", "broadcast_to",
        "broadcast_like", "take", "concatenate", "reduce_max", "reduce_min", "stop_gradient",
    }
)  # fmt: skip

_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def has_signalling_nan(array: np.ndarray) -> bool:
    """Whether a float array holds a signalling NaN (a NaN with its quiet bit clear)."""
    if array.dtype.kind != "f" or array.size == 0:
        return False
    bits = array.view(_BITS[array.dtype.itemsize])
    quiet_bit = 1 << (np.finfo(array.dtype).nmant - 1)
    return bool(np.any(np.isnan(array) & ((bits & bits.dtype.type(quiet_bit)) == 0)))


# ---------------------------------------------------------------------------
# Rebuilding a graph op by op.


class GraphRewriter:
    """Builds a new graph from an old one: old values map to new ones as ops are kept or replaced.

    Parameter leaves keep their numbers. Ops are appended with their inputs
    already in the new numbering, and keep their declared result types, so a
    replacement value must have exactly the type of the value it stands for.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.ops: list[Op] = []
        self.types: list[TensorType] = list(graph.parameter_leaves)
        self.producers: list[Op | None] = [None] * graph.num_parameters
        # old value number -> new value number
        self.mapping: list[int] = list(range(graph.num_parameters))
        self.changed = False  # whether any value was replaced or dropped

    def old_ops(self) -> list[tuple[int, Op]]:
        """The old graph's ops with their old result numbers, in order."""
        first = self.graph.num_parameters
        return [(first + position, op) for position, op in enumerate(self.graph.ops)]

    def inputs(self, op: Op) -> tuple[int, ...]:
        """An old op's inputs in the new numbering."""
        return tuple(self.mapping[i] for i in op.inputs)

    def emit(self, op: Op) -> int:
        """Appends `op` (inputs in the new numbering) and returns its new value number."""
        self.ops.append(op)
        self.types.append(op.result_type)
        self.producers.append(op)
        return len(self.types) - 1

    def keep(self, op: Op) -> int:
        """Re-emits an old op with its inputs renumbered; returns its new value number."""
        inputs = self.inputs(op)
        if inputs != op.inputs:
            op = Op(op.primitive, inputs, op.attrs, op.result_type)
        return self.emit(op)

    def bind(self, old_value: int, new_value: int) -> None:
        """Records that the old value `old_value` is the new value `new_value` (next in order)."""
        assert old_value == len(self.mapping)
        self.mapping.append(new_value)

    def replace(self, old_value: int, new_value: int) -> None:
        """Like `bind`, for a value that the rewrite replaced."""
        self.changed = True
        self.bind(old_value, new_value)

    def finish(self) -> Graph:
        """The new graph (the old one itself if nothing changed)."""
        outputs = [self.mapping[o] for o in self.graph.outputs]
        if not self.changed:
            return self.graph
        return Graph(self.graph.parameter_type, self.ops, outputs, self.graph.result_type)


# ---------------------------------------------------------------------------
# local-dce and local-cse.


def local_dce(graph: Graph) -> Graph:
    """Drops the ops no output needs, directly or through other ops."""
    live = set(graph.outputs)
    first = graph.num_parameters
    for position in range(len(graph.ops) - 1, -1, -1):
        if first + position in live:
            live.update(graph.ops[position].inputs)
    rewriter = GraphRewriter(graph)
    for value, op in rewriter.old_ops():
        if value in live:
            rewriter.bind(value, rewriter.keep(op))
        else:
            rewriter.replace(value, -1)  # dead: nothing refers to it
    return rewriter.finish()


def local_cse(graph: Graph) -> Graph:
    """Computes each distinct op (same primitive, inputs, attributes, type) once.

    Constants with bit-identical values are one op. Identical ops on identical
    inputs give identical arrays, layout included, so every use can share one.
    """
    rewriter = GraphRewriter(graph)
    seen: dict[Op, int] = {}
    for value, op in rewriter.old_ops():
        renumbered = Op(op.primitive, rewriter.inputs(op), op.attrs, op.result_type)
        if renumbered in seen:
            rewriter.replace(value, seen[renumbered])
        else:
            seen[renumbered] = rewriter.keep(op)
            rewriter.bind(value, seen[renumbered])
    return rewriter.finish()


# ---------------------------------------------------------------------------
# fold-constants.


def _constant_value(op: Op | None) -> np.ndarray | None:
    return op.attrs["value"] if op is not None and op.primitive == "constant" else None


def fold_constants(graph: Graph, max_elements: int = MAX_FOLDED_ELEMENTS) -> Graph:
    """Evaluates ops whose inputs are all constants, and puts their results in constant ops.

    An op is folded only when its result has at most `max_elements` elements,
    is C-contiguous (as the constant will be: a view such as a transpose is
    left alone, see the module docstring) and has exactly the op's declared
    type; an op that fails to evaluate is left to fail at run time. Keyed
    random ops with a constant seed are deterministic and fold too. The inputs
    are left in place for `local_dce`.
    """
    rewriter = GraphRewriter(graph)
    for value, op in rewriter.old_ops():
        inputs = rewriter.inputs(op)
        folded = None
        if op.primitive != "constant" and op.result_type.num_elements() is not None:
            arrays = [_constant_value(rewriter.producers[i]) for i in inputs]
            if all(a is not None for a in arrays):
                folded = _fold(op, arrays, max_elements)
        if folded is None:
            rewriter.bind(value, rewriter.keep(op))
        else:
            rewriter.replace(value, rewriter.emit(folded))
    return rewriter.finish()


def _fold(op: Op, arrays: list[np.ndarray], max_elements: int) -> Op | None:
    if op.result_type.num_elements() > max_elements:
        return None
    if sum(a.size for a in arrays) > MAX_FOLDED_INPUT_ELEMENTS:
        return None
    try:
        with np.errstate(all="ignore"):
            result = primitives.run_checked(
                primitives.PRIMITIVES[op.primitive], arrays, op.attrs, op.result_type
            )
    except FederatedTypeError:
        return None
    if not result.flags.c_contiguous or TensorType(result.dtype, result.shape) != op.result_type:
        return None
    return Op("constant", (), {"value": result}, op.result_type)


# ---------------------------------------------------------------------------
# Facts about the values of a graph being rewritten.


class _Facts:
    """Layout and NaN facts of each new value of a `GraphRewriter`, recorded in value order.

    `gap_free`: the value's array surely has no gaps and no zero strides at run
    time. Parameters are unknown (a caller may pass any view). Such an array and
    an op's fresh "K"-ordered copy of it have the same strides (size-1 axes aside).
    `quiet`: the value surely holds no signalling NaN.
    """

    def __init__(self, rewriter: GraphRewriter) -> None:
        self.rewriter = rewriter
        # Only parameters exist yet: any layout, any NaN.
        self.gap_free: list[bool] = [False] * len(rewriter.types)
        self.quiet: list[bool] = [t.dtype.kind != "f" for t in rewriter.types]

    def record(self, value: int) -> None:
        """Adds the facts of `value`, the newest value; its inputs' facts are known."""
        assert value == len(self.gap_free)
        op = self.rewriter.producers[value]
        if op.primitive in VIEWS_OF_INPUT:
            gap_free = self.gap_free[op.inputs[0]]
        else:
            gap_free = op.primitive in FRESH_RESULTS
        self.gap_free.append(gap_free)
        types = self.rewriter.types
        if types[value].dtype.kind != "f" or op.primitive in QUIETING:
            quiet = True
        elif op.primitive == "constant":
            quiet = not has_signalling_nan(op.attrs["value"])
        elif op.primitive in BIT_MOVING:
            quiet = all(self.quiet[i] for i in op.inputs if types[i].dtype.kind == "f")
        else:
            quiet = False
        self.quiet.append(quiet)


# ---------------------------------------------------------------------------
# simplify-algebra: the rules.


@dataclass(frozen=True)
class IdentityElement:
    """`primitive(x, e)` is x when the constant e is this element, for dtypes of `kinds`.

    `commutative`: `primitive(e, x)` is x too. `arithmetic`: the op is IEEE
    arithmetic on floats, so it quiets a signalling NaN of x.
    """

    primitive: str
    kinds: str
    commutative: bool
    element: Callable[[np.dtype], object]
    arithmetic: bool


def _one(dtype: np.dtype) -> object:
    return dtype.type(1)


def _additive_identity(dtype: np.dtype) -> object:
    # -0.0 + x is x for every float x (+0.0 + -0.0 would be +0.0).
    return dtype.type(-0.0) if dtype.kind == "f" else dtype.type(0)


def _zero(dtype: np.dtype) -> object:
    return dtype.type(0)


def _lowest(dtype: np.dtype) -> object:
    if dtype.kind == "f":
        return dtype.type(-np.inf)
    return False if dtype.kind == "b" else np.iinfo(dtype).min


def _highest(dtype: np.dtype) -> object:
    if dtype.kind == "f":
        return dtype.type(np.inf)
    return True if dtype.kind == "b" else np.iinfo(dtype).max


def _constant(value: bool) -> Callable[[np.dtype], object]:
    return lambda dtype: value


IDENTITY_ELEMENTS: dict[str, IdentityElement] = {
    rule.primitive: rule
    for rule in (
        IdentityElement("multiply", "iuf", True, _one, True),
        IdentityElement("divide", "f", False, _one, True),
        # For floats x // 1 is floor(x), not x.
        IdentityElement("floor_divide", "iu", False, _one, True),
        IdentityElement("add", "iuf", True, _additive_identity, True),
        IdentityElement("subtract", "iuf", False, _zero, True),
        # np.maximum and np.minimum return a NaN operand's bits unchanged.
        IdentityElement("maximum", "biuf", True, _lowest, False),
        IdentityElement("minimum", "biuf", True, _highest, False),
        IdentityElement("logical_and", "b", True, _constant(True), False),
        IdentityElement("logical_or", "b", True, _constant(False), False),
        IdentityElement("logical_xor", "b", True, _constant(False), False),
    )
}

# f(f(x)) is x: negation flips the sign bit twice, keeping NaN payloads.
INVOLUTIONS = frozenset({"negative", "logical_not"})
# f(f(x)) is f(x), bit for bit (NaN payloads included), for every x.
IDEMPOTENT = frozenset({"abs", "sign", "floor", "ceil", "round"})


def _same_shape_at_run_time(a: TensorType, b: TensorType) -> bool:
    """Whether values of the two types surely have one shape, given they have one element count.

    Equal types with at most one unknown dim: the count fixes that dim.
    """
    return a == b and a.shape.count(None) <= 1


def _is_identity_constant(op: Op | None, element: object, x_type: TensorType) -> bool:
    value = _constant_value(op)
    # One element only: a larger constant takes part in choosing the result's layout.
    if value is None or value.size != 1 or value.dtype != x_type.dtype:
        return False
    return value.tobytes() == np.full(value.shape, element, value.dtype).tobytes()


class _Simplifier:
    """Finds, for one op of the graph being rewritten, a simpler equal value or op."""

    def __init__(self, rewriter: GraphRewriter) -> None:
        self.rewriter = rewriter
        self.facts = _Facts(rewriter)

    def producer(self, value: int) -> Op | None:
        return self.rewriter.producers[value]

    def type_of(self, value: int) -> TensorType:
        return self.rewriter.types[value]

    def simplify(self, op: Op, inputs: tuple[int, ...]) -> int | Op | None:
        """A new value equal to `op`'s result, or a cheaper op computing it, or None."""
        if not inputs:
            return None  # constants
        for rule in _RULES:
            found = rule(self, op, inputs)
            if found is not None:
                return found
        return None

    def can_drop_fresh_copy(self, x: int) -> bool:
        """Whether `x` may stand for a fresh op result computed from it (same layout)."""
        return self.facts.gap_free[x]

    # --- the rules, each (op, inputs) -> value | op | None -----------------------------------

    def identity_element(self, op: Op, inputs: tuple[int, ...]) -> int | None:
        rule = IDENTITY_ELEMENTS.get(op.primitive)
        if rule is None or op.result_type.dtype.kind not in rule.kinds:
            return None
        positions = ((0, 1), (1, 0)) if rule.commutative else ((0, 1),)
        for x_position, element_position in positions:
            x, other = inputs[x_position], inputs[element_position]
            x_type = self.type_of(x)
            if x_type != op.result_type:
                continue
            element = rule.element(x_type.dtype)
            if not _is_identity_constant(self.producer(other), element, x_type):
                continue
            if rule.arithmetic and not self.facts.quiet[x]:
                continue
            if self.can_drop_fresh_copy(x):
                return x
        return None

    def involution(self, op: Op, inputs: tuple[int, ...]) -> int | None:
        inner = self.producer(inputs[0])
        if op.primitive in INVOLUTIONS and inner is not None and inner.primitive == op.primitive:
            x = inner.inputs[0]
            if self.can_drop_fresh_copy(x):
                return x
        return None

    def idempotent(self, op: Op, inputs: tuple[int, ...]) -> int | None:
        inner = self.producer(inputs[0])
        if op.primitive in IDEMPOTENT and inner is not None and inner.primitive == op.primitive:
            return inputs[0]  # a fresh array, laid out as the outer op's result would be
        return None

    def same_dtype_cast(self, op: Op, inputs: tuple[int, ...]) -> int | None:
        x = inputs[0]
        same_dtype = op.primitive == "cast" and self.type_of(x) == op.result_type
        return x if same_dtype and self.can_drop_fresh_copy(x) else None

    def no_op_view(self, op: Op, inputs: tuple[int, ...]) -> int | None:
        # Views that change nothing: NumPy gives a view with the input's strides.
        if op.primitive not in _NO_OP_VIEW_CHECKS:
            return None
        x = inputs[0]
        x_type = self.type_of(x)
        if not _same_shape_at_run_time(x_type, op.result_type):
            return None
        return x if _NO_OP_VIEW_CHECKS[op.primitive](op, x_type) else None

    def view_pair(self, op: Op, inputs: tuple[int, ...]) -> int | Op | None:
        inner = self.producer(inputs[0])
        if inner is None:
            return None
        if op.primitive == "transpose" and inner.primitive == "transpose":
            x = inner.inputs[0]
            rank = self.type_of(x).rank
            composed = tuple(_perm(inner, rank)[p] for p in _perm(op, rank))
            if composed == tuple(range(rank)):
                return x
            return Op("transpose", (x,), {"perm": composed}, op.result_type)
        if op.primitive == "squeeze" and inner.primitive == "expand_dims":
            x = inner.inputs[0]
            rank = self.type_of(x).rank + 1
            added = inner.attrs["axis"] % rank
            removed = op.attrs["axis"]
            if removed is not None and tuple(a % rank for a in removed) == (added,):
                return x
        if op.primitive == "expand_dims" and inner.primitive == "squeeze":
            x = inner.inputs[0]
            rank = self.type_of(x).rank
            removed = inner.attrs["axis"]
            one_axis = removed is not None and len(removed) == 1
            if one_axis and removed[0] % rank == op.attrs["axis"] % rank:
                return x
        return None


def _perm(op: Op, rank: int) -> tuple[int, ...]:
    perm = op.attrs["perm"]
    return tuple(range(rank))[::-1] if perm is None else tuple(p % rank for p in perm)


def _full_slice(op: Op, x_type: TensorType) -> bool:
    attrs = op.attrs
    return all(s == 1 for s in attrs["step"]) and all(b == 0 for b in attrs["start"]) and all(
        e == primitives.SLICE_TO_END or (d is not None and e >= d)
        for e, d in zip(attrs["stop"], x_type.shape)
    )


_NO_OP_VIEW_CHECKS: dict[str, Callable[[Op, TensorType], bool]] = {
    "reshape": lambda op, x_type: True,
    "reshape_like": lambda op, x_type: True,
    "transpose": lambda op, x_type: _perm(op, x_type.rank) == tuple(range(x_type.rank)),
    "squeeze": lambda op, x_type: op.attrs["axis"] == (),
    "slice": _full_slice,
    # With an unknown dim, `like` could stretch a 1 at run time.
    "broadcast_to": lambda op, x_type: x_type.is_fully_defined(),
    "broadcast_like": lambda op, x_type: x_type.is_fully_defined(),
}

_RULES: tuple[Callable[[_Simplifier, Op, tuple[int, ...]], int | Op | None], ...] = (
    _Simplifier.identity_element,
    _Simplifier.involution,
    _Simplifier.idempotent,
    _Simplifier.same_dtype_cast,
    _Simplifier.no_op_view,
    _Simplifier.view_pair,
)


def simplify_algebra(graph: Graph) -> Graph:
    """Rewrites ops to simpler ones that give the same bits on every input.

    `x*1`, `x/1`, `x-0`, `x+(-0.0)` (and integer `x+0`, `x//1`), `max(x,-inf)`,
    `min(x,inf)`, `x & true`, `x | false`, `x ^ false` become `x`; so do
    `-(-x)`, `not(not x)`, a cast to x's own dtype, and reshapes, transposes,
    squeezes, slices and broadcasts that change nothing; `f(f(x))` becomes
    `f(x)` for abs, sign, floor, ceil and round; two transposes become one (or
    none), and `squeeze` undoes `expand_dims`. Each rewrite checks the layout
    and NaN conditions of the module docstring. The replaced ops are left in
    place for `local_dce`.
    """
    rewriter = GraphRewriter(graph)
    simplifier = _Simplifier(rewriter)
    for value, op in rewriter.old_ops():
        inputs = rewriter.inputs(op)
        found = simplifier.simplify(op, inputs)
        if found is None:
            new = rewriter.keep(op)
            simplifier.facts.record(new)
            rewriter.bind(value, new)
        elif isinstance(found, Op):
            new = rewriter.emit(found)
            simplifier.facts.record(new)
            rewriter.replace(value, new)
        else:
            rewriter.replace(value, found)
    return rewriter.finish()


# ---------------------------------------------------------------------------
# The passes, applied to every local graph of a computation.


class LocalGraphRewrite(RewritePattern):
    """Replaces a `LocalGraph` node's graph by `rewrite(graph)` (same function type)."""

    node_types = (LocalGraph,)
    context_free = True

    def __init__(self, pass_name: str, rewrite: Callable[[Graph], Graph]) -> None:
        self._name = pass_name
        self.rewrite = rewrite

    @property
    def name(self) -> str:
        return self._name

    def match_and_rewrite(self, node: LocalGraph, context: RewriteContext) -> BuildingBlock | None:
        graph = self.rewrite(node.graph)
        return None if graph is node.graph else LocalGraph(graph)


def _local_pass(name: str, description: str, rewrite: Callable[[Graph], Graph]) -> PatternPass:
    return register_pass(PatternPass(name, description, (LocalGraphRewrite(name, rewrite),)))


LOCAL_DCE = _local_pass(
    "local-dce", "drops the ops of local graphs that no output needs", local_dce
)
LOCAL_CSE = _local_pass(
    "local-cse", "computes each distinct op of a local graph once", local_cse
)
FOLD_CONSTANTS = _local_pass(
    "fold-constants",
    "evaluates local ops whose inputs are all constants (results of at most 1024 elements)",
    fold_constants,
)
SIMPLIFY_ALGEBRA = _local_pass(
    "simplify-algebra",
    "rewrites local ops by identities that are exact in floating point (x*1, -(-x), ...)",
    simplify_algebra,
)
