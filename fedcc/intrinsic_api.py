"""The `fc.` intrinsic functions (DESIGN §4): TFF's names, traced or evaluated eagerly.

Inside a federated computation being traced, each function builds the
intrinsic call (`compiler/federated_tracer.py`), checking the types at trace
time; inside `with fc.eager():` it computes on concrete values
(`fedcc/eager.py`). Anywhere else it is an error.
"""

from __future__ import annotations

from typing import Any

from fedcc.compiler import federated_tracer as tracer
from fedcc.eager import IMPLEMENTATIONS, is_eager

__all__ = [
    "federated_aggregate",
    "federated_apply",
    "federated_broadcast",
    "federated_eval",
    "federated_map",
    "federated_max",
    "federated_mean",
    "federated_min",
    "federated_secure_sum",
    "federated_secure_sum_bitwidth",
    "federated_sum",
    "federated_value",
    "federated_zip",
    "sequence_map",
    "sequence_reduce",
    "sequence_sum",
]


def _dispatch(name: str, *args: Any) -> Any:
    if tracer.is_tracing():
        return tracer.BUILDERS[name](*args)
    if is_eager():
        return IMPLEMENTATIONS[name](*args)
    raise tracer.located_error(
        f"fc.{name}",
        "intrinsics run inside a computation: call it from the body of a "
        "@fc.federated_computation, or inside `with fc.eager():`",
    )


def federated_broadcast(value: Any) -> Any:
    """The server's value at every client: `T@SERVER -> T@CLIENTS`."""
    return _dispatch("federated_broadcast", value)


def federated_map(fn: Any, value: Any) -> Any:
    """`fn` on each client's value: `(T -> U), {T}@CLIENTS -> {U}@CLIENTS`.

    An all-equal value gives an all-equal result; a value at SERVER becomes a
    `federated_apply`. A list, tuple or dict of placed values is zipped first.
    `fn` is a computation or a Python function (traced with the member type).
    """
    return _dispatch("federated_map", fn, value)


def federated_apply(fn: Any, value: Any) -> Any:
    """`fn` on the server's value: `(T -> U), T@SERVER -> U@SERVER`."""
    return _dispatch("federated_apply", fn, value)


def federated_sum(value: Any) -> Any:
    """The sum of the clients' values at the server: `{T}@CLIENTS -> T@SERVER`."""
    return _dispatch("federated_sum", value)


def federated_mean(value: Any, weight: Any = None) -> Any:
    """The mean of the clients' values, weighted by a `{float32}@CLIENTS` weight if given.

    `{T}@CLIENTS[, {float32}@CLIENTS] -> T@SERVER`; T holds floating-point tensors.
    """
    if weight is None:
        return _dispatch("federated_mean", value)
    return _dispatch("federated_mean", value, weight)


def federated_aggregate(value: Any, zero: Any, accumulate: Any, merge: Any, report: Any) -> Any:
    """Folds the clients' values: `{T}@CLIENTS, A, (<A,T>->A), (<A,A>->A), (A->R) -> R@SERVER`."""
    return _dispatch("federated_aggregate", value, zero, accumulate, merge, report)


def federated_zip(value: Any) -> Any:
    """A struct of values placed alike as one placed struct: `<{A}@C,{B}@C> -> {<A,B>}@C`."""
    return _dispatch("federated_zip", value)


def federated_value(value: Any, placement: Any) -> Any:
    """An unplaced value placed at `fc.CLIENTS` (all-equal) or `fc.SERVER`: `T -> T@P`."""
    return _dispatch("federated_value", value, placement)


def federated_eval(fn: Any, placement: Any) -> Any:
    """`fn()` at `fc.SERVER` (`T@SERVER`) or at each client (`{T}@CLIENTS`)."""
    return _dispatch("federated_eval", fn, placement)


def federated_min(value: Any) -> Any:
    """The elementwise minimum of the clients' values: `{T}@CLIENTS -> T@SERVER`."""
    return _dispatch("federated_min", value)


def federated_max(value: Any) -> Any:
    """The elementwise maximum of the clients' values: `{T}@CLIENTS -> T@SERVER`."""
    return _dispatch("federated_max", value)


def federated_secure_sum(value: Any, max_input: Any) -> Any:
    """The sum of integer values each in [0, max_input]; the server learns only the sum."""
    return _dispatch("federated_secure_sum", value, max_input)


def federated_secure_sum_bitwidth(value: Any, bitwidth: Any) -> Any:
    """The sum of integer values each in [0, 2**bitwidth); the server learns only the sum."""
    return _dispatch("federated_secure_sum_bitwidth", value, bitwidth)


def sequence_map(fn: Any, sequence: Any) -> Any:
    """`fn` on each element of a sequence: `(T -> U), T* -> U*`."""
    return _dispatch("sequence_map", fn, sequence)


def sequence_reduce(sequence: Any, zero: Any, op: Any) -> Any:
    """Folds a sequence in order from `zero`: `T*, A, (<A,T> -> A) -> A`."""
    return _dispatch("sequence_reduce", sequence, zero, op)


def sequence_sum(sequence: Any) -> Any:
    """The sum of a sequence's elements: `T* -> T`."""
    return _dispatch("sequence_sum", sequence)
