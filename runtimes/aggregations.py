"""The arithmetic of each kind of reduction over clients: a leaf value a client, a merge.

Every aggregation runs along the canonical tree of `runtimes/reduction.py`:
each client's value becomes a leaf (`TreeOperations.leaf`), and neighbouring
subtrees combine with `TreeOperations.merge`, on the workers for the subtrees
inside their shard and on the server above. The interpreter finishes the root
(divides a mean, reports a fold).

| kind | leaf of client value v | merge of a, b | for |
|---|---|---|---|
| `sum` | v | a + b (NumPy: integers wrap) | federated_sum, federated_mean |
| `weighted_sum` | (v * D(w), w) | (a0 + b0, a1 + b1) | federated_weighted_mean |
| `min`, `max` | v | np.minimum, np.maximum (NaN wins) | federated_min, federated_max |
| `bounded_sum` | v, once 0 <= v <= bound | a + b, never overflowing | secure sums |
| `fold` | accumulate(<zero, v>) | merge(<a, b>) | federated_aggregate |

Arithmetic is leaf by leaf, in each leaf's dtype D (weights are cast to D).
On the `processes` backend a `bounded_sum` stops at each shard's subtrees:
the shards' partial sums are added by pairwise-masked secure aggregation
(runtimes/secure_aggregation.py), which gives the exact total, so the same bits.

A fold with a non-associative `accumulate` still gives the same bits on any
number of workers: `accumulate` only ever sees a fresh zero and one client's
value, and merges follow the one fixed tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcc.ir.errors import BackendError
from fedcc.ir.types import TensorType, tensor_leaves
from fedcc.runtimes import structure
from fedcc.runtimes.backend import Aggregation
from fedcc.runtimes.interpreter import client_function
from fedcc.runtimes.user_errors import USER_ERRORS, user_error


@dataclass(frozen=True)
class TreeOperations:
    """How one aggregation makes leaves from clients' values and merges subtrees."""

    leaf: Callable[[Any], Any]  # a client's value -> its leaf of the tree
    merge: Callable[[Any, Any], Any]


def _identity(value: Any) -> Any:
    return value


def _leafwise_operation(aggregation: Aggregation, operation: Callable) -> TreeOperations:
    merge = structure.leafwise(aggregation.member_type, lambda t: operation)
    return TreeOperations(_identity, merge)


def _sum(aggregation: Aggregation) -> TreeOperations:
    return _leafwise_operation(aggregation, np.add)


def _min(aggregation: Aggregation) -> TreeOperations:
    return _leafwise_operation(aggregation, np.minimum)


def _max(aggregation: Aggregation) -> TreeOperations:
    return _leafwise_operation(aggregation, np.maximum)


def _weighted_sum(aggregation: Aggregation) -> TreeOperations:
    value_type, _ = aggregation.member_type
    flatten = structure.flattener(value_type)
    unflatten = structure.unflattener(value_type)
    # The weight is cast to each value leaf's dtype before multiplying, so the
    # weighted values keep the dtype of the values.
    scalar_types = [t.dtype.type for t in tensor_leaves(value_type)]

    def leaf(pair: Any) -> Any:
        value, weight = pair
        scaled = [np.multiply(x, cast(weight)) for x, cast in zip(flatten(value), scalar_types)]
        return (unflatten(scaled), weight)

    merge = structure.leafwise(aggregation.member_type, lambda t: np.add)
    return TreeOperations(leaf, merge)


def overflow_error(intrinsic: str, t: TensorType) -> BackendError:
    """The error of a secure sum whose total does not fit its dtype (on every backend)."""
    return BackendError(f"{intrinsic}: the sum overflows {t} (at most {np.iinfo(t.dtype).max})")


def _bounded_sum(aggregation: Aggregation) -> TreeOperations:
    member = aggregation.member_type
    flatten = structure.flattener(member)
    leaf_types = tensor_leaves(member)
    checks = tuple(zip(leaf_types, aggregation.bounds))

    def leaf(value: Any) -> Any:
        for (t, bound), x in zip(checks, flatten(value)):
            x = np.asarray(x)
            if x.size and (x.min() < 0 or x.max() > bound):
                bad = x[(x < 0) | (x > bound)].flat[0]
                raise BackendError(f"the value {bad} of {t} is outside the range [0, {bound}]")
        return value

    def checked_add(t: TensorType) -> Callable[[Any, Any], Any]:
        def add(a: Any, b: Any) -> Any:
            total = np.add(a, b)
            # Both operands are non-negative, so a wrapped sum is smaller than either.
            if np.any(total < a):
                raise overflow_error(aggregation.intrinsic, t)
            return total

        return add

    return TreeOperations(leaf, structure.leafwise(member, checked_add))


def _fold(aggregation: Aggregation) -> TreeOperations:
    zero = aggregation.zero
    accumulate = client_function(aggregation.accumulate).call
    merge_function = client_function(aggregation.merge).call

    def leaf(value: Any) -> Any:
        return accumulate((zero, value))

    def merge(a: Any, b: Any) -> Any:
        try:
            return merge_function((a, b))
        except USER_ERRORS as error:
            raise user_error(error, aggregation.intrinsic, detail="merge") from error

    return TreeOperations(leaf, merge)


TREE_OPERATIONS: dict[str, Callable[[Aggregation], TreeOperations]] = {
    "sum": _sum,
    "weighted_sum": _weighted_sum,
    "min": _min,
    "max": _max,
    "bounded_sum": _bounded_sum,
    "fold": _fold,
}


def tree_operations(aggregation: Aggregation) -> TreeOperations:
    """The leaf and merge functions of `aggregation` (see the table at the top of this module)."""
    return TREE_OPERATIONS[aggregation.kind](aggregation)
