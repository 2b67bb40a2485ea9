"""What each intrinsic does at run time: one implementation a URI, in one table.

An implementation takes the execution context, the runtime value of the
call's argument and the intrinsic's concrete function type. Federated
intrinsics keep server values at the server and hand everything placed at
CLIENTS to the run's `ClientSession` (runtimes/backend.py): zips and
selections become `ClientValue` descriptions, maps and aggregations become
session calls. Sequence intrinsics run wherever the code calling them runs.

Exact semantics, where a choice had to be made:

- `federated_map` of an all-equal value calls the function once, at the
  server, and gives an all-equal value; a function that only selects from
  and restructures its parameter is applied to the description, moving no data.
- Every reduction over clients follows the canonical tree (runtimes/reduction.py),
  with the leaf and merge arithmetic of runtimes/aggregations.py.
- `federated_mean` = tree-sum(v) / n; `federated_weighted_mean` =
  tree-sum(v * D(w)) / D(tree-sum(w)), where D is the dtype of each leaf of v
  and the weights' sum is computed in the weights' dtype; every step in that
  dtype. A zero total weight is an error.
- Over zero clients: sums (also secure ones) give zeros of the member type
  (an error if a dimension is unknown); `federated_aggregate` reports its
  zero; means, `federated_min` and `federated_max` are errors.
- Secure sums check every client's value is in [0, max_input] (or
  [0, 2**bitwidth - 1]) and that the sum does not overflow its dtype; both
  are `BackendError`s, the first naming the client. The `processes` backend
  adds its workers' partial sums by pairwise masking, so its server sees only
  masked inputs and the total (runtimes/secure_aggregation.py).
- `sequence_reduce` folds in order; `sequence_sum` adds in order, and an
  empty sequence sums to zeros of the element type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcc.ir.building_blocks import Intrinsic, Reference, Selection, post_order
from fedcc.ir.errors import BackendError, FederatedTypeError
from fedcc.ir.types import (
    SERVER,
    FederatedType,
    FunctionType,
    StructType,
    TensorType,
    Type,
    tensor_leaves,
)
from fedcc.runtimes import structure
from fedcc.runtimes.backend import (
    Aggregation,
    AllEqual,
    ClientSession,
    ClientValue,
    Selected,
    Zipped,
)
from fedcc.runtimes.user_errors import USER_ERRORS, call_user, user_error

if TYPE_CHECKING:
    from fedcc.runtimes.interpreter import ExecutionContext, FunctionValue

Implementation = Callable[["ExecutionContext", Any, FunctionType], Any]


def bind_intrinsic(node: Intrinsic) -> Callable[[ExecutionContext, Any], Any]:
    """The implementation of the intrinsic `node`, at its concrete type: (context, argument)."""
    implementation = INTRINSIC_IMPLEMENTATIONS.get(node.uri)
    if implementation is None:
        raise BackendError(f"the interpreter does not implement the intrinsic {node.uri!r}")
    fn_type = node.type_signature
    return lambda context, argument: implementation(context, argument, fn_type)


def _session(context: ExecutionContext, uri: str) -> ClientSession:
    if context.session is None:
        raise BackendError(f"{uri} is a federated intrinsic: it cannot run inside client work")
    return context.session


def _all_equal_parts(parts: tuple[ClientValue, ...]) -> bool:
    return all(isinstance(part, AllEqual) for part in parts)


def zip_client_values(parts: tuple[ClientValue, ...]) -> ClientValue:
    """Per client, the struct of `parts`' values: a description, no data moves."""
    if _all_equal_parts(parts):
        return AllEqual(tuple(part.value for part in parts))
    return Zipped(parts)


def select_client_value(source: ClientValue, index: int) -> ClientValue:
    """Per client, element `index` of `source`'s struct value: a description, no data moves."""
    if isinstance(source, Zipped):
        return source.parts[index]
    if isinstance(source, AllEqual):
        return AllEqual(source.value[index])
    return Selected(source, index)


