"""Small named analyses of IR: what a program holds, counted (for `fedcc dump --stats` and passes).

Each function takes a building block or a `Program` (all its computations)
and walks it with an explicit worklist, so any depth is fine. Counts are
per occurrence: a local graph used twice counts its ops twice. Result dicts
are sorted by key, so printing them is deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Intrinsic,
    Lambda,
    Literal,
    LocalGraph,
    Reference,
    walk,
)
from fedcc.ir.program import Program
from fedcc.ir.types import Type


def _roots(x: BuildingBlock | Program) -> tuple[BuildingBlock, ...]:
    return tuple(x.computations.values()) if isinstance(x, Program) else (x,)


def _nodes(x: BuildingBlock | Program) -> Iterable[BuildingBlock]:
    for root in _roots(x):
        yield from walk(root)


def _sorted(counts: Counter) -> dict[str, int]:
    return dict(sorted(counts.items()))


def count_nodes(x: BuildingBlock | Program) -> int:
    """The number of nodes in `x`."""
    return sum(1 for _ in _nodes(x))


def count_nodes_by_kind(x: BuildingBlock | Program) -> dict[str, int]:
    """How many nodes of each kind (`call`, `lambda`, ...) `x` holds; kinds absent are left out."""
    return _sorted(Counter(node.kind for node in _nodes(x)))


def count_intrinsic_calls(x: BuildingBlock | Program) -> dict[str, int]:
    """How many times each intrinsic (by URI, e.g. `federated_map`) appears in `x`."""
    return _sorted(Counter(node.uri for node in _nodes(x) if isinstance(node, Intrinsic)))


def count_local_ops(x: BuildingBlock | Program) -> dict[str, int]:
    """How many ops of each primitive (`add`, `matmul`, ...) the local graphs of `x` hold."""
    counts: Counter = Counter()
    for node in _nodes(x):
        if isinstance(node, LocalGraph):
            counts.update(op.primitive for op in node.graph.ops)
    return _sorted(counts)


def constant_bytes(x: BuildingBlock | Program) -> int:
    """The bytes of tensor data `x` embeds: literals plus tensor attributes of local ops."""
    total = 0
    for node in _nodes(x):
        if isinstance(node, Literal):
            total += node.value.nbytes
        elif isinstance(node, LocalGraph):
            for op in node.graph.ops:
                total += sum(v.nbytes for _, v in op.attributes if isinstance(v, np.ndarray))
    return total


def free_references(x: BuildingBlock) -> dict[str, Type]:
    """The names `x` uses without binding them, each with the type of its first free use.

    A name is bound inside a lambda by its parameter, and inside a block by a
    local for the later locals and the result. An empty result means `x` is closed.
    """
    free: dict[str, Type] = {}
    bound: Counter = Counter()  # name -> how many enclosing binders name it right now
    # Tasks: a node to visit, or ("bind" | "unbind", name).
    stack: list[Any] = [x]
    while stack:
        task = stack.pop()
        if isinstance(task, tuple):
            action, name = task
            bound[name] += 1 if action == "bind" else -1
        elif isinstance(task, Reference):
            if not bound[task.name] and task.name not in free:
                free[task.name] = task.type_signature
        elif isinstance(task, Lambda) and task.parameter_name is not None:
            stack += [("unbind", task.parameter_name), task.result, ("bind", task.parameter_name)]
        elif isinstance(task, Block):
            stack.extend(("unbind", name) for name, _ in task.locals)
            stack.append(task.result)
            for name, value in reversed(task.locals):
                stack += [("bind", name), value]
        else:
            stack.extend(reversed(task.children()))
    return dict(sorted(free.items()))


def computation_stats(comp: BuildingBlock) -> dict[str, Any]:
    """The statistics of one computation: type, size, depth and the counts above."""
    return {
        "type": str(comp.type_signature),
        "nodes": count_nodes(comp),
        "depth": comp.depth,
        "nodes_by_kind": count_nodes_by_kind(comp),
        "intrinsic_calls": count_intrinsic_calls(comp),
        "local_graphs": sum(1 for n in walk(comp) if isinstance(n, LocalGraph)),
        "local_ops": count_local_ops(comp),
        "constant_bytes": constant_bytes(comp),
    }


def program_stats(program: Program | BuildingBlock) -> dict[str, Any]:
    """Statistics of every computation of `program` and their totals, as plain dicts and ints.

    `{"computations": {name: computation_stats(...)}, "total": {...}}`; a bare
    building block is reported as one computation named `computation`.
    """
    if not isinstance(program, Program):
        program = Program({"computation": program})
    per_computation = {name: computation_stats(c) for name, c in program.computations.items()}
    total: dict[str, Any] = {"nodes": 0, "local_graphs": 0, "constant_bytes": 0}
    for stats in per_computation.values():
        for key in total:
            total[key] += stats[key]
    for key in ("nodes_by_kind", "intrinsic_calls", "local_ops"):
        summed: Counter = Counter()
        for stats in per_computation.values():
            summed.update(stats[key])
        total[key] = _sorted(summed)
    total["depth"] = max(stats["depth"] for stats in per_computation.values())
    return {"computations": per_computation, "total": total}
