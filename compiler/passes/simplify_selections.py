"""`simplify-selections`: selections from structs built in place or bound in a block.

- `<a,b>[0]` → `a` (the other elements are pure values, so dropping them is exact);
- `(let l=v in <a,b>)[0]` → `(let l=v in a)`;
- `s[0]` → `a` where a block bound `s=<a,b>` and `a` is trivial (a name, a
  selection path from one, a small literal) still meaning the same here;
- `<x[0],x[1]>` → `x` when that rebuilds exactly `x` (same length, names, type).
"""

from __future__ import annotations

from fedcc.compiler.passes import PatternPass, register_pass
from fedcc.compiler.rewriting import RewriteContext, RewritePattern, is_trivial
from fedcc.ir.building_blocks import Block, BuildingBlock, Reference, Selection, Struct


class SelectionFromStruct(RewritePattern):
    """`<a,b>[0]` → `a`."""

    node_types = (Selection,)

    def match_and_rewrite(self, node: Selection, context: RewriteContext) -> BuildingBlock | None:
        if isinstance(node.source, Struct):
            return node.source.elements[node.index][1]
        return None


class SelectionFromBlockOfStruct(RewritePattern):
    """`(let l=v in <a,b>)[0]` → `(let l=v in a)`."""

    node_types = (Selection,)

    def match_and_rewrite(self, node: Selection, context: RewriteContext) -> BuildingBlock | None:
        source = node.source
        if isinstance(source, Block) and isinstance(source.result, Struct):
            return Block(source.locals, source.result.elements[node.index][1])
        return None


class SelectionFromBoundStruct(RewritePattern):
    """`s[0]` → `a` where `s=<a,b>` is bound in an enclosing block and `a` is trivial."""

    node_types = (Selection,)

    def match_and_rewrite(self, node: Selection, context: RewriteContext) -> BuildingBlock | None:
        source = node.source
        if not isinstance(source, Reference):
            return None
        binding = context.lookup(source.name)
        if binding is None or not isinstance(binding.value, Struct):
            return None
        element = binding.value.elements[node.index][1]
        if not is_trivial(element):
            return None
        if not context.means_the_same_as_at(context.analyses.free_names(element), binding):
            return None
        return element


class StructOfAllSelections(RewritePattern):
    """`<x[0],x[1]>` → `x` when the struct has exactly `x`'s type."""

    node_types = (Struct,)

    def match_and_rewrite(self, node: Struct, context: RewriteContext) -> BuildingBlock | None:
        elements = node.elements
        if not elements:
            return None
        first = elements[0][1]
        if not isinstance(first, Selection):
            return None
        source = first.source
        for index, (_, value) in enumerate(elements):
            if not isinstance(value, Selection) or value.index != index:
                return None
            if value.source is not source and value.source != source:
                return None
        if source.type_signature != node.type_signature:
            return None
        return source


SIMPLIFY_SELECTIONS = register_pass(
    PatternPass(
        "simplify-selections",
        "resolves selections from structs built in place or bound in a block: <a,b>[0] -> a",
        (
            SelectionFromStruct(),
            SelectionFromBlockOfStruct(),
            SelectionFromBoundStruct(),
            StructOfAllSelections(),
        ),
    )
)
