"""`desugar-intrinsics`: sum, mean, weighted mean, min and max over clients become
`federated_aggregate` with local graphs, and `sequence_sum` becomes `sequence_reduce`,
computing the same bits as the reference runtime.

Why the results are bit-identical (runtimes/aggregations.py, runtimes/reduction.py):
the runtime folds every aggregation along one canonical tree over clients; a
`federated_aggregate`'s leaf for client v is `accumulate(<zero, v>)` (a fresh
zero every time) and its subtrees combine with `merge`. The sugar's leaves and
merges are:

| intrinsic | leaf | merge | at the root |
|---|---|---|---|
| federated_sum | v | a + b | the sum |
| federated_mean | v | a + b | sum / D(n) |
| federated_weighted_mean | (v * D(w), w) | pairwise + | sum / D(total weight) |
| federated_min / _max | v | minimum / maximum | the extremum |

with D each value leaf's dtype and n the number of clients. So the desugared
`accumulate(<zero, v>)` must give the sugar's leaf exactly, `merge` must be the
same NumPy operation, and `report` must finish the root the same way:

- Sums carry a client count beside the total, `<total, count:int64>`. A float
  total is `where(count > 0, total + v, v)`: `0.0 + v` would turn `v = -0.0`
  into `+0.0` and quiet a signalling NaN, but `where` copies v's bits. (An
  integer total is plain `total + v`: 0 is an exact identity.) Merges use the
  same `where`s, so an empty partial is an identity too. `D(n)` is
  `cast(count)`: int64 to float converts exactly as the runtime's `D(n)` of a
  Python int (checked for float16/32/64 in tests/test_passes_federated.py).
- The weighted mean carries `<weighted total, total weight, count>`; the
  weight is cast to D before multiplying, as the runtime does.
- min and max start from +inf / -inf (integers: their dtype's extremes):
  `minimum(inf, v)` returns v's bits, NaN payloads included.

What is not the same, and why it cannot be with `federated_aggregate` and local
graphs (a report cannot raise, and it sees only the accumulator):

- Over zero clients the runtime raises for mean, weighted mean, min and max;
  the desugared forms report `0 / 0` (NaN), `±inf` or an integer extreme.
  A weighted mean whose weights sum to 0 raises in the runtime and gives
  `x / 0` desugared. Sums over zero clients give zeros either way.
- The zero of `federated_aggregate` is a literal, so members with an unknown
  dim (`float32[?]`) are left as they are.
- With one client the runtime's sum, mean numerator, min and max are that
  client's array itself; desugared they are a fresh copy with the same bits,
  laid out without gaps (this matters only if a later float reduction runs on
  a gappy view a client returned).
- Secure sums are core intrinsics (their range checks are the point) and stay.

`sequence_sum` adds in order from the first element, and gives zeros for an
empty sequence; its desugaring is `sequence_reduce` with the same counted
accumulator, then selects the total: bit-identical in every case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedcc.compiler.passes import PatternPass, register_pass
from fedcc.compiler.rewriting import RewriteContext, RewritePattern
from fedcc.ir.building_blocks import (
    BuildingBlock,
    Call,
    Intrinsic,
    Lambda,
    Literal,
    LocalGraph,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.types import StructType, TensorType, Type, tensor_leaves

COUNT = TensorType(np.int64)

# ---------------------------------------------------------------------------
# Values and graphs shaped like a type.


def fully_defined_leaves(t: Type) -> list[TensorType] | None:
    """The tensor leaves of a struct of tensors, or None if a dim is unknown (no literal zero)."""
    leaves = tensor_leaves(t)
    return leaves if all(leaf.is_fully_defined() for leaf in leaves) else None


def literal_like(t: Type, fill: Callable[[TensorType], Any]) -> BuildingBlock:
    """A literal value of type `t` (a struct of tensors, names kept), leaf i filled by `fill`.

    Types nest at most `MAX_TYPE_DEPTH` levels, so this recursion is bounded.
    """
    if isinstance(t, TensorType):
        return Literal(np.full(t.shape, fill(t), dtype=t.dtype))
    return Struct([(name, literal_like(element, fill)) for name, element in t.elements])


def _zero(t: TensorType) -> Any:
    return 0


def _highest(t: TensorType) -> Any:
    return np.inf if t.dtype.kind == "f" else np.iinfo(t.dtype).max


def _lowest(t: TensorType) -> Any:
    return -np.inf if t.dtype.kind == "f" else np.iinfo(t.dtype).min


class _LeafGraph:
    """A `GraphBuilder` over a parameter made of parts, each part's leaves numbered in order."""

    def __init__(self, parts: list[Type]) -> None:
        self.builder = GraphBuilder(StructType(parts))
        self.parts: list[list[int]] = []
        next_value = 0
        for part in parts:
            count = len(tensor_leaves(part))
            self.parts.append(list(range(next_value, next_value + count)))
            next_value += count
        self._casts: dict[tuple[int, str], int] = {}

    def op(self, primitive: str, *inputs: int, **attributes: Any) -> int:
        return self.builder.op(primitive, *inputs, **attributes)

    def constant(self, value: Any, dtype: Any) -> int:
        return self.builder.constant(value, dtype)

    def cast(self, value: int, dtype: np.dtype) -> int:
        """`value` in `dtype` (itself if it has that dtype already); each cast made once."""
        if self.builder.type_of(value).dtype == dtype:
            return value
        key = (value, dtype.name)
        if key not in self._casts:
            self._casts[key] = self.op("cast", value, dtype=dtype.name)
        return self._casts[key]

    def finish(self, outputs: list[int], result_type: Type) -> LocalGraph:
        return LocalGraph(self.builder.build(outputs, result_type))


