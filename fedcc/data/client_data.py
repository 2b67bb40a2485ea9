"""`ClientData`: the examples each client holds, as arrays, and the error for bad data.

Client `i` holds features `x` (float32, `[n_i, *input_shape]`) and labels `y`
(int32, `[n_i]`). Clients are in a fixed order and have string ids (the file
names of a folder of `.npz` files). Turning a client's examples into the
sequence of batches a computation takes is `batches` (fedcc/data/batching.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcc import FedccError


class DataError(FedccError, ValueError):
    """Client data (arrays, files, or a setting to make them) that cannot be used."""


def _client_ids(client_ids: Sequence[str] | None, count: int) -> tuple[str, ...]:
    if client_ids is None:
        return tuple(f"client_{index:03d}" for index in range(count))
    ids = tuple(client_ids)
    if len(ids) != count:
        raise DataError(f"expected {count} client ids, one a client, found {len(ids)}")
    for client_id in ids:
        if not isinstance(client_id, str) or not client_id or "/" in client_id:
            raise DataError(f"a client id is a non-empty string without '/', found {client_id!r}")
    if len(set(ids)) != len(ids):
        raise DataError("client ids repeat")
    return ids


def _features(value: Any, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf" or array.ndim < 2:
        raise DataError(
            f"{where}: features are a numeric array [examples, ...], "
            f"found {array.dtype} of shape {array.shape}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _labels(value: Any, examples: int, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != examples:
        raise DataError(
            f"{where}: expected {examples} labels [examples], found shape {array.shape}"
        )
    if array.size and (array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 2**31 - 1):
        raise DataError(f"{where}: labels are non-negative integers, found {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class ClientData:
    """Per-client features and labels (see the module docstring); immutable."""

    features: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    client_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.features) != len(self.labels):
            raise DataError(
                f"expected one label array a client: {len(self.features)} feature arrays, "
                f"{len(self.labels)} label arrays"
            )
        features, labels = [], []
        for index, (x, y) in enumerate(zip(self.features, self.labels)):
            where = f"client {index}"
            x = _features(x, where)
            features.append(x)
            labels.append(_labels(y, x.shape[0], where))
        shapes = {x.shape[1:] for x in features}
        if len(shapes) > 1:
            raise DataError(f"every client's examples have one shape; found {sorted(shapes)}")
        for array in (*features, *labels):
            array.flags.writeable = False
        object.__setattr__(self, "features", tuple(features))
        object.__setattr__(self, "labels", tuple(labels))
        object.__setattr__(self, "client_ids", _client_ids(self.client_ids, len(features)))

    @property
    def num_clients(self) -> int:
        """How many clients there are."""
        return len(self.features)

    @property
    def num_examples(self) -> list[int]:
        """Each client's number of examples."""
        return [len(y) for y in self.labels]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example's features."""
        if not self.features:
            raise DataError("no clients: the input shape is unknown")
        return self.features[0].shape[1:]

    def client(self, index: int) -> dict[str, np.ndarray]:
        """Client `index`'s examples as `{"x": features, "y": labels}`."""
        return {"x": self.features[index], "y": self.labels[index]}

    def select(self, indices: Sequence[int]) -> ClientData:
        """The clients at `indices`, in that order."""
        chosen = list(indices)
        return ClientData(
            tuple(self.features[i] for i in chosen),
            tuple(self.labels[i] for i in chosen),
            tuple(self.client_ids[i] for i in chosen),
        )

    def split(self, test_fraction: float, seed: int | None = None) -> tuple[ClientData, ClientData]:
        """Each client's examples split into (train, test); test gets `test_fraction` of them.

        Without a seed the last examples are the test examples (as the FedProx
        data sets are split); with one, a seeded shuffle of each client's
        examples comes first. A client keeps at least one training example.
        """
        if not 0.0 <= float(test_fraction) < 1.0:
            raise DataError(f"test_fraction must be in [0, 1), found {test_fraction!r}")
        train_x, train_y, test_x, test_y = [], [], [], []
        for index, (x, y) in enumerate(zip(self.features, self.labels)):
            order = np.arange(len(y))
            if seed is not None:
                order = np.random.default_rng((seed, index)).permutation(len(y))
            cut = len(y) - int(np.floor(test_fraction * len(y)))
            cut = max(cut, min(1, len(y)))
            train_x.append(x[order[:cut]])
            train_y.append(y[order[:cut]])
            test_x.append(x[order[cut:]])
            test_y.append(y[order[cut:]])
        ids = self.client_ids
        return ClientData(tuple(train_x), tuple(train_y), ids), ClientData(
            tuple(test_x), tuple(test_y), ids
        )

    def batches(
        self, batch_size: int, seed: int | None = None, epochs: int = 1
    ) -> list[list[dict[str, np.ndarray]]]:
        """Every client's examples as a list of batches (see `fedcc.data.batches`)."""
        from fedcc.data.batching import batches

        return batches(self, batch_size, seed=seed, epochs=epochs)

    def __repr__(self) -> str:
        total = sum(self.num_examples)
        return f"<ClientData {self.num_clients} clients, {total} examples>"


def from_arrays(
    features: Sequence[Any], labels: Sequence[Any], client_ids: Sequence[str] | None = None
) -> ClientData:
    """Client data from one features array and one labels array a client (lists, in order)."""
    if isinstance(features, np.ndarray) or isinstance(labels, np.ndarray):
        raise DataError(
            "from_arrays takes a list of arrays, one a client; to split one array among "
            "clients use partition_iid or partition_dirichlet"
        )
    return ClientData(tuple(features), tuple(labels), client_ids)  # type: ignore[arg-type]
