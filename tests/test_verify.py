"""`verify` accepts every well-typed program and names the problem and the node of ill-typed ones.

Constructors check local typing only, so scoping errors are built with them
directly; errors the constructors would refuse are built by swapping a bad
piece into a finished node (`_forged`), as a buggy pass or a hostile file might.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from strategies import federated_programs, program_envelopes, programs, sample_programs

from fedcc.compiler.verify import DEFAULT_MAX_DEPTH, verify, verify_graph
from fedcc.ir import building_blocks as bb
from fedcc.ir.analysis import free_references
from fedcc.ir.building_blocks import (
    Block,
    Call,
    Data,
    Intrinsic,
    Lambda,
    Literal,
    LocalGraph,
    Placement,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.program import Program
from fedcc.ir.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
    Type,
)

I32 = TensorType(np.int32)
F32 = TensorType(np.float32)


def one() -> Literal:
    return Literal(np.int32(1))


def _forged(node, **fields):
    """A copy of `node` with `fields` replaced, bypassing the constructor's checks."""
    copy = object.__new__(type(node))
    for klass in type(node).__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if hasattr(node, slot):
                object.__setattr__(copy, slot, getattr(node, slot))
    for name, value in fields.items():
        object.__setattr__(copy, name, value)
    return copy


def _rejects(comp, *fragments, **options) -> str:
    with pytest.raises(FederatedTypeError) as raised:
        verify(comp, **options)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- generated programs are accepted -----------------------------------------------------


@given(programs())
def test_accepts_every_generated_program(comp):
    verify(comp)


@given(federated_programs())
def test_accepts_every_generated_federated_program(comp):
    verify(comp)


@given(program_envelopes())
def test_accepts_every_generated_program_envelope(program):
    verify(program)


@given(programs(scope={"model": "float32[3]", "clients": "{float32[3]}@CLIENTS"}))
def test_free_names_are_rejected_unless_allowed(comp):
    free = free_references(comp)
    allowed = {"model": "float32[3]", "clients": "{float32[3]}@CLIENTS"}
    verify(comp, allow_free=allowed)
    verify(comp, allow_free=list(allowed))
    if free:
        message = _rejects(comp, "is not bound")
        assert any(repr(name) in message for name in free)


def _replace(root, target, replacement):
    """`root` with the node `target` (by identity) replaced, rebuilt through the constructors."""
    rebuilt = {}
    for node in bb.post_order(root):
        if node is target:
            rebuilt[id(node)] = replacement
            continue
        kids = [rebuilt[id(c)] for c in node.children()]
        rebuilt[id(node)] = _REBUILD[type(node)](node, kids) if kids else node
    return rebuilt[id(root)]


_REBUILD = {
    Lambda: lambda n, k: Lambda(n.parameter_name, n.parameter_type, k[0]),
    Block: lambda n, k: Block(
        [(name, v) for (name, _), v in zip(n.locals, k[:-1], strict=True)], k[-1]
    ),
    Call: lambda n, k: Call(*k),
    Struct: lambda n, k: Struct([(name, v) for (name, _), v in zip(n.elements, k, strict=True)]),
    Selection: lambda n, k: Selection(k[0], n.index),
}


@pytest.fixture(scope="module")
def sampled_programs():
    return sample_programs(150, seed=21) + sample_programs(150, seed=22, federated=True)


