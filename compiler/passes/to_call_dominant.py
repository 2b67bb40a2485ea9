"""`to-call-dominant`: TFF's call-dominant form.

In call-dominant form the body of every lambda (and a computation that is
not a lambda) is `(let v1=c1, ..., vn=cn in r)` where

- each `ci` is a call of an intrinsic, a local graph, a name the body does
  not define (a parameter, a free variable, a call's result), with arguments
  that are names, selections, structs, literals, placements, data, and
  lambdas themselves in call-dominant form;
- each distinct call is bound once (a repeated call is shared);
- `r` is built the same way, without calls.

Calls of lambdas are inlined (beta-reduced) first, and locals bound to
lambdas substituted into their uses, so every remaining call runs something
external to the computation. (A lambda called with an argument narrower than
its parameter, which cannot be bound under the parameter's type, stays a
call of that lambda.) No code moves into or out of a lambda: each call is
bound under the lambda that held it.

The steps: make names unique and nested lets flat; inline called lambdas
(patterns, to a fixed point); make names unique again (inlining copies
binders); flatten each lambda's blocks into one `let` of calls,
substituting every other local. The steps repeat until they change nothing,
since flattening can uncover a lambda that a let hid from inlining.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedcc.compiler.passes import FunctionPass, register_pass
from fedcc.compiler.passes.beta_reduce import CalledBlockOfLambda, CalledLambdaToBlock
from fedcc.compiler.passes.flatten_blocks import flatten_blocks
from fedcc.compiler.passes.inline_trivial import InlineLocals
from fedcc.compiler.passes.simplify_selections import SelectionFromStruct
from fedcc.compiler.passes.uniquify_names import uniquify_names
from fedcc.compiler.rewriting import (
    NameSupply,
    RewriteContext,
    RewriteError,
    apply_patterns,
    pipeline_analyses,
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


def _inline_functions(value: BuildingBlock, uses: int, exposed_uses: int) -> bool:
    return isinstance(value, Lambda)


# Patterns that remove every call of a lambda the computation defines.
_INLINE_CALLED_LAMBDAS = (
    CalledLambdaToBlock(),
    CalledBlockOfLambda(),
    SelectionFromStruct(),
    InlineLocals(_inline_functions),
)


@dataclass
class _Region:
    """The `let` being built for one lambda body (or the computation's top level)."""

    bindings: list[tuple[str, Call]] = field(default_factory=list)
    bound: dict[Call, str] = field(default_factory=dict)  # call -> the name it is bound to

    def bind(self, call: Call, name: str | None, names: NameSupply) -> str:
        """Binds `call` to `name` (a fresh name if None), or returns the name an equal call
        is already bound to."""
        existing = self.bound.get(call)
        if existing is not None:
            return existing
        name = name or names.fresh("call")
        self.bindings.append((name, call))
        self.bound[call] = name
        return name


_VISIT, _EXIT, _LOCAL, _LOCAL_CALL, _EXIT_LAMBDA = range(5)


class _Flattener:
    """Flattens each region into one `let` of calls; names must be unique (no shadowing)."""

    def __init__(self, names: NameSupply) -> None:
        self.names = names
        # Locals that are not calls, by (unique) name: what their references become.
        self.env: dict[str, BuildingBlock] = {}
        self.regions: list[_Region] = [_Region()]

    def run(self, root: BuildingBlock) -> BuildingBlock:
        results: list[BuildingBlock] = []
        stack: list[tuple] = [(_VISIT, root)]
        while stack:
            task = stack.pop()
            kind = task[0]
            if kind == _VISIT:
                self._visit(stack, results, task[1])
            elif kind == _EXIT:
                node, count = task[1], task[2]
                children = results[-count:] if count else []
                if count:
                    del results[-count:]
                results.append(self._exit(node, children))
            elif kind == _LOCAL:
                self.env[task[1]] = results.pop()
            elif kind == _LOCAL_CALL:
                name, call = task[1], task[2]
                children = results[-len(call.children()) :]
                del results[-len(call.children()) :]
                bound_to = self.regions[-1].bind(with_children(call, children), name, self.names)
                if bound_to != name:
                    self.env[name] = Reference(bound_to, call.type_signature)
            else:  # _EXIT_LAMBDA
                node = task[1]
                body = self._close_region(results.pop())
                results.append(Lambda(node.parameter_name, node.parameter_type, body))
        (result,) = results
        return self._close_region(result)

    def _close_region(self, result: BuildingBlock) -> BuildingBlock:
        region = self.regions.pop()
        return Block(region.bindings, result) if region.bindings else result

    def _visit(self, stack: list, results: list, node: BuildingBlock) -> None:
        if isinstance(node, Reference):
            results.append(self.env.get(node.name, node))
        elif isinstance(node, Lambda):
            self.regions.append(_Region())
            stack.append((_EXIT_LAMBDA, node))
            stack.append((_VISIT, node.result))
        elif isinstance(node, Block):
            # The block's value is its result's; its locals join the region.
            stack.append((_VISIT, node.result))
            for name, value in reversed(node.locals):
                if isinstance(value, Call):
                    stack.append((_LOCAL_CALL, name, value))
                    stack.extend((_VISIT, c) for c in reversed(value.children()))
                else:
                    stack.append((_LOCAL, name))
                    stack.append((_VISIT, value))
        elif isinstance(node, (Call, Struct, Selection)):
            children = node.children()
            stack.append((_EXIT, node, len(children)))
            stack.extend((_VISIT, c) for c in reversed(children))
        else:  # literals, placements, intrinsics, local graphs, data: values as they are
            results.append(node)

    def _exit(self, node: BuildingBlock, children: list[BuildingBlock]) -> BuildingBlock:
        if isinstance(node, Selection) and isinstance(children[0], Struct):
            return children[0].elements[node.index][1]
        rebuilt = with_children(node, children)
        if isinstance(rebuilt, Call):
            name = self.regions[-1].bind(rebuilt, None, self.names)
            return Reference(name, rebuilt.type_signature)
        return rebuilt


def _one_round(comp: BuildingBlock) -> BuildingBlock:
    analyses = pipeline_analyses()
    names = NameSupply(comp)
    unique = flatten_blocks(uniquify_names(comp, analyses, names))
    inlined = apply_patterns(
        unique, _INLINE_CALLED_LAMBDAS, context=RewriteContext(analyses, names)
    )
    if inlined is not unique:
        inlined = uniquify_names(inlined, analyses, names)
    return _Flattener(names).run(inlined)


# A lambda can hide behind a let (`(let a=v in (x -> ...))(arg)`) until flattening shows
# it; each round inlines what the last one uncovered. Real programs need two rounds.
MAX_ROUNDS = 100


def to_call_dominant(comp: BuildingBlock) -> BuildingBlock:
    """`comp` in call-dominant form (see the module docstring)."""
    current = comp
    for _ in range(MAX_ROUNDS):
        result = _one_round(current)
        if result == current:
            # Flattening rebuilds every region; give back the input when it was in form.
            return comp if result == comp else current
        current = result
    raise RewriteError(f"to-call-dominant did not settle in {MAX_ROUNDS} rounds")


TO_CALL_DOMINANT = register_pass(
    FunctionPass(
        "to-call-dominant",
        "binds every call of an intrinsic, local graph or parameter once, in one let per lambda",
        to_call_dominant,
    )
)
