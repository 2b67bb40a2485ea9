"""How `fedcc run` reads a computation's arguments from `.npz` files and writes its results.

The convention (also in the README, "Compile and run"):

- Arguments are the elements of the computation's struct parameter, in order
  (a parameter that is not a struct is the one argument). Argument `i` is
  named `arg{i}`.
- Every argument but the one placed at CLIENTS (one value a client) comes from
  the `--args` file: a tensor under its name (`arg0`), a struct of tensors
  under its name and field path (`arg0.kernel`, `arg1.0` for an unnamed
  element). A value placed at SERVER (or all-equal at CLIENTS) is stored as
  its member.
- At most one argument is placed at CLIENTS; it comes from `--clients DIR`,
  one `.npz` file a client, in file-name order (`client_000.npz`, ...). A
  client's tensor is under the key `value`; a client's struct of tensors
  under its field paths (`x`, `y`, `a.b`).
- A client argument that is a sequence (`{<x=float32[?,784],y=int32[?]>*}@CLIENTS`)
  is not read here: the run reads it where the clients live, once, as the
  client data set `npz-folder:DIR` (runtimes/client_data.py). Each key holds
  all of a client's examples at once (`x: float32[n,784]`, `y: int32[n]`);
  with `--batch-size B` the sequence's elements are batches of B examples
  (the last may be smaller), without it single examples.
- Every array must have exactly the declared dtype and a shape the declared
  shape accepts (`?` takes any size); every key must be used.
- Results are written flattened: a struct's fields by path (`state.kernel`,
  `0.loss` for unnamed elements), a value placed at CLIENTS as
  `PATH.client_000`, ..., a sequence's elements as `PATH.element_000`, ...;
  a result that is a single tensor is `result`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import FedccError
from fedcc.ir.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
    Type,
)
from fedcc.runtimes.client_data import bind_client_data, check_element_type, npz_folder_uri

ARGUMENT_PREFIX = "arg"
CLIENT_TENSOR_KEY = "value"
SINGLE_RESULT_KEY = "result"
CLIENT_SUFFIX = "client_{:03d}"
ELEMENT_SUFFIX = "element_{:03d}"


class RunInputError(FedccError):
    """An `.npz` input does not match the computation's parameter (file, key, expected, found)."""


def argument_types(signature: FunctionType) -> list[Type]:
    """The computation's arguments: its struct parameter's elements, or its one parameter."""
    parameter = signature.parameter
    if parameter is None:
        return []
    if isinstance(parameter, StructType):
        return list(parameter)
    return [parameter]


def argument_name(index: int) -> str:
    """The `--args` key of argument `index`."""
    return f"{ARGUMENT_PREFIX}{index}"


def _is_client_values(t: Type) -> bool:
    return isinstance(t, FederatedType) and t.placement is CLIENTS and not t.all_equal


