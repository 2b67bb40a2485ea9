"""Splitting one labelled data set among clients: IID, or non-IID by a Dirichlet prior."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcc.data.client_data import ClientData, DataError, _features, _labels


def _checked(features: Any, labels: Any, num_clients: int) -> tuple[np.ndarray, np.ndarray]:
    if (
        isinstance(num_clients, bool)
        or not isinstance(num_clients, (int, np.integer))
        or (num_clients <= 0)
    ):
        raise DataError(f"num_clients must be a positive int, found {num_clients!r}")
    x = _features(features, "the features")
    return x, _labels(labels, x.shape[0], "the labels")


def _client_data(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray]) -> ClientData:
    return ClientData(tuple(x[p] for p in parts), tuple(y[p] for p in parts), None)


def partition_iid(features: Any, labels: Any, num_clients: int, seed: int = 0) -> ClientData:
    """The examples shuffled (seeded) and dealt into `num_clients` near-equal shares."""
    x, y = _checked(features, labels, num_clients)
    order = np.random.default_rng(seed).permutation(len(y))
    return _client_data(x, y, [np.sort(part) for part in np.array_split(order, num_clients)])


def partition_dirichlet(
    features: Any, labels: Any, num_clients: int, alpha: float, seed: int = 0
) -> ClientData:
    """Non-IID shares: each class's examples split among clients by Dirichlet(alpha) proportions.

    For every class, client proportions are drawn from a symmetric Dirichlet
    with concentration `alpha` (Hsu et al., 2019): a small `alpha` gives each
    client a few dominant labels, a large one approaches IID. Seeded, so the
    same call gives the same shares.
    """
    x, y = _checked(features, labels, num_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise DataError(f"alpha must be a positive number, found {alpha!r}")
    rng = np.random.default_rng(seed)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        for client, part in enumerate(np.split(members, cuts)):
            shares[client].append(part)
    parts = [np.sort(np.concatenate(share)) for share in shares]
    return _client_data(x, y, parts)
