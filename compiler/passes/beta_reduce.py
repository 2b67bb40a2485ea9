"""`beta-reduce`: a called lambda becomes a block, `(x -> body)(arg)` → `(let x=arg in body)`.

Nothing is copied and nothing moves: the argument is still evaluated once,
before the body, as the call did. The rewrite applies only when the
argument's type is the parameter's type exactly: a narrower argument (a
known dim where the parameter has `?`) cannot be bound under the
parameter's name without changing the type of the references to it.
"""

from __future__ import annotations

from fedcc.compiler.passes import PatternPass, register_pass
from fedcc.compiler.rewriting import RewriteContext, RewritePattern
from fedcc.ir.building_blocks import Block, BuildingBlock, Call, Lambda


class CalledLambdaToBlock(RewritePattern):
    """`(x -> body)(arg)` → `(let x=arg in body)`; `( -> body)()` → `body`."""

    node_types = (Call,)
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        function = node.function
        if not isinstance(function, Lambda):
            return None
        if function.parameter_name is None:
            return function.result
        if node.argument.type_signature != function.parameter_type:
            return None
        return Block([(function.parameter_name, node.argument)], function.result)


class CalledBlockOfLambda(RewritePattern):
    """`(let a=v in (x -> body))(arg)` → `(let a=v, x=arg in body)` when no local of the block
    is named like a free name of `arg` (which would then mean the local instead)."""

    node_types = (Call,)
    context_free = True

    def match_and_rewrite(self, node: Call, context: RewriteContext) -> BuildingBlock | None:
        block = node.function
        if not isinstance(block, Block) or not isinstance(block.result, Lambda):
            return None
        function = block.result
        if function.parameter_name is None:
            return Block(block.locals, function.result)
        argument = node.argument
        if argument.type_signature != function.parameter_type:
            return None
        free = context.analyses.free_names(argument)
        if any(name in free for name, _ in block.locals):
            return None
        return Block([*block.locals, (function.parameter_name, argument)], function.result)


BETA_REDUCE = register_pass(
    PatternPass(
        "beta-reduce",
        "turns called lambdas into blocks: (x -> body)(arg) becomes (let x=arg in body)",
        (CalledLambdaToBlock(), CalledBlockOfLambda()),
    )
)
