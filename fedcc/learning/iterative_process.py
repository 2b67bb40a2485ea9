"""An iterative process (`initialize`, `next`) and server-state checkpoints in `.npz` files.

An `IterativeProcess` is a `ComputationBundle` of two computations:
`initialize() -> S@SERVER` and `next(S@SERVER, data) -> <S@SERVER, metrics@SERVER>`.
`fc.save(process, "p.pb")` writes both to one file; `fc.load("p.pb")` gives a
bundle whose `initialize()` and `next(state, data)` run without the Python
source, and `IterativeProcess.from_bundle(loaded)` gives back the methods
below.

A checkpoint holds a server state's tensors flattened by field path
(`model.kernel`, `optimizer.first_moment.bias`, `round`), one array a key, as
`np.savez` writes them. Restoring reads them back against the state type:
every key present, with the declared dtype and shape, and no other key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedcc import (
    SERVER,
    Computation,
    ComputationBundle,
    FedccError,
    FederatedType,
    FederatedTypeError,
    FunctionType,
    StructType,
    TensorType,
    Type,
)

INITIALIZE, NEXT = "initialize", "next"
MODEL_FIELD = "model"


class CheckpointError(FedccError, ValueError):
    """A checkpoint file does not hold a state of the process's state type."""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _parts(value: Any, t: StructType, where: str) -> list[Any]:
    names = t.names()
    if isinstance(value, Mapping):
        if set(value) != set(names):
            raise FederatedTypeError(
                f"{where or 'the state'}: expected the fields {', '.join(map(str, names))}, "
                f"found {', '.join(map(str, value))}"
            )
        return [value[name] for name in names]
    if not isinstance(value, (tuple, list)) or len(value) != len(t):
        raise FederatedTypeError(f"{where or 'the state'}: expected {t}, found {value!r}")
    return list(value)


def flatten_state(state: Any, state_type: Type) -> dict[str, np.ndarray]:
    """The tensors of `state` (of `state_type`, a struct of tensors) by field path."""
    flat: dict[str, np.ndarray] = {}
    stack: list[tuple[str, Any, Type]] = [("", state, state_type)]
    while stack:
        path, value, t = stack.pop()
        if isinstance(t, TensorType):
            flat[path] = np.asarray(value, dtype=t.dtype)
            continue
        if not isinstance(t, StructType):
            raise FederatedTypeError(f"a checkpoint holds tensors and structs, found {t}")
        names = t.names()
        children = [
            (_join(path, names[i] if names[i] is not None else str(i)), part, element)
            for i, (part, element) in enumerate(zip(_parts(value, t, path), t))
        ]
        stack.extend(reversed(children))
    return flat


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"[{','.join(map(str, shape))}]" if shape else ""


def unflatten_state(arrays: Mapping[str, np.ndarray], state_type: Type, where: str) -> Any:
    """The state of `state_type` from its tensors by field path; checks keys, dtypes, shapes."""
    used: set[str] = set()

    def build(path: str, t: Type) -> Any:
        if isinstance(t, TensorType):
            if path not in arrays:
                raise CheckpointError(f"{where}: missing key {path!r} ({t})")
            array = arrays[path]
            shape_fits = array.ndim == t.rank and all(
                d is None or d == s for d, s in zip(t.shape, array.shape)
            )
            if array.dtype != t.dtype or not shape_fits:
                raise CheckpointError(
                    f"{where}: key {path!r}: expected {t}, "
                    f"found {array.dtype}{_shape_text(array.shape)}"
                )
            used.add(path)
            return array[()] if array.ndim == 0 else array
        assert isinstance(t, StructType)
        names = t.names()
        parts = [
            build(_join(path, name if name is not None else str(i)), element)
            for i, (name, element) in enumerate(zip(names, t))
        ]
        if names and None not in names:
            return dict(zip(names, parts))
        return tuple(parts)

    state = build("", state_type)
    unused = sorted(set(arrays) - used)
    if unused:
        raise CheckpointError(f"{where}: unexpected key(s) {', '.join(map(repr, unused))}")
    return state


def save_state(state: Any, state_type: Type, path: str | os.PathLike) -> None:
    """Writes a server state of `state_type` to a `.npz` checkpoint at `path`."""
    np.savez(Path(path), **flatten_state(state, state_type))


def load_state(state_type: Type, path: str | os.PathLike) -> Any:
    """Reads a checkpoint written by `save_state` for `state_type`.

    Raises `CheckpointError` naming the file and the key that is missing, extra,
    or of the wrong dtype or shape.
    """
    file = Path(path)
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{file}: not a readable .npz checkpoint ({error})") from None
    return unflatten_state(arrays, state_type, str(file))


def _server_member(t: Type, what: str) -> Type:
    if not isinstance(t, FederatedType) or t.placement is not SERVER:
        raise FederatedTypeError(f"{what} must be placed at SERVER, found {t}")
    return t.member


class IterativeProcess(ComputationBundle):
    """`initialize() -> state` and `next(state, data) -> (state, metrics)`, saved together.

    Both are computations (compiled once); the state lives at the server.
    """

    def __init__(
        self,
        initialize: Computation,
        next: Computation,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__({INITIALIZE: initialize, NEXT: next}, metadata)
        init_type = initialize.type_signature
        next_type = next.type_signature
        if init_type.parameter is not None:
            raise FederatedTypeError(f"initialize takes no parameter, found {init_type}")
        state_type = _server_member(init_type.result, "initialize's result")
        parameter = next_type.parameter
        if not isinstance(parameter, StructType) or len(parameter) < 1:
            raise FederatedTypeError(f"next takes (state, data), found {next_type}")
        if _server_member(parameter[0], "next's state parameter") != state_type:
            raise FederatedTypeError(
                f"next's state parameter {parameter[0]} is not initialize's result "
                f"{init_type.result}"
            )
        result = next_type.result
        if (
            not isinstance(result, StructType)
            or len(result) != 2
            or (_server_member(result[0], "next's new state") != state_type)
        ):
            raise FederatedTypeError(
                f"next returns (state, metrics) with the state of {state_type}, found {result}"
            )
        self.state_type: Type = state_type
        self.next_type: FunctionType = next_type

    @classmethod
    def from_bundle(cls, bundle: ComputationBundle) -> IterativeProcess:
        """The process of a loaded bundle holding `initialize` and `next`."""
        missing = [name for name in (INITIALIZE, NEXT) if name not in bundle]
        if missing:
            raise FederatedTypeError(
                f"an iterative process holds initialize and next; the bundle has "
                f"{', '.join(bundle)}"
            )
        return cls(bundle[INITIALIZE], bundle[NEXT], bundle.metadata)

    def get_model_weights(self, state: Any) -> dict[str, Any]:
        """The model parameters in `state`, as a dict of arrays."""
        if not isinstance(state, Mapping) or MODEL_FIELD not in state:
            raise FederatedTypeError(
                f"expected a server state with a {MODEL_FIELD!r} field ({self.state_type}), "
                f"found {type(state).__name__}"
            )
        return state[MODEL_FIELD]

    def save_state(self, state: Any, path: str | os.PathLike) -> None:
        """Writes `state` to a `.npz` checkpoint (see the module docstring)."""
        save_state(state, self.state_type, path)

    def load_state(self, path: str | os.PathLike) -> Any:
        """Reads a checkpoint of this process's state, checking every key, dtype and shape."""
        return load_state(self.state_type, path)

    def __repr__(self) -> str:
        return f"<IterativeProcess state {self.state_type}>"
