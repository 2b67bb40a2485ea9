"""The locals of one block as a dataflow graph, for the passes that merge federated calls.

The federated merges (client work, broadcasts, aggregations) look at a block
as a list of locals with dependencies, bind the calls they care about as
locals of their own (`extract_calls`), replace some locals by merged ones, and
put the block back together in an order that respects every dependency
(`rebuild`), as close to the original order as it can.

All of this assumes what `uniquify-names` establishes: the block's local names
are distinct and none of them is also a name the block uses from outside
(`Region.of` checks, and gives None otherwise). Then a name means the same
thing everywhere in the block, so a value may move to any position after
the locals it uses. Values are pure (randomness is keyed), so moving one
changes no result; at most, of two failing computations, another one fails first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from fedcc.compiler.rewriting import (
    Analyses,
    NameSupply,
    RewriteContext,
    RewritePattern,
    apply_patterns,
    pipeline_analyses,
    substitute,
    with_children,
)
from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Lambda,
    Reference,
    Selection,
    Struct,
)

# The node kinds `extract_calls` looks through (blocks too): what is evaluated right where it
# stands, once, when the enclosing value is. Lambdas (run later, maybe many times) are not.
TRANSPARENT_KINDS = (Call, Struct, Selection)


@dataclass
class Region:
    """A block's locals (name, value) in order and its result; a node that is not a block is a
    region with no locals."""

    locals: list[tuple[str, BuildingBlock]]
    result: BuildingBlock
    analyses: Analyses
    _positions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, node: BuildingBlock, analyses: Analyses) -> Region | None:
        """The region of `node`, or None when its local names are not distinct or shadow a
        name from outside (run `uniquify-names` first)."""
        local_bindings = list(node.locals) if isinstance(node, Block) else []
        result = node.result if isinstance(node, Block) else node
        names = [name for name, _ in local_bindings]
        if len(set(names)) != len(names):
            return None
        if isinstance(node, Block) and any(name in analyses.free_names(node) for name in names):
            return None
        return cls(local_bindings, result, analyses)

    def position(self, name: str) -> int | None:
        """The index of the local named `name`, or None."""
        if len(self._positions) != len(self.locals):
            self._positions = {n: i for i, (n, _) in enumerate(self.locals)}
        return self._positions.get(name)

    def dependencies(self, value: BuildingBlock) -> set[int]:
        """The locals `value` uses (by index)."""
        found = set()
        for name in self.analyses.free_names(value):
            index = self.position(name)
            if index is not None:
                found.add(index)
        return found

    def users(self) -> list[set[int]]:
        """For each local, the locals that use it (-1 stands for the result)."""
        users: list[set[int]] = [set() for _ in self.locals]
        for index, (_, value) in enumerate(self.locals):
            for dependency in self.dependencies(value):
                users[dependency].add(index)
        for dependency in self.dependencies(self.result):
            users[dependency].add(-1)
        return users


def extract_calls(
    region: Region, wanted: Callable[[Call], bool], names: NameSupply, base: str
) -> Region:
    """`region` with every wanted call inside a local or the result bound to a fresh local of
    its own, right before the local that held it; inner calls come first. A local that is
    itself a wanted call stays as it is.

    Looks through calls, structs and selections, and through blocks there: a block
    evaluated in place has its locals hoisted into the region (renamed if a name is
    taken), so `f((let s=c in <s,s>))` reads `s=c` as a local of the region.
    """
    extractor = _Extractor(region, wanted, names, base)
    for name, value in region.locals:
        value = extractor.extract(value, keep_root=True)
        extractor.bound.append((name, value))
    result = extractor.extract(region.result, keep_root=False)
    return Region(extractor.bound, result, region.analyses)


_VISIT, _EXIT, _HOIST = 0, 1, 2


class _Extractor:
    def __init__(
        self, region: Region, wanted: Callable[[Call], bool], names: NameSupply, base: str
    ) -> None:
        self.wanted = wanted
        self.names = names
        self.base = base
        self.analyses = region.analyses
        self.bound: list[tuple[str, BuildingBlock]] = []
        # Names a hoisted local must not take: they mean something else in the region.
        self.taken = {name for name, _ in region.locals}
        for value in (*(value for _, value in region.locals), region.result):
            self.taken.update(self.analyses.free_names(value))

    def extract(self, root: BuildingBlock, keep_root: bool) -> BuildingBlock:
        results: list[BuildingBlock] = []
        stack: list[tuple] = [(_VISIT, root, keep_root)]
        while stack:
            task = stack.pop()
            if task[0] == _HOIST:
                self.bound.append((task[1], results.pop()))
                continue
            if task[0] == _VISIT:
                self._visit(stack, results, task[1], task[2])
                continue
            _, node, count, at_root = task
            children = results[len(results) - count :]
            del results[len(results) - count :]
            rebuilt = with_children(node, children)
            if isinstance(rebuilt, Call) and not at_root and self.wanted(rebuilt):
                name = self.names.fresh(self.base)
                self.bound.append((name, rebuilt))
                rebuilt = Reference(name, rebuilt.type_signature)
            results.append(rebuilt)
        (result,) = results
        return result

    def _visit(
        self, stack: list[tuple], results: list[BuildingBlock], node: BuildingBlock, at_root: bool
    ) -> None:
        if isinstance(node, Block):
            block = self._renamed(node)
            stack.append((_VISIT, block.result, at_root))
            for name, value in reversed(block.locals):
                stack.append((_HOIST, name))
                stack.append((_VISIT, value, False))
        elif isinstance(node, TRANSPARENT_KINDS):
            children = node.children()
            stack.append((_EXIT, node, len(children), at_root))
            stack.extend((_VISIT, child, False) for child in reversed(children))
        else:
            results.append(node)

    def _renamed(self, block: Block) -> Block:
        """`block` with each local whose name is taken renamed to a fresh name."""
        env: dict[str, BuildingBlock] = {}
        renamed: list[tuple[str, BuildingBlock]] = []
        for name, value in block.locals:
            value = substitute(value, env, self.analyses, self.names)
            if name in self.taken:
                new_name = self.names.fresh(name)
                env[name] = Reference(new_name, value.type_signature)
            else:
                new_name = name
                env.pop(name, None)
            self.taken.add(new_name)
            renamed.append((new_name, value))
        return Block(renamed, substitute(block.result, env, self.analyses, self.names))


@dataclass
class Item:
    """One local of a block being rebuilt: its name, value, and the names of its inputs."""

    name: str
    value: BuildingBlock
    priority: float  # where it stood: items come out in this order where dependencies allow


def rebuild(
    items: list[Item], result: BuildingBlock, analyses: Analyses
) -> BuildingBlock:
    """The block of `items` in an order that puts every local after the locals it uses
    (stable: by priority where free to choose), with `result`; just `result` with no items."""
    if not items:
        return result
    by_name = {item.name: position for position, item in enumerate(items)}
    waiting = [0] * len(items)
    users: list[list[int]] = [[] for _ in items]
    for position, item in enumerate(items):
        for name in analyses.free_names(item.value):
            dependency = by_name.get(name)
            if dependency is not None and dependency != position:
                waiting[position] += 1
                users[dependency].append(position)
    ready = [(item.priority, p) for p, item in enumerate(items) if not waiting[p]]
    heapq.heapify(ready)
    ordered: list[tuple[str, BuildingBlock]] = []
    while ready:
        _, position = heapq.heappop(ready)
        ordered.append((items[position].name, items[position].value))
        for user in users[position]:
            waiting[user] -= 1
            if not waiting[user]:
                heapq.heappush(ready, (items[user].priority, user))
    if len(ordered) != len(items):
        raise AssertionError("the merged locals depend on each other in a cycle")
    return Block(ordered, result)


# ---------------------------------------------------------------------------
# Applying a region rewrite to every block of a computation.

RegionRewrite = Callable[[BuildingBlock, RewriteContext], BuildingBlock | None]


class RegionPattern(RewritePattern):
    """Applies `rewrite` to every block, and to each lambda body that is not a block.

    A rewrite may take fresh names while it looks (binding calls to read a block's dataflow)
    and then find nothing to change; those names are given back, so a region left as it was
    leaves no trace. A rewrite reads only the region (and analyses of it), never the scope:
    the pattern is context-free, and walks skip the subtrees it settled before.
    """

    node_types = (Block, Lambda)
    context_free = True

    def __init__(self, pass_name: str, rewrite: RegionRewrite) -> None:
        self._name = pass_name
        self.rewrite = rewrite

    # Equal patterns (one pass, one rewrite) share the subtrees settled by earlier runs.
    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RegionPattern)
            and self._name == other._name
            and self.rewrite == other.rewrite
        )

    def __hash__(self) -> int:
        return hash((RegionPattern, self._name, self.rewrite))

    @property
    def name(self) -> str:
        return self._name

    def match_and_rewrite(self, node: BuildingBlock, context: RewriteContext):
        if isinstance(node, Lambda) and (
            node.parameter_name is None or isinstance(node.result, Block)
        ):
            return None  # a block body is rewritten as a block
        checkpoint = context.names.checkpoint()
        if isinstance(node, Block):
            rewritten = self.rewrite(node, context)
        else:
            body = self.rewrite(node.result, context)
            rewritten = (
                None if body is None else Lambda(node.parameter_name, node.parameter_type, body)
            )
        if rewritten is None:
            context.names.rollback(checkpoint)
        return rewritten


def rewrite_regions(comp: BuildingBlock, pass_name: str, rewrite: RegionRewrite) -> BuildingBlock:
    """`comp` with `rewrite` applied to each block and lambda body, and to `comp` itself when
    it is neither (a computation that is a plain expression)."""
    context = RewriteContext(pipeline_analyses(), NameSupply(comp))
    result = apply_patterns(comp, (RegionPattern(pass_name, rewrite),), context=context)
    if not isinstance(result, (Block, Lambda)):
        rewritten = rewrite(result, context)
        if rewritten is not None:
            result = rewritten
    return result
