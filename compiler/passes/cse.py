"""`cse`: common subexpression elimination — a computation repeated in one scope is bound once.

Two occurrences are the same computation when they are structurally equal,
every free name in them refers to the same binder, and they sit under the
same innermost lambda (code is never moved into or out of a lambda: a lambda
may run many times, or never, and what it captures must stay what it was).

The computations considered are calls and data sets; trivial values (names,
selection paths, literals) are never bound for sharing, which is what lets
`inline-trivial` and `cse` run in one pipeline without undoing each other.
The shared value is bound under a fresh name at the innermost node that
encloses all its occurrences: in that node's own `let` if it is a block
(before the first local that uses it), otherwise in a new block around it.

Each round handles the largest repeated computations (those not inside
another repeated one); rounds repeat until nothing repeats. Every round is
one walk with an explicit worklist.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from fedcc.compiler.passes import FunctionPass, register_pass
from fedcc.compiler.rewriting import (
    Analyses,
    NameSupply,
    RewriteError,
    pipeline_analyses,
    with_children,
)
from fedcc.ir.building_blocks import Block, BuildingBlock, Call, Data, Lambda, Reference

# The kinds of node that compute something worth sharing.
SHARED_KINDS: tuple[type[BuildingBlock], ...] = (Call, Data)

# CSE reaches its fixed point long before this many rounds; more means a bug.
MAX_ROUNDS = 10_000


@dataclass
class _Tree:
    """The nodes of a computation in pre-order, each with its parent, depth and candidate key."""

    nodes: list[BuildingBlock] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # index among the parent's children
    depths: list[int] = field(default_factory=list)
    keys: dict[int, tuple] = field(default_factory=dict)  # frame -> key of a candidate


_VISIT, _BIND, _UNBIND, _ENTER_REGION, _LEAVE_REGION = range(5)


def _index(root: BuildingBlock, analyses: Analyses) -> _Tree:
    """Walks `root` once, keying each candidate by (node, region, binders of its free names)."""
    tree = _Tree()
    scope: dict[str, list[int]] = {}
    serial = 0
    regions = [0]
    stack: list[tuple] = [(_VISIT, root, -1, 0, 0)]
    while stack:
        task = stack.pop()
        kind = task[0]
        if kind == _BIND:
            serial += 1
            scope.setdefault(task[1], []).append(serial)
            continue
        if kind == _UNBIND:
            scope[task[1]].pop()
            continue
        if kind == _ENTER_REGION:
            serial += 1
            regions.append(serial)
            continue
        if kind == _LEAVE_REGION:
            regions.pop()
            continue
        _, node, parent, position, depth = task
        frame = len(tree.nodes)
        tree.nodes.append(node)
        tree.parents.append(parent)
        tree.positions.append(position)
        tree.depths.append(depth)
        if isinstance(node, SHARED_KINDS):
            binders = tuple(
                (name, scope[name][-1] if scope.get(name) else 0)
                for name in sorted(analyses.free_names(node))
            )
            tree.keys[frame] = (node, regions[-1], binders)
        if isinstance(node, Lambda):
            stack.append((_LEAVE_REGION,))
            if node.parameter_name is not None:
                stack.append((_UNBIND, node.parameter_name))
            stack.append((_VISIT, node.result, frame, 0, depth + 1))
            if node.parameter_name is not None:
                stack.append((_BIND, node.parameter_name))
            stack.append((_ENTER_REGION,))
        elif isinstance(node, Block):
            stack.extend((_UNBIND, name) for name, _ in node.locals)
            stack.append((_VISIT, node.result, frame, len(node.locals), depth + 1))
            for position in reversed(range(len(node.locals))):
                name, value = node.locals[position]
                stack.append((_BIND, name))
                stack.append((_VISIT, value, frame, position, depth + 1))
        else:
            children = node.children()
            stack.extend(
                (_VISIT, child, frame, position, depth + 1)
                for position, child in reversed(list(enumerate(children)))
            )
    return tree


def _repeated_groups(tree: _Tree) -> list[list[int]]:
    """Groups of frames holding the same computation, largest computations only, in order."""
    counts: dict[tuple, int] = defaultdict(int)
    for key in tree.keys.values():
        counts[key] += 1
    repeated = {frame for frame, key in tree.keys.items() if counts[key] > 1}
    # Pre-order: a parent's frame comes before its children's.
    inside = [False] * len(tree.nodes)
    groups: dict[tuple, list[int]] = {}
    for frame in range(len(tree.nodes)):
        parent = tree.parents[frame]
        if parent >= 0:
            inside[frame] = inside[parent] or parent in repeated
        if frame in repeated and not inside[frame]:
            groups.setdefault(tree.keys[frame], []).append(frame)
    return [frames for frames in groups.values() if len(frames) > 1]


def _common_ancestor(tree: _Tree, a: int, b: int) -> int:
    while tree.depths[a] > tree.depths[b]:
        a = tree.parents[a]
    while tree.depths[b] > tree.depths[a]:
        b = tree.parents[b]
    while a != b:
        a, b = tree.parents[a], tree.parents[b]
    return a


def _child_toward(tree: _Tree, ancestor: int, frame: int) -> int:
    """The position, among `ancestor`'s children, of the child that holds `frame`."""
    while tree.parents[frame] != ancestor:
        frame = tree.parents[frame]
    return tree.positions[frame]


