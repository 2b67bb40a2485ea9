"""`flatten-blocks`: nested lets become one let.

- `(let a=x in (let b=y in r))` → `(let a=x, b=y in r)`: the same scopes exactly;
- `(let a=(let b=y in v), c=w in r)` → `(let b=y, a=v, c=w in r)` when no name
  the inner let binds is used after `a` (it would now be in scope there);
- `(let in r)` → `r`.

Nothing is evaluated more or less often, only the nesting changes.

Beta-reducing nested calls leaves chains of lets nested in their first
local, thousands deep. Rebuilding a flat let at every level of such a chain
would copy its locals at every level (quadratic), so this pass is one
bottom-up walk in which a let that is still being flattened stays an open
list of locals (`_OpenLet`) that the enclosing let extends in place; each let
is built once, at the end.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedcc.compiler.passes import FunctionPass, register_pass
from fedcc.compiler.rewriting import Analyses, pipeline_analyses, with_children
from fedcc.ir.building_blocks import Block, BuildingBlock


class _OpenLet:
    """A let being flattened: its locals so far, the names they bind, and its free names."""

    __slots__ = ("bound", "free", "locals", "result")

    def __init__(self) -> None:
        self.locals: list[tuple[str, BuildingBlock]] = []
        self.bound: set[str] = set()
        self.free: set[str] = set()  # of the locals so far, and of the result once set
        self.result: BuildingBlock | None = None

    @classmethod
    def of_block(cls, block: Block, analyses: Analyses) -> _OpenLet:
        opened = cls()
        opened.locals = list(block.locals)
        opened.bound = {name for name, _ in block.locals}
        opened.free = set(analyses.free_names(block))
        opened.result = block.result
        return opened

    def add_free(self, names: Iterable[str]) -> None:
        self.free.update(name for name in names if name not in self.bound)

    def append(self, name: str, value: BuildingBlock, analyses: Analyses) -> None:
        self.add_free(analyses.free_names(value))
        self.locals.append((name, value))
        self.bound.add(name)

    def splice(self, inner: _OpenLet) -> None:
        """Appends the locals of `inner` (its result is the caller's to place)."""
        self.add_free(inner.free)
        self.locals.extend(inner.locals)
        self.bound.update(inner.bound)

    def build(self) -> BuildingBlock:
        return Block(self.locals, self.result) if self.locals else self.result


Flattened = BuildingBlock | _OpenLet


class _Flattener:
    def __init__(self, analyses: Analyses) -> None:
        self.analyses = analyses

    def free_names(self, x: Flattened) -> Iterable[str]:
        return x.free if isinstance(x, _OpenLet) else self.analyses.free_names(x)

    def opened(self, x: Flattened) -> _OpenLet | None:
        if isinstance(x, _OpenLet):
            return x
        return _OpenLet.of_block(x, self.analyses) if isinstance(x, Block) else None

    def run(self, root: BuildingBlock) -> BuildingBlock:
        results: list[Flattened] = []
        stack: list[tuple[BuildingBlock, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            children = node.children()
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(children))
                continue
            flattened = results[len(results) - len(children) :]
            del results[len(results) - len(children) :]
            if isinstance(node, Block):
                results.append(self.flatten(node, flattened))
            else:
                results.append(with_children(node, [self.built(c) for c in flattened]))
        return self.built(results[0])

    @staticmethod
    def built(x: Flattened) -> BuildingBlock:
        return x.build() if isinstance(x, _OpenLet) else x

    def hoistable(self, node: Block, values: list[Flattened], result: Flattened) -> list[bool]:
        """For each local, whether its value is a let whose names nothing after it uses."""
        used_after = set(self.free_names(result))
        choices = []
        for (name, _), value in zip(reversed(node.locals), reversed(values)):
            inner = value.bound if isinstance(value, _OpenLet) else None
            if inner is None and isinstance(value, Block):
                inner = {n for n, _ in value.locals}
            if inner is None:
                choices.append(False)
            else:
                # Test the smaller set's names against the larger set.
                small, large = (
                    (inner, used_after) if len(inner) <= len(used_after) else (used_after, inner)
                )
                choices.append(not any(n != name and n in large for n in small))
            used_after.update(self.free_names(value))
        choices.reverse()
        return choices

    def flatten(self, node: Block, children: list[Flattened]) -> Flattened:
        values, result = children[:-1], children[-1]
        hoist = self.hoistable(node, values, result)
        result_let = self.opened(result)
        unchanged = all(a is b for a, b in zip(node.children(), children))
        if unchanged and node.locals and not any(hoist) and result_let is None:
            return node
        if hoist and hoist[0]:
            # Extend the first local's let in place: chains nested in the first local
            # (what beta-reducing nested calls gives) then flatten in linear time.
            flat = self.opened(values[0])
            flat.append(node.locals[0][0], flat.result, self.analyses)
        else:
            flat = _OpenLet()
            if values:
                flat.append(node.locals[0][0], self.built(values[0]), self.analyses)
        for (name, _), value, lift in zip(node.locals[1:], values[1:], hoist[1:]):
            inner = self.opened(value) if lift else None
            if inner is None:
                flat.append(name, self.built(value), self.analyses)
            else:
                flat.splice(inner)
                flat.append(name, inner.result, self.analyses)
        if result_let is not None:
            flat.splice(result_let)
            result = result_let.result
        flat.result = self.built(result)
        flat.add_free(self.analyses.free_names(flat.result))
        return flat


def flatten_blocks(comp: BuildingBlock) -> BuildingBlock:
    """`comp` with nested lets merged (see the module docstring)."""
    return _Flattener(pipeline_analyses()).run(comp)


FLATTEN_BLOCKS = register_pass(
    FunctionPass(
        "flatten-blocks",
        "merges nested lets into one: (let a=x in (let b=y in r)) becomes (let a=x, b=y in r)",
        flatten_blocks,
    )
)
