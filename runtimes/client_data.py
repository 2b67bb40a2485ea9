"""Client data that stays put: data sets named by URI, loaded where their clients live (DESIGN §8).

A `Data` node of type `{T*}@CLIENTS` names a data set with one sequence of
`T` a client. The interpreter does not read it: it asks the run's session to
`load` it, and each shard loads only its own clients' part, in the process
that holds the shard (runtimes/shard.py, `LoadRequest`). What a process has
loaded stays cached there, keyed by the data set, the element type and the
clients, so the next round's load reads no file; the cache checks each
file's size and modification time, so a rewritten file is read again.

URIs, by scheme (`LOADERS`; `register_loader` adds one):

| URI | data set |
|---|---|
| `npz-folder:PATH`, `file://PATH`, a plain `PATH` | a folder of `.npz` files, one a client |

Clients are the files in file-name order. A URI may end in
`?batch_size=N` (below). Relative paths are resolved by the
process that loads them; `bind_client_data` makes them absolute first.

The layout of a client's `.npz` for a sequence of `T` (a tensor or a struct
of tensors), the same for `fedcc run --clients DIR --batch-size N`:

- Each tensor leaf of `T` is stored whole, every example of the client at
  once, under its key: `value` for a tensor `T`; field paths for a struct
  (`x`, `y`, `a.b`, `0` for an unnamed element). Every array has exactly the
  leaf's dtype and the same leading length n, the client's example count;
  there are no other keys.
- With `batch_size=B`, element k of the sequence holds examples
  [k*B, (k+1)*B) of every array: a leaf of type `float32[?,784]` is stored
  as `float32[n,784]`. The last batch may be shorter when the leaf's first
  dim is `?`; a fixed first dim must be B, and then n must be a multiple of B.
- Without a batch size, element k is example k: a leaf of type `float32[784]`
  is stored as `float32[n,784]`, of type `float32` as `float32[n]`.

So the batches of `{<x=float32[?,784],y=int32[?]>*}@CLIENTS` (DESIGN §9)
come from files holding `x: float32[n,784]` and `y: int32[n]`, with
`?batch_size=20`. A file that does not fit raises `FederatedTypeError` naming
the file, the client index and the worker; a missing or unreadable file
raises `BackendError`.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedcc.ir.building_blocks import (
    BuildingBlock,
    Call,
    Data,
    Lambda,
    Reference,
    Selection,
    Struct,
    walk,
)
from fedcc.ir.errors import BackendError, FederatedTypeError
from fedcc.ir.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
    Type,
)
from fedcc.runtimes import structure

NPZ_FOLDER_SCHEME = "npz-folder"
TENSOR_KEY = "value"  # the key of a client's array when the element is a single tensor
BATCH_SIZE_OPTION = "batch_size"
# How many loaded shards of data sets a process keeps (least recently used go first).
CACHE_ENTRIES = 32

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class DataLocation:
    """A parsed data set URI: the loader's `scheme`, its `path`, and the batch size (if any)."""

    scheme: str
    path: str
    batch_size: int | None = None


@dataclass
class LoadStatistics:
    """What this process's loads did: client files read, and loads served from the cache."""

    files_read: int = 0
    cache_hits: int = 0


class ClientDataLoader(Protocol):
    """Reads one kind of client data set; `register_loader` files it under a URI scheme."""

    def count(self, location: DataLocation) -> int:
        """How many clients the data set has (asked on the server, to size a run)."""

    def fingerprint(self, location: DataLocation, start: int, stop: int) -> Hashable:
        """A cheap summary of clients [start, stop)'s stored data that changes when it does."""

    def load(
        self, location: DataLocation, element_type: Type, start: int, stop: int
    ) -> list[list[Any]]:
        """Clients [start, stop)'s sequences of `element_type` runtime values, in client order."""


# ---------------------------------------------------------------------------
# The layout of one client's arrays (see the module docstring).