def _round(root: BuildingBlock, analyses: Analyses, names: NameSupply) -> BuildingBlock:
    tree = _index(root, analyses)
    groups = _repeated_groups(tree)
    if not groups:
        return root
    replaced: dict[int, BuildingBlock] = {}
    # frame -> [(position of the first child using it, name, value)], in occurrence order.
    bindings_at: dict[int, list[tuple[int, str, BuildingBlock]]] = defaultdict(list)
    for frames in groups:
        value = tree.nodes[frames[0]]
        name = names.fresh("shared")
        anchor = frames[0]
        for frame in frames[1:]:
            anchor = _common_ancestor(tree, anchor, frame)
        first_child = min(_child_toward(tree, anchor, frame) for frame in frames)
        bindings_at[anchor].append((first_child, name, value))
        reference = Reference(name, value.type_signature)
        for frame in frames:
            replaced[frame] = reference
    return _rebuild(tree, replaced, bindings_at)


def _rebuild(
    tree: _Tree,
    replaced: dict[int, BuildingBlock],
    bindings_at: dict[int, list[tuple[int, str, BuildingBlock]]],
) -> BuildingBlock:
    children: dict[int, list[BuildingBlock]] = defaultdict(list)
    for frame in reversed(range(len(tree.nodes))):
        node = replaced.get(frame)
        if node is None:
            # Children were pushed last-first (reverse pre-order): restore their order.
            node = with_children(tree.nodes[frame], children.pop(frame, [])[::-1])
            if frame in bindings_at:
                node = _bind_at(node, bindings_at[frame])
        else:
            children.pop(frame, None)
        parent = tree.parents[frame]
        if parent < 0:
            return node
        children[parent].append(node)
    raise RewriteError("cse: the tree has no root")  # unreachable: frame 0 is the root


def _bind_at(node: BuildingBlock, bindings: list[tuple[int, str, BuildingBlock]]) -> Block:
    if not isinstance(node, Block):
        return Block([(name, value) for _, name, value in bindings], node)
    # Into the block's own let, before the first local (or the result) that uses each one.
    new_locals: list[tuple[str, BuildingBlock]] = []
    pending = sorted(bindings, key=lambda b: b[0])
    for position, local in enumerate(node.locals):
        while pending and pending[0][0] <= position:
            _, name, value = pending.pop(0)
            new_locals.append((name, value))
        new_locals.append(local)
    new_locals.extend((name, value) for _, name, value in pending)
    return Block(new_locals, node.result)


def eliminate_common_subexpressions(
    comp: BuildingBlock, analyses: Analyses | None = None, names: NameSupply | None = None
) -> BuildingBlock:
    """`comp` with each repeated computation bound once (see the module docstring)."""
    analyses = analyses or pipeline_analyses()
    names = names or NameSupply(comp)
    current = comp
    for _ in range(MAX_ROUNDS):
        rewritten = _round(current, analyses, names)
        if rewritten is current:
            return current
        current = rewritten
    raise RewriteError(f"cse did not reach a fixed point in {MAX_ROUNDS} rounds")


CSE = register_pass(
    FunctionPass(
        "cse",
        "binds a computation repeated in one scope once, under a fresh name",
        eliminate_common_subexpressions,
    )
)
