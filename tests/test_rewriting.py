"""The rewrite infrastructure: the walker, the scope patterns see, analyses, names, substitution."""

from __future__ import annotations

import pytest

from fedcc.compiler.rewriting import (
    Analyses,
    NameSupply,
    RewriteContext,
    RewriteError,
    RewriteLog,
    RewritePattern,
    apply_patterns,
    is_trivial,
    substitute,
    with_children,
)
from fedcc.compiler.verify import verify
from fedcc.ir.analysis import free_references
from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Lambda,
    Literal,
    Reference,
    Selection,
    Struct,
    walk,
)
from fedcc.ir.text import parse_text, to_compact_text

INT = "int32"


class SelectFromStruct(RewritePattern):
    node_types = (Selection,)

    def match_and_rewrite(self, node, context):
        if isinstance(node.source, Struct):
            return node.source.elements[node.index][1]
        return None


class RecordScope(RewritePattern):
    """Records, for each reference, what the context says about its name."""

    node_types = (Reference,)

    def __init__(self) -> None:
        self.seen: list[tuple[str, object, int]] = []

    def match_and_rewrite(self, node, context):
        binding = context.lookup(node.name)
        value = None if binding is None or binding.value is None else to_compact_text(binding.value)
        self.seen.append((node.name, value, context.lambda_depth))
        return None


def test_patterns_apply_bottom_up_and_rebuild_parents():
    comp = parse_text("(x:int32 -> <<<x,int32(1)>[0],int32(2)>[0],x>)")
    log = RewriteLog()
    result = apply_patterns(comp, [SelectFromStruct()], log=log)
    assert to_compact_text(result) == "(x:int32 -> <x,x>)"
    assert log.counts() == {"SelectFromStruct": 2}
    assert log.changes == [("SelectFromStruct", "selection", "reference")] * 2
    verify(result)


def test_an_unchanged_program_comes_back_as_the_same_object():
    comp = parse_text("(x:int32 -> <x,x>)")
    assert apply_patterns(comp, [SelectFromStruct()]) is comp


def test_dispatch_calls_a_pattern_only_for_its_node_types():
    calls = []

    class Spy(RewritePattern):
        node_types = (Call,)

        def match_and_rewrite(self, node, context):
            calls.append(node.kind)
            return None

    apply_patterns(parse_text("(x:{int32}@CLIENTS -> <federated_sum(x),x>)"), [Spy()])
    assert calls == ["call"]


def test_patterns_see_the_binders_in_scope_with_block_values_already_rewritten():
    comp = parse_text(
        "(x:<int32,int32> -> (let a=<x,x>[0], x=int32(3) in <a, x, (y:int32 -> <y,x>)>))"
    )
    recorder = RecordScope()
    apply_patterns(comp, [SelectFromStruct(), recorder])
    # a's value was rewritten to `x` before the result saw it; the lambda adds a depth.
    assert ("a", "(x:<int32,int32>)", 1) in recorder.seen
    assert ("x", "int32(3)", 1) in recorder.seen
    assert ("y", None, 2) in recorder.seen
    assert ("x", "int32(3)", 2) in recorder.seen
    assert ("x", None, 1) in recorder.seen  # the parameter, inside a's value


def test_means_the_same_as_at_detects_shadowing():
    context = RewriteContext(Analyses(), NameSupply())
    context.bind("a", parse_text("int32(1)").type_signature, None)
    context.bind("s", parse_text("<(a:int32)>").type_signature, parse_text("<(a:int32)>"))
    s = context.lookup("s")
    assert context.means_the_same_as_at(["a", "free"], s)
    context.bind("a", parse_text("int32(2)").type_signature, None)
    assert not context.means_the_same_as_at(["a"], s)
    context.unbind("a")
    assert context.means_the_same_as_at(["a"], s)


def test_a_pattern_that_changes_a_type_is_an_error_naming_it():
    class Widen(RewritePattern):
        node_types = (Literal,)

        def match_and_rewrite(self, node, context):
            return Struct([node])

    with pytest.raises(RewriteError, match="pattern Widen rewrote a literal of type int32"):
        apply_patterns(parse_text("int32(1)"), [Widen()])


def test_patterns_that_never_settle_are_an_error():
    class Flip(RewritePattern):
        node_types = (Literal,)

        def match_and_rewrite(self, node, context):
            return Literal(1 - int(node.value), "int32")

    with pytest.raises(RewriteError, match="keep rewriting"):
        apply_patterns(parse_text("int32(1)"), [Flip()])


def deep_chain(depth: int) -> BuildingBlock:
    """`(x -> <<...<x,1>[0]...,1>[0])`: `depth` selections from structs, nested."""
    node: BuildingBlock = Reference("x", INT)
    one = Literal(1, "int32")
    for _ in range(depth):
        node = Selection(Struct([node, one]), 0)
    return Lambda("x", INT, node)


def test_a_deep_program_rewrites_without_recursion():
    comp = deep_chain(3000)
    assert comp.depth > 6000
    assert to_compact_text(apply_patterns(comp, [SelectFromStruct()])) == "(x:int32 -> x)"


