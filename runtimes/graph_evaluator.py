"""The one local-graph evaluator: runs a graph's ops in order on NumPy arrays.

Every backend runs local graphs through `evaluate_graph`, so a primitive means
the same thing everywhere: each op is one call of its registered
implementation, its result checked against the op's type. A graph runs
through a loop over its prepared steps at first and, once it has run a few
times, through a straight-line Python function made from it (one local
variable a value), which does the same calls and checks with less
bookkeeping. Intermediate values are dropped as soon as no later op or output
needs them, so a long graph holds only its live values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

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
def _prepared_steps(
    graph: Graph,
) -> tuple[tuple[tuple, ...], list[tuple[int, ...] | None], list[int]]:
    """Each op once, ready to run; the result shape each op last passed the check with; and
    how many times the graph ran through the step loop (one int in a list).

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
    return tuple(steps), accepted_shapes, [0]


# A graph runs through the step loop the first times it is evaluated, then through a
# straight-line Python function made from it (see `_compiled`), which spares the loop's
# per-op bookkeeping (a quarter of the time of FedAvg's training step). Graphs of more
# ops than the limit always take the loop: compiling them would cost more than it saves.
_RUNS_BEFORE_COMPILING = 2
_MAX_COMPILED_OPS = 5000


def evaluate_graph(graph: Graph, arguments: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The arrays of `graph.outputs`, in order, for `arguments` (the parameter leaves, in order).

    Each argument must have its leaf's dtype exactly, its rank, and its known
    dims. Results are C-contiguous and may share memory with the arguments (an
    output that is a parameter, or a reshape of one); treat them as read-only.
    """
    arrays = check_arguments(graph, arguments)
    runs = _prepared_steps(graph)[2]
    if runs[0] < _RUNS_BEFORE_COMPILING or len(graph.ops) > _MAX_COMPILED_OPS:
        runs[0] += 1  # a lost update under threads only delays compiling
        outputs = _run_steps(graph, arrays)
    else:
        try:
            with np.errstate(all="ignore"):
                outputs = _compiled(graph)(*arrays)
        except (ValueError, IndexError, FederatedTypeError):
            # Ops are pure: the step loop runs them again and names the op that failed.
            outputs = _run_steps(graph, arrays)
    # Outputs leave as C-ordered arrays: a view (a transpose, a slice) summed later
    # gives other bits than a contiguous copy, and remote backends ship copies.
    return [x if x.flags.c_contiguous else x.copy(order="C") for x in outputs]


def _run_steps(graph: Graph, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs of `graph` on checked `arrays`, one prepared step at a time."""
    values: list[np.ndarray | None] = list(arrays)
    values.extend([None] * len(graph.ops))
    first = graph.num_parameters
    steps, accepted_shapes, _ = _prepared_steps(graph)
    ndarray = np.ndarray
    with np.errstate(all="ignore"):
        for position, (primitive, inputs, attrs, _, dtype, dead) in enumerate(steps):
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
                result = _conform(graph, position, result)
            values[first + position] = result
            for value in dead:
                values[value] = None
    return [values[output] for output in graph.outputs]


def _conform(graph: Graph, position: int, result: object) -> np.ndarray:
    """`result` of op `position` conformed to its type; its shape is remembered as accepted."""
    steps, accepted_shapes, _ = _prepared_steps(graph)
    primitive, _, _, result_type, _, _ = steps[position]
    try:
        result = primitives.conform_result(primitive, result, result_type)
    except FederatedTypeError as error:
        value = graph.num_parameters + position
        raise FederatedTypeError(f"op %{value} of {graph!r}: {error}") from None
    accepted_shapes[position] = result.shape
    return result


@functools.lru_cache(maxsize=1024)
def _compiled(graph: Graph) -> Callable[..., list[np.ndarray]]:
    """`graph` as one Python function of its parameter leaves that returns its outputs.

    The function does what `_run_steps` does, op by op, with each value in a
    local variable (`v` and its number) and the same result check. Its source
    is made from value numbers only: names, attributes and constants of the
    graph are reached through tuples the function closes over, never written
    into the source, so no text from a loaded file becomes code.
    """
    steps, accepted_shapes, _ = _prepared_steps(graph)
    first = graph.num_parameters
    parameters = ", ".join(f"v{i}" for i in range(first))
    lines = [f"def run({parameters}):"]
    for position, (_, inputs, attrs, _, _, dead) in enumerate(steps):
        value = first + position
        call_inputs = ", ".join(f"v{i}" for i in inputs)
        keywords = f", **attrs[{position}]" if attrs else ""
        if not call_inputs:
            keywords = keywords.removeprefix(", ")
        lines.append(f"    r = impls[{position}]({call_inputs}{keywords})")
        lines.append(
            f"    if type(r) is not ndarray or r.dtype is not dtypes[{position}] "
            f"or r.shape != shapes[{position}]:"
        )
        lines.append(f"        r = conform(graph, {position}, r)")
        lines.append(f"    v{value} = r")
        if dead:
            lines.append("    del " + ", ".join(f"v{i}" for i in dead))
    outputs = ", ".join(f"v{i}" for i in graph.outputs)
    lines.append(f"    return [{outputs}]")
    namespace = {
        "impls": tuple(step[0].impl for step in steps),
        "attrs": tuple(step[2] for step in steps),
        "dtypes": tuple(step[4] for step in steps),
        "shapes": accepted_shapes,
        "conform": _conform,
        "graph": graph,
        "ndarray": np.ndarray,
    }
    exec(compile("\n".join(lines), f"<local graph {id(graph):#x}>", "exec"), namespace)
    return namespace["run"]
