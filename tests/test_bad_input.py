"""Bad arguments are `FederatedTypeError`s that name the parameter (and the client index), raised
before anything runs: wrong number, types or shapes, ragged client lists, wrong placements."""

from __future__ import annotations

import numpy as np
import pytest

import fedcc as fc
from fedcc.runtimes.backend import Backend
from fedcc.runtimes.reference import InProcessSession


class WatchedBackend(Backend):
    """The reference backend's sessions, counted: a run that never starts opens none."""

    name = "watched"

    def __init__(self) -> None:
        self.sessions = 0

    def open_session(self, num_clients):
        self.sessions += 1
        return InProcessSession(num_clients)


@pytest.fixture
def backend():
    watched = WatchedBackend()
    with fc.use_backend(watched):
        yield watched


@fc.federated_computation("{float32[2]}@CLIENTS", "float32@SERVER")
def shift(points, offset):
    return fc.federated_map(lambda p, o: p, [points, fc.federated_broadcast(offset)])


@fc.numpy_computation({"w": "float32[3]", "b": "float32"}, "int32[?]")
def score(params, labels):
    return np.sum(params["w"]) + params["b"] + np.sum(labels)


GOOD_POINTS = [[1.0, 2.0], [3.0, 4.0]]
GOOD_PARAMS = {"w": [1.0, 2.0, 3.0], "b": 0.5}

CASES = {
    "too few arguments": (shift, (GOOD_POINTS,), {}, ["shift takes 2 argument(s) (points, offset)",
                                                    "found 1"]),
    "too many arguments": (shift, (GOOD_POINTS, 1.0, 2.0), {}, ["shift takes 2 argument(s)",
                                                                "found 3"]),
    "wrong type": (shift, (GOOD_POINTS, "one"), {}, ["parameter 'offset'", "expected float32",
                                                     "str 'one'"]),
    "wrong shape": (score, ({"w": [1.0, 2.0], "b": 0.5}, [1]), {},
                    ["parameter 'params'.w", "expected float32[3]", "shape (2,)"]),
    "ragged client list": (shift, ([[1.0, 2.0], [3.0, 4.0, 5.0]], 1.0), {},
                           ["parameter 'points', client 1", "expected float32[2]", "shape (3,)"]),
    "not a client list": (shift, (1.0, 1.0), {},
                          ["parameter 'points'", "a list with one value a client"]),
    "clients where the server's value is expected": (
        shift, (GOOD_POINTS, [1.0, 2.0]), {}, ["parameter 'offset'", "float32", "shape (2,)"]),
    "lossy dtype": (score, (GOOD_PARAMS, [1.5]), {},
                    ["parameter 'labels'", "float64 data", "convert it explicitly"]),
    "missing field": (score, ({"w": [1.0, 2.0, 3.0]}, [1]), {}, ["parameter 'params'",
                                                                 "missing b"]),
    "unknown keyword": (score, (GOOD_PARAMS,), {"label": [1]}, ["no parameter 'label'"]),
    "keyword given twice": (score, (GOOD_PARAMS, [1]), {"params": GOOD_PARAMS},
                            ["got parameter 'params' twice"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_arguments_name_the_parameter_and_nothing_runs(case, backend):
    computation, args, kwargs, fragments = CASES[case]
    with pytest.raises(fc.FederatedTypeError) as info:
        computation(*args, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert backend.sessions == 0


def test_client_lists_of_different_lengths_name_both_parameters(backend):
    @fc.federated_computation("{float32}@CLIENTS", "{float32}@CLIENTS")
    def pair(a, b):
        return fc.federated_zip([a, b])

    with pytest.raises(fc.FederatedTypeError) as info:
        pair([1.0, 2.0], [1.0, 2.0, 3.0])
    message = str(info.value)
    assert "parameter 'a' has 2 clients" in message and "parameter 'b' has 3" in message
    assert backend.sessions == 0
    assert pair([1.0], [2.0]) == [[1.0, 2.0]]  # zipped as the list it was given
    assert backend.sessions == 1  # good arguments do run


def test_a_ragged_client_list_inside_a_struct_names_the_field_and_the_client(backend):
    @fc.federated_computation("{<x=float32[2],y=int32>}@CLIENTS")
    def total(v):
        return fc.federated_sum(v.y)

    with pytest.raises(fc.FederatedTypeError, match=r"parameter 'v', client 2\.x: expected"):
        total([{"x": [1, 2], "y": 1}, {"x": [1, 2], "y": 1}, {"x": [1], "y": 1}])
    assert backend.sessions == 0


def test_a_sequence_element_of_the_wrong_shape_names_its_position(backend):
    @fc.federated_computation("float32[2]*")
    def total(s):
        return fc.sequence_sum(s)

    with pytest.raises(fc.FederatedTypeError, match=r"parameter 's'\[1\]: expected float32\[2\]"):
        total([[1.0, 2.0], [1.0]])
    assert backend.sessions == 0


def test_a_loaded_computation_checks_its_arguments_before_running(backend):
    loaded = fc.deserialize(fc.serialize(shift))
    with pytest.raises(fc.FederatedTypeError, match="client 0"):
        loaded([[1.0]], 1.0)
    assert backend.sessions == 0
    assert [p.tolist() for p in loaded(GOOD_POINTS, 1.0)] == GOOD_POINTS


def test_bad_arguments_are_refused_in_eager_mode_too():
    with fc.eager(), pytest.raises(fc.FederatedTypeError, match="parameter 'points', client 1"):
        shift([[1.0, 2.0], [3.0]], 1.0)


def test_polymorphic_arguments_of_unknown_type_name_the_parameter():
    @fc.federated_computation
    def identity(x):
        return x

    with pytest.raises(fc.FederatedTypeError, match=r"parameter 'x'.*cannot tell the type"):
        identity(object())
    with pytest.raises(fc.FederatedTypeError, match="takes 1 argument"):
        identity(np.float32(1.0), np.float32(2.0))
