"""Optimizers as pure functions of (state, params, gradient) (DESIGN §9).

An optimizer holds only its settings. Its state (momentum, Adam's moments and
step count) is a value: `initial_state(params)` makes it, `step(state, params,
gradient)` returns the next state and parameters. `step` is plain NumPy, so
fedcc traces it into the computations that use it: the client's local
training (a fresh client state every round) and the server update (the
server's state lives in the process state, from round to round).

Parameters, gradients and states are nested dicts of float arrays; an
optimizer without state has the empty state `()`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np

from fedcc.learning import tree
from fedcc.learning.errors import check_number


class Optimizer(abc.ABC):
    """An optimizer's settings, and its state update as NumPy code."""

    @abc.abstractmethod
    def initial_state(self, params: tree.Tree) -> Any:
        """The state before the first step, for parameters shaped like `params`."""

    @abc.abstractmethod
    def step(self, state: Any, params: tree.Tree, gradient: tree.Tree) -> tuple[Any, tree.Tree]:
        """One step: `(new_state, new_params)`, in NumPy (traceable)."""


def _zeros_like(params: tree.Tree) -> tree.Tree:
    return tree.map_leaves(lambda p: np.zeros(np.shape(p), np.asarray(p).dtype), params)


@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    """Stochastic gradient descent, with heavy-ball momentum when `momentum > 0`.

    With momentum: `v = momentum * v + g; p = p - learning_rate * v` (v starts
    at zero); without: `p = p - learning_rate * g`.
    """

    learning_rate: float
    momentum: float = 0.0

    def __post_init__(self) -> None:
        check_number("sgd learning_rate", self.learning_rate, minimum=0.0, exclusive_minimum=True)
        check_number(
            "sgd momentum", self.momentum, minimum=0.0, maximum=1.0, exclusive_maximum=True
        )

    def initial_state(self, params: tree.Tree) -> Any:
        if self.momentum == 0.0:
            return ()
        return {"velocity": _zeros_like(params)}

    def step(self, state: Any, params: tree.Tree, gradient: tree.Tree) -> tuple[Any, tree.Tree]:
        rate = self.learning_rate
        if self.momentum == 0.0:
            return state, tree.map_leaves(lambda p, g: p - g * p.dtype.type(rate), params, gradient)
        momentum = self.momentum
        velocity = tree.map_leaves(
            lambda v, g: v * v.dtype.type(momentum) + g, state["velocity"], gradient
        )
        new_params = tree.map_leaves(lambda p, v: p - v * p.dtype.type(rate), params, velocity)
        return {"velocity": velocity}, new_params


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias-corrected moments.

    `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²; t = t + 1;
    p = p - learning_rate · (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + epsilon)`.
    """

    learning_rate: float
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def __post_init__(self) -> None:
        check_number("adam learning_rate", self.learning_rate, minimum=0.0, exclusive_minimum=True)
        for name in ("beta_1", "beta_2"):
            check_number(
                f"adam {name}",
                getattr(self, name),
                minimum=0.0,
                maximum=1.0,
                exclusive_maximum=True,
            )
        check_number("adam epsilon", self.epsilon, minimum=0.0, exclusive_minimum=True)

    def initial_state(self, params: tree.Tree) -> Any:
        return {
            "step": np.int32(0),
            "first_moment": _zeros_like(params),
            "second_moment": _zeros_like(params),
        }

    def step(self, state: Any, params: tree.Tree, gradient: tree.Tree) -> tuple[Any, tree.Tree]:
        beta_1, beta_2, epsilon, rate = self.beta_1, self.beta_2, self.epsilon, self.learning_rate
        step = state["step"] + np.int32(1)
        first = tree.map_leaves(
            lambda m, g: m * m.dtype.type(beta_1) + g * g.dtype.type(1.0 - beta_1),
            state["first_moment"],
            gradient,
        )
        second = tree.map_leaves(
            lambda v, g: v * v.dtype.type(beta_2) + (g * g) * g.dtype.type(1.0 - beta_2),
            state["second_moment"],
            gradient,
        )

        def update(p: Any, m: Any, v: Any) -> Any:
            float_type = p.dtype.type
            t = step.astype(p.dtype)
            first_correction = float_type(1.0) - float_type(beta_1) ** t
            second_correction = float_type(1.0) - float_type(beta_2) ** t
            corrected = (m / first_correction) / (
                np.sqrt(v / second_correction) + float_type(epsilon)
            )
            return p - corrected * float_type(rate)

        new_params = tree.map_leaves(update, params, first, second)
        return {"step": step, "first_moment": first, "second_moment": second}, new_params


def sgd(learning_rate: float, momentum: float = 0.0) -> SGD:
    """Plain SGD, or SGD with heavy-ball `momentum` (DESIGN §9)."""
    return SGD(learning_rate, momentum)


def adam(
    learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7
) -> Adam:
    """Adam with bias correction (DESIGN §9)."""
    return Adam(learning_rate, beta_1, beta_2, epsilon)
