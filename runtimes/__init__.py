"""Runtimes: the federated interpreter, the backend interface and the backends (DESIGN §8)."""

from fedcc.runtimes.execution import run
from fedcc.runtimes.registry import backends, get_backend, use_backend

__all__ = ["backends", "get_backend", "run", "use_backend"]
