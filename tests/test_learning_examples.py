"""The learning examples run, learn, and write what they say they write."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import fedcc as fc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fedavg_on_synthetic_learns_and_saves_the_process_and_state(tmp_path, capsys):
    example = load_example("fedavg_synthetic")
    accuracies = example.train(6, alpha=0.0, beta=0.0, num_clients=10, output=tmp_path)
    assert accuracies[-1] > 0.5 and accuracies[-1] > accuracies[0]
    assert "round   6: training loss" in capsys.readouterr().out
    process = fc.learning.IterativeProcess.from_bundle(fc.load(tmp_path / "fedavg.pb"))
    state = process.load_state(tmp_path / "state.npz")
    assert state["round"] == 6


def test_the_custom_mlp_is_a_user_defined_model_that_learns(capsys):
    example = load_example("custom_mlp")
    model = fc.learning.models.from_logits(example.initial_params(), example.logits, 2)
    assert str(model.params_type) == (
        "<hidden=<kernel=float32[2,16],bias=float32[16]>,"
        "output=<kernel=float32[16,6],bias=float32[6]>>"
    )
    losses, accuracy = example.train(rounds=10, num_clients=6)
    assert losses[-1] < 0.5 * losses[0]
    # Chance is 1/6; the clients' label skew slows the global model down at first.
    assert accuracy > 0.6
    assert "clipped" in capsys.readouterr().out


def test_the_custom_mlp_logits_are_the_numpy_function():
    example = load_example("custom_mlp")
    params = example.initial_params(seed=4)
    x, _ = example.ring_of_blobs(5)
    hidden = np.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    expected = hidden @ params["output"]["kernel"] + params["output"]["bias"]
    np.testing.assert_allclose(example.logits(params, x), expected)
    assert example.logits(params, x).shape == (5, example.NUM_CLASSES)


@pytest.mark.parametrize("name", ["fedavg_synthetic", "custom_mlp"])
def test_the_examples_have_a_main(name):
    assert callable(load_example(name).main)