def _apply_structurally(function: FunctionValue, value: ClientValue) -> ClientValue:
    # Evaluates a body of selections and structs over a ClientValue, children first.
    results: list[ClientValue] = []
    for node in post_order(function.structural_body):
        if isinstance(node, Reference):
            results.append(value)
        elif isinstance(node, Selection):
            results.append(select_client_value(results.pop(), node.index))
        else:
            count = len(node.elements)
            parts = tuple(results[len(results) - count :]) if count else ()
            del results[len(results) - count :]
            results.append(zip_client_values(parts))
    (result,) = results
    return result


def _federated_map(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    function, value = argument
    if isinstance(value, AllEqual):
        # Every client would compute the same thing: compute it once.
        return AllEqual(call_user(function, value.value, "federated_map", "all-equal input"))
    if function.structural_body is not None:
        return _apply_structurally(function, value)
    return _session(context, "federated_map").map(
        "federated_map", function.closed_block(), value
    )


def _federated_apply(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    function, value = argument
    return call_user(function, value, "federated_apply")


def _federated_broadcast(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    return AllEqual(argument)


def _federated_value_at_server(context: ExecutionContext, argument: Any, fn_type: FunctionType):
    return argument


def _federated_eval_at_clients(context: ExecutionContext, argument: Any, fn_type: FunctionType):
    return _session(context, "federated_eval_at_clients").map(
        "federated_eval_at_clients", argument.closed_block(), None
    )


def _federated_eval_at_server(context: ExecutionContext, argument: Any, fn_type: FunctionType):
    return call_user(argument, None, "federated_eval_at_server")


def _federated_zip(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    if fn_type.result.placement is SERVER:
        return tuple(argument)
    return zip_client_values(tuple(argument))


def _aggregate(
    context: ExecutionContext, uri: str, value: ClientValue, kind: str, member: Type, **extra: Any
) -> Any:
    session = _session(context, uri)
    return session.aggregate(value, Aggregation(uri, kind, member, **extra))


def _member(fn_type: FunctionType, index: int | None = None) -> Type:
    parameter = fn_type.parameter if index is None else fn_type.parameter[index]
    assert isinstance(parameter, FederatedType)
    return parameter.member


def _federated_sum(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    member = _member(fn_type)
    total = _aggregate(context, "federated_sum", argument, "sum", member)
    return _zeros_for_no_clients("federated_sum", member) if total is None else total


def _federated_mean(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    member = _member(fn_type)
    total = _aggregate(context, "federated_mean", argument, "sum", member)
    if total is None:
        raise BackendError("federated_mean over zero clients is undefined")
    count = context.num_clients
    divide = structure.leafwise(member, lambda t: lambda x: np.divide(x, t.dtype.type(count)))
    with np.errstate(all="ignore"):
        return divide(total)


def _federated_weighted_mean(context: ExecutionContext, argument: Any, fn_type: FunctionType):
    member = _member(fn_type, 0)
    weight_type = _member(fn_type, 1)
    value, weight = argument
    totals = _aggregate(
        context,
        "federated_weighted_mean",
        zip_client_values((value, weight)),
        "weighted_sum",
        StructType([member, weight_type]),
    )
    if totals is None:
        raise BackendError("federated_weighted_mean over zero clients is undefined")
    weighted_total, total_weight = totals
    if total_weight == 0:
        raise BackendError("federated_weighted_mean: the clients' weights sum to 0")
    divide = structure.leafwise(
        member, lambda t: lambda x: np.divide(x, t.dtype.type(total_weight))
    )
    with np.errstate(all="ignore"):
        return divide(weighted_total)


def _extremum(kind: str, uri: str) -> Implementation:
    def implementation(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
        result = _aggregate(context, uri, argument, kind, _member(fn_type))
        if result is None:
            raise BackendError(f"{uri} over zero clients is undefined")
        return result

    return implementation


def _federated_aggregate(context: ExecutionContext, argument: Any, fn_type: FunctionType):
    value, zero, accumulate, merge, report = argument
    root = _aggregate(
        context,
        "federated_aggregate",
        value,
        "fold",
        _member(fn_type, 0),
        zero=zero,
        accumulate=accumulate.closed_block(),
        merge=merge.closed_block(),
    )
    return call_user(report, zero if root is None else root, "federated_aggregate", "report")


def _secure_sum(uri: str, bound_of: Callable[[int], int]) -> Implementation:
    # `bound_of` turns the intrinsic's per-leaf parameter into the largest value allowed.
    def implementation(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
        value, parameter = argument
        member = _member(fn_type, 0)
        leaves = tensor_leaves(member)
        parameters = _bound_per_leaf(member, fn_type.parameter[1], parameter)
        bounds = []
        for leaf, given in zip(leaves, parameters, strict=True):
            given = int(np.asarray(given))
            if given < 0:
                raise BackendError(f"{uri}: the bound {given} for {leaf} is negative")
            bounds.append(min(bound_of(given), int(np.iinfo(leaf.dtype).max)))
        total = _aggregate(context, uri, value, "bounded_sum", member, bounds=tuple(bounds))
        return _zeros_for_no_clients(uri, member) if total is None else total

    return implementation


def _bound_per_leaf(member: Type, bound_type: Type, bound: Any) -> list[Any]:
    """The bound of each tensor leaf of `member`, in leaf order.

    A scalar bound stands for every leaf of the part of `member` where it
    stands (the whole value, or one struct element), as the intrinsic's type
    check allows.
    """
    if isinstance(bound_type, TensorType):
        return [bound] * len(tensor_leaves(member))
    parts = zip(member, bound_type, bound, strict=True)
    return [
        leaf_bound
        for element, element_bound_type, element_bound in parts
        for leaf_bound in _bound_per_leaf(element, element_bound_type, element_bound)
    ]


def _zeros_for_no_clients(uri: str, member: Type) -> Any:
    try:
        return structure.zeros(member)
    except FederatedTypeError as error:
        raise BackendError(f"{uri} over zero clients: {error}") from None


def _sequence_map(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> list:
    function, sequence = argument
    call = function.call
    results = []
    for position, element in enumerate(sequence):
        try:
            results.append(call(element))
        except USER_ERRORS as error:
            raise user_error(error, "sequence_map", detail=f"element {position}") from error
    return results


def _sequence_reduce(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    sequence, accumulator, function = argument
    call = function.call
    for position, element in enumerate(sequence):
        try:
            accumulator = call((accumulator, element))
        except USER_ERRORS as error:
            raise user_error(error, "sequence_reduce", detail=f"element {position}") from error
    return accumulator


def _sequence_sum(context: ExecutionContext, argument: Any, fn_type: FunctionType) -> Any:
    element_type = fn_type.result
    if len(argument) == 0:
        return _zeros_for_no_clients("sequence_sum of an empty sequence", element_type)
    add = structure.leafwise(element_type, lambda t: np.add)
    total = argument[0]
    with np.errstate(all="ignore"):
        for element in argument[1:]:
            total = add(total, element)
    return total


INTRINSIC_IMPLEMENTATIONS: dict[str, Implementation] = {
    "federated_broadcast": _federated_broadcast,
    "federated_map": _federated_map,
    "federated_apply": _federated_apply,
    "federated_sum": _federated_sum,
    "federated_mean": _federated_mean,
    "federated_weighted_mean": _federated_weighted_mean,
    "federated_min": _extremum("min", "federated_min"),
    "federated_max": _extremum("max", "federated_max"),
    "federated_aggregate": _federated_aggregate,
    "federated_secure_sum": _secure_sum("federated_secure_sum", lambda bound: bound),
    # No dtype is wider than 64 bits, so a larger bitwidth bounds nothing more.
    "federated_secure_sum_bitwidth": _secure_sum(
        "federated_secure_sum_bitwidth", lambda bitwidth: 2 ** min(bitwidth, 64) - 1
    ),
    "federated_zip": _federated_zip,
    "federated_value_at_clients": _federated_broadcast,
    "federated_value_at_server": _federated_value_at_server,
    "federated_eval_at_clients": _federated_eval_at_clients,
    "federated_eval_at_server": _federated_eval_at_server,
    "sequence_map": _sequence_map,
    "sequence_reduce": _sequence_reduce,
    "sequence_sum": _sequence_sum,
}
