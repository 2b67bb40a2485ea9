"""How errors raised by user code and values while a computation runs are reported.

A local graph that fails on a client's data, a bound a client's value breaks,
a user `merge` that raises: each becomes a `FedccError` whose message starts
with the intrinsic, then the client index or element where it happened.
"""

from __future__ import annotations

from typing import Any

from fedcc.ir.errors import BackendError, FedccError

# What user code and values can raise while running: our own errors, and NumPy's
# for bad values. Anything else is a bug here and is not dressed up.
USER_ERRORS = (FedccError, ArithmeticError, ValueError, IndexError, TypeError)


def user_error(
    error: BaseException, intrinsic: str, client: int | None = None, detail: str = ""
) -> FedccError:
    """`error`, raised by user code or values inside `intrinsic`, as a FedccError saying where.

    A FedccError keeps its class; anything else becomes a `BackendError`.
    """
    where = intrinsic
    if client is not None:
        where += f", client {client}"
    if detail:
        where += f", {detail}"
    if isinstance(error, FedccError):
        message = f"{where}: {error}"
        try:
            wrapped = type(error)(message)
        except TypeError:
            wrapped = BackendError(message)
    else:
        wrapped = BackendError(f"{where}: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def call_user(function: Any, argument: Any, intrinsic: str, detail: str = "") -> Any:
    """`function.call(argument)`, with errors from user code reported as `user_error`s."""
    try:
        return function.call(argument)
    except USER_ERRORS as error:
        raise user_error(error, intrinsic, detail=detail) from error
