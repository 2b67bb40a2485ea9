"""Local op graphs: flat SSA programs of NumPy primitives, like a jaxpr (DESIGN §5).

A graph's values are numbered: first the tensor leaves of its parameter type,
in order, then one result per op. Each op names a primitive of the registry
(`fedcc.ir.primitives`), its inputs by value number, its static attributes and
its result type, which must be exactly what the primitive's shape rule gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fedcc.ir import primitives
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.tensors import frozen_array, tensor_key
from fedcc.ir.types import (
    FunctionType,
    StructType,
    TensorType,
    Type,
    is_assignable_from,
    tensor_leaves,
    to_type,
)

AttributeValue = Any  # bool | int | float | str | tuple[int, ...] | np.ndarray | None


def _normalize_attribute(name: str, value: Any) -> AttributeValue:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (tuple, list)):
        items = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                raise FederatedTypeError(
                    f"attribute {name!r}: a tuple attribute holds ints, found {item!r}"
                )
            items.append(int(item))
        return tuple(items)
    if isinstance(value, np.ndarray):
        return value if not value.flags.writeable else frozen_array(value)
    if isinstance(value, np.dtype):
        return value.name
    raise FederatedTypeError(f"attribute {name!r} has unsupported value {value!r}")


def _attribute_key(value: AttributeValue) -> Any:
    if isinstance(value, np.ndarray):
        return ("tensor", tensor_key(value))
    if isinstance(value, float):
        # By bits, like tensors: a NaN attribute equals itself, and -0.0 differs from 0.0.
        return ("float", np.float64(value).tobytes())
    # bool is an int in Python: tag values by type so True != 1 as attributes.
    return (type(value).__name__, value)


class Op:
    """One SSA equation: `result = primitive(*inputs, **attributes)`."""

    __slots__ = ("_hash", "_key", "attributes", "inputs", "primitive", "result_type")

    def __init__(
        self,
        primitive: str,
        inputs: Iterable[int],
        attributes: Mapping[str, Any] | None,
        result_type: TensorType,
    ) -> None:
        # Canonical attributes (defaults filled, one value per meaning) make ops
        # that mean the same thing equal, and print and serialize the same.
        canonical = primitives.canonical_attributes(primitive, attributes or {})
        attrs = tuple(sorted((str(k), _normalize_attribute(k, v)) for k, v in canonical.items()))
        object.__setattr__(self, "primitive", primitive)
        object.__setattr__(self, "inputs", tuple(int(i) for i in inputs))
        object.__setattr__(self, "attributes", attrs)
        object.__setattr__(self, "result_type", result_type)
        key = (
            primitive,
            self.inputs,
            tuple((k, _attribute_key(v)) for k, v in attrs),
            result_type,
        )
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash(key))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Op is immutable")

    @property
    def attrs(self) -> dict[str, AttributeValue]:
        return dict(self.attributes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Op) and self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Op({self.primitive}, {self.inputs}, {self.attrs}, {self.result_type})"


class Graph:
    """A local function: parameter leaves and op results are SSA values; outputs pick results."""

    __slots__ = (
        "_hash",
        "function_type",
        "ops",
        "outputs",
        "parameter_leaves",
        "parameter_type",
        "result_type",
        "value_types",
    )

    def __init__(
        self,
        parameter_type: Any,
        ops: Iterable[Op],
        outputs: Iterable[int],
        result_type: Any,
    ) -> None:
        parameter_type = None if parameter_type is None else to_type(parameter_type)
        result_type = to_type(result_type)
        ops = tuple(ops)
        outputs = tuple(int(o) for o in outputs)
        leaves = [] if parameter_type is None else tensor_leaves(parameter_type)
        value_types: list[TensorType] = list(leaves)
        for position, op in enumerate(ops):
            if not isinstance(op, Op):
                raise FederatedTypeError(f"op {position} is not an Op: {op!r}")
            index = len(value_types)
            for i in op.inputs:
                if not 0 <= i < index:
                    raise FederatedTypeError(
                        f"op %{index} ({op.primitive}) uses %{i}, which is not defined before it"
                    )
            expected = primitives.infer_result_type(
                op.primitive, [value_types[i] for i in op.inputs], op.attrs, where=f"%{index}"
            )
            if expected != op.result_type:
                raise FederatedTypeError(
                    f"op %{index} ({op.primitive}) is declared {op.result_type}, "
                    f"but its shape rule gives {expected}"
                )
            value_types.append(op.result_type)
        result_leaves = tensor_leaves(result_type)
        if len(result_leaves) != len(outputs):
            raise FederatedTypeError(
                f"the result type {result_type} has {len(result_leaves)} tensors, "
                f"but the graph has {len(outputs)} outputs"
            )
        for leaf, output in zip(result_leaves, outputs):
            if not 0 <= output < len(value_types):
                raise FederatedTypeError(f"graph output %{output} is not defined")
            if not is_assignable_from(leaf, value_types[output]):
                raise FederatedTypeError(
                    f"graph output %{output} has type {value_types[output]}, "
                    f"not assignable to the declared {leaf}"
                )
        object.__setattr__(self, "parameter_type", parameter_type)
        object.__setattr__(self, "result_type", result_type)
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "parameter_leaves", tuple(leaves))
        object.__setattr__(self, "value_types", tuple(value_types))
        object.__setattr__(self, "function_type", FunctionType(parameter_type, result_type))
        object.__setattr__(self, "_hash", hash((self.function_type, ops, outputs)))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Graph is immutable")

    @property
    def num_parameters(self) -> int:
        return len(self.parameter_leaves)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Graph)
            and self._hash == other._hash
            and self.function_type == other.function_type
            and self.ops == other.ops
            and self.outputs == other.outputs
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"<Graph {self.function_type} with {len(self.ops)} ops>"


def struct_of_leaves(t: Type) -> bool:
    """Whether `t` is a tensor or a (nested) struct of tensors: what a graph can take or give."""
    if isinstance(t, TensorType):
        return True
    return isinstance(t, StructType) and all(struct_of_leaves(e) for e in t)
