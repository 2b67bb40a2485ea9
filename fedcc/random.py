"""Keyed local randomness for NumPy computations (DESIGN §4): `fc.random.normal(seed, shape)`.

Randomness is never global: every function takes an explicit integer seed
(a scalar tensor, e.g. part of the server state or `fold_in(seed, round)`),
so results do not depend on the backend or on the order clients run in.
Inside a `numpy_computation` being traced each function adds one primitive
(`random_normal`, `random_uniform`, `random_fold_in`) to the graph; called on
concrete values (eagerly) it computes the same bits with the same primitive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcc.compiler.numpy_tracer import bind
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import to_dtype


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
            raise FederatedTypeError(
                f"a random shape holds non-negative Python ints, found {shape!r}"
            )
    return tuple(int(d) for d in dims)


def normal(seed: Any, shape: int | Sequence[int], dtype: Any = np.float32) -> Any:
    """Standard normal samples of `shape` and floating-point `dtype`, keyed by `seed`.

    The same seed always gives the same bits, on every platform and backend.
    """
    return bind("random_normal", seed, shape=_shape(shape), dtype=to_dtype(dtype).name)


def uniform(
    seed: Any,
    shape: int | Sequence[int],
    dtype: Any = np.float32,
    minval: float = 0.0,
    maxval: float = 1.0,
) -> Any:
    """Uniform samples on [minval, maxval) of `shape` and floating-point `dtype`, keyed by `seed`.

    The samples on [0, 1) are scaled as `minval + (maxval - minval) * u` in `dtype`.
    """
    samples = bind("random_uniform", seed, shape=_shape(shape), dtype=to_dtype(dtype).name)
    if (minval, maxval) == (0.0, 1.0):
        return samples
    return minval + (maxval - minval) * samples


def fold_in(seed: Any, data: Any) -> Any:
    """A new int64 seed from `seed` and an integer `data` (a round number, a client id).

    Seeds folded with different data give independent streams.
    """
    return bind("random_fold_in", seed, data)