def test_use_counts_count_free_references_and_respect_binders():
    analyses = Analyses()
    comp = parse_text(
        "(let a=<(x:int32),(x:int32)>, x=a[0] in <x, a, (y:int32 -> <y,a,(z:int32)>)>)"
    )
    assert dict(analyses.use_counts(comp)) == {"x": 2, "z": 1}
    assert dict(analyses.exposed_use_counts(comp)) == {"x": 2}
    body = comp.result
    assert dict(analyses.use_counts(body)) == {"x": 1, "a": 2, "z": 1}
    assert dict(analyses.exposed_use_counts(body)) == {"x": 1, "a": 1}
    assert set(analyses.free_names(comp)) == set(free_references(comp))


def test_use_counts_are_cached_by_node_identity():
    analyses = Analyses()
    comp = parse_text("(x:int32 -> <x,x>)")
    first = analyses.use_counts(comp.result)
    assert analyses.use_counts(comp.result) is first


def test_use_counts_of_a_deep_program_do_not_recurse():
    comp = deep_chain(3000)
    analyses = Analyses()
    assert dict(analyses.use_counts(comp)) == {}
    assert dict(analyses.use_counts(comp.result)) == {"x": 1}


def test_fresh_names_avoid_every_name_of_the_program():
    comp = parse_text("(x:int32 -> (let x_1=x, v_2=x in <x_1,v_2,(x_3:int32)>))")
    names = NameSupply(comp)
    assert names.fresh("x") == "x_2"
    assert names.fresh("x_1") == "x_4"  # numbered bases share the stem's counter
    assert names.fresh("v") == "v_1"
    assert names.fresh("v") == "v_3"
    assert names.fresh("in") == "v_4"  # a reserved word is no stem


def test_names_given_back_by_a_rollback_are_handed_out_again():
    # A rewrite that takes names and then changes nothing gives them back: what it looked
    # at leaves no trace on the names of the rewrites after it.
    names = NameSupply(parse_text("(x_2:int32 -> x_2)"))
    assert names.fresh("x") == "x_1"
    checkpoint = names.checkpoint()
    assert (names.fresh("x"), names.fresh("x"), names.fresh("y")) == ("x_3", "x_4", "y_1")
    names.reserve("z")
    names.rollback(checkpoint)
    assert not any(names.is_used(name) for name in ("x_3", "x_4", "y_1", "z"))
    assert names.is_used("x_1") and names.is_used("x_2")
    assert (names.fresh("x"), names.fresh("y")) == ("x_3", "y_1")


def test_substitute_replaces_free_references_only():
    analyses, names = Analyses(), NameSupply()
    comp = parse_text("<(a:int32), (a:int32 -> a), (let a=int32(1) in a), (let b=(a:int32) in b)>")
    result = substitute(comp, {"a": Literal(7, "int32")}, analyses, names)
    assert to_compact_text(result) == (
        "<int32(7),(a:int32 -> a),(let a=int32(1) in a),(let b=int32(7) in b)>"
    )


def test_substitute_renames_binders_that_would_capture():
    comp = parse_text("(y:int32 -> <(a:int32),y>)")
    names = NameSupply(comp)
    result = substitute(comp, {"a": Reference("y", INT)}, Analyses(), names)
    text = to_compact_text(result)
    assert text == "(y_1:int32 -> <(y:int32),y_1>)"
    assert free_references(result) == {"y": parse_text("int32(0)").type_signature}


def test_substitute_refuses_a_replacement_of_another_type():
    with pytest.raises(RewriteError, match="cannot replace reference 'a' of type int32"):
        substitute(
            parse_text("(a:int32)"), {"a": Literal(1.0, "float32")}, Analyses(), NameSupply()
        )


def test_substitute_leaves_untouched_subtrees_shared():
    comp = parse_text("<(a:int32), (b:int32 -> <b,b,b>)>")
    result = substitute(comp, {"a": Literal(1, "int32")}, Analyses(), NameSupply())
    assert result.elements[1][1] is comp.elements[1][1]


def test_with_children_rebuilds_only_on_change():
    block = parse_text("(let a=int32(1) in a)")
    assert with_children(block, list(block.children())) is block
    rebuilt = with_children(block, [Literal(2, "int32"), Reference("a", INT)])
    assert isinstance(rebuilt, Block) and to_compact_text(rebuilt) == "(let a=int32(2) in a)"


def test_trivial_values_are_names_paths_small_literals_placements_intrinsics():
    assert is_trivial(parse_text("(x:<<int32>>)[0][0]"))
    assert is_trivial(parse_text("int32[2](1,2)"))
    assert is_trivial(parse_text("CLIENTS"))
    assert not is_trivial(Literal(list(range(100)), "int32"))
    assert not is_trivial(parse_text("<(x:int32)>[0]"))
    assert not is_trivial(parse_text("federated_sum((x:{int32}@CLIENTS))"))


def test_every_node_of_a_rewritten_program_is_well_typed():
    comp = parse_text(
        "(x:{int32}@CLIENTS -> <federated_sum(<x,x>[1]), <(y:int32 -> <y,y>[0]), x>[0]>)"
    )
    result = apply_patterns(comp, [SelectFromStruct()])
    verify(result)
    assert not any(
        isinstance(node, Selection) and isinstance(node.source, Struct) for node in walk(result)
    )
