"""Client data in a folder of `.npz` files, one a client (`CLIENT_ID.npz` holding `x` and `y`).

This is the layout `fedcc run --clients DIR` reads a client's struct from:
one file a client, taken in file-name order, the struct's fields as keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedcc.data.client_data import ClientData, DataError

FEATURES_KEY, LABELS_KEY = "x", "y"


def save_npz_folder(data: ClientData, folder: str | os.PathLike) -> list[Path]:
    """Writes each client's examples to `folder/CLIENT_ID.npz`; returns the files, in order.

    The folder is created if needed; it must not already hold `.npz` files
    (they would be read back as clients).
    """
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(directory.glob("*.npz"))
    if existing:
        raise DataError(f"{directory} already holds .npz files ({existing[0].name}, ...)")
    if sorted(data.client_ids) != list(data.client_ids):
        raise DataError(
            "client ids must sort in client order, so the folder reads back in the same order"
        )
    files = []
    for index, client_id in enumerate(data.client_ids):
        file = directory / f"{client_id}.npz"
        np.savez(file, **{FEATURES_KEY: data.features[index], LABELS_KEY: data.labels[index]})
        files.append(file)
    return files


def load_npz_folder(folder: str | os.PathLike) -> ClientData:
    """Reads the clients of `folder` (see `save_npz_folder`), in file-name order.

    Raises `DataError` naming the file for a missing or unexpected key, or an
    array that is not features or labels.
    """
    directory = Path(folder)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder")
    files = sorted(directory.glob("*.npz"))
    if not files:
        raise DataError(f"{directory}: no .npz files, expected one a client")
    features, labels = [], []
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:
            raise DataError(f"{file}: not a readable .npz file ({error})") from None
        if set(arrays) != {FEATURES_KEY, LABELS_KEY}:
            raise DataError(
                f"{file}: expected the keys {FEATURES_KEY!r} and {LABELS_KEY!r}, "
                f"found {', '.join(map(repr, sorted(arrays))) or 'none'}"
            )
        features.append(arrays[FEATURES_KEY])
        labels.append(arrays[LABELS_KEY])
    try:
        return ClientData(tuple(features), tuple(labels), tuple(f.stem for f in files))
    except DataError as error:
        raise DataError(f"{directory}: {error}") from None
