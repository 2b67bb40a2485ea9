"""Python values to runtime values and back, driven by a `Type` (DESIGN §3).

In (`to_runtime`): NumPy arrays and scalars, Python numbers and (nested)
lists of numbers become tensors; tuples and lists become unnamed structs;
dicts, namedtuples and dataclasses become named structs (matched by name);
any iterable (a list, a generator, an array along its first axis) becomes a
sequence; a list with one entry a client becomes a `{T}@CLIENTS` value, held
as a `ClientList` until the run hands it to the backend. A `T@CLIENTS` or
`T@SERVER` value is given as the member value itself.

Dtypes: data converts to the declared dtype when no information is lost in
kind, so NumPy's float64 and int64 defaults work for float32 and int32
parameters:

| data | may become | checked |
|---|---|---|
| bool | bool, any integer, any float | - |
| integer | any integer | every value fits the declared dtype |
| integer | any float | - (large values round) |
| float | any float | - (rounded to nearest) |
| float | integer or bool | refused: convert explicitly (`x.astype(np.int32)`) |
| integer | bool | refused |
| anything else (strings, objects, complex) | - | refused |

Empty arrays convert to any dtype. An array that already has the declared
dtype is used as it is, not copied.

Out (`from_runtime`): tensors come back as NumPy arrays (rank 0: NumPy
scalars such as `np.float32(3.0)`); named structs as `dict`, unnamed ones
(and ones naming only some elements) as `tuple`, unless a `Container`
recorded what the tracer saw; sequences and `{T}@CLIENTS` values as lists;
`T@CLIENTS` and `T@SERVER` values as the member value.

Every refusal is a `FederatedTypeError` that names where the value was (the
parameter, the struct field, the client index), what was expected and what
was found.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    contains_federated,
    to_placement,
)
from fedcc.runtimes.backend import AllEqual, ClientValue

# Which kinds of data (NumPy dtype kinds) may become which declared kinds.
_CONVERTIBLE_KINDS = {"b": "biuf", "i": "iuf", "u": "iuf", "f": "f"}


@dataclasses.dataclass(frozen=True, eq=False)
class ClientList:
    """The per-client runtime values of an argument placed at CLIENTS, before a backend holds them.

    `where` names the argument, for errors about the number of clients.
    """

    values: list
    where: str


@dataclasses.dataclass(frozen=True)
class Container:
    """The Python container a struct came in, so that results can be rebuilt alike.

    `python_type` is the class (dict or a Mapping subclass, a namedtuple class,
    a dataclass, tuple, list); `children` describes the elements' own
    containers (None for leaves). For a value placed somewhere or a sequence,
    the container describes the member or element.
    """

    python_type: type
    children: tuple[Container | None, ...]

    def build(self, names: tuple[str | None, ...], values: list[Any]) -> Any:
        """An instance of `python_type` holding `values`; named containers use `names`."""
        cls = self.python_type
        if issubclass(cls, Mapping) or dataclasses.is_dataclass(cls):
            if None in names:
                raise FederatedTypeError(
                    f"cannot rebuild a {cls.__name__} from a struct with unnamed elements"
                )
            pairs = dict(zip(names, values))
            return cls(**pairs) if dataclasses.is_dataclass(cls) else cls(pairs)
        if _is_namedtuple_type(cls):
            return cls(*values)
        return cls(values)


def container_of(value: Any) -> Container | None:
    """The container structure of a Python value (None if it is not a container)."""
    if isinstance(value, Mapping):
        return Container(type(value), tuple(container_of(v) for v in value.values()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return Container(type(value), tuple(container_of(getattr(value, f.name)) for f in fields))
    if isinstance(value, (tuple, list)):
        return Container(type(value), tuple(container_of(v) for v in value))
    return None


# ---------------------------------------------------------------------------
# In.


def to_runtime(value: Any, t: Type, where: str = "value") -> Any:
    """The runtime value of Python `value` for declared type `t`; `where` names it in errors.

    A `{T}@CLIENTS` value (also inside a struct) becomes a `ClientList`;
    `T@CLIENTS` an `AllEqual`.
    """
    return _CONVERTERS_IN[type(t)](value, t, where)


@functools.cache
def _shape_matcher(shape: tuple[int | None, ...]) -> Callable[[tuple[int, ...]], bool]:
    """A fast test of whether an array shape fits the declared `shape` (None: any size)."""
    if None not in shape:
        return shape.__eq__
    rank = len(shape)
    known = tuple((axis, dim) for axis, dim in enumerate(shape) if dim is not None)
    return lambda found: len(found) == rank and all(found[a] == d for a, d in known)


def _tensor_in(value: Any, t: TensorType, where: str) -> np.ndarray:
    fits = _shape_matcher(t.shape)
    if type(value) is np.ndarray and value.dtype == t.dtype and fits(value.shape):
        return value  # the common case, checked first
    if isinstance(value, np.ndarray):
        array = np.asarray(value)  # a plain ndarray, also for subclasses
    elif isinstance(value, (np.generic, bool, int, float, list, tuple)):
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError) as error:
            raise FederatedTypeError(
                f"{where}: expected {t}, found a {type(value).__name__} that is not a "
                f"rectangular array of numbers ({error})"
            ) from None
    else:
        raise FederatedTypeError(f"{where}: expected {t}, found {_describe(value)}")
    kind = array.dtype.kind
    if array.size and t.dtype.kind not in _CONVERTIBLE_KINDS.get(kind, ""):
        raise FederatedTypeError(
            f"{where}: expected {t}, found {array.dtype} data, which does not convert to "
            f"{t.dtype} without loss; convert it explicitly (e.g. .astype(np.{t.dtype}))"
        )
    if not fits(array.shape):
        found = "a scalar" if array.ndim == 0 else f"shape {array.shape}"
        raise FederatedTypeError(f"{where}: expected {t}, found {found}")
    if array.dtype == t.dtype:
        return array
    if kind in "iu" and t.dtype.kind in "iu" and array.size:
        limits = np.iinfo(t.dtype)
        low, high = array.min(), array.max()
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise FederatedTypeError(
                f"{where}: expected {t}, found the value {bad}, outside the range of {t.dtype} "
                f"[{limits.min}, {limits.max}]"
            )
    return array.astype(t.dtype)


def _struct_in(value: Any, t: StructType, where: str) -> tuple:
    names = t.names()
    named = bool(names) and None not in names
    if isinstance(value, Mapping):
        items = _by_name(value, dict(value), names, named, t, where)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        items = _by_name(value, fields, names, named, t, where)
    elif _is_namedtuple_type(type(value)) and named:
        items = _by_name(value, value._asdict(), names, named, t, where)
    elif isinstance(value, (tuple, list)):
        if len(value) != len(t):
            raise FederatedTypeError(
                f"{where}: expected {t} ({len(t)} elements), found a {type(value).__name__} "
                f"of {len(value)}"
            )
        items = list(value)
    else:
        raise FederatedTypeError(f"{where}: expected {t}, found {_describe(value)}")
    return tuple(
        to_runtime(item, element_type, _field(where, name, index))
        for index, (item, (name, element_type)) in enumerate(zip(items, t.elements))
    )


def _by_name(
    value: Any, fields: dict, names: tuple, named: bool, t: StructType, where: str
) -> list:
    if not named:
        raise FederatedTypeError(
            f"{where}: expected {t}, whose elements are not all named, found "
            f"{_describe(value)}; pass a tuple"
        )
    missing = [n for n in names if n not in fields]
    extra = [str(k) for k in fields if k not in names]
    if missing or extra:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing)}")
        if extra:
            details.append(f"unexpected {', '.join(extra)}")
        raise FederatedTypeError(
            f"{where}: expected {t}, found {_describe(value)}: {'; '.join(details)}"
        )
    return [fields[n] for n in names]


def _sequence_in(value: Any, t: SequenceType, where: str) -> list:
    if (
        isinstance(value, (str, bytes, Mapping))
        or (isinstance(value, np.ndarray) and value.ndim == 0)
        or not isinstance(value, Iterable)
    ):
        raise FederatedTypeError(
            f"{where}: expected {t} (an iterable of elements), found {_describe(value)}"
        )
    return [
        to_runtime(element, t.element, f"{where}[{index}]")
        for index, element in enumerate(value)
    ]


def _federated_in(value: Any, t: FederatedType, where: str) -> Any:
    if t.placement is CLIENTS and not t.all_equal:
        if not isinstance(value, (list, tuple, np.ndarray)) or (
            isinstance(value, np.ndarray) and value.ndim == 0
        ):
            raise FederatedTypeError(
                f"{where}: expected {t}, a list with one value a client, found {_describe(value)}"
            )
        return ClientList(
            [to_runtime(v, t.member, f"{where}, client {i}") for i, v in enumerate(value)],
            where,
        )
    member = to_runtime(value, t.member, f"{where} ({t})")
    return AllEqual(member) if t.placement is CLIENTS else member


def _function_in(value: Any, t: FunctionType, where: str) -> Any:
    raise FederatedTypeError(
        f"{where}: expected a function of type {t}; functions cannot be passed as arguments "
        f"(found {_describe(value)}): call the computation from inside another one instead"
    )


def _placement_in(value: Any, t: PlacementType, where: str) -> Any:
    try:
        return to_placement(value)
    except FederatedTypeError as error:
        raise FederatedTypeError(f"{where}: {error}") from None


_CONVERTERS_IN: dict[type, Callable[[Any, Any, str], Any]] = {
    TensorType: _tensor_in,
    StructType: _struct_in,
    SequenceType: _sequence_in,
    FederatedType: _federated_in,
    FunctionType: _function_in,
    PlacementType: _placement_in,
}


def client_lists(value: Any, t: Type) -> list[ClientList]:
    """Every `ClientList` inside the converted argument `value` of type `t`, in order."""
    found = []
    stack = [(value, t)]
    while stack:
        current, current_type = stack.pop()
        if isinstance(current, ClientList):
            found.append(current)
        elif isinstance(current_type, StructType):
            stack.extend(reversed(list(zip(current, current_type))))
    return found


def replace_client_lists(value: Any, t: Type, place: Callable[[ClientList], ClientValue]) -> Any:
    """`value` with each `ClientList` replaced by `place(client_list)`."""
    if isinstance(value, ClientList):
        return place(value)
    if isinstance(t, StructType) and contains_federated(t):
        return tuple(replace_client_lists(v, e, place) for v, e in zip(value, t))
    return value


# ---------------------------------------------------------------------------
# Out.

Materialize = Callable[[ClientValue], list]


def from_runtime(
    value: Any,
    t: Type,
    container: Container | None = None,
    materialize: Materialize | None = None,
) -> Any:
    """The Python value of runtime `value` of type `t` (see the module docstring).

    `materialize` brings client values to the server; it is needed when `t`
    holds values placed at CLIENTS.
    """
    if isinstance(t, TensorType):
        return _array_out(value)
    if isinstance(t, StructType):
        children = container.children if container is not None else (None,) * len(t)
        if len(children) != len(t):
            raise FederatedTypeError(
                f"the result container {container.python_type.__name__} has {len(children)} "
                f"elements, but the result type {t} has {len(t)}"
            )
        parts = [
            from_runtime(v, element_type, child, materialize)
            for v, element_type, child in zip(value, t, children)
        ]
        names = t.names()
        if container is not None:
            return container.build(names, parts)
        if names and None not in names:
            return dict(zip(names, parts))
        return tuple(parts)
    if isinstance(t, SequenceType):
        return [from_runtime(v, t.element, container, materialize) for v in value]
    if isinstance(t, FederatedType):
        if t.placement is not CLIENTS:
            return from_runtime(value, t.member, container, materialize)
        if t.all_equal and isinstance(value, AllEqual):
            return from_runtime(value.value, t.member, container, materialize)
        if materialize is None:
            raise FederatedTypeError(f"a result of type {t} needs its clients' values")
        values = materialize(value)
        if t.all_equal:
            return from_runtime(values[0], t.member, container, materialize) if values else None
        return [from_runtime(v, t.member, container, materialize) for v in values]
    if isinstance(t, PlacementType):
        return value
    raise FederatedTypeError(f"a result of type {t} has no Python value")


def _array_out(value: Any) -> Any:
    array = np.asarray(value)
    if array.ndim == 0:
        return array[()]
    if not array.flags.writeable:
        # Literals are read-only; a caller may want to change what it gets back.
        return array.copy()
    return array


# ---------------------------------------------------------------------------
# Helpers.


def _is_namedtuple_type(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def _field(where: str, name: str | None, index: int) -> str:
    return f"{where}.{name}" if name is not None else f"{where}[{index}]"


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype} with shape {value.shape}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} elements"
    if isinstance(value, (bool, int, float, str, np.generic)):
        return f"{type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"
