"""The decorators that make computations (DESIGN §4), and the autodiff transformations of them.

`@fc.federated_computation(types...)` traces federated code into a `Lambda`;
`@fc.numpy_computation(types...)` traces NumPy code into a local graph. Types
are given as `Type`s, their text, NumPy dtypes or Python containers of those,
one a parameter (several parameters make one struct parameter, as in TFF), or
one struct type whose elements the parameters unpack. Without types, a
computation of parameters is polymorphic: traced on each call for the
arguments' types, and cached per type. `fc.grad` and `fc.value_and_grad` turn
a NumPy computation into its gradient computation; `fc.stop_gradient` marks a
value inside one as a constant to them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from fedcc.compiler import federated_tracer as tracer
from fedcc.compiler.federated_tracer import ParameterLayout
from fedcc.compiler.numpy_tracer import bind
from fedcc.computation import Computation, PolymorphicComputation
from fedcc.ir.building_blocks import LocalGraph
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import Type

Decorated = Computation | PolymorphicComputation


def _is_python_function(value: Any) -> bool:
    # A dtype class (np.float32) is callable too, but it is a type argument.
    return callable(value) and not isinstance(value, (type, Type))


def _decorator(
    args: tuple[Any, ...], make: Callable[[Callable[..., Any], tuple[Any, ...]], Decorated]
) -> Any:
    if len(args) == 1 and _is_python_function(args[0]):
        return make(args[0], ())
    for value in args:
        if _is_python_function(value):
            raise FederatedTypeError(
                f"expected types, found the function {value!r}; use @decorator(types...) "
                "or @decorator without arguments"
            )
    return lambda fn: make(fn, args)


def _make(
    fn: Callable[..., Any],
    types: tuple[Any, ...],
    trace: Callable[[Callable[..., Any], ParameterLayout], Computation],
    decorator: str,
) -> Decorated:
    if not callable(fn):
        raise FederatedTypeError(f"expected a Python function to decorate, found {fn!r}")
    with tracer.located(f"@fc.{decorator} on {getattr(fn, '__name__', fn)!r}"):
        _, required = tracer.positional_parameters(fn)
        layout = None if not types and required else tracer.layout_parameters(fn, types)
    # Tracing locates its own errors at the lines of the body that cause them.
    computation = PolymorphicComputation(fn, trace) if layout is None else trace(fn, layout)
    functools.update_wrapper(computation, fn, updated=())
    return computation


def _trace_federated(fn: Callable[..., Any], layout: ParameterLayout) -> Computation:
    traced = tracer.trace_function(fn, layout)
    return Computation(
        traced.block,
        name=fn.__name__,
        layout=layout,
        result_skeleton=traced.result_skeleton,
        python_function=fn,
    )


def _trace_numpy(fn: Callable[..., Any], layout: ParameterLayout) -> Computation:
    from fedcc.compiler.numpy_tracer import trace_numpy

    traced = trace_numpy(fn, layout.part_types())
    graph = traced.graph
    return Computation(
        LocalGraph(graph),
        name=fn.__name__,
        layout=ParameterLayout(graph.parameter_type, layout.names, layout.packed),
        result_skeleton=traced.result_skeleton,
        python_function=fn,
    )


def federated_computation(*args: Any) -> Any:
    """Decorates a Python function as a federated computation.

    `@fc.federated_computation("{float32}@CLIENTS")` traces the function once,
    now, with a value of that type; `@fc.federated_computation` alone traces a
    function of no parameters now, or makes a function of parameters
    polymorphic. The body calls the `fc.` intrinsics and other computations.
    Type errors are raised at trace time as `fc.FederatedTypeError`, naming the
    intrinsic, the expected and found types and the line.
    """
    return _decorator(
        args, lambda fn, types: _make(fn, types, _trace_federated, "federated_computation")
    )


def numpy_computation(*args: Any) -> Any:
    """Decorates a Python function of NumPy code as a local computation (a local op graph).

    `@fc.numpy_computation("float32[?,784]", "float32[784,10]")` traces now;
    without types the computation is polymorphic.
    """
    return _decorator(args, lambda fn, types: _make(fn, types, _trace_numpy, "numpy_computation"))


def _numpy_graph(computation: Any, what: str) -> tuple[Computation, Any]:
    if isinstance(computation, PolymorphicComputation):
        raise FederatedTypeError(
            f"{what} needs a numpy_computation with declared types; {computation.name} is "
            "polymorphic"
        )
    if not isinstance(computation, Computation) or not isinstance(
        computation.building_block, LocalGraph
    ):
        raise FederatedTypeError(f"{what} takes a numpy_computation, found {computation!r}")
    return computation, computation.building_block.graph


def _gradient(computation: Any, argnum: int, with_value: bool, what: str) -> Computation:
    from fedcc.compiler.autodiff import grad_graph

    computation, graph = _numpy_graph(computation, what)
    layout = computation.layout
    if not isinstance(argnum, int) or not 0 <= argnum < max(layout.count, 1):
        raise FederatedTypeError(
            f"{what}: argnum must pick one of {computation.name}'s {layout.count} "
            f"parameter(s), found {argnum!r}"
        )
    # The graph's argnum picks an element of a packed parameter; a single one is taken whole.
    gradient = grad_graph(graph, argnum if layout.packed else None, with_value=with_value)
    skeleton = (computation.result_skeleton, None) if with_value else None
    prefix = "value_and_grad" if with_value else "grad"
    return Computation(
        LocalGraph(gradient),
        name=f"{prefix}_{computation.name}",
        layout=layout,
        result_skeleton=skeleton,
    )


def stop_gradient(x: Any) -> Any:
    """`x` itself, through which `fc.grad` passes no gradient (as `jax.lax.stop_gradient`).

    Inside a `numpy_computation` it adds one `stop_gradient` op; on concrete
    values it returns them as arrays.
    """
    return bind("stop_gradient", x)


def grad(computation: Computation, argnum: int = 0) -> Computation:
    """A numpy_computation of the gradient of `computation`'s scalar float result.

    The gradient is with respect to parameter `argnum` and has its type (a
    struct parameter's gradient is a struct: dict or tuple in Python). It is
    reverse-mode autodiff of the local op graph.
    """
    return _gradient(computation, argnum, False, "fc.grad")


def value_and_grad(computation: Computation, argnum: int = 0) -> Computation:
    """Like `grad`, but the computation returns `(value, gradient)`."""
    return _gradient(computation, argnum, True, "fc.value_and_grad")
