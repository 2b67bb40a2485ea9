"""Which backends exist and which one runs a computation (DESIGN §8).

Backends register under the entry-point group `fedcc.backends`: the entry
point's name is the backend's name and it loads a `Backend` subclass (or any
callable taking the backend's options and returning a `Backend`). fedcc's own
are declared in pyproject.toml; a third-party package adds one the same way.

`run` uses, in order: the backend it is given; the innermost `use_backend`;
the default, `DEFAULT_BACKEND`. A backend named in `run` is created once per
name and options and kept for later runs (a pool of workers should not be
started every round); all of those are closed when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import threading
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from fedcc.ir.errors import BackendError
from fedcc.runtimes.backend import Backend

ENTRY_POINT_GROUP = "fedcc.backends"
DEFAULT_BACKEND = "threads"

_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "fedcc_current_backend", default=None
)
_shared: dict[tuple, Backend] = {}
_shared_lock = threading.Lock()


def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def backends() -> list[str]:
    """The names of the installed backends, sorted."""
    return sorted(_entry_points())


def describe_backends() -> list[tuple[str, str, str]]:
    """Each installed backend's name, entry point (`module:object`) and one-line summary.

    The summary is the first line of the backend's docstring, or why it failed to load.
    """
    described = []
    for name, entry_point in sorted(_entry_points().items()):
        try:
            factory = entry_point.load()
        except Exception as error:  # a third-party backend may fail in any way
            summary = f"fails to load: {type(error).__name__}: {error}"
        else:
            summary = ((factory.__doc__ or "").strip().splitlines() or [""])[0]
        described.append((name, entry_point.value, summary))
    return described


def get_backend(name: str, **options: Any) -> Backend:
    """A new instance of the backend registered as `name`, made with `options`.

    The caller owns it and should `close()` it (or use it as a context manager).
    """
    entry_point = _entry_points().get(name)
    if entry_point is None:
        installed = ", ".join(backends()) or "none"
        raise BackendError(f"no backend named {name!r} is installed; installed: {installed}")
    try:
        factory = entry_point.load()
    except Exception as error:
        raise BackendError(
            f"the backend {name!r} ({entry_point.value}) failed to load: {error}"
        ) from error
    backend = factory(**options)
    if not isinstance(backend, Backend):
        raise BackendError(
            f"the backend {name!r} ({entry_point.value}) made a {type(backend).__name__}, "
            "not a fedcc Backend"
        )
    return backend


@contextlib.contextmanager
def use_backend(backend: str | Backend, **options: Any) -> Iterator[Backend]:
    """Runs computations called inside the `with` block on `backend`.

    Given a name, makes a new backend with `options` and closes it at the end of
    the block; given a `Backend`, uses it as it is (options are then refused)
    and leaves it open.
    """
    if isinstance(backend, Backend):
        if options:
            raise BackendError("options go with a backend name, not with a Backend instance")
        instance, owned = backend, False
    else:
        instance, owned = get_backend(backend, **options), True
    token = _current.set(instance)
    try:
        yield instance
    finally:
        _current.reset(token)
        if owned:
            instance.close()


def current_backend() -> Backend:
    """The backend of a run that names none: the innermost `use_backend`, else the default."""
    return _current.get() or shared_backend(DEFAULT_BACKEND)


def shared_backend(name: str, **options: Any) -> Backend:
    """The one long-lived instance of backend `name` with `options`, made on first use."""
    try:
        key = (name, tuple(sorted(options.items())))
        hash(key)
    except TypeError:
        raise BackendError(
            f"the options of backend {name!r} must be hashable to share it between runs; "
            "make one with use_backend(...) instead"
        ) from None
    with _shared_lock:
        backend = _shared.get(key)
        if backend is None:
            backend = _shared[key] = get_backend(name, **options)
    return backend


def resolve_backend(backend: str | Backend | None, **options: Any) -> Backend:
    """The backend a run uses, from `run`'s `backend` argument and backend options."""
    if isinstance(backend, Backend):
        if options:
            raise BackendError(
                f"backend options ({', '.join(sorted(options))}) go with a backend name, "
                "not with a Backend instance"
            )
        return backend
    if backend is None:
        if options:
            if _current.get() is not None:
                raise BackendError(
                    f"backend options ({', '.join(sorted(options))}) need a backend name "
                    "inside use_backend(...)"
                )
            return shared_backend(DEFAULT_BACKEND, **options)
        return current_backend()
    if not isinstance(backend, str):
        raise BackendError(f"expected a backend name or a Backend, found {backend!r}")
    return shared_backend(backend, **options)


@atexit.register
def _close_shared_backends() -> None:
    with _shared_lock:
        shared = list(_shared.values())
        _shared.clear()
    for backend in shared:
        backend.close()