def _add_after_first(g: _LeafGraph, started: int, total: int, value: int) -> int:
    """`total + value` once something was added, else `value` itself (its exact bits)."""
    total_plus_value = g.op("add", total, value)
    if g.builder.type_of(total).dtype.kind != "f":
        return total_plus_value  # 0 + v is v for integers
    return g.op("where", started, total_plus_value, value)


def _merge_totals(g: _LeafGraph, left_started: int, right_started: int, a: int, b: int) -> int:
    """`a + b` when both partial totals hold clients, else the one that does (exactly)."""
    a_plus_b = g.op("add", a, b)
    if g.builder.type_of(a).dtype.kind != "f":
        return a_plus_b
    return g.op("where", right_started, g.op("where", left_started, a_plus_b, b), a)


def _started(g: _LeafGraph, count: int) -> int:
    return g.op("greater", count, g.constant(0, np.int64))


# ---------------------------------------------------------------------------
# Sums and means: the accumulator is <totals..., count>.


def counted_accumulate(member: Type, weighted: bool) -> LocalGraph:
    """`<<totals, count>, v> -> <totals + v, count + 1>` (weighted: `v` is `<value, weight>`,
    the totals are `<value * D(weight), weight>`)."""
    value_type, weight_type = (member[0], member[1]) if weighted else (member, None)
    total_types = [value_type] + ([weight_type] if weighted else [])
    accumulator = StructType([*total_types, COUNT])
    g = _LeafGraph([accumulator, member])
    accumulator_values, member_values = g.parts
    *totals, count = accumulator_values
    started = _started(g, count)
    if weighted:
        *values, weight = member_values
        values = [
            g.op("multiply", v, g.cast(weight, g.builder.type_of(v).dtype)) for v in values
        ]
        values.append(weight)
    else:
        values = member_values
    new_totals = [_add_after_first(g, started, t, v) for t, v in zip(totals, values, strict=True)]
    new_count = g.op("add", count, g.constant(1, np.int64))
    return g.finish([*new_totals, new_count], accumulator)


def counted_merge(total_types: list[Type]) -> LocalGraph:
    """`<<totals_a, count_a>, <totals_b, count_b>> -> <totals_a + totals_b, count_a + count_b>`."""
    accumulator = StructType([*total_types, COUNT])
    g = _LeafGraph([accumulator, accumulator])
    (*left, left_count), (*right, right_count) = g.parts
    left_started, right_started = _started(g, left_count), _started(g, right_count)
    totals = [
        _merge_totals(g, left_started, right_started, a, b)
        for a, b in zip(left, right, strict=True)
    ]
    return g.finish([*totals, g.op("add", left_count, right_count)], accumulator)


def _divided_report(value_type: Type, divisor_type: TensorType, extra: list[Type]) -> LocalGraph:
    """`<totals, divisor, extra...> -> totals / D(divisor)`, leaf by leaf, in each leaf's dtype."""
    g = _LeafGraph([value_type, divisor_type, *extra])
    totals, (divisor,) = g.parts[0], g.parts[1]
    outputs = [
        g.op("divide", t, g.cast(divisor, g.builder.type_of(t).dtype)) for t in totals
    ]
    return g.finish(outputs, value_type)


def _select_report(accumulator: StructType, index: int) -> Lambda:
    parameter = Reference("accumulator", accumulator)
    return Lambda("accumulator", accumulator, Selection(parameter, index))


