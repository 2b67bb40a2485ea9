"""`merge-chained-maps` and `merge-parallel-maps`: a round's client work in one `federated_map`.

- `merge-chained-maps`: `federated_map(<f, federated_map(<g, x>)>)` becomes
  `federated_map(<(a -> f(g(a))), x>)` (so does `federated_apply`), and a map
  of a name bound to a map whose function only selects and restructures (which
  costs nothing to repeat) is composed through the name. `beta-reduce` and
  `fuse-local` then turn `f(g(a))` into one local computation.
- `merge-parallel-maps`: in each block, the maps (and zips) of values placed
  at CLIENTS that can run together — none needs a value that went through the
  server after another of them — become one `federated_map` over the zip of
  everything they read from outside (the parameter's client data,
  broadcasts, ...). Its function computes each merged map's value per client,
  in order, and returns those that are used outside the group; each of those
  becomes a selection map of the merged one (a function of selections and
  structs, which the runtime applies to its description of client values,
  moving no data). Maps nested inside other calls are bound first, so the
  maps and zips of a whole round are seen. A round with broadcast, client
  update, deltas and metrics ends with one map of client work. Maps zipped
  together (`federated_zip(<map(f, x), map(g, x)>)`) become one map too.

Each client computes exactly what it computed before, in the same order,
from the same values: the results are the same bits. Values are pure, so
computing them together changes nothing but which of two failing maps fails
first. The block must have distinct local names that shadow nothing (what
`uniquify-names` makes); other blocks are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedcc.compiler.passes import FunctionPass, PatternPass, register_pass
from fedcc.compiler.passes._block_dataflow import (
    Item,
    Region,
    extract_calls,
    rebuild,
    rewrite_regions,
)
from fedcc.compiler.rewriting import (
    Analyses,
    NameSupply,
    RewriteContext,
    RewritePattern,
    apply_patterns,
    pipeline_analyses,
    with_children,
)
from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Intrinsic,
    Lambda,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
    walk,
)
from fedcc.ir.types import CLIENTS, FederatedType, StructType, Type

MAP_INTRINSICS = ("federated_map", "federated_apply")

# ---------------------------------------------------------------------------
# Recognizing calls.


def intrinsic_call_parts(node: BuildingBlock, uris: Iterable[str]) -> tuple | None:
    """`(uri, elements)` of a call `uri(<e0, e1, ...>)` of one of `uris` written with a struct
    argument (elements as (name, node) pairs); None for anything else."""
    if not isinstance(node, Call) or not isinstance(node.function, Intrinsic):
        return None
    if node.function.uri not in uris or not isinstance(node.argument, Struct):
        return None
    return node.function.uri, node.argument.elements


def is_structural(function: BuildingBlock) -> bool:
    """Whether `function` is a lambda whose body only selects from and restructures its
    parameter: free to run, and applied by the runtime to descriptions of client values."""
    if not isinstance(function, Lambda) or function.parameter_name is None:
        return False
    for node in walk(function.result):
        if isinstance(node, Reference):
            if node.name != function.parameter_name:
                return False
        elif not isinstance(node, (Selection, Struct)):
            return False
    return True


def _at_clients(node: BuildingBlock) -> bool:
    t = node.type_signature
    return isinstance(t, FederatedType) and t.placement is CLIENTS and not t.all_equal


def _client_op_parts(node: BuildingBlock) -> tuple | None:
    return intrinsic_call_parts(node, ("federated_map", "federated_zip"))


def is_client_op(node: BuildingBlock) -> bool:
    """A map or zip (written with a struct argument) giving one value a client."""
    return _at_clients(node) and _client_op_parts(node) is not None


def _is_client_map(node: BuildingBlock) -> bool:
    return is_client_op(node) and node.function.uri == "federated_map"


def _is_glue(node: BuildingBlock) -> bool:
    """A zip, or a map whose function only selects and restructures."""
    parts = _client_op_parts(node)
    return parts is not None and (parts[0] == "federated_zip" or is_structural(parts[1][0][1]))


def _is_selection_tree(node: BuildingBlock) -> bool:
    """Only references, selections and structs: as cheap to repeat as a name."""
    return all(isinstance(n, (Reference, Selection, Struct)) for n in walk(node))


def apply_function(function: BuildingBlock, argument: BuildingBlock) -> BuildingBlock:
    """`function(argument)`; for a structural lambda taking exactly the argument's type and an
    argument of selections and structs, the lambda's body with the argument in place of the
    parameter, so that what is built stays structural (the runtime applies such functions
    to descriptions of client values). No recursion: bodies can be deep."""
    if (
        not is_structural(function)
        or function.parameter_type != argument.type_signature
        or not _is_selection_tree(argument)
    ):
        return Call(function, argument)
    results: list[BuildingBlock] = []
    stack: list[tuple[bool, BuildingBlock]] = [(False, function.result)]
    while stack:
        expanded, node = stack.pop()
        if isinstance(node, Reference):
            results.append(argument)
        elif not expanded:
            stack.append((True, node))
            stack.extend((False, child) for child in reversed(node.children()))
        else:
            count = len(node.children())
            children = results[len(results) - count :]
            del results[len(results) - count :]
            results.append(with_children(node, children))
    (result,) = results
    return result


def compose(
    outer: BuildingBlock,
    inner: BuildingBlock,
    names: NameSupply,
    analyses: Analyses | None = None,
) -> Lambda:
    """`(a -> outer(inner(a)))`, taking what `inner` takes (structural if both are).

    When `inner` is already a lambda `(p -> body)` (a composition made before), the result
    is `(p -> outer(body))`, the beta-reduced form: composing a chain of n maps bottom-up
    then builds one lambda of n nested calls, instead of n nested lambdas that
    `beta-reduce` and `inline-trivial` would have to unwind in time quadratic in n.
    """
    if (
        isinstance(inner, Lambda)
        and inner.parameter_name is not None
        and not is_structural(inner)
        and inner.parameter_name not in (analyses or pipeline_analyses()).free_names(outer)
    ):
        return Lambda(
            inner.parameter_name, inner.parameter_type, apply_function(outer, inner.result)
        )
    parameter_type = inner.type_signature.parameter
    name = names.fresh("a")
    parameter = Reference(name, parameter_type)
    return Lambda(name, parameter_type, apply_function(outer, apply_function(inner, parameter)))


# ---------------------------------------------------------------------------
# merge-chained-maps.


class MergeChainedMaps(RewritePattern):
    """`map(<f, map(<g, x>)>)` → `map(<(a -> f(g(a))), x>)`, for federated_map and _apply; also
    through a name bound to a map of a structural `g` (selections cost nothing to repeat)."""

    node_types = (Call,)

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        outer = intrinsic_call_parts(node, MAP_INTRINSICS)
        if outer is None or len(outer[1]) != 2:
            return None
        uri, ((function_name, f), (value_name, value)) = outer
        inner = self._inner_map(value, uri, context)
        if inner is None:
            return None
        g, x = inner
        composed = compose(f, g, context.names, context.analyses)
        return call_intrinsic(uri, Struct([(function_name, composed), (value_name, x)]))

    @staticmethod
    def _inner_map(
        value: BuildingBlock, uri: str, context: RewriteContext
    ) -> tuple[BuildingBlock, BuildingBlock] | None:
        inner = intrinsic_call_parts(value, (uri,))
        if inner is not None and len(inner[1]) == 2:
            return inner[1][0][1], inner[1][1][1]
        if not isinstance(value, Reference):
            return None
        binding = context.lookup(value.name)
        if binding is None or binding.value is None:
            return None
        inner = intrinsic_call_parts(binding.value, (uri,))
        if inner is None or len(inner[1]) != 2 or not is_structural(inner[1][0][1]):
            return None
        g, x = inner[1][0][1], inner[1][1][1]
        if not context.means_the_same_as_at(context.analyses.free_names(x), binding):
            return None
        return g, x


MERGE_CHAINED_MAPS = register_pass(
    PatternPass(
        "merge-chained-maps",
        "composes a federated_map (or _apply) of another's result into one: map(g;f, x)",
        (MergeChainedMaps(),),
    )
)


# ---------------------------------------------------------------------------
# merge-parallel-maps.


def client_work_stages(region: Region, members: list[int]) -> dict[int, int]:
    """For each member (client op), its stage: how many trips through the server (a value
    computed from client values, then used by client ops again) its inputs took."""
    member_set = set(members)
    stage: dict[int, int] = {}
    reach: dict[int, int] = {}  # non-member -> the highest stage of the members it uses
    for index, (_, value) in enumerate(region.locals):
        dependencies = region.dependencies(value)
        if index in member_set:
            stage[index] = max(
                (stage[d] if d in member_set else reach[d] + 1 for d in dependencies), default=0
            )
        else:
            reach[index] = max(
                (stage[d] if d in member_set else reach[d] for d in dependencies), default=-1
            )
    return stage


def _trimmed(group: list[int], region: Region, users: list[set[int]]) -> list[int]:
    """The group without its zips and structural maps that feed no other member: those are
    glue for what comes after, not client work."""
    kept = set(group)
    changed = True
    while changed:
        changed = False
        for index in sorted(kept):
            if _is_glue(region.locals[index][1]) and not users[index] & kept:
                kept.discard(index)
                changed = True
    return sorted(kept)


@dataclass
class _Sources:
    """What a group reads from outside, in first-use order, each once."""

    values: list[BuildingBlock]
    positions: dict[BuildingBlock, int]

    def add(self, value: BuildingBlock) -> None:
        if value not in self.positions:
            self.positions[value] = len(self.values)
            self.values.append(value)


class _ClientFunctionBuilder:
    """Builds the per-client function of a merged group of client ops."""

    def __init__(self, region: Region, group: list[int], names: NameSupply) -> None:
        self.region = region
        self.group = group
        self.names = names
        self.member_by_name = {region.locals[i][0]: i for i in group}
        self.sources = _Sources([], {})
        for index in group:
            for argument in self._arguments(index):
                self._collect(argument)

    def _arguments(self, index: int) -> list[BuildingBlock]:
        uri, elements = _client_op_parts(self.region.locals[index][1])
        if uri == "federated_map":
            return [elements[1][1]]
        return [value for _, value in elements]

    def _member(self, node: BuildingBlock) -> int | None:
        if isinstance(node, Reference):
            return self.member_by_name.get(node.name)
        return None

    def _zip_parts(self, node: BuildingBlock):
        parts = intrinsic_call_parts(node, ("federated_zip",))
        if parts is None or not isinstance(node.type_signature, FederatedType):
            return None
        return parts[1] if node.type_signature.placement is CLIENTS else None

    def _collect(self, argument: BuildingBlock) -> None:
        stack = [argument]
        while stack:
            node = stack.pop()
            if self._member(node) is not None:
                continue
            parts = self._zip_parts(node)
            if parts is None:
                self.sources.add(node)
            else:
                stack.extend(value for _, value in reversed(parts))

    def reads_members(self) -> bool:
        """Whether a source uses a member inside it (it could not be computed before them)."""
        free_names = self.region.analyses.free_names
        return any(
            name in self.member_by_name for s in self.sources.values for name in free_names(s)
        )

    def all_sources_all_equal(self) -> bool:
        return all(source.type_signature.all_equal for source in self.sources.values)

    def parameter_type(self) -> Type:
        members = [source.type_signature.member for source in self.sources.values]
        return members[0] if len(members) == 1 else StructType(members)

    def source_value(self) -> BuildingBlock:
        values = self.sources.values
        return values[0] if len(values) == 1 else call_intrinsic("federated_zip", Struct(values))

    def build(self, outputs: list[int]) -> Lambda:
        """`(p -> let y_i = <member i per client>, ... in <outputs>)`."""
        parameter_name = self.names.fresh("client")
        parameter = Reference(parameter_name, self.parameter_type())
        per_client: dict[int, Reference] = {}
        bindings = []
        for index in self.group:
            uri, elements = _client_op_parts(self.region.locals[index][1])
            if uri == "federated_map":
                argument = self._per_client(elements[1][1], parameter, per_client)
                value = apply_function(elements[0][1], argument)
            else:
                value = Struct(
                    [(n, self._per_client(part, parameter, per_client)) for n, part in elements]
                )
            name = self.names.fresh(self.region.locals[index][0])
            bindings.append((name, value))
            per_client[index] = Reference(name, value.type_signature)
        if len(outputs) == 1:
            result = per_client[outputs[0]]
        else:
            result = Struct([per_client[index] for index in outputs])
        return Lambda(parameter_name, parameter.type_signature, Block(bindings, result))

    def _per_client(
        self, argument: BuildingBlock, parameter: Reference, per_client: dict[int, Reference]
    ) -> BuildingBlock:
        """What a client sees of the placed value `argument`: a member's value, a source's
        part of the parameter, or a struct of those for a zip. No recursion: zips nest."""
        results: list[BuildingBlock] = []
        stack: list[tuple] = [(False, argument)]
        while stack:
            expanded, node = stack.pop()
            member = self._member(node)
            if member is not None:
                results.append(per_client[member])
                continue
            parts = self._zip_parts(node)
            if parts is None:
                position = self.sources.positions[node]
                single = len(self.sources.values) == 1
                results.append(parameter if single else Selection(parameter, position))
            elif not expanded:
                stack.append((True, node))
                stack.extend((False, value) for _, value in reversed(parts))
            else:
                values = results[len(results) - len(parts) :]
                del results[len(results) - len(parts) :]
                results.append(Struct(list(zip((n for n, _ in parts), values, strict=True))))
        (result,) = results
        return result


def merge_client_work(node: BuildingBlock, context: RewriteContext) -> BuildingBlock | None:
    """`node` (a block, or an expression) with each stage's client ops merged into one map;
    None when there is nothing to merge."""
    region = Region.of(node, context.analyses)
    if region is None:
        return None
    # Zips written inside a map's argument stay there: the merged map reads through them.
    region = extract_calls(region, _is_client_map, context.names, "client_value")
    members = [i for i, (_, value) in enumerate(region.locals) if is_client_op(value)]
    if len(members) < 2:
        return None
    stages = client_work_stages(region, members)
    users = region.users()
    groups: dict[int, list[int]] = {}
    for index in members:
        groups.setdefault(stages[index], []).append(index)
    replaced: dict[int, list[Item]] = {}
    for group in groups.values():
        group = _trimmed(group, region, users)
        merged = _merge_group(region, group, users, context.names)
        if merged is not None:
            for index in group:
                replaced[index] = []
            replaced[group[0]] = merged
    if not replaced:
        return None
    items: list[Item] = []
    for index, (name, value) in enumerate(region.locals):
        items.extend(replaced.get(index, [Item(name, value, index)]))
    return rebuild(items, region.result, context.analyses)


def _merge_group(
    region: Region, group: list[int], users: list[set[int]], names: NameSupply
) -> list[Item] | None:
    if len(group) < 2:
        return None
    in_group = set(group)
    outputs = [index for index in group if users[index] - in_group]
    builder = _ClientFunctionBuilder(region, group, names)
    if not outputs or builder.all_sources_all_equal() or builder.reads_members():
        return None
    function = builder.build(outputs)
    merged = call_intrinsic("federated_map", Struct([function, builder.source_value()]))
    first = group[0]
    if len(outputs) == 1:
        return [Item(region.locals[outputs[0]][0], merged, first - 0.5)]
    merged_name = names.fresh("client_work")
    merged_reference = Reference(merged_name, merged.type_signature)
    results_type = merged.type_signature.member
    items = [Item(merged_name, merged, first - 0.5)]
    for position, index in enumerate(outputs):
        name = names.fresh("client_result")
        select = Lambda(name, results_type, Selection(Reference(name, results_type), position))
        selected = call_intrinsic("federated_map", Struct([select, merged_reference]))
        items.append(Item(region.locals[index][0], selected, index))
    return items


class ZipOfMaps(RewritePattern):
    """`federated_zip(<map(f, x), y, map(g, x)>)` → `federated_map(<(p -> <f(p[0]), p[1],
    g(p[0])>), federated_zip(<x, y>)>)`: maps (of client values) inside a zip run as one."""

    node_types = (Call,)
    # It reads the zip alone, never the scope, and takes a name only to rewrite.
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        parts = intrinsic_call_parts(node, ("federated_zip",))
        if parts is None or not _at_clients(node):
            return None
        elements = parts[1]
        maps = [_client_map_parts(value) for _, value in elements]
        if sum(m is not None for m in maps) < 2:
            return None
        inputs: dict[BuildingBlock, int] = {}
        for (_, value), mapped in zip(elements, maps, strict=True):
            inputs.setdefault(value if mapped is None else mapped[1], len(inputs))
        values = list(inputs)
        zipped = values[0] if len(values) == 1 else call_intrinsic("federated_zip", Struct(values))
        name = context.names.fresh("zipped")
        parameter = Reference(name, zipped.type_signature.member)
        rebuilt = []
        for (element_name, value), mapped in zip(elements, maps, strict=True):
            source = value if mapped is None else mapped[1]
            part = parameter if len(values) == 1 else Selection(parameter, inputs[source])
            if mapped is not None:
                part = apply_function(mapped[0], part)
            rebuilt.append((element_name, part))
        function = Lambda(name, parameter.type_signature, Struct(rebuilt))
        return call_intrinsic("federated_map", Struct([function, zipped]))


def _client_map_parts(node: BuildingBlock) -> tuple[BuildingBlock, BuildingBlock] | None:
    """(function, value) of a map giving one value a client, else None."""
    if not _is_client_map(node):
        return None
    elements = node.argument.elements
    return (elements[0][1], elements[1][1]) if len(elements) == 2 else None


def merge_parallel_maps(comp: BuildingBlock) -> BuildingBlock:
    """Merges the client work of every block (see the module docstring)."""
    comp = apply_patterns(comp, (ZipOfMaps(),))
    return rewrite_regions(comp, "MergeClientWork", merge_client_work)


MERGE_PARALLEL_MAPS = register_pass(
    FunctionPass(
        "merge-parallel-maps",
        "merges the federated_maps and zips that run together on the clients into one map",
        merge_parallel_maps,
    )
)
