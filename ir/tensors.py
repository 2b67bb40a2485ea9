"""Frozen tensor data: read-only NumPy arrays with a canonical, hashable key.

Literals and constant attributes hold tensors; comparing them by dtype, shape
and little-endian bytes makes equality exact (NaN payloads and -0.0 included).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcc.ir.types import to_dtype


def frozen_array(value: Any, dtype: Any = None) -> np.ndarray:
    """A read-only, C-ordered, native-endian copy of `value` with a supported dtype."""
    array = np.array(value, dtype=dtype, copy=True, order="C")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # np.ascontiguousarray would turn a 0-d array into a 1-d one.
    array = array.astype(to_dtype(array.dtype), order="C", copy=True)
    array.flags.writeable = False
    return array


def little_endian_bytes(array: np.ndarray) -> bytes:
    """The array's elements as little-endian bytes in C order."""
    return array.astype(array.dtype.newbyteorder("<"), order="C", copy=False).tobytes()


def tensor_key(array: np.ndarray) -> tuple:
    """A hashable key that is equal exactly when two arrays are bit-for-bit equal."""
    return (array.dtype.name, array.shape, little_endian_bytes(array))
