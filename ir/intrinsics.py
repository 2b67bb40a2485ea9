"""The table of intrinsics: TFF's names, generic signatures and the rule that types each call.

Each entry's `result_type` takes the parameter type of a concrete call and
returns its result type, or raises `FederatedTypeError` saying what the
intrinsic expected and what it found. An `Intrinsic` building block carries
the concrete function type, checked against this rule when it is built.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementLiteral,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    first_inside,
    is_assignable_from,
    tensor_leaf_dtype_kinds,
    walk_types,
)


class IntrinsicKind(enum.Enum):
    """What an intrinsic does with placement: how a backend must treat its calls."""

    BROADCAST = "broadcast"  # SERVER -> CLIENTS
    AGGREGATION = "aggregation"  # CLIENTS -> SERVER
    MAP = "map"  # pointwise at one placement
    ZIP = "zip"  # restructures placed values
    VALUE = "value"  # places an unplaced value or function result
    SEQUENCE = "sequence"  # local, over a sequence


@dataclass(frozen=True)
class IntrinsicDef:
    uri: str
    signature: str  # generic, for documentation and error messages
    kind: IntrinsicKind
    core: bool  # backends implement core intrinsics; the rest can be desugared
    result_type: Callable[[Type | None], Type]
    description: str


def _fail(uri: str, signature: str, found: Type | None, why: str) -> FederatedTypeError:
    return FederatedTypeError(f"{uri} expects {signature}, found argument {found}: {why}")


def _args(uri: str, signature: str, parameter: Type | None, count: int) -> tuple[Type, ...]:
    if count == 1:
        if parameter is None:
            raise _fail(uri, signature, parameter, "it takes an argument")
        return (parameter,)
    if not isinstance(parameter, StructType) or len(parameter) != count:
        raise _fail(uri, signature, parameter, f"expected a struct of {count} elements")
    return tuple(parameter)


def _placed(
    uri: str, signature: str, found: Type | None, value: Type, placement: PlacementLiteral
) -> FederatedType:
    if not isinstance(value, FederatedType) or value.placement is not placement:
        raise _fail(uri, signature, found, f"{value} is not placed at {placement.name}")
    return value


def _function(
    uri: str, signature: str, found: Type | None, fn: Type, arity: int
) -> FunctionType:
    if not isinstance(fn, FunctionType) or ((fn.parameter is None) != (arity == 0)):
        want = "a function of no argument" if arity == 0 else "a function of one argument"
        raise _fail(uri, signature, found, f"{fn} is not {want}")
    return fn


def _accepts(uri: str, signature: str, found: Type | None, target: Type, source: Type) -> None:
    if not is_assignable_from(target, source):
        raise _fail(uri, signature, found, f"{source} is not assignable to {target}")


def _check_unplaced_value(uri: str, sig: str, found: Type | None, t: Type, what: str) -> None:
    inner = first_inside(t, (FederatedType, FunctionType, PlacementType))
    if inner is not None:
        raise _fail(uri, sig, found, f"{what} {t} must be an unplaced value, it holds {inner}")


def _numeric_leaves(
    uri: str, signature: str, found: Type | None, t: Type, kinds: str
) -> None:
    # The types know the dtype kinds of their leaves: a program sums the same big struct
    # at many nodes, so the check must not walk it; only an error walks, to name the leaf.
    leaf_kinds = tensor_leaf_dtype_kinds(t)
    if leaf_kinds is not None and set(leaf_kinds) <= set(kinds):
        return
    for leaf in walk_types(t):
        if isinstance(leaf, StructType):
            continue
        if not isinstance(leaf, TensorType) or leaf.dtype.kind not in kinds:
            what = {"f": "floating-point", "iu": "integer", "iuf": "numeric"}[kinds]
            raise _fail(uri, signature, found, f"{leaf} in {t} is not a {what} tensor")


INTRINSICS: dict[str, IntrinsicDef] = {}


def _remembered(uri: str, signature: str, rule: Callable[[str, str, Type | None], Type]):
    """`rule` for `uri`, answering each distinct parameter type once.

    A program calls an intrinsic at one type at many nodes, and some rules walk
    the whole type (the leaves of a secure sum's bound): remembering the answer
    keeps each node's check O(1), so loading a file costs no more than its
    distinct types. Types are interned, so a type is its own key; the memo holds
    parameter types weakly and results weakly too (a result may hold its
    parameter, which a strong value would keep alive forever).
    """
    memo: weakref.WeakKeyDictionary[Type, weakref.ref[Type]] = weakref.WeakKeyDictionary()

    def result_type(parameter: Type | None) -> Type:
        if parameter is None:
            return rule(uri, signature, parameter)
        known = memo.get(parameter)
        result = None if known is None else known()
        if result is None:
            result = rule(uri, signature, parameter)
            memo[parameter] = weakref.ref(result)
        return result

    return result_type


def _register(uri: str, signature: str, kind: IntrinsicKind, core: bool, description: str):
    def decorate(rule: Callable[[str, str, Type | None], Type]):
        INTRINSICS[uri] = IntrinsicDef(
            uri, signature, kind, core, _remembered(uri, signature, rule), description
        )
        return rule

    return decorate


@_register(
    "federated_broadcast",
    "(T@SERVER -> T@CLIENTS)",
    IntrinsicKind.BROADCAST,
    True,
    "sends the server's value to every client",
)
def _broadcast(uri, sig, p):
    (value,) = _args(uri, sig, p, 1)
    return FederatedType(_placed(uri, sig, p, value, SERVER).member, CLIENTS, all_equal=True)


@_register(
    "federated_map",
    "(<(T -> U),{T}@CLIENTS> -> {U}@CLIENTS)",
    IntrinsicKind.MAP,
    True,
    "applies a function to each client's value (all-equal input gives all-equal output)",
)
def _map(uri, sig, p):
    fn, value = _args(uri, sig, p, 2)
    fn = _function(uri, sig, p, fn, 1)
    value = _placed(uri, sig, p, value, CLIENTS)
    _accepts(uri, sig, p, fn.parameter, value.member)
    return FederatedType(fn.result, CLIENTS, all_equal=value.all_equal)


@_register(
    "federated_apply",
    "(<(T -> U),T@SERVER> -> U@SERVER)",
    IntrinsicKind.MAP,
    True,
    "applies a function to the server's value",
)
def _apply(uri, sig, p):
    fn, value = _args(uri, sig, p, 2)
    fn = _function(uri, sig, p, fn, 1)
    value = _placed(uri, sig, p, value, SERVER)
    _accepts(uri, sig, p, fn.parameter, value.member)
    return FederatedType(fn.result, SERVER)


def _aggregate_input(uri, sig, p, value) -> FederatedType:
    value = _placed(uri, sig, p, value, CLIENTS)
    return value


@_register(
    "federated_sum",
    "({T}@CLIENTS -> T@SERVER)",
    IntrinsicKind.AGGREGATION,
    False,
    "sums the clients' values at the server",
)
def _sum(uri, sig, p):
    (value,) = _args(uri, sig, p, 1)
    value = _aggregate_input(uri, sig, p, value)
    _numeric_leaves(uri, sig, p, value.member, "iuf")
    return FederatedType(value.member, SERVER)


@_register(
    "federated_mean",
    "({T}@CLIENTS -> T@SERVER)",
    IntrinsicKind.AGGREGATION,
    False,
    "averages the clients' values at the server (T of floating-point tensors)",
)
def _mean(uri, sig, p):
    (value,) = _args(uri, sig, p, 1)
    value = _aggregate_input(uri, sig, p, value)
    _numeric_leaves(uri, sig, p, value.member, "f")
    return FederatedType(value.member, SERVER)


@_register(
    "federated_weighted_mean",
    "(<{T}@CLIENTS,{W}@CLIENTS> -> T@SERVER)",
    IntrinsicKind.AGGREGATION,
    False,
    "averages the clients' values weighted by a floating-point scalar each",
)
def _weighted_mean(uri, sig, p):
    value, weight = _args(uri, sig, p, 2)
    value = _aggregate_input(uri, sig, p, value)
    weight = _aggregate_input(uri, sig, p, weight)
    _numeric_leaves(uri, sig, p, value.member, "f")
    w = weight.member
    if not (isinstance(w, TensorType) and w.rank == 0 and w.dtype.kind == "f"):
        raise _fail(uri, sig, p, f"the weight {w} is not a floating-point scalar")
    return FederatedType(value.member, SERVER)


def _min_max(uri, sig, p):
    (value,) = _args(uri, sig, p, 1)
    value = _aggregate_input(uri, sig, p, value)
    _numeric_leaves(uri, sig, p, value.member, "iuf")
    return FederatedType(value.member, SERVER)


for _uri, _what in (("federated_min", "minimum"), ("federated_max", "maximum")):
    _register(
        _uri,
        "({T}@CLIENTS -> T@SERVER)",
        IntrinsicKind.AGGREGATION,
        False,
        f"the elementwise {_what} of the clients' values at the server",
    )(_min_max)


@_register(
    "federated_aggregate",
    "(<{T}@CLIENTS,A,(<A,T> -> A),(<A,A> -> A),(A -> R)> -> R@SERVER)",
    IntrinsicKind.AGGREGATION,
    True,
    "folds the clients' values into an accumulator, merges partial ones, reports the result",
)
def _aggregate(uri, sig, p):
    value, zero, accumulate, merge, report = _args(uri, sig, p, 5)
    value = _aggregate_input(uri, sig, p, value)
    _check_unplaced_value(uri, sig, p, zero, "the zero")
    accumulate = _function(uri, sig, p, accumulate, 1)
    merge = _function(uri, sig, p, merge, 1)
    report = _function(uri, sig, p, report, 1)
    _accepts(uri, sig, p, accumulate.parameter, StructType([zero, value.member]))
    _accepts(uri, sig, p, zero, accumulate.result)
    _accepts(uri, sig, p, merge.parameter, StructType([zero, zero]))
    _accepts(uri, sig, p, zero, merge.result)
    _accepts(uri, sig, p, report.parameter, zero)
    return FederatedType(report.result, SERVER)


@_register(
    "federated_secure_sum",
    "(<{T}@CLIENTS,M> -> T@SERVER)",
    IntrinsicKind.AGGREGATION,
    True,
    "sums integer values each in [0, max_input]; the server learns only the sum",
)
def _secure_sum(uri, sig, p):
    value, bound = _args(uri, sig, p, 2)
    value = _aggregate_input(uri, sig, p, value)
    _numeric_leaves(uri, sig, p, value.member, "iu")
    _numeric_leaves(uri, sig, p, bound, "iu")
    _check_bound_structure(uri, sig, p, value.member, bound)
    return FederatedType(value.member, SERVER)


@_register(
    "federated_secure_sum_bitwidth",
    "(<{T}@CLIENTS,B> -> T@SERVER)",
    IntrinsicKind.AGGREGATION,
    True,
    "sums integer values each in [0, 2**bitwidth); the server learns only the sum",
)
def _secure_sum_bitwidth(uri, sig, p):
    return _secure_sum(uri, sig, p)


def _check_bound_structure(uri, sig, p, member: Type, bound: Type) -> None:
    # The bound is one integer scalar for all leaves, or a struct of scalars shaped like T.
    if isinstance(bound, TensorType):
        if bound.rank != 0:
            raise _fail(uri, sig, p, f"the bound {bound} is not a scalar")
        return
    if not isinstance(bound, StructType) or not isinstance(member, StructType):
        raise _fail(uri, sig, p, f"the bound {bound} does not match {member}")
    if len(bound) != len(member):
        raise _fail(uri, sig, p, f"the bound {bound} does not match {member}")
    for m, b in zip(member, bound):
        _check_bound_structure(uri, sig, p, m, b)


@_register(
    "federated_zip",
    "(<{A}@CLIENTS,{B}@CLIENTS> -> {<A,B>}@CLIENTS), same at SERVER",
    IntrinsicKind.ZIP,
    True,
    "turns a struct of values placed alike into one placed struct (names kept)",
)
def _zip(uri, sig, p):
    if not isinstance(p, StructType) or len(p) == 0:
        raise _fail(uri, sig, p, "expected a non-empty struct of placed values")
    placements = set()
    all_equal = True
    for t in p:
        if not isinstance(t, FederatedType):
            raise _fail(uri, sig, p, f"{t} is not a placed value")
        placements.add(t.placement)
        all_equal = all_equal and t.all_equal
    if len(placements) != 1:
        raise _fail(uri, sig, p, "the values are not all at the same placement")
    (placement,) = placements
    member = StructType([(n, t.member) for n, t in p.elements])
    return FederatedType(member, placement, all_equal=all_equal)


@_register(
    "federated_value_at_clients",
    "(T -> T@CLIENTS)",
    IntrinsicKind.VALUE,
    True,
    "places an unplaced value at every client (fc.federated_value(v, fc.CLIENTS))",
)
def _value_at_clients(uri, sig, p):
    (value,) = _args(uri, sig, p, 1)
    _check_unplaced_value(uri, sig, p, value, "the value")
    return FederatedType(value, CLIENTS, all_equal=True)


@_register(
    "federated_value_at_server",
    "(T -> T@SERVER)",
    IntrinsicKind.VALUE,
    True,
    "places an unplaced value at the server (fc.federated_value(v, fc.SERVER))",
)
def _value_at_server(uri, sig, p):
    (value,) = _args(uri, sig, p, 1)
    _check_unplaced_value(uri, sig, p, value, "the value")
    return FederatedType(value, SERVER)


@_register(
    "federated_eval_at_clients",
    "(( -> T) -> {T}@CLIENTS)",
    IntrinsicKind.VALUE,
    True,
    "runs a function of no argument on every client (fc.federated_eval(fn, fc.CLIENTS))",
)
def _eval_at_clients(uri, sig, p):
    (fn,) = _args(uri, sig, p, 1)
    fn = _function(uri, sig, p, fn, 0)
    return FederatedType(fn.result, CLIENTS, all_equal=False)


@_register(
    "federated_eval_at_server",
    "(( -> T) -> T@SERVER)",
    IntrinsicKind.VALUE,
    True,
    "runs a function of no argument at the server (fc.federated_eval(fn, fc.SERVER))",
)
def _eval_at_server(uri, sig, p):
    (fn,) = _args(uri, sig, p, 1)
    fn = _function(uri, sig, p, fn, 0)
    return FederatedType(fn.result, SERVER)


@_register(
    "sequence_map",
    "(<(T -> U),T*> -> U*)",
    IntrinsicKind.SEQUENCE,
    True,
    "applies a function to each element of a sequence",
)
def _sequence_map(uri, sig, p):
    fn, seq = _args(uri, sig, p, 2)
    fn = _function(uri, sig, p, fn, 1)
    if not isinstance(seq, SequenceType):
        raise _fail(uri, sig, p, f"{seq} is not a sequence")
    _accepts(uri, sig, p, fn.parameter, seq.element)
    return SequenceType(fn.result)


@_register(
    "sequence_reduce",
    "(<T*,A,(<A,T> -> A)> -> A)",
    IntrinsicKind.SEQUENCE,
    True,
    "folds a sequence in order into an accumulator",
)
def _sequence_reduce(uri, sig, p):
    seq, zero, op = _args(uri, sig, p, 3)
    if not isinstance(seq, SequenceType):
        raise _fail(uri, sig, p, f"{seq} is not a sequence")
    _check_unplaced_value(uri, sig, p, zero, "the zero")
    op = _function(uri, sig, p, op, 1)
    _accepts(uri, sig, p, op.parameter, StructType([zero, seq.element]))
    _accepts(uri, sig, p, zero, op.result)
    return zero


@_register(
    "sequence_sum",
    "(T* -> T)",
    IntrinsicKind.SEQUENCE,
    False,
    "sums the elements of a sequence",
)
def _sequence_sum(uri, sig, p):
    (seq,) = _args(uri, sig, p, 1)
    if not isinstance(seq, SequenceType):
        raise _fail(uri, sig, p, f"{seq} is not a sequence")
    _numeric_leaves(uri, sig, p, seq.element, "iuf")
    return seq.element


def lookup(uri: str) -> IntrinsicDef:
    """The definition of intrinsic `uri`; raises `FederatedTypeError` for unknown names."""
    try:
        return INTRINSICS[uri]
    except KeyError:
        raise FederatedTypeError(
            f"unknown intrinsic {uri!r}; known: {', '.join(sorted(INTRINSICS))}"
        ) from None


def intrinsic_type(uri: str, parameter: Type | None) -> FunctionType:
    """The concrete function type of intrinsic `uri` called with an argument of type `parameter`."""
    return FunctionType(parameter, lookup(uri).result_type(parameter))