def leaf_keys(element_type: Type) -> list[tuple[str, TensorType]]:
    """The `.npz` keys and tensor types of an element's leaves, in the type's leaf order."""
    if isinstance(element_type, TensorType):
        return [(TENSOR_KEY, element_type)]
    keys: list[tuple[str, TensorType]] = []
    stack: list[tuple[str, Type]] = [("", element_type)]
    while stack:
        path, current = stack.pop()
        if isinstance(current, TensorType):
            keys.append((path, current))
        elif isinstance(current, StructType):
            names = current.names()
            # Pushed in reverse so that leaves come out in the type's order.
            for index in reversed(range(len(current))):
                part = names[index] if names[index] is not None else str(index)
                stack.append((f"{path}.{part}" if path else part, current[index]))
        else:
            raise FederatedTypeError(
                f"client data files hold sequences of tensors or structs of tensors; "
                f"the element type {element_type} holds {current}"
            )
    if not keys:
        raise FederatedTypeError(
            f"the element type {element_type} has no tensors, so a client file cannot hold it"
        )
    return keys


def check_element_type(element_type: Type, batch_size: int | None) -> None:
    """Raises `FederatedTypeError` unless files can hold sequences of `element_type` so batched."""
    for key, leaf in leaf_keys(element_type):
        if batch_size is None:
            continue
        if leaf.rank == 0 or leaf.shape[0] not in (None, batch_size):
            raise FederatedTypeError(
                f"batches of {batch_size} examples need every leaf of the element type "
                f"{element_type} to have a first dim of ? or {batch_size}; {key!r} is {leaf}"
            )


def _stored_type(leaf: TensorType, batch_size: int | None) -> TensorType:
    # The whole client's array: the examples along a new first axis, or a batch's first axis.
    rest = leaf.shape if batch_size is None else leaf.shape[1:]
    return TensorType(leaf.dtype, (None, *rest))


def _fits(declared: tuple[int | None, ...], found: tuple[int, ...]) -> bool:
    return len(declared) == len(found) and all(d is None or d == f for d, f in zip(declared, found))


def _array_text(array: np.ndarray) -> str:
    shape = f"[{','.join(map(str, array.shape))}]" if array.shape else ""
    return f"{array.dtype}{shape}"


def split_client_arrays(
    arrays: Mapping[str, np.ndarray],
    element_type: Type,
    batch_size: int | None,
    where: str,
) -> list[Any]:
    """One client's sequence of `element_type` runtime values from its stored arrays.

    `where` starts every error message (the file, the client, the worker).
    The elements are read-only views of the arrays.
    """
    keys = leaf_keys(element_type)
    check_element_type(element_type, batch_size)
    leaves = []
    examples = None
    for key, leaf in keys:
        stored = _stored_type(leaf, batch_size)
        if key not in arrays:
            found = ", ".join(sorted(arrays)) or "no arrays"
            raise FederatedTypeError(
                f"{where}: missing key {key!r} ({stored}, the leaf {leaf} of each element); "
                f"the file has {found}"
            )
        array = arrays[key]
        if array.dtype != leaf.dtype or not _fits(stored.shape, array.shape):
            hint = ""
            if batch_size is None and array.ndim == stored.rank - 1:
                hint = (
                    "; without a batch size each element is one example: for batches, end "
                    f"the URI in ?{BATCH_SIZE_OPTION}=N (fedcc run: --batch-size N)"
                )
            raise FederatedTypeError(
                f"{where}: key {key!r}: expected {stored} (the leaf {leaf} of each element), "
                f"found {_array_text(array)}{hint}"
            )
        if examples is not None and array.shape[0] != examples[1]:
            raise FederatedTypeError(
                f"{where}: key {key!r} has {array.shape[0]} examples but {examples[0]!r} has "
                f"{examples[1]}: every array of a client holds the same examples"
            )
        examples = examples or (key, array.shape[0])
        array.setflags(write=False)  # cached and shared between runs: nobody may change it
        leaves.append(array)
    unused = sorted(set(arrays) - {key for key, _ in keys})
    if unused:
        raise FederatedTypeError(
            f"{where}: unexpected key(s) {', '.join(map(repr, unused))}; a client's "
            f"{element_type} elements use {', '.join(repr(key) for key, _ in keys)}"
        )
    count = examples[1]
    unflatten = structure.unflattener(element_type)
    if batch_size is None:
        return [unflatten([leaf[i] for leaf in leaves]) for i in range(count)]
    fixed = [leaf for _, leaf in keys if leaf.shape[0] is not None]
    if fixed and count % batch_size:
        raise FederatedTypeError(
            f"{where}: {count} examples do not split into whole batches of {batch_size}, "
            f"which the element type {element_type} requires (its first dim is fixed)"
        )
    return [
        unflatten([leaf[k : k + batch_size] for leaf in leaves])
        for k in range(0, count, batch_size)
    ]


