"""Leaf-by-leaf maps over model parameters: nested dicts whose leaves are arrays.

Model parameters, optimizer states and model deltas are nested `dict`s of
tensors (NumPy arrays, or the symbolic arrays of a `numpy_computation` being
traced). The functions here map over the leaves in the dict's key order, so
they work the same on concrete values and inside a trace. Parameter trees are
a few levels deep (a layer, then its kernel and bias), so plain recursion is
safe here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedcc import StructType, TensorType, Type

Tree = Any  # a nested Mapping of str to arrays


def map_leaves(function: Callable[..., Any], tree: Tree, *others: Tree) -> Tree:
    """`function` on each leaf of `tree` and the matching leaves of `others`, as a new tree."""
    if isinstance(tree, Mapping):
        return {
            key: map_leaves(function, value, *(other[key] for other in others))
            for key, value in tree.items()
        }
    return function(tree, *others)


def leaves(tree: Tree) -> list[Any]:
    """The leaves of `tree`, in key order."""
    if isinstance(tree, Mapping):
        return [leaf for value in tree.values() for leaf in leaves(value)]
    return [tree]


def paths(tree: Tree, prefix: str = "") -> list[str]:
    """The dotted key path of each leaf (`dense_0.kernel`), in key order."""
    if isinstance(tree, Mapping):
        return [
            path
            for key, value in tree.items()
            for path in paths(value, f"{prefix}.{key}" if prefix else key)
        ]
    return [prefix]


def tree_type(tree: Tree) -> Type:
    """The named struct type of a tree of concrete arrays (a leaf: its tensor type).

    The empty state `()` is the empty struct.
    """
    if isinstance(tree, tuple) and not tree:
        return StructType([])
    if isinstance(tree, Mapping):
        return StructType([(key, tree_type(value)) for key, value in tree.items()])
    array = np.asarray(tree)
    return TensorType(array.dtype, array.shape)


def zeros_of_type(t: Type) -> Tree:
    """Zeros of a named struct of fully known tensor types, as a tree of arrays."""
    if isinstance(t, StructType):
        return {name: zeros_of_type(element) for name, element in zip(t.names(), t)}
    assert isinstance(t, TensorType) and t.is_fully_defined()
    return np.zeros(t.shape, t.dtype)


def leaf_types(t: Type) -> list[Type]:
    """The types of the leaves of a (nested) struct type, in order: each one not a struct."""
    if isinstance(t, StructType):
        return [leaf for element in t for leaf in leaf_types(element)]
    return [t]


def is_named_struct(t: Type) -> bool:
    """Whether `t` and every struct inside it name all their elements (the types of trees)."""
    if not isinstance(t, StructType):
        return True
    return None not in t.names() and all(is_named_struct(element) for element in t)


def squared_norm(tree: Tree) -> Any:
    """The sum of the squares of every element of every leaf (a scalar of the leaves' dtype)."""
    total = None
    for leaf in leaves(tree):
        part = np.sum(leaf * leaf)
        total = part if total is None else total + part
    return total
