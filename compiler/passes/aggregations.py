"""`merge-aggregations`: aggregations of one kind over the same clients become one aggregation
of the zipped values, each result then selected at the server.

In each block, aggregation calls that can run together (neither needs the
other's result) merge when they are of one kind:

- `federated_sum` (`_mean`, `_min`, `_max`) of a and of b: the same intrinsic
  of `zip(<a, b>)`;
- `federated_weighted_mean(<a, w>)` and `(<b, w>)` with the same weight w:
  `federated_weighted_mean(<zip(<a, b>), w>)`;
- `federated_aggregate(<a, z1, acc1, merge1, report1>)` and `(<b, z2, ...>)`:
  `federated_aggregate(<zip(<a, b>), <z1, z2>, acc, merge, report>)`, where
  acc, merge and report apply each part's function to its part.

Why the bits stay the same (runtimes/aggregations.py): every reduction over
clients runs along one canonical tree, and its arithmetic is leaf by leaf:
the sum, the division by the client count or the total weight (computed
once from the same weights), min and max of a struct are those of each
leaf on its own. A fold's leaf is `accumulate(<fresh zero, value>)` and its
subtrees merge with `merge`; the paired functions do exactly that for each
part, on the same tree. Over zero clients the merged aggregation fails
exactly when one of the parts would, and otherwise gives each part's zeros
(or report of its zero). Secure sums are left alone (each checks its own
bound). The block must have distinct local names that shadow nothing (what
`uniquify-names` makes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedcc.compiler.passes import FunctionPass, register_pass
from fedcc.compiler.passes._block_dataflow import (
    Item,
    Region,
    extract_calls,
    rebuild,
    rewrite_regions,
)
from fedcc.compiler.passes.federated_maps import intrinsic_call_parts
from fedcc.compiler.rewriting import NameSupply, RewriteContext
from fedcc.ir.building_blocks import (
    BuildingBlock,
    Call,
    Intrinsic,
    Lambda,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.types import StructType

LEAFWISE = ("federated_sum", "federated_mean", "federated_min", "federated_max")
MERGEABLE = (*LEAFWISE, "federated_weighted_mean", "federated_aggregate")


def _uri(node: BuildingBlock) -> str | None:
    if isinstance(node, Call) and isinstance(node.function, Intrinsic):
        return node.function.uri
    return None


def merge_key(node: BuildingBlock) -> tuple | None:
    """Aggregations with equal keys may merge; None for a call that never does."""
    uri = _uri(node)
    if uri in LEAFWISE:
        return (uri,)
    if uri == "federated_weighted_mean":
        parts = intrinsic_call_parts(node, (uri,))
        return None if parts is None else (uri, parts[1][1][1])  # the same weight expression
    if uri == "federated_aggregate":
        parts = intrinsic_call_parts(node, (uri,))
        return None if parts is None else (uri,)
    return None


# ---------------------------------------------------------------------------
# Building the merged call.


def _zip(values: list[BuildingBlock]) -> Call:
    return call_intrinsic("federated_zip", Struct(values))


def _pairwise(
    functions: list[BuildingBlock], parameter_type: StructType, names: NameSupply, base: str
) -> Lambda:
    """`(x -> <f_1(<x[0][0], x[1][0]>), ..., f_k(<x[0][k-1], x[1][k-1]>)>)`."""
    name = names.fresh(base)
    x = Reference(name, parameter_type)
    calls = [
        Call(f, Struct([Selection(Selection(x, 0), i), Selection(Selection(x, 1), i)]))
        for i, f in enumerate(functions)
    ]
    return Lambda(name, parameter_type, Struct(calls))


def _elementwise(
    functions: list[BuildingBlock], parameter_type: StructType, names: NameSupply
) -> Lambda:
    """`(x -> <f_1(x[0]), ..., f_k(x[k-1])>)`."""
    name = names.fresh("accumulators")
    x = Reference(name, parameter_type)
    calls = [Call(f, Selection(x, i)) for i, f in enumerate(functions)]
    return Lambda(name, parameter_type, Struct(calls))


def _merged_aggregate(calls: list[Call], names: NameSupply) -> Call:
    parts = [[value for _, value in call.argument.elements] for call in calls]
    values, zeros, accumulates, merges, reports = (list(column) for column in zip(*parts))
    accumulator_type = StructType([zero.type_signature for zero in zeros])
    member_type = StructType([value.type_signature.member for value in values])
    return call_intrinsic(
        "federated_aggregate",
        Struct(
            [
                _zip(values),
                Struct(zeros),
                _pairwise(accumulates, StructType([accumulator_type, member_type]), names, "fold"),
                _pairwise(merges, StructType([accumulator_type, accumulator_type]), names, "pair"),
                _elementwise(reports, accumulator_type, names),
            ]
        ),
    )


def _merged_weighted_mean(calls: list[Call], names: NameSupply) -> Call:
    values = [call.argument.elements[0][1] for call in calls]
    weight = calls[0].argument.elements[1][1]
    return call_intrinsic("federated_weighted_mean", Struct([_zip(values), weight]))


def _merged_leafwise(calls: list[Call], names: NameSupply) -> Call:
    return call_intrinsic(_uri(calls[0]), _zip([call.argument for call in calls]))


MERGERS: dict[str, Callable[[list[Call], NameSupply], Call]] = {
    **dict.fromkeys(LEAFWISE, _merged_leafwise),
    "federated_weighted_mean": _merged_weighted_mean,
    "federated_aggregate": _merged_aggregate,
}


# ---------------------------------------------------------------------------
# Grouping the aggregations of a block.


@dataclass
class _Group:
    key: tuple
    members: list[int]
    ancestors: int  # bit set of the locals any member uses, directly or not


def _ancestor_sets(region: Region) -> list[int]:
    """For each local, the bit set of the locals it uses, directly or not."""
    ancestors: list[int] = []
    for _, value in region.locals:
        bits = 0
        for dependency in region.dependencies(value):
            bits |= (1 << dependency) | ancestors[dependency]
        ancestors.append(bits)
    return ancestors


def independent_groups(region: Region, keys: dict[int, tuple]) -> list[_Group]:
    """Greedy groups of locals with equal keys, none using another's result."""
    ancestors = _ancestor_sets(region)
    groups: list[_Group] = []
    for index in sorted(keys):
        for group in groups:
            if group.key == keys[index] and not ancestors[index] & _bits(group.members):
                group.members.append(index)
                group.ancestors |= ancestors[index]
                break
        else:
            groups.append(_Group(keys[index], [index], ancestors[index]))
    return [group for group in groups if len(group.members) > 1]


