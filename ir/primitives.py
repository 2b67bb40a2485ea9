"""The registry of local primitives: for each, its NumPy implementation and its shape/dtype rule.

This is the one place that says what a primitive means. The graph evaluator
calls `evaluate`, graph construction calls `infer_result_type`, and the
autodiff transformation looks up gradient rules here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import TensorType

REQUIRED = object()


@dataclass(frozen=True)
class Attribute:
    """A static attribute of a primitive: its kind and its default (REQUIRED if none)."""

    kind: str  # "int", "ints", "axes", "float", "bool", "str", "dtype", "tensor", "shape"
    default: Any = REQUIRED


@dataclass(frozen=True)
class Primitive:
    name: str
    description: str
    num_inputs: int | None  # None: any number, at least one
    shape_rule: Callable[..., TensorType]  # (input_types, **attrs) -> result type
    impl: Callable[..., np.ndarray]  # (*arrays, **attrs) -> array of the rule's type
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    differentiable: bool = False


PRIMITIVES: dict[str, Primitive] = {}


def register(primitive: Primitive) -> Primitive:
    if primitive.name in PRIMITIVES:
        raise ValueError(f"primitive {primitive.name!r} is registered twice")
    PRIMITIVES[primitive.name] = primitive
    return primitive


def lookup(name: str) -> Primitive:
    try:
        return PRIMITIVES[name]
    except KeyError:
        raise FederatedTypeError(
            f"unknown primitive {name!r}; known: {', '.join(sorted(PRIMITIVES))}"
        ) from None
