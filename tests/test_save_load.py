"""Saving and loading computations (DESIGN §6): a computation saved to a `.pb` file, loaded in
another process without its Python source and called, gives the same bits."""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fedcc as fc
from fedcc.ir import building_blocks as bb

Output = collections.namedtuple("Output", ["model", "loss"])

FEATURES = 3


@fc.numpy_computation(f"<w=float32[{FEATURES}],seed=int64>", f"float32[?,{FEATURES}]")
def local_step(state, x):
    noise = fc.random.normal(fc.random.fold_in(state["seed"], 1), (FEATURES,))
    gradient = np.mean(x, axis=0) - state["w"]
    loss = np.sum(gradient * gradient)
    return {"w": state["w"] + np.float32(0.1) * gradient + np.float32(0.01) * noise,
            "seed": state["seed"]}, loss


@fc.federated_computation(
    f"<w=float32[{FEATURES}],seed=int64>@SERVER", f"{{float32[?,{FEATURES}]}}@CLIENTS"
)
def train_round(state, data):
    outputs = fc.federated_map(local_step, [fc.federated_broadcast(state), data])
    return Output(fc.federated_mean(outputs[0].w), fc.federated_mean(outputs[1]))


@fc.federated_computation
def initialize():
    return fc.federated_value(
        {"w": np.zeros(FEATURES, np.float32), "seed": np.int64(5)}, fc.SERVER
    )


# Builds the arguments from nothing but NumPy, the same way in this process and in the child.
ARGUMENTS = textwrap.dedent(
    f"""
    import numpy as np
    rng = np.random.default_rng(3)
    state = {{"w": rng.normal(size={FEATURES}).astype(np.float32), "seed": np.int64(9)}}
    data = [rng.normal(size=(n, {FEATURES})).astype(np.float32) for n in (2, 5, 1, 4)]
    """
)


def leaves(value) -> list[np.ndarray]:
    """The arrays of a nested result, in order (dicts by key order)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in leaves(v)]
    return [np.asarray(value)]


def arguments() -> tuple:
    """The round's (state, data), as ARGUMENTS builds them."""
    namespace: dict = {}
    exec(ARGUMENTS, namespace)
    return namespace["state"], namespace["data"]


def run_in_child(script: str) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def test_a_saved_computation_loaded_in_another_process_gives_the_same_bits(tmp_path):
    path, out = tmp_path / "round.pb", tmp_path / "out.npz"
    fc.save(train_round, path)
    run_in_child(
        ARGUMENTS
        + textwrap.dedent(
            f"""
            import fedcc as fc
            loaded = fc.load({str(path)!r})
            result = loaded(state, data)

            def leaves(value):
                if isinstance(value, dict):
                    return [leaf for v in value.values() for leaf in leaves(v)]
                if isinstance(value, (tuple, list)):
                    return [leaf for v in value for leaf in leaves(v)]
                return [np.asarray(value)]

            np.savez({str(out)!r}, *leaves(result))
            """
        )
    )
    expected = leaves(train_round(*arguments()))
    with np.load(out) as stored:
        found = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    assert len(found) == len(expected)
    for a, b in zip(expected, found):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_saving_is_deterministic_across_processes(tmp_path):
    path = tmp_path / "child.pb"
    run_in_child(
        textwrap.dedent(
            f"""
            import importlib.util
            import fedcc as fc
            # Traces the computations of this test file afresh, in a new process.
            spec = importlib.util.spec_from_file_location("saved", {__file__!r})
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            fc.save(module.train_round, {str(path)!r})
            """
        )
    )
    assert path.read_bytes() == fc.serialize(train_round)


def test_a_loaded_computation_is_callable_and_gives_plain_containers(tmp_path):
    fc.save(train_round, tmp_path / "round.pb")
    loaded = fc.load(tmp_path / "round.pb")
    assert isinstance(loaded, fc.Computation)
    assert loaded == train_round and loaded.type_signature == train_round.type_signature
    original = train_round(*arguments())
    result = loaded(*arguments())
    assert isinstance(original, Output) and isinstance(result, dict)  # no Python containers kept
    assert result["model"].tobytes() == original.model.tobytes()
    assert result["loss"].tobytes() == original.loss.tobytes()


def test_serialize_and_deserialize_round_trip_a_computation():
    data = fc.serialize(train_round)
    assert isinstance(data, bytes) and data == fc.serialize(train_round.building_block)
    loaded = fc.deserialize(data)
    assert isinstance(loaded, fc.Computation)
    assert loaded.building_block == train_round.building_block


def test_text_round_trips_and_parses_to_a_callable_computation():
    text = fc.to_text(train_round)
    assert "federated_broadcast" in text and "random_normal" in text
    parsed = fc.parse_text(text)
    assert parsed == train_round and isinstance(parsed, fc.Computation)
    assert parsed(*arguments())["loss"] == train_round(*arguments()).loss


def test_a_bundle_saves_named_computations_and_loads_them_callable(tmp_path):
    bundle = fc.ComputationBundle(
        {"initialize": initialize, "next": train_round}, metadata={"source_module": __name__}
    )
    fc.save(bundle, tmp_path / "process.pb")
    loaded = fc.load(tmp_path / "process.pb")
    assert isinstance(loaded, fc.ComputationBundle) and loaded == bundle
    assert list(loaded) == ["initialize", "next"]
    assert loaded.metadata == {"source_module": __name__}
    state = loaded.initialize()
    assert state["w"].tolist() == [0.0] * FEATURES and state["seed"] == 5
    _, data = arguments()
    assert loaded.next(state, data)["loss"] == train_round(state, data).loss
    assert fc.parse_text(fc.to_text(bundle)) == bundle


def test_a_loaded_computation_can_be_called_in_a_new_trace_and_eagerly(tmp_path):
    fc.save(train_round, tmp_path / "round.pb")
    loaded = fc.load(tmp_path / "round.pb")

    @fc.federated_computation(train_round.type_signature.parameter)
    def twice(state, data):
        first = loaded(state, data)
        return first, loaded(state, data)

    calls = [n for n in bb.walk(twice.building_block) if isinstance(n, bb.Call)
             and n.function == train_round.building_block]
    assert len(calls) == 2
    with fc.eager():
        eager = loaded(*arguments())
    assert eager["loss"].tobytes() == train_round(*arguments()).loss.tobytes()


def test_loading_garbage_is_an_ir_format_error(tmp_path):
    path = tmp_path / "bad.pb"
    path.write_bytes(fc.serialize(train_round)[:-7])
    with pytest.raises(fc.IRFormatError):
        fc.load(path)
    with pytest.raises(fc.IRFormatError):
        fc.deserialize(b"not a program")
    with pytest.raises(fc.TextSyntaxError):
        fc.parse_text("(x -> ")


def test_a_polymorphic_computation_cannot_be_saved_until_typed():
    @fc.federated_computation
    def identity(x):
        return x

    with pytest.raises(fc.FederatedTypeError, match="polymorphic"):
        fc.serialize(identity)
    identity(np.float32(1.0))
    typed = identity.traced[fc.parse_type("float32")]
    assert fc.deserialize(fc.serialize(typed)) == typed