def _join(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix else part


def tensor_paths(t: Type, prefix: str, where: str) -> list[tuple[str, TensorType]]:
    """The keys and tensor types of a tensor or struct of tensors, in the type's leaf order.

    Raises `RunInputError` for anything else (sequences, functions, placements).
    """
    paths: list[tuple[str, TensorType]] = []
    stack: list[tuple[str, Type]] = [(prefix, t)]
    while stack:
        path, current = stack.pop()
        if isinstance(current, TensorType):
            paths.append((path, current))
        elif isinstance(current, StructType):
            # Pushed in reverse so that leaves come out in the type's order.
            for index in reversed(range(len(current))):
                name = current.names()[index]
                key = _join(path, name if name is not None else str(index))
                stack.append((key, current[index]))
        else:
            raise RunInputError(
                f"{where}: `fedcc run` reads tensors and structs of tensors from .npz files; "
                f"found {current} at {path or 'the top'}"
            )
    return paths


def _build_value(t: Type, leaves: Mapping[str, np.ndarray], prefix: str) -> Any:
    """The Python value of type `t` (a tensor or a struct of tensors) from its leaves by key."""
    if isinstance(t, TensorType):
        return leaves[prefix]
    assert isinstance(t, StructType)
    names = t.names()
    parts = [
        _build_value(element, leaves, _join(prefix, name if name is not None else str(index)))
        for index, (name, element) in enumerate(zip(names, t))
    ]
    if names and None not in names:
        return dict(zip(names, parts))
    return tuple(parts)


def _shape_text(shape: tuple[int, ...]) -> str:
    """A concrete shape as the type text writes it: `[2,3]`, nothing for a scalar."""
    return f"[{','.join(map(str, shape))}]" if shape else ""


def _shape_accepts(declared: tuple[int | None, ...], found: tuple[int, ...]) -> bool:
    return len(declared) == len(found) and all(
        want is None or want == got for want, got in zip(declared, found)
    )


def _read_leaves(
    arrays: Mapping[str, np.ndarray], paths: list[tuple[str, TensorType]], file: Path
) -> dict[str, np.ndarray]:
    leaves = {}
    for key, tensor_type in paths:
        if key not in arrays:
            raise RunInputError(
                f"{file}: missing key {key!r} ({tensor_type}); the file has "
                f"{', '.join(sorted(arrays)) or 'no arrays'}"
            )
        array = arrays[key]
        if array.dtype != tensor_type.dtype or not _shape_accepts(tensor_type.shape, array.shape):
            found = f"{array.dtype}{_shape_text(array.shape)}"
            raise RunInputError(f"{file}: key {key!r}: expected {tensor_type}, found {found}")
        leaves[key] = array
    return leaves


def _load_npz(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise RunInputError(f"{file}: not a readable .npz file ({error})") from None


def _reject_unused(arrays: Mapping[str, np.ndarray], used: Mapping[str, Any], file: Path) -> None:
    unused = sorted(set(arrays) - set(used))
    if unused:
        raise RunInputError(
            f"{file}: unexpected key(s) {', '.join(map(repr, unused))}; expected "
            f"{', '.join(map(repr, sorted(used))) or 'no arrays'}"
        )


def _read_clients(member: Type, clients_dir: Path, where: str) -> list[Any]:
    if not clients_dir.is_dir():
        raise RunInputError(f"--clients {clients_dir}: not a folder")
    files = sorted(clients_dir.glob("*.npz"))
    if not files:
        raise RunInputError(f"--clients {clients_dir}: no .npz files, expected one a client")
    values = []
    for file in files:
        paths = tensor_paths(member, "", f"{where} (a client's {member})")
        if paths == [("", member)]:
            paths = [(CLIENT_TENSOR_KEY, member)]
        arrays = _load_npz(file)
        leaves = _read_leaves(arrays, paths, file)
        _reject_unused(arrays, leaves, file)
        if isinstance(member, TensorType):
            values.append(leaves[CLIENT_TENSOR_KEY])
        else:
            values.append(_build_value(member, leaves, ""))
    return values


@dataclass(frozen=True)
class ClientDataFolder:
    """A client argument that the run reads from a folder where the clients live (`uri`)."""

    uri: str


def read_arguments(
    signature: FunctionType,
    args_file: str | os.PathLike | None,
    clients_dir: str | os.PathLike | None,
    batch_size: int | None = None,
    given: Mapping[int, Any] | None = None,
) -> list[Any]:
    """The computation's arguments, in order, read by the convention of this module.

    Arguments in `given` (by index, e.g. a state from `initialize`) are not
    read: they are returned as they are. A client argument of sequences comes
    back as a `ClientDataFolder`, for `bind_client_folders`. Raises
    `RunInputError` naming the file and key for a missing or unexpected key, a
    wrong dtype or shape, or a missing or unneeded
    `--args`/`--clients`/`--batch-size`.
    """
    given = given or {}
    types = argument_types(signature)
    client_arguments = [
        i for i, t in enumerate(types) if _is_client_values(t) and i not in given
    ]
    if len(client_arguments) > 1:
        names = ", ".join(argument_name(i) for i in client_arguments)
        raise RunInputError(
            f"`fedcc run` reads one argument placed at CLIENTS from --clients; "
            f"this computation has {len(client_arguments)} ({names})"
        )
    if client_arguments and clients_dir is None:
        index = client_arguments[0]
        raise RunInputError(
            f"{argument_name(index)} is {types[index]}: give the clients' data with --clients DIR"
        )
    if not client_arguments and clients_dir is not None:
        raise RunInputError(f"--clients given, but no argument of {signature} is placed at CLIENTS")
    server_paths: list[tuple[str, TensorType]] = []
    for index, t in enumerate(types):
        if index in client_arguments or index in given:
            continue
        member = t.member if isinstance(t, FederatedType) else t
        name = argument_name(index)
        server_paths.extend(tensor_paths(member, name, f"{name} ({t})"))
    if server_paths and args_file is None:
        keys = ", ".join(key for key, _ in server_paths)
        raise RunInputError(f"{signature} needs --args FILE.npz with the key(s) {keys}")
    leaves: dict[str, np.ndarray] = {}
    if args_file is not None:
        file = Path(args_file)
        arrays = _load_npz(file)
        leaves = _read_leaves(arrays, server_paths, file)
        _reject_unused(arrays, leaves, file)
    is_sequence = bool(client_arguments) and isinstance(
        types[client_arguments[0]].member, SequenceType
    )
    if batch_size is not None and not is_sequence:
        raise RunInputError(
            f"--batch-size is for client data that is a sequence; {signature} has none"
        )
    arguments = []
    for index, t in enumerate(types):
        if index in given:
            arguments.append(given[index])
        elif index in client_arguments:
            assert isinstance(t, FederatedType)
            if is_sequence:
                arguments.append(_client_folder(t, Path(clients_dir), batch_size))
            else:
                arguments.append(_read_clients(t.member, Path(clients_dir), argument_name(index)))
        else:
            member = t.member if isinstance(t, FederatedType) else t
            arguments.append(_build_value(member, leaves, argument_name(index)))
    return arguments


def _client_folder(t: FederatedType, clients_dir: Path, batch_size: int | None) -> Any:
    if not clients_dir.is_dir():
        raise RunInputError(f"--clients {clients_dir}: not a folder")
    if not any(clients_dir.glob("*.npz")):
        raise RunInputError(f"--clients {clients_dir}: no .npz files, expected one a client")
    if batch_size is not None and batch_size < 1:
        raise RunInputError(f"--batch-size must be a positive integer, found {batch_size}")
    try:
        uri = npz_folder_uri(clients_dir, batch_size)
        check_element_type(t.member.element, batch_size)
    except FedccError as error:
        raise RunInputError(f"--clients {clients_dir}: {error}") from None
    return ClientDataFolder(uri)


def bind_client_folders(comp: BuildingBlock, arguments: list[Any]) -> tuple[BuildingBlock, list]:
    """`comp` reading each `ClientDataFolder` argument where its clients live; the others."""
    for index, argument in enumerate(arguments):
        if isinstance(argument, ClientDataFolder):
            bound = bind_client_data(comp, argument.uri, index)
            return bound, arguments[:index] + arguments[index + 1 :]
    return comp, arguments


def _struct_parts(value: Any, t: StructType) -> list[Any]:
    if isinstance(value, Mapping):
        return [value[name] for name in t.names()]
    return list(value)


def flatten_result(value: Any, t: Type) -> dict[str, np.ndarray]:
    """A result of type `t` as flat arrays keyed by path (see the module docstring)."""
    flat: dict[str, np.ndarray] = {}
    stack: list[tuple[str, Any, Type]] = [("", value, t)]
    while stack:
        path, current, current_type = stack.pop()
        children: list[tuple[str, Any, Type]] = []
        if isinstance(current_type, TensorType):
            flat[path or SINGLE_RESULT_KEY] = np.asarray(current, dtype=current_type.dtype)
        elif isinstance(current_type, StructType):
            names = current_type.names()
            for index, (part, element) in enumerate(
                zip(_struct_parts(current, current_type), current_type)
            ):
                name = names[index] if names[index] is not None else str(index)
                children.append((_join(path, name), part, element))
        elif _is_client_values(current_type):
            assert isinstance(current_type, FederatedType)
            for index, member in enumerate(current):
                key = _join(path or SINGLE_RESULT_KEY, CLIENT_SUFFIX.format(index))
                children.append((key, member, current_type.member))
        elif isinstance(current_type, FederatedType):
            children.append((path, current, current_type.member))
        elif isinstance(current_type, SequenceType):
            for index, element in enumerate(current):
                key = _join(path or SINGLE_RESULT_KEY, ELEMENT_SUFFIX.format(index))
                children.append((key, element, current_type.element))
        else:
            raise RunInputError(f"`fedcc run` cannot write a result of type {current_type}")
        stack.extend(reversed(children))
    return flat


def summary_lines(flat: Mapping[str, np.ndarray]) -> list[str]:
    """One short line a result array: key, type, and (abridged) values."""
    lines = []
    for key, array in flat.items():
        text = np.array2string(array, threshold=8, edgeitems=3, max_line_width=10**6)
        lines.append(f"{key}: {array.dtype}{_shape_text(array.shape)} = {' '.join(text.split())}")
    return lines