def read_client_file(
    file: str | os.PathLike, element_type: Type, batch_size: int | None, where: str
) -> list[Any]:
    """One client's sequence of `element_type` from its `.npz` file (see the module docstring)."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise BackendError(f"{where}: the file is missing") from None
    except (OSError, ValueError, EOFError) as error:
        raise BackendError(f"{where}: not a readable .npz file ({error})") from None
    return split_client_arrays(arrays, element_type, batch_size, where)


# ---------------------------------------------------------------------------
# The loaders.


class NpzFolderLoader:
    """A folder of `.npz` files, one a client, in file-name order."""

    def client_files(self, location: DataLocation) -> list[Path]:
        folder = Path(location.path)
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(folder)
                if entry.name.endswith(".npz") and entry.is_file()
            )
        except (FileNotFoundError, NotADirectoryError):
            raise BackendError(
                f"the client data folder {str(folder)!r} does not exist on {worker_name()}"
            ) from None
        except OSError as error:
            raise BackendError(
                f"cannot list the client data folder {str(folder)!r} on {worker_name()}: {error}"
            ) from None
        return [folder / name for name in names]

    def count(self, location: DataLocation) -> int:
        return len(self.client_files(location))

    def fingerprint(self, location: DataLocation, start: int, stop: int) -> Hashable:
        summary = []
        for file in self.client_files(location)[start:stop]:
            try:
                status = file.stat()
            except OSError:
                return None  # gone: never equal to a cached fingerprint, so the load says why
            summary.append((file.name, status.st_size, status.st_mtime_ns))
        return tuple(summary)

    def load(
        self, location: DataLocation, element_type: Type, start: int, stop: int
    ) -> list[list[Any]]:
        files = self.client_files(location)[start:stop]
        values = []
        for client, file in enumerate(files, start):
            where = f"{file}: client {client} (worker {worker_name()})"
            values.append(read_client_file(file, element_type, location.batch_size, where))
            _count(files_read=1)
        return values


LOADERS: dict[str, ClientDataLoader] = {NPZ_FOLDER_SCHEME: NpzFolderLoader()}


def register_loader(scheme: str, loader: ClientDataLoader) -> None:
    """Makes URIs `scheme:...` load through `loader` (in every process that registers it)."""
    if not _SCHEME.match(f"{scheme}:"):
        raise ValueError(f"{scheme!r} is not a URI scheme (letters, digits, + . -)")
    LOADERS[scheme] = loader


# ---------------------------------------------------------------------------
# URIs.


def parse_uri(uri: str) -> DataLocation:
    """The scheme, path and options of a data set URI; a plain path is an `npz-folder`.

    Raises `BackendError` for an unknown scheme or option, or a bad batch size.
    """
    match = _SCHEME.match(uri)
    if match is None:
        scheme, rest = NPZ_FOLDER_SCHEME, uri
    else:
        scheme, rest = match.group(1), match.group(2)
    if scheme == "file":
        # file:///a/b (RFC 8089) names a local folder of .npz files.
        parts = urllib.parse.urlsplit(uri)
        scheme, rest = NPZ_FOLDER_SCHEME, f"{parts.path}?{parts.query}"
    if scheme not in LOADERS:
        known = ", ".join(sorted(LOADERS))
        raise BackendError(
            f"no client data loader for the URI {uri!r} (scheme {scheme!r}); known: {known}, "
            "or a plain folder path"
        )
    path, _, query = rest.partition("?")
    options = urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}
    unknown = sorted(set(options) - {BATCH_SIZE_OPTION})
    if unknown:
        raise BackendError(
            f"the data set URI {uri!r} has unknown option(s) {', '.join(unknown)}; "
            f"known: {BATCH_SIZE_OPTION}"
        )
    batch_size = None
    if BATCH_SIZE_OPTION in options:
        text = options[BATCH_SIZE_OPTION][-1]
        if not text.isdigit() or int(text) < 1:
            raise BackendError(
                f"the data set URI {uri!r}: {BATCH_SIZE_OPTION} must be a positive integer, "
                f"found {text!r}"
            )
        batch_size = int(text)
    if not path:
        raise BackendError(f"the data set URI {uri!r} names no path")
    return DataLocation(scheme, path, batch_size)


def npz_folder_uri(folder: str | os.PathLike, batch_size: int | None = None) -> str:
    """The URI of a folder of per-client `.npz` files, made absolute for other processes."""
    uri = f"{NPZ_FOLDER_SCHEME}:{Path(folder).resolve()}"
    if batch_size is not None:
        uri += f"?{BATCH_SIZE_OPTION}={int(batch_size)}"
    parse_uri(uri)
    return uri


def client_data_element_type(t: Type) -> Type | None:
    """The element type `T` if `t` is `{T*}@CLIENTS`, the type of a client data set; else None."""
    if (
        isinstance(t, FederatedType)
        and t.placement is CLIENTS
        and not t.all_equal
        and isinstance(t.member, SequenceType)
    ):
        return t.member.element
    return None


# ---------------------------------------------------------------------------
# Loading, cached in this process.

_cache: OrderedDict[tuple, tuple[Hashable, list]] = OrderedDict()
_statistics = LoadStatistics()
_lock = threading.Lock()
_worker_name: str | None = None


def set_worker_name(name: str) -> None:
    """How errors from loads in this process name the worker (a backend's worker sets it)."""
    global _worker_name
    _worker_name = name


def worker_name() -> str:
    """This process as errors name it: the name a backend gave it, else host and process id."""
    return _worker_name or f"{socket.gethostname()} pid {os.getpid()}"


def _count(files_read: int = 0, cache_hits: int = 0) -> None:
    with _lock:
        _statistics.files_read += files_read
        _statistics.cache_hits += cache_hits


def load_statistics() -> LoadStatistics:
    """A copy of this process's load counts since it started (or since `clear_cache`)."""
    with _lock:
        return LoadStatistics(_statistics.files_read, _statistics.cache_hits)


def clear_cache() -> None:
    """Forgets every loaded data set of this process and resets its load counts."""
    with _lock:
        _cache.clear()
        _statistics.files_read = _statistics.cache_hits = 0


def count_clients(uri: str) -> int:
    """How many clients the data set `uri` has."""
    location = parse_uri(uri)
    return LOADERS[location.scheme].count(location)


def load_clients(
    uri: str, element_type: Type, num_clients: int, start: int, stop: int
) -> list[list[Any]]:
    """Clients [start, stop)'s sequences of `element_type` from the data set `uri`.

    A run over `num_clients` clients asks this of each shard; the data set must
    have exactly that many. Served from this process's cache when the clients'
    files have not changed since they were read. The values are read-only.
    """
    location = parse_uri(uri)
    loader = LOADERS[location.scheme]
    check_element_type(element_type, location.batch_size)
    available = loader.count(location)
    if available != num_clients:
        raise BackendError(
            f"the data set {uri!r} has {available} clients on {worker_name()}, "
            f"but the run has {num_clients}"
        )
    key = (uri, element_type, start, stop)
    fingerprint = loader.fingerprint(location, start, stop)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == fingerprint:
            _cache.move_to_end(key)
            _statistics.cache_hits += 1
            return cached[1]
    values = loader.load(location, element_type, start, stop)
    with _lock:
        _cache[key] = (fingerprint, values)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return values


# ---------------------------------------------------------------------------
# Programs that read client data sets.


def client_data_sets(comp: BuildingBlock) -> list[Data]:
    """The `Data` nodes of `comp` that name client data sets (`{T*}@CLIENTS`), in order."""
    return [
        node
        for node in walk(comp)
        if isinstance(node, Data) and client_data_element_type(node.type_signature) is not None
    ]


def count_clients_of(comp: BuildingBlock) -> int | None:
    """How many clients `comp`'s client data sets have (None without any); they must agree."""
    counted: tuple[str, int] | None = None
    for node in client_data_sets(comp):
        count = count_clients(node.uri)
        if counted is not None and count != counted[1]:
            raise FederatedTypeError(
                f"the data set {node.uri!r} has {count} clients but {counted[0]!r} has "
                f"{counted[1]}: every client data set of a run has one entry a client"
            )
        counted = counted or (node.uri, count)
    return None if counted is None else counted[1]


def bind_client_data(comp: BuildingBlock, uri: str, argument: int | str = 0) -> Lambda:
    """`comp` with one argument, of type `{T*}@CLIENTS`, read from the client data set `uri`.

    `argument` is the position or name of that argument in `comp`'s struct
    parameter (or 0 for a parameter that is not a struct). The result takes
    the other arguments, in order: a struct of them, the one left, or none.
    A relative folder path becomes absolute. Each client's data is loaded
    where the client lives, once a process (see the module docstring); `uri`
    is checked here.
    """
    fn_type = comp.type_signature
    if not isinstance(fn_type, FunctionType) or fn_type.parameter is None:
        raise FederatedTypeError(
            f"bind_client_data needs a computation with a parameter, found {fn_type}"
        )
    parameter = fn_type.parameter
    if client_data_element_type(parameter) is not None and argument in (0, None):
        return Lambda(None, None, Call(comp, _data_node(uri, parameter)))
    if not isinstance(parameter, StructType):
        raise FederatedTypeError(
            f"bind_client_data: the parameter {parameter} is not a client data set "
            "({T*}@CLIENTS) nor a struct holding one"
        )
    index = parameter.index_of(argument) if isinstance(argument, str) else argument
    if not isinstance(index, int) or not 0 <= index < len(parameter):
        raise FederatedTypeError(
            f"bind_client_data: argument {argument!r} is not one of the {len(parameter)} "
            f"arguments of {fn_type}"
        )
    bound_type = parameter[index]
    if client_data_element_type(bound_type) is None:
        raise FederatedTypeError(
            f"bind_client_data: argument {argument!r} has type {bound_type}, "
            "not a client data set ({T*}@CLIENTS)"
        )
    data = _data_node(uri, bound_type)
    kept = [(position, element) for position, element in enumerate(parameter.elements)
            if position != index]
    if not kept:
        return Lambda(None, None, Call(comp, Struct([(parameter.names()[index], data)])))
    if len(kept) == 1:
        (position, (name, kept_type)), = kept
        reference = Reference("arg", kept_type)
        parts = {position: (name, reference)}
        new_parameter_type: Type = kept_type
    else:
        new_parameter_type = StructType([element for _, element in kept])
        reference = Reference("arg", new_parameter_type)
        parts = {
            position: (name, Selection(reference, new_index))
            for new_index, (position, (name, _)) in enumerate(kept)
        }
    parts[index] = (parameter.names()[index], data)
    argument_struct = Struct([parts[position] for position in range(len(parameter))])
    return Lambda("arg", new_parameter_type, Call(comp, argument_struct))


def _data_node(uri: str, t: Type) -> Data:
    location = parse_uri(uri)
    check_element_type(client_data_element_type(t), location.batch_size)
    if location.scheme == NPZ_FOLDER_SCHEME:
        # Workers may run elsewhere than here: name the folder from the root.
        uri = npz_folder_uri(location.path, location.batch_size)
    return Data(uri, t)
