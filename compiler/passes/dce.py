"""`dce`: removes block locals nothing uses, and blocks left without locals.

Every value of the IR is pure (randomness is keyed), so a value nobody
reads can go without changing any result. Liveness runs from the block's
result backwards through its locals, so a chain of locals used only by dead
ones goes in one step.
"""

from __future__ import annotations

from fedcc.compiler.passes import PatternPass, register_pass
from fedcc.compiler.rewriting import RewriteContext, RewritePattern
from fedcc.ir.building_blocks import Block, BuildingBlock


class RemoveDeadLocals(RewritePattern):
    """`(let a=v, b=w in f(b))` → `(let b=w in f(b))` when neither `w` nor `f(b)` uses `a`."""

    node_types = (Block,)
    context_free = True

    def match_and_rewrite(self, node: Block, context: RewriteContext) -> BuildingBlock | None:
        free_names = context.analyses.free_names
        live = set(free_names(node.result))
        kept = []
        for name, value in reversed(node.locals):
            if name in live:
                kept.append((name, value))
                # Earlier locals of the same name are shadowed from here on.
                live.discard(name)
                live.update(free_names(value))
        if len(kept) == len(node.locals):
            return None
        if not kept:
            return node.result
        return Block(reversed(kept), node.result)


DCE = register_pass(
    PatternPass(
        "dce",
        "removes block locals that nothing uses, and blocks left without locals",
        (RemoveDeadLocals(),),
    )
)
