"""`inline-trivial`: copies cheap block locals into their uses, and single-use ones where safe.

A local is inlined (substituted for its references, then dropped) when its
value is:

- trivial (a name, a selection path from a name, a small literal, a
  placement, an intrinsic): copied to every use, as cheap as the name;
- a function value (a lambda or a local graph) used once: making a function
  costs nothing, wherever it happens;
- anything used exactly once, outside any lambda of the block: the value is
  then computed once, as before, only later. Uses inside a lambda are left
  alone, since the lambda may run many times (or never). Such a value is
  inlined only while it is at most `MAX_INLINED_DEPTH` (100) levels deep
  with what was inlined into it: a chain of n single-use computations
  (`let a=map(f,x), b=map(g,a), ... in sum(z)`, what tracing a loop gives)
  would otherwise nest n deep, past what `verify` and the file format accept
  (DESIGN §6: 1000 levels), so a long chain is nested in pieces of at most
  100 levels and the local that would go deeper stays bound. Inlining thus
  makes a program at most about 100 levels deeper, however long its chains.

Values are pure, so computing one later changes no result. Substitution
renames any binder that would capture a name of the inlined value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedcc.compiler.passes import PatternPass, register_pass
from fedcc.compiler.rewriting import (
    Analyses,
    NameSupply,
    RewriteContext,
    RewritePattern,
    is_trivial,
    substitute,
)
from fedcc.ir.building_blocks import Block, BuildingBlock, Lambda, LocalGraph, Reference

# A single-use computation deeper than this, with what was inlined into it, stays bound.
# Far below the file format's 1000 levels, and deep enough that chained maps still nest
# into pieces of about 45 maps that `merge-chained-maps` composes, a piece a round.
MAX_INLINED_DEPTH = 100

# decide(value, total uses, uses outside lambdas) -> whether to inline the local.
InlineDecision = Callable[[BuildingBlock, int, int], bool]


def inline_trivial_decision(value: BuildingBlock, uses: int, exposed_uses: int) -> bool:
    """The rule of `inline-trivial` (see the module docstring)."""
    if is_trivial(value):
        return True
    if isinstance(value, (Lambda, LocalGraph)):
        return uses == 1
    return uses == 1 and exposed_uses == 1


def _scaled(counts: Mapping[str, int], factor: int) -> dict[str, int]:
    return {name: count * factor for name, count in counts.items()}


def _add(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for name, count in counts.items():
        into[name] = into.get(name, 0) + count


def choose_locals_to_inline(block: Block, decide: InlineDecision, analyses: Analyses) -> list[bool]:
    """For each local of `block`, whether to inline it.

    Decided from the last local to the first, counting each name's uses as
    they will be once the later choices are made: inlining a local whose
    value uses `a` into three places makes three uses of `a`.
    """
    total = dict(analyses.use_counts(block.result))
    exposed = dict(analyses.exposed_use_counts(block.result))
    choices = []
    for name, value in reversed(block.locals):
        uses, exposed_uses = total.pop(name, 0), exposed.pop(name, 0)
        inline = decide(value, uses, exposed_uses)
        choices.append(inline)
        if inline:
            # Each use becomes a copy of the value; copies inside lambdas stay inside them.
            _add(total, _scaled(analyses.use_counts(value), uses))
            _add(exposed, _scaled(analyses.exposed_use_counts(value), exposed_uses))
        else:
            _add(total, analyses.use_counts(value))
            _add(exposed, analyses.exposed_use_counts(value))
    choices.reverse()
    return choices


def is_single_use_computation(value: BuildingBlock) -> bool:
    """Whether `inline-trivial` inlines `value` only because it is used once: neither
    trivial nor a function value (which are inlined at any depth)."""
    return not is_trivial(value) and not isinstance(value, (Lambda, LocalGraph))


def inline_locals(
    block: Block,
    choices: list[bool],
    analyses: Analyses,
    names: NameSupply,
    max_inlined_depth: int | None = None,
) -> BuildingBlock:
    """`block` with the chosen locals substituted into the later locals and the result, and
    dropped; a kept local that would capture a name of an inlined value is renamed.

    With `max_inlined_depth`, a chosen single-use computation (see
    `is_single_use_computation`) deeper than that once the earlier locals are
    substituted into it stays bound instead. Keeping a local used once
    changes no other local's use counts, so the other choices stand; and the
    kept value is the same, as deep, when the pass runs again (idempotent).
    """
    env: dict[str, BuildingBlock] = {}
    capturable: set[str] = set()
    kept: list[tuple[str, BuildingBlock]] = []
    inlined_any = False
    for (name, value), inline in zip(block.locals, choices, strict=True):
        value = substitute(value, env, analyses, names)
        if (
            inline
            and max_inlined_depth is not None
            and value.depth > max_inlined_depth
            and is_single_use_computation(value)
        ):
            inline = False
        if inline:
            inlined_any = True
            env[name] = value
            capturable.update(analyses.free_names(value))
        elif name in capturable and any(key != name for key in env):
            renamed = names.fresh(name)
            env[name] = Reference(renamed, value.type_signature)
            kept.append((renamed, value))
        else:
            env.pop(name, None)
            kept.append((name, value))
    if not inlined_any:
        return block  # every choice was kept for depth: nothing was substituted
    result = substitute(block.result, env, analyses, names)
    return Block(kept, result) if kept else result


class InlineLocals(RewritePattern):
    """Inlines the locals of a block that `decide` picks."""

    node_types = (Block,)
    context_free = True

    def __init__(
        self,
        decide: InlineDecision = inline_trivial_decision,
        max_inlined_depth: int | None = MAX_INLINED_DEPTH,
    ) -> None:
        self.decide = decide
        self.max_inlined_depth = max_inlined_depth

    def match_and_rewrite(self, node: Block, context: RewriteContext) -> BuildingBlock | None:
        choices = choose_locals_to_inline(node, self.decide, context.analyses)
        if not any(choices):
            return None
        return inline_locals(
            node, choices, context.analyses, context.names, self.max_inlined_depth
        )


INLINE_TRIVIAL = register_pass(
    PatternPass(
        "inline-trivial",
        "inlines locals bound to names, selections, literals, and single-use locals where safe",
        (InlineLocals(),),
    )
)
