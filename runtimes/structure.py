"""Runtime values as nested structures of tensors, walked by their type.

A runtime value of a `TensorType` is a NumPy array (or NumPy scalar) and of a
`StructType` a tuple of runtime values, in the type's order; names live in
the type only. The helpers here build, once per type, a flat function that
takes such values apart into tensor leaves or applies an operation leaf by
leaf, so hot paths (graph calls, aggregation merges) do no type dispatch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import StructType, TensorType, Type

Flatten = Callable[[Any], list]
Unflatten = Callable[[Sequence[Any]], Any]


@functools.cache
def flattener(t: Type) -> Flatten:
    """A function from a value of the struct-of-tensors type `t` to its tensor leaves, in order."""
    if isinstance(t, TensorType):
        return lambda value: [value]
    _require_struct_of_tensors(t)
    parts = [flattener(element) for element in t]

    def flatten(value: Any) -> list:
        leaves: list = []
        for part, element in zip(parts, value):
            leaves.extend(part(element))
        return leaves

    return flatten


@functools.cache
def unflattener(t: Type) -> Unflatten:
    """The inverse of `flattener(t)`: rebuilds a value of `t` from its tensor leaves."""
    if isinstance(t, TensorType):
        return lambda leaves: leaves[0]
    _require_struct_of_tensors(t)
    spans = []
    offset = 0
    for element in t:
        count = leaf_count(element)
        spans.append((unflattener(element), offset, offset + count))
        offset += count
    return lambda leaves: tuple(part(leaves[a:b]) for part, a, b in spans)


@functools.cache
def leaf_count(t: Type) -> int:
    """How many tensor leaves a value of the struct-of-tensors type `t` has."""
    if isinstance(t, TensorType):
        return 1
    _require_struct_of_tensors(t)
    return sum(leaf_count(element) for element in t)


def leafwise(t: Type, make_leaf_function: Callable[[TensorType], Callable[..., Any]]):
    """A function applying, leaf by leaf, `make_leaf_function(leaf_type)` to values of `t`.

    The result takes one or more values of type `t` (the same structure) and
    returns a value of the same structure.
    """
    if isinstance(t, TensorType):
        return make_leaf_function(t)
    _require_struct_of_tensors(t)
    parts = [leafwise(element, make_leaf_function) for element in t]
    if len(parts) == 0:
        return lambda *values: ()

    def apply(*values: Any) -> tuple:
        return tuple(part(*elements) for part, *elements in zip(parts, *values))

    return apply


def zeros(t: Type) -> Any:
    """The all-zero value of `t`; raises `FederatedTypeError` when a dimension is unknown."""
    if isinstance(t, TensorType):
        if not t.is_fully_defined():
            raise FederatedTypeError(f"there is no zero value of {t}: its shape is not fully known")
        return np.zeros(t.shape, t.dtype)
    _require_struct_of_tensors(t)
    return tuple(zeros(element) for element in t)


def _require_struct_of_tensors(t: Type) -> None:
    if not isinstance(t, StructType):
        raise FederatedTypeError(f"expected a tensor or a struct of tensors, found {t}")