def _bits(indices: list[int]) -> int:
    bits = 0
    for index in indices:
        bits |= 1 << index
    return bits


def merge_aggregations_in(node: BuildingBlock, context: RewriteContext) -> BuildingBlock | None:
    """`node` (a block or an expression) with its mergeable aggregations merged, or None."""
    region = Region.of(node, context.analyses)
    if region is None:
        return None
    region = extract_calls(
        region, lambda call: merge_key(call) is not None, context.names, "aggregate"
    )
    keys = {}
    for index, (_, value) in enumerate(region.locals):
        key = merge_key(value)
        if key is not None:
            keys[index] = key
    groups = independent_groups(region, keys)
    if not groups:
        return None
    replaced: dict[int, list[Item]] = {}
    for group in groups:
        calls = [region.locals[index][1] for index in group.members]
        merged = MERGERS[group.key[0]](calls, context.names)
        merged_name = context.names.fresh("merged")
        merged_reference = Reference(merged_name, merged.type_signature)
        results_type = merged.type_signature.member
        replaced[group.members[0]] = [Item(merged_name, merged, group.members[0] - 0.5)]
        for position, index in enumerate(group.members):
            name = context.names.fresh("results")
            select = Lambda(name, results_type, Selection(Reference(name, results_type), position))
            selected = call_intrinsic("federated_apply", Struct([select, merged_reference]))
            replaced.setdefault(index, []).append(Item(region.locals[index][0], selected, index))
    items: list[Item] = []
    for index, (name, value) in enumerate(region.locals):
        items.extend(replaced.get(index, [Item(name, value, index)]))
    return rebuild(items, region.result, context.analyses)


def merge_aggregations(comp: BuildingBlock) -> BuildingBlock:
    """Merges the mergeable aggregations of every block (see the module docstring)."""
    return rewrite_regions(comp, "MergeAggregations", merge_aggregations_in)


MERGE_AGGREGATIONS = register_pass(
    FunctionPass(
        "merge-aggregations",
        "merges aggregations of one kind over the same clients into one of the zipped values",
        merge_aggregations,
    )
)
