"""The one local-graph evaluator: runs a graph's ops in order on NumPy arrays.

Every backend runs local graphs through `evaluate_graph`, so a primitive means
the same thing everywhere: each op is one call of `primitives.evaluate`.
Intermediate values are dropped as soon as no later op or output needs them,
so a long graph holds only its live values.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from fedcc.ir import primitives
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.local_graph import Graph
from fedcc.ir.types import TensorType


def _matches(leaf: TensorType, array: np.ndarray) -> bool:
    return (
        array.dtype == leaf.dtype
        and array.ndim == leaf.rank
        and all(d is None or d == s for d, s in zip(leaf.shape, array.shape, strict=True))
    )


def check_arguments(graph: Graph, arguments: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The arguments as arrays, after checking each against its parameter leaf of `graph`.

    Raises FederatedTypeError naming the parameter leaf index, the expected
    type and what was found.
    """
    leaves = graph.parameter_leaves
    if len(arguments) != len(leaves):
        raise FederatedTypeError(
            f"the local graph {graph.function_type} takes {len(leaves)} parameter "
            f"leaves, found {len(arguments)} arguments"
        )
    arrays = []
    for index, (leaf, argument) in enumerate(zip(leaves, arguments, strict=True)):
        array = np.asarray(argument) if isinstance(argument, np.generic) else argument
        if not isinstance(array, np.ndarray):
            raise FederatedTypeError(
                f"parameter leaf {index} of {graph.function_type} expects an array of "
                f"{leaf}, found {type(argument).__name__}"
            )
        if not _matches(leaf, array):
            raise FederatedTypeError(
                f"parameter leaf {index} of {graph.function_type} expects {leaf}, "
                f"found an array of {primitives.array_text(array)}"
            )
        arrays.append(array)
    return arrays


@functools.lru_cache(maxsize=1024)
def _release_plan(graph: Graph) -> tuple[tuple[int, ...], ...]:
    """For each op, the values that are dead once it has run (no later op or output uses them)."""
    first_result = graph.num_parameters
    last_use: dict[int, int] = {}
    for position, op in enumerate(graph.ops):
        # A result no op uses is dead as soon as it exists.
        last_use[first_result + position] = position
        for value in op.inputs:
            last_use[value] = position
    kept = set(graph.outputs)
    plan: list[list[int]] = [[] for _ in graph.ops]
    for value, position in last_use.items():
        if value not in kept:
            plan[position].append(value)
    return tuple(tuple(sorted(dead)) for dead in plan)


@functools.lru_cache(maxsize=1024)
def _prepared_steps(graph: Graph) -> tuple[tuple[tuple, ...], list[tuple[int, ...] | None]]:
    """Each op once, ready to run, and the result shape each op last passed the check with.

    A step is its primitive, inputs, attributes, result type and dtype, and the
    values to drop after it. Ops keep their attributes canonical, so running a
    prepared graph skips the per-call checks that `primitives.evaluate` makes
    for a lone op. The shapes start as the fully known result shapes (None
    where a dim is `?`) and then remember the last shape that
    `primitives.conform_result` accepted, so that a graph run again on the same
    batch size checks each result with one dtype identity and one shape
    comparison. A stale entry only sends a result down the full check again.
    """
    release = _release_plan(graph)
    steps = []
    accepted_shapes: list[tuple[int, ...] | None] = []
    for op, dead in zip(graph.ops, release, strict=True):
        steps.append(
            (
                primitives.PRIMITIVES[op.primitive],
                op.inputs,
                op.attrs,
                op.result_type,
                op.result_type.dtype,
                dead,
            )
        )
        fully_known = op.result_type.is_fully_defined()
        accepted_shapes.append(op.result_type.shape if fully_known else None)
    return tuple(steps), accepted_shapes


def evaluate_graph(graph: Graph, arguments: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The arrays of `graph.outputs`, in order, for `arguments` (the parameter leaves, in order).

    Each argument must have its leaf's dtype exactly, its rank, and its known
    dims. Results are C-contiguous and may share memory with the arguments (an
    output that is a parameter, or a reshape of one); treat them as read-only.
    """
    values: list[np.ndarray | None] = check_arguments(graph, arguments)
    values.extend([None] * len(graph.ops))
    first = graph.num_parameters
    steps, accepted_shapes = _prepared_steps(graph)
    ndarray = np.ndarray
    with np.errstate(all="ignore"):
        for position, (primitive, inputs, attrs, result_type, dtype, dead) in enumerate(steps):
            arrays = [values[i] for i in inputs]
            try:
                result = primitive.impl(*arrays, **attrs)
            except (ValueError, IndexError) as error:
                cause = primitives.implementation_error(primitive, arrays, error)
                raise FederatedTypeError(f"op %{first + position} of {graph!r}: {cause}") from None
            # The common case costs two comparisons; the rest is conform_result's.
            if not (
                type(result) is ndarray
                and result.dtype is dtype
                and result.shape == accepted_shapes[position]
            ):
                try:
                    result = primitives.conform_result(primitive, result, result_type)
                except FederatedTypeError as error:
                    raise FederatedTypeError(
                        f"op %{first + position} of {graph!r}: {error}"
                    ) from None
                accepted_shapes[position] = result.shape
            values[first + position] = result
            for value in dead:
                values[value] = None
    # Outputs leave as C-ordered arrays: a view (a transpose, a slice) summed later
    # gives other bits than a contiguous copy, and remote backends ship copies.
    outputs = [values[output] for output in graph.outputs]
    return [x if x.flags.c_contiguous else x.copy(order="C") for x in outputs]
