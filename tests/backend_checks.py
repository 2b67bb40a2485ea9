"""Helpers shared by the backend tests: bit-exact fingerprints of results, and a ledger of
the worker processes a test module started, to check that none is left behind."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import numpy as np
import pytest

import fedcc as fc
from fedcc.runtimes.processes import ProcessesBackend


def fingerprint(value: Any) -> tuple:
    """The value's structure, dtypes, shapes and bytes: equal exactly when bit-identical."""
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        return ("tensor", type(value).__name__, array.dtype.str, array.shape, array.tobytes())
    if isinstance(value, dict):
        return ("dict", tuple((key, fingerprint(v)) for key, v in value.items()))
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(fingerprint(v) for v in value))
    return ("python", repr(value))


def outcome(comp: Any, *args: Any, **options: Any) -> tuple:
    """The result's fingerprint, or the error's class and message."""
    try:
        return ("value", fingerprint(fc.run(comp, *args, **options)))
    except fc.FedccError as error:
        return ("error", type(error), str(error))


class WorkerLedger:
    """The pids of the worker processes one test module started."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def remember(self, backend: ProcessesBackend) -> ProcessesBackend:
        self.pids.update(pid for pid in backend.worker_pids() if pid is not None)
        return backend

    def assert_all_gone(self, bound_seconds: float) -> None:
        """Every remembered worker exits within the bound and was reaped (no zombie)."""
        deadline = time.monotonic() + bound_seconds
        for pid in self.pids:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                assert time.monotonic() < deadline, f"worker pid {pid} is still there"
                time.sleep(0.05)
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped already: not a zombie child of ours
        assert multiprocessing.active_children() == []
        try:
            reaped = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            reaped = (0, 0)
        assert reaped == (0, 0), f"a zombie child process {reaped[0]} was left"
