"""Client examples as sequences of batches: what a round's client data is (DESIGN §9).

A batch is `{"x": float32[b, ...], "y": int32[b]}`; a client's data is a list
of batches, and a round's client data a list of those, one a client, so it
has the type `{<x=float32[?,...],y=int32[?]>*}@CLIENTS`.
"""

from __future__ import annotations

import numpy as np

from fedcc.data.client_data import ClientData, DataError


def _order(examples: int, seed: int | None, client: int, epoch: int) -> np.ndarray:
    if seed is None:
        return np.arange(examples)
    # One generator per (seed, client, epoch): a client's batches do not depend on the others.
    return np.random.default_rng((seed, client, epoch)).permutation(examples)


def batches(
    data: ClientData, batch_size: int, seed: int | None = None, epochs: int = 1
) -> list[list[dict[str, np.ndarray]]]:
    """Each client's examples cut into batches of `batch_size` (the last one may be smaller).

    With a `seed`, each client's examples are shuffled each epoch, by a
    generator seeded with `(seed, client index, epoch)`, so the batches are
    the same on every run; without one they keep their order. `epochs`
    repeats the client's data that many times, one after the other.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or (batch_size <= 0)
    ):
        raise DataError(f"batch_size must be a positive int, found {batch_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs <= 0:
        raise DataError(f"epochs must be a positive int, found {epochs!r}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise DataError(f"seed must be a non-negative int or None, found {seed!r}")
    result = []
    for client, (x, y) in enumerate(zip(data.features, data.labels)):
        client_batches = []
        for epoch in range(epochs):
            order = _order(len(y), seed, client, epoch)
            for start in range(0, len(y), batch_size):
                chosen = order[start : start + batch_size]
                client_batches.append({"x": x[chosen], "y": y[chosen]})
        result.append(client_batches)
    return result