def _aggregate(
    value: BuildingBlock,
    zero: BuildingBlock,
    accumulate: BuildingBlock,
    merge: BuildingBlock,
    report: BuildingBlock,
) -> Call:
    return call_intrinsic("federated_aggregate", Struct([value, zero, accumulate, merge, report]))


def _counted_zero(total_types: list[Type]) -> Struct:
    return Struct([*(literal_like(t, _zero) for t in total_types), Literal(np.int64(0))])


def desugar_sum(argument: BuildingBlock) -> BuildingBlock | None:
    """`federated_sum(v)` as `federated_aggregate` of `<total, count>`, reporting the total."""
    member = argument.type_signature.member
    if fully_defined_leaves(member) is None:
        return None
    accumulator = StructType([member, COUNT])
    return _aggregate(
        argument,
        _counted_zero([member]),
        counted_accumulate(member, weighted=False),
        counted_merge([member]),
        _select_report(accumulator, 0),
    )


def desugar_mean(argument: BuildingBlock) -> BuildingBlock | None:
    """`federated_mean(v)` as `federated_aggregate` of `<total, count>`, reporting total / D(n)."""
    member = argument.type_signature.member
    if fully_defined_leaves(member) is None:
        return None
    return _aggregate(
        argument,
        _counted_zero([member]),
        counted_accumulate(member, weighted=False),
        counted_merge([member]),
        _divided_report(member, COUNT, []),
    )


def desugar_weighted_mean(argument: BuildingBlock) -> BuildingBlock | None:
    """`federated_weighted_mean(<v, w>)` as `federated_aggregate` of the zipped pair, with
    `<weighted total, total weight, count>`, reporting weighted total / D(total weight)."""
    value_type, weight_type = (t.member for t in argument.type_signature)
    if fully_defined_leaves(value_type) is None:
        return None
    zipped = call_intrinsic("federated_zip", argument)
    member = StructType([value_type, weight_type])
    return _aggregate(
        zipped,
        _counted_zero([value_type, weight_type]),
        counted_accumulate(member, weighted=True),
        counted_merge([value_type, weight_type]),
        _divided_report(value_type, weight_type, [COUNT]),
    )


def _leafwise(member: Type, primitive: str) -> LocalGraph:
    """`<a, b> -> primitive(a, b)`, leaf by leaf."""
    g = _LeafGraph([member, member])
    left, right = g.parts
    return g.finish([g.op(primitive, a, b) for a, b in zip(left, right, strict=True)], member)


def _extremum(primitive: str, identity: Callable[[TensorType], Any]):
    def desugar(argument: BuildingBlock) -> BuildingBlock | None:
        member = argument.type_signature.member
        if fully_defined_leaves(member) is None:
            return None
        combine = _leafwise(member, primitive)
        report = Lambda("extremum", member, Reference("extremum", member))
        return _aggregate(argument, literal_like(member, identity), combine, combine, report)

    desugar.__doc__ = f"`federated_{primitive[:3]}(v)` as `federated_aggregate` of {primitive}."
    return desugar


def desugar_sequence_sum(argument: BuildingBlock) -> BuildingBlock | None:
    """`sequence_sum(s)` as `sequence_reduce` of `<total, count>`, then the total."""
    element = argument.type_signature.element
    if fully_defined_leaves(element) is None:
        return None
    reduced = call_intrinsic(
        "sequence_reduce",
        Struct([argument, _counted_zero([element]), counted_accumulate(element, weighted=False)]),
    )
    return Selection(reduced, 0)


# uri -> the desugaring of a call with this argument (None: left as it is).
DESUGARINGS: dict[str, Callable[[BuildingBlock], BuildingBlock | None]] = {
    "federated_sum": desugar_sum,
    "federated_mean": desugar_mean,
    "federated_weighted_mean": desugar_weighted_mean,
    "federated_min": _extremum("minimum", _highest),
    "federated_max": _extremum("maximum", _lowest),
    "sequence_sum": desugar_sequence_sum,
}


class DesugarIntrinsicCall(RewritePattern):
    """`federated_sum(v)` (and the other sugar of `DESUGARINGS`) → core intrinsics."""

    node_types = (Call,)

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        function = node.function
        if not isinstance(function, Intrinsic) or function.uri not in DESUGARINGS:
            return None
        return DESUGARINGS[function.uri](node.argument)


DESUGAR_INTRINSICS = register_pass(
    PatternPass(
        "desugar-intrinsics",
        "rewrites sum, mean, weighted mean, min and max into federated_aggregate, bit-identically",
        (DesugarIntrinsicCall(),),
    )
)