def test_renaming_any_reference_to_an_unbound_name_is_rejected(sampled_programs):
    mutated = 0
    for comp in sampled_programs:
        references = [n for n in bb.walk(comp) if isinstance(n, Reference)]
        if not references:
            continue
        target = references[len(references) // 2]
        broken = _replace(comp, target, Reference("unbound_name", target.type_signature))
        _rejects(broken, "'unbound_name'", "is not bound")
        mutated += 1
    assert mutated >= 100


def test_changing_the_type_of_any_bound_reference_is_rejected(sampled_programs):
    other = TensorType(np.uint16, (7, 7, 7))
    mutated = 0
    for comp in sampled_programs:
        for target in (n for n in bb.walk(comp) if isinstance(n, Reference)):
            try:  # the constructors refuse the new type where the context constrains it
                broken = _replace(comp, target, Reference(target.name, other))
            except FederatedTypeError:
                continue
            _rejects(broken, f"reference {target.name!r} has type uint16[7,7,7]")
            mutated += 1
            break
    assert mutated >= 50


# --- scoping -----------------------------------------------------------------------------


def test_unbound_reference_is_rejected_with_its_path():
    comp = Lambda("x", I32, Call(Lambda("y", I32, Reference("z", I32)), Reference("x", I32)))
    _rejects(comp, "lambda.result.call.function.lambda.result: reference 'z'", "not bound")


def test_reference_with_the_wrong_type_is_rejected():
    comp = Lambda("x", I32, Reference("x", F32))
    _rejects(comp, "lambda.result: ", "'x' has type float32", "bound with type int32")


def test_block_local_used_before_its_binding_is_rejected():
    comp = Block([("a", Reference("b", I32)), ("b", one())], Reference("a", I32))
    _rejects(comp, "block[local 'a']: reference 'b' is used before its binding")


def test_block_local_cannot_refer_to_itself():
    comp = Block([("a", Reference("a", I32))], Reference("a", I32))
    _rejects(comp, "block[local 'a']", "used before its binding")


def test_block_local_used_outside_its_block_is_rejected():
    comp = Struct([Block([("a", one())], Reference("a", I32)), Reference("a", I32)])
    _rejects(comp, "struct[1]: reference 'a' of type int32 is not bound")


def test_lambda_parameter_used_outside_its_lambda_is_rejected():
    comp = Lambda("x", I32, Struct([("f", Lambda("y", I32, Reference("y", I32)))]))
    comp = Struct([comp, ("late", Reference("y", I32))])
    _rejects(comp, "struct['late']", "'y'", "not bound")


def test_locals_are_visible_to_later_locals_and_the_result():
    comp = Block(
        [("a", one()), ("b", Struct([Reference("a", I32), Reference("a", I32)]))],
        Selection(Reference("b", StructType([I32, I32])), 1),
    )
    verify(comp)


def test_shadowing_is_allowed_and_the_innermost_binding_wins():
    inner = Block([("x", Literal(np.float32(2)))], Reference("x", F32))
    comp = Lambda("x", I32, Struct([Reference("x", I32), inner, Reference("x", I32)]))
    verify(comp)
    wrong = Lambda("x", I32, Block([("x", Literal(np.float32(2)))], Reference("x", I32)))
    _rejects(wrong, "lambda.result.block.result", "bound with type float32")


def test_a_local_may_rebind_its_own_name_from_the_outer_binding():
    comp = Lambda(
        "x", I32, Block([("x", Struct([Reference("x", I32)]))], Reference("x", StructType([I32])))
    )
    verify(comp)


def test_allow_free_by_name_or_by_type():
    comp = Struct([Reference("w", F32), Reference("w", F32)])
    _rejects(comp, "struct[0]: reference 'w' of type float32 is not bound")
    verify(comp, allow_free=["w"])
    verify(comp, allow_free="w")
    verify(comp, allow_free={"w": "float32"})
    _rejects(
        comp,
        "struct[0]: free reference 'w' has type float32, expected int32",
        allow_free={"w": I32},
    )


def test_free_name_must_have_one_type_at_every_use():
    comp = Struct([Reference("w", F32), Reference("w", I32)])
    _rejects(
        comp, "struct[1]: free reference 'w' has type int32, expected float32", allow_free=["w"]
    )


def test_program_errors_name_the_computation():
    good = Lambda(None, None, one())
    bad = Lambda("s", I32, Block([("a", Reference("s", I32))], Reference("b", I32)))
    program = Program({"initialize": good, "next": bad})
    _rejects(program, "next: lambda.result.block.result: reference 'b'")
    verify(Program({"initialize": good}))


def test_rejects_values_that_are_not_programs():
    with pytest.raises(FederatedTypeError, match="building block or a Program"):
        verify("(x -> x)")


# --- node types re-derived ---------------------------------------------------------------


def test_call_with_a_swapped_result_type_is_rejected():
    call = Call(Lambda("x", I32, Reference("x", I32)), one())
    _rejects(
        Struct([_forged(call, type_signature=F32)]),
        "struct[0]: call is declared float32, but its parts give int32",
    )


def test_call_with_an_argument_of_the_wrong_type_is_rejected():
    call = Call(Lambda("x", I32, Reference("x", I32)), one())
    _rejects(
        _forged(call, argument=Literal(np.float32(1))),
        "root: call of a function of type (int32 -> int32)",
        "not assignable",
    )


def test_call_of_a_non_function_is_rejected():
    call = Call(Lambda("x", I32, Reference("x", I32)), one())
    _rejects(_forged(call, function=one()), "call of a value of non-function type int32")


def test_call_without_its_argument_is_rejected():
    call = Call(Lambda("x", I32, Reference("x", I32)), one())
    _rejects(_forged(call, argument=None), "without an argument")


def test_intrinsic_with_the_wrong_placement_is_rejected():
    good = call_intrinsic("federated_sum", Data("clients", FederatedType(F32, CLIENTS)))
    verify(good)
    wrong = FunctionType(FederatedType(F32, CLIENTS), FederatedType(F32, CLIENTS, all_equal=True))
    forged = Call(_forged(good.function, type_signature=wrong), good.argument)
    message = _rejects(forged, "call.function: intrinsic federated_sum")
    assert "float32@SERVER" in message


def test_intrinsic_applied_to_a_server_value_is_rejected():
    server = FunctionType(FederatedType(F32, SERVER), FederatedType(F32, SERVER))
    forged = _forged(
        Intrinsic("federated_value_at_server", FunctionType(F32, FederatedType(F32, SERVER))),
        type_signature=server,
        uri="federated_mean",
    )
    _rejects(forged, "federated_mean", "not placed at CLIENTS")


def test_unknown_intrinsic_is_rejected():
    intrinsic = Intrinsic("federated_sum", "({float32}@CLIENTS -> float32@SERVER)")
    _rejects(_forged(intrinsic, uri="federated_median"), "unknown intrinsic 'federated_median'")


def test_lambda_struct_selection_literal_and_block_types_are_rederived():
    lam = Lambda("x", I32, Reference("x", I32))
    struct = Struct([("a", one())])
    selection = Selection(struct, 0)
    block = Block([("a", one())], Reference("a", I32))
    cases = [
        (
            _forged(lam, type_signature=FunctionType(I32, F32)),
            "lambda is declared (int32 -> float32), but its parts give (int32 -> int32)",
        ),
        (
            _forged(lam, parameter_type=F32),
            "lambda is declared (int32 -> int32), but its parts give (float32 -> int32)",
        ),
        (
            _forged(struct, type_signature=StructType([("b", I32)])),
            "struct is declared <b=int32>, but its parts give <a=int32>",
        ),
        (_forged(selection, index=3), "selection index 3 is out of range"),
        (_forged(selection, type_signature=F32), "selection is declared float32"),
        (
            _forged(Literal(np.zeros(2, np.float32)), type_signature=TensorType(np.float32, (3,))),
            "literal is declared float32[3], but its parts give float32[2]",
        ),
        (_forged(block, type_signature=F32), "block is declared float32"),
        (_forged(Placement(CLIENTS), placement="moon"), "neither CLIENTS nor SERVER"),
        (_forged(Data("x", I32), uri=""), "non-empty"),
    ]
    for comp, fragment in cases:
        _rejects(comp, fragment)


def test_a_child_that_is_not_a_building_block_is_rejected():
    lam = Lambda("x", I32, Reference("x", I32))
    _rejects(
        Struct([_forged(lam, result="x")]), "struct[0]: lambda holds str, not a building block"
    )


def test_types_breaking_the_nesting_rules_are_rejected():
    inner = FunctionType(I32, I32)
    forged = object.__new__(FederatedType)
    for field, value in (("member", inner), ("placement", CLIENTS), ("all_equal", False)):
        object.__setattr__(forged, field, value)
    Type._finish(forged, ("federated", inner._key, "CLIENTS", False), f"{{{inner}}}@CLIENTS", 3)
    _rejects(Data("clients", forged), "root: a federated type cannot hold (int32 -> int32)")
    sequence = object.__new__(SequenceType)
    object.__setattr__(sequence, "element", SequenceType(I32))
    Type._finish(sequence, ("sequence", ("sequence", I32._key)), "int32**", 3)
    _rejects(Lambda("s", sequence, one()), "a sequence cannot hold int32*")


# --- local graphs ------------------------------------------------------------------------


def _add_graph() -> Graph:
    ops = [Op("add", [0, 1], {}, F32)]
    return Graph(StructType([F32, F32]), ops, [2], F32)


def test_valid_local_graphs_are_accepted():
    graph = _add_graph()
    verify_graph(graph)
    comp = Call(LocalGraph(graph), Struct([Literal(np.float32(1)), Literal(np.float32(2))]))
    verify(comp)


def test_local_graph_with_a_wrong_result_type_is_rejected():
    graph = _add_graph()
    bad_op = Op("add", [0, 1], {}, TensorType(np.float32, (2,)))
    forged = _forged(graph, ops=(bad_op,))
    with pytest.raises(FederatedTypeError, match=r"op %2 \(add\) is declared float32\[2\]"):
        verify_graph(forged)
    node = _forged(LocalGraph(graph), graph=forged)
    _rejects(node, "root: invalid local graph", "shape rule gives float32")


def test_local_graph_out_of_ssa_order_is_rejected():
    graph = _add_graph()
    forged = _forged(graph, ops=(Op("add", [0, 2], {}, F32),))
    with pytest.raises(FederatedTypeError, match=r"uses %2, which is not defined before it"):
        verify_graph(forged)


def test_local_graph_whose_outputs_do_not_match_is_rejected():
    graph = _add_graph()
    with pytest.raises(FederatedTypeError, match="graph output %7 is not defined"):
        verify_graph(_forged(graph, outputs=(7,)))


def test_local_graph_node_type_must_match_its_graph():
    node = LocalGraph(_add_graph())
    _rejects(
        _forged(node, type_signature=FunctionType(StructType([F32, F32]), I32)),
        "local_graph is declared",
    )


# --- depth and size ----------------------------------------------------------------------


def _chain(levels: int):
    node = Reference("x", I32)
    for _ in range(levels):
        node = Call(Lambda("x", I32, node), one())
    return Lambda("x", I32, node)


def test_depth_bound_is_enforced_and_configurable():
    comp = _chain(30)
    verify(comp)
    message = _rejects(comp, "nested deeper than 20 levels", max_depth=20)
    assert "...(" in message  # long paths are shortened


def test_programs_deeper_than_the_recursion_limit_verify_without_recursion():
    comp = _chain(6_000)  # 12,001 levels: deeper than Python's recursion limit
    assert comp.depth > DEFAULT_MAX_DEPTH
    _rejects(comp, f"nested deeper than {DEFAULT_MAX_DEPTH} levels")
    verify(comp, max_depth=20_000)


def test_wide_and_long_programs_verify():
    wide = Struct([Literal(np.float32(i)) for i in range(10_000)])
    verify(wide)
    bindings = [("x", one())] + [("x", Reference("x", I32)) for _ in range(10_000)]
    verify(Block(bindings, Reference("x", I32)))
    bindings.append(("y", Reference("x", F32)))
    _rejects(
        Block(bindings, Reference("y", F32)), "block[local 'y']: reference 'x' has type float32"
    )


def test_sequence_types_are_fine_inside_federated_values():
    data = Data("data/clients", FederatedType(SequenceType(I32), CLIENTS))
    verify(Lambda(None, None, data))
