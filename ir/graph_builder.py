"""Builds local op graphs one op at a time, inferring each result type from the primitive's rule.

The NumPy tracer emits ops through this builder, and hand-written graphs
(examples, tests, desugaring passes) use it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcc.ir import primitives
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.types import TensorType, Type, tensor_leaves, to_type


class GraphBuilder:
    """Appends ops to a graph whose parameter leaves are values 0..n-1."""

    def __init__(self, parameter_type: Any = None) -> None:
        self.parameter_type: Type | None = (
            None if parameter_type is None else to_type(parameter_type)
        )
        leaves = [] if self.parameter_type is None else tensor_leaves(self.parameter_type)
        self._types: list[TensorType] = list(leaves)
        self._ops: list[Op] = []
        self._constants: dict[tuple, int] = {}

    @property
    def num_parameters(self) -> int:
        return 0 if self.parameter_type is None else len(tensor_leaves(self.parameter_type))

    def parameters(self) -> list[int]:
        """The value numbers of the parameter leaves, in order."""
        return list(range(self.num_parameters))

    def type_of(self, value: int) -> TensorType:
        return self._types[value]

    def op(self, primitive: str, *inputs: int, **attributes: Any) -> int:
        """Appends `primitive(*inputs, **attributes)` and returns its value number."""
        where = f"%{len(self._types)}"
        attrs = primitives.canonical_attributes(primitive, attributes, where)
        result = primitives.infer_result_type(
            primitive, [self._types[i] for i in inputs], attrs, where
        )
        self._ops.append(Op(primitive, inputs, attrs, result))
        self._types.append(result)
        return len(self._types) - 1

    def constant(self, value: Any, dtype: Any = None) -> int:
        """A constant op for `value`; equal constants are emitted once."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.op("constant", value=array)
        return self._constants[key]

    def build(self, outputs: Sequence[int], result_type: Any = None) -> Graph:
        """The finished graph; `result_type` defaults to the outputs' types (struct if several)."""
        outputs = list(outputs)
        if result_type is None:
            types = [self._types[o] for o in outputs]
            result_type = types[0] if len(types) == 1 else list(types)
        return Graph(self.parameter_type, self._ops, outputs, result_type)
