"""Reverse-mode autodiff as a transformation of local op graphs.

`grad_graph` takes a graph with a scalar float output and returns a new graph
with the same parameter that computes the gradient of that output with
respect to one parameter. It replays the forward ops, then walks them
backwards once, calling each primitive's gradient rule (registered beside the
primitive in `fedcc.ir.primitives`) to turn the cotangent of a result into
cotangents of its inputs, and adds up the cotangents of values used more than
once. Ops that the result does not need are dropped at the end.

Decisions:

- Which parameter: a graph of several parameters has one unnamed struct
  parameter (DESIGN §4), so for an unnamed struct parameter `argnum` picks an
  element; a tensor or a named struct (a dict) is one parameter, taken whole
  (`argnum` 0). `argnum=None` always takes the whole parameter.
- Integer and bool leaves get no gradient: their entry in the result is zeros
  of their own dtype and shape (what JAX's float0 zeros stand for), so the
  gradient always has the parameter's type and can be added to it leaf by
  leaf. Values computed through integers (casts to int, comparisons,
  `floor`, `argmax`, ...) pass no gradient back, as in JAX.
- Primitives without a gradient rule (`floor`, `round`, `sign`, ...) are
  piecewise constant: their gradient is zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcc.ir import primitives
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.types import (
    StructType,
    TensorType,
    Type,
    is_assignable_from,
    tensor_leaves,
)


def grad_graph(graph: Graph, argnum: int | None = 0, *, with_value: bool = False) -> Graph:
    """A graph with `graph`'s parameter computing the gradient of its scalar float output.

    The gradient is taken with respect to parameter `argnum` (see the module
    docstring) and has that parameter's type: a tensor, or a struct of tensors
    when the parameter is a struct. With `with_value`, the result is the
    unnamed struct `<value, gradient>`, the value computed by the same ops as
    in `graph` (so with the same bits).

    Raises FederatedTypeError if the output is not a scalar float, if there is
    no such parameter, or if a gradient rule cannot handle an op (naming it).
    """
    _check_scalar_float_output(graph)
    wrt_type, wrt_leaves = _differentiated_parameter(graph, argnum)
    builder = GraphBuilder(graph.parameter_type)
    for op in graph.ops:  # the forward ops keep their value numbers
        builder.op(op.primitive, *op.inputs, **op.attrs)
    (output,) = graph.outputs
    float_leaves = [leaf for leaf in wrt_leaves if graph.value_types[leaf].dtype.kind == "f"]
    active = _active_values(graph, float_leaves)
    cotangents = _backward_pass(builder, graph, output, active)
    gradients = [
        cotangents[leaf] if leaf in cotangents else builder.op("zeros_like", leaf)
        for leaf in wrt_leaves
    ]
    if with_value:
        result = builder.build([output, *gradients], StructType([graph.result_type, wrt_type]))
    else:
        result = builder.build(gradients, wrt_type)
    return without_dead_ops(result)


def _check_scalar_float_output(graph: Graph) -> None:
    result = graph.result_type
    if not (isinstance(result, TensorType) and result.rank == 0 and result.dtype.kind == "f"):
        raise FederatedTypeError(
            f"the gradient needs a function with one scalar float result, "
            f"found the result type {result} (of {graph.function_type})"
        )


def _differentiated_parameter(graph: Graph, argnum: int | None) -> tuple[Type, list[int]]:
    """The type of the parameter to differentiate and the value numbers of its leaves."""
    parameter = graph.parameter_type
    if parameter is None:
        raise FederatedTypeError(
            f"the gradient needs a parameter to differentiate, but {graph.function_type} "
            "has none"
        )
    if argnum is None:
        return parameter, list(range(graph.num_parameters))
    several = isinstance(parameter, StructType) and all(n is None for n in parameter.names())
    count = len(parameter) if several else 1
    if isinstance(argnum, bool) or not isinstance(argnum, (int, np.integer)):
        raise FederatedTypeError(f"argnum must be an int or None, found {argnum!r}")
    if not 0 <= argnum < count:
        raise FederatedTypeError(
            f"argnum {argnum} is out of range: {graph.function_type} has {count} parameter(s)"
        )
    if not several:
        return parameter, list(range(graph.num_parameters))
    first = sum(len(tensor_leaves(element)) for element in list(parameter)[:argnum])
    element = parameter[argnum]
    return element, list(range(first, first + len(tensor_leaves(element))))


def _active_values(graph: Graph, leaves: Sequence[int]) -> set[int]:
    """The float values that depend on `leaves` through differentiable primitives."""
    active = set(leaves)
    first = graph.num_parameters
    for position, op in enumerate(graph.ops):
        if (
            op.result_type.dtype.kind == "f"
            and primitives.lookup(op.primitive).differentiable
            and any(value in active for value in op.inputs)
        ):
            active.add(first + position)
    return active


def _backward_pass(
    builder: GraphBuilder, graph: Graph, output: int, active: set[int]
) -> dict[int, int]:
    """The cotangent of each active value the output depends on, emitted into `builder`."""
    if output not in active:
        return {}
    cotangents = {output: builder.constant(np.ones((), dtype=graph.value_types[output].dtype))}
    first = graph.num_parameters
    for position in reversed(range(len(graph.ops))):
        value = first + position
        cotangent = cotangents.get(value)
        if cotangent is None:
            continue
        op = graph.ops[position]
        rule = primitives.lookup(op.primitive).gradient
        try:
            input_cotangents = rule(builder, cotangent, op.inputs, value, **op.attrs)
        except FederatedTypeError as error:
            raise FederatedTypeError(
                f"cannot differentiate op %{value} ({_describe(op, graph)}): {error}"
            ) from None
        for input_value, input_cotangent in zip(op.inputs, input_cotangents, strict=True):
            if input_cotangent is None or input_value not in active:
                continue
            _check_cotangent(builder, op, graph, input_value, input_cotangent)
            if input_value in cotangents:
                input_cotangent = builder.op("add", cotangents[input_value], input_cotangent)
            cotangents[input_value] = input_cotangent
    return cotangents


def _describe(op: Op, graph: Graph) -> str:
    inputs = ", ".join(str(graph.value_types[i]) for i in op.inputs)
    return f"{op.primitive} of {inputs or 'no inputs'}"


def _check_cotangent(
    builder: GraphBuilder, op: Op, graph: Graph, input_value: int, cotangent: int
) -> None:
    # A rule that returns the wrong type is a bug in the rule; say which.
    expected, found = graph.value_types[input_value], builder.type_of(cotangent)
    if found.dtype != expected.dtype or not is_assignable_from(expected, found):
        raise FederatedTypeError(
            f"the gradient rule of {op.primitive!r} gave a cotangent of type {found} "
            f"for its input %{input_value} of type {expected}"
        )


def without_dead_ops(graph: Graph) -> Graph:
    """`graph` without the ops that no output needs, the others renumbered in order."""
    first = graph.num_parameters
    live = set(graph.outputs)
    for position in reversed(range(len(graph.ops))):
        if first + position in live:
            live.update(graph.ops[position].inputs)
    renumbered = {value: value for value in range(first)}
    kept: list[Op] = []
    for position, op in enumerate(graph.ops):
        if first + position not in live:
            continue
        renumbered[first + position] = first + len(kept)
        inputs = [renumbered[value] for value in op.inputs]
        kept.append(Op(op.primitive, inputs, op.attrs, op.result_type))
    outputs = [renumbered[value] for value in graph.outputs]
    return Graph(graph.parameter_type, kept, outputs, graph.result_type)
