"""Backends are found through the `fedcc.backends` entry points and chosen per run or per block."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from fedcc.ir.building_blocks import Lambda, Reference, call_intrinsic
from fedcc.ir.errors import BackendError
from fedcc.ir.type_text import parse_type
from fedcc.runtimes import backends, get_backend, registry, run, use_backend
from fedcc.runtimes.backend import Backend
from fedcc.runtimes.reference import InProcessSession, ReferenceBackend
from fedcc.runtimes.threads import ThreadsBackend


class CountingBackend(Backend):
    """A third-party backend: in-process shards, counting the sessions it opened."""

    name = "counting"
    instances: list[CountingBackend] = []

    def __init__(self, shards: int = 1) -> None:
        self.shards = shards
        self.sessions = 0
        self.closed = False
        CountingBackend.instances.append(self)

    def open_session(self, num_clients):
        self.sessions += 1
        return InProcessSession(num_clients, self.shards)

    def close(self) -> None:
        self.closed = True


class NotABackend:
    def __init__(self, **options) -> None:
        pass


@pytest.fixture
def third_party(monkeypatch):
    """Registers `counting` and `broken` backends as another package's entry points would."""
    installed = list(metadata.entry_points(group=registry.ENTRY_POINT_GROUP))
    extra = [
        metadata.EntryPoint("counting", f"{__name__}:CountingBackend", registry.ENTRY_POINT_GROUP),
        metadata.EntryPoint("broken", f"{__name__}:NotABackend", registry.ENTRY_POINT_GROUP),
        metadata.EntryPoint("missing", "no_such_module:Backend", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(
        registry.metadata,
        "entry_points",
        lambda group: [e for e in installed + extra if e.group == group],
    )
    CountingBackend.instances.clear()
    yield
    with registry._shared_lock:
        for key in [k for k in registry._shared if k[0] in ("counting",)]:
            registry._shared.pop(key).close()


def mean():
    t = parse_type("{float32}@CLIENTS")
    return Lambda("v", t, call_intrinsic("federated_mean", Reference("v", t)))


def test_the_reference_backend_is_installed_through_the_entry_point_group():
    assert "reference" in backends()
    entry_points = {e.name: e for e in metadata.entry_points(group="fedcc.backends")}
    assert entry_points["reference"].value == "fedcc.runtimes.reference:ReferenceBackend"
    assert isinstance(get_backend("reference"), ReferenceBackend)


def test_runs_use_the_threads_backend_by_default():
    assert registry.DEFAULT_BACKEND == "threads"
    assert isinstance(registry.current_backend(), ThreadsBackend)
    assert run(mean(), [1.0, 2.0, 6.0]) == np.float32(3.0)


def test_unknown_backends_and_options_are_refused_clearly():
    with pytest.raises(BackendError, match=r"no backend named 'moon' is installed; installed: .*"):
        get_backend("moon")
    with pytest.raises(BackendError, match="the reference backend takes no options, found workers"):
        get_backend("reference", workers=4)
    with pytest.raises(BackendError, match="no backend named 'moon'"):
        run(mean(), [1.0], backend="moon")
    with pytest.raises(BackendError, match="expected a backend name or a Backend"):
        run(mean(), [1.0], backend=3)


def test_a_third_party_backend_registered_as_an_entry_point_is_listed_and_used(third_party):
    assert {"counting", "reference"} <= set(backends())
    assert run(mean(), [1.0, 2.0], backend="counting", shards=2) == np.float32(1.5)
    assert run(mean(), [3.0, 5.0], backend="counting", shards=2) == np.float32(4.0)
    # A backend named in `run` is made once per name and options and kept for later runs.
    (shared,) = CountingBackend.instances
    assert shared.sessions == 2 and shared.shards == 2
    run(mean(), [3.0], backend="counting")
    assert len(CountingBackend.instances) == 2


def test_broken_registrations_are_backend_errors(third_party):
    with pytest.raises(BackendError, match="made a NotABackend, not a fedcc Backend"):
        get_backend("broken")
    with pytest.raises(BackendError, match=r"'missing' \(no_such_module:Backend\) failed to load"):
        get_backend("missing")


def test_use_backend_chooses_the_backend_inside_the_block_and_closes_what_it_made(third_party):
    with use_backend("counting", shards=3) as backend:
        assert registry.current_backend() is backend
        assert run(mean(), [1.0, 2.0, 3.0]) == np.float32(2.0)
        with use_backend("reference") as inner:
            assert registry.current_backend() is inner
        assert registry.current_backend() is backend
    assert backend.sessions == 1 and backend.closed
    assert isinstance(registry.current_backend(), ThreadsBackend)


def test_use_backend_with_an_instance_leaves_it_open():
    backend = CountingBackend(shards=2)
    with use_backend(backend) as used:
        assert used is backend
        run(mean(), [1.0, 2.0, 3.0])
    assert backend.sessions == 1 and not backend.closed
    with pytest.raises(BackendError, match="options go with a backend name"), use_backend(
        backend, workers=2
    ):
        pass


def test_options_without_a_name_need_no_use_backend_block(third_party):
    with use_backend("counting"), pytest.raises(BackendError, match="need a backend name"):
        run(mean(), [1.0], workers=2)
    # Options without a name go to the default backend.
    assert run(mean(), [1.0, 3.0], workers=2) == np.float32(2.0)
    with pytest.raises(BackendError, match="threads backend takes workers=, timeout=; found sh"):
        run(mean(), [1.0], shards=2)
    with pytest.raises(BackendError, match="go with a backend name"):
        run(mean(), [1.0], backend=CountingBackend(), workers=2)


def test_an_explicit_backend_wins_over_use_backend(third_party):
    explicit = CountingBackend()
    with use_backend("counting") as surrounding:
        run(mean(), [1.0], backend=explicit)
    assert explicit.sessions == 1 and surrounding.sessions == 0
