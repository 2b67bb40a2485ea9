"""The federated type system: immutable, hashable, structurally compared types (DESIGN §3).

Types are abstract values: they never hold data. Each type computes its hash,
nesting depth and canonical text once, at construction, so comparing and
printing types is cheap and never recurses deeply.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fedcc.ir.errors import FederatedTypeError

# Types deeper than this are refused, so every recursive algorithm on types is
# safely below Python's recursion limit.
MAX_TYPE_DEPTH = 200

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Words of the type and program text syntax; they cannot name variables.
RESERVED_WORDS = frozenset(
    set(DTYPES)
    | {"placement", "CLIENTS", "SERVER", "let", "in", "graph", "data", "return"}
    | {"true", "false", "nan", "inf"}
)


def is_valid_field_name(name: str) -> bool:
    """Whether `name` can name a struct field: any identifier."""
    return isinstance(name, str) and bool(_NAME.match(name))


def is_valid_variable_name(name: str) -> bool:
    """Whether `name` can name a variable in the program text: an identifier, not a keyword."""
    return is_valid_field_name(name) and name not in RESERVED_WORDS


def to_dtype(dtype: Any) -> np.dtype:
    """The supported NumPy dtype for `dtype` (a NumPy dtype, a scalar type or a name)."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise FederatedTypeError(f"expected a dtype, found {dtype!r}") from error
    if resolved.name not in DTYPES or resolved.byteorder == ">":
        raise FederatedTypeError(
            f"unsupported dtype {resolved}: expected one of {', '.join(DTYPES)}"
        )
    return DTYPES[resolved.name]


class PlacementLiteral(enum.Enum):
    """Where a federated value lives."""

    CLIENTS = "clients"
    SERVER = "server"


CLIENTS = PlacementLiteral.CLIENTS
SERVER = PlacementLiteral.SERVER


class Type:
    """Base of all types. Subclasses set `_key` (structural identity) and `_text`."""

    __slots__ = ("_depth", "_hash", "_key", "_text")

    def _finish(self, key: tuple, text: str, depth: int) -> None:
        if depth > MAX_TYPE_DEPTH:
            raise FederatedTypeError(
                f"type nesting is {depth} levels deep; at most {MAX_TYPE_DEPTH} are supported"
            )
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_depth", depth)
        object.__setattr__(self, "_hash", hash(key))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Type) or self._hash != other._hash:
            return False
        return type(self) is type(other) and self._text == other._text

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"fc.parse_type({self._text!r})"

    def __reduce__(self):
        from fedcc.ir.type_text import parse_type

        return (parse_type, (self._text,))

    @property
    def depth(self) -> int:
        """Nesting depth: 1 for a leaf type."""
        return self._depth

    def children(self) -> tuple[Type, ...]:
        """The types directly inside this one."""
        return ()


class TensorType(Type):
    """A dense tensor of a fixed dtype; dims may be `None` (unknown)."""

    __slots__ = ("dtype", "shape")

    def __init__(self, dtype: Any, shape: Iterable[int | None] = ()) -> None:
        resolved = to_dtype(dtype)
        if isinstance(shape, (int, np.integer)) or shape is None:
            shape = (shape,)
        dims: list[int | None] = []
        for dim in shape:
            if dim is None:
                dims.append(None)
            elif isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0:
                dims.append(int(dim))
            else:
                raise FederatedTypeError(
                    f"a tensor dimension must be a non-negative int or None, found {dim!r}"
                )
        object.__setattr__(self, "dtype", resolved)
        object.__setattr__(self, "shape", tuple(dims))
        text = resolved.name
        if dims:
            text += "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
        self._finish(("tensor", resolved.name, tuple(dims)), text, 1)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def is_fully_defined(self) -> bool:
        return None not in self.shape

    def num_elements(self) -> int | None:
        """The element count, or None if a dim is unknown."""
        if not self.is_fully_defined():
            return None
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class StructType(Type):
    """An ordered struct of (name or None, type) elements."""

    __slots__ = ("elements",)

    def __init__(self, elements: Iterable[Any]) -> None:
        items: list[tuple[str | None, Type]] = []
        for element in elements:
            if isinstance(element, tuple) and len(element) == 2 and (
                element[0] is None or isinstance(element[0], str)
            ):
                name, value = element
            else:
                name, value = None, element
            if name is not None and not is_valid_field_name(name):
                raise FederatedTypeError(f"struct field name {name!r} is not an identifier")
            items.append((name, to_type(value)))
        names = [n for n, _ in items if n is not None]
        if len(set(names)) != len(names):
            raise FederatedTypeError(f"struct field names repeat: {names}")
        for _, t in items:
            if isinstance(t, PlacementType):
                raise FederatedTypeError("a struct cannot hold a placement type")
        object.__setattr__(self, "elements", tuple(items))
        text = "<" + ",".join(str(t) if n is None else f"{n}={t}" for n, t in items) + ">"
        depth = 1 + max((t.depth for _, t in items), default=0)
        self._finish(("struct", tuple((n, t._key) for n, t in items)), text, depth)

    def __len__(self) -> int:
        return len(self.elements)

    def __iter__(self) -> Iterator[Type]:
        return (t for _, t in self.elements)

    def __getitem__(self, index: int) -> Type:
        return self.elements[index][1]

    def names(self) -> tuple[str | None, ...]:
        return tuple(n for n, _ in self.elements)

    def index_of(self, name: str) -> int:
        for i, (n, _) in enumerate(self.elements):
            if n == name:
                return i
        raise FederatedTypeError(f"struct {self} has no field named {name!r}")

    def children(self) -> tuple[Type, ...]:
        return tuple(t for _, t in self.elements)


class SequenceType(Type):
    """A stream of elements, such as one client's local data set."""

    __slots__ = ("element",)

    def __init__(self, element: Any) -> None:
        element = to_type(element)
        bad = _first_within(element, (FederatedType, FunctionType, SequenceType, PlacementType))
        if bad is not None:
            raise FederatedTypeError(f"a sequence cannot hold a {_kind(bad)} type, found {bad}")
        object.__setattr__(self, "element", element)
        self._finish(("sequence", element._key), f"{element}*", element.depth + 1)

    def children(self) -> tuple[Type, ...]:
        return (self.element,)


class FunctionType(Type):
    """A function from `parameter` (None: no parameter) to `result`."""

    __slots__ = ("parameter", "result")

    def __init__(self, parameter: Any, result: Any) -> None:
        parameter = None if parameter is None else to_type(parameter)
        result = to_type(result)
        object.__setattr__(self, "parameter", parameter)
        object.__setattr__(self, "result", result)
        text = f"({'' if parameter is None else parameter} -> {result})"
        key = ("function", None if parameter is None else parameter._key, result._key)
        depth = 1 + max(result.depth, 0 if parameter is None else parameter.depth)
        self._finish(key, text, depth)

    def children(self) -> tuple[Type, ...]:
        return (self.result,) if self.parameter is None else (self.parameter, self.result)


class FederatedType(Type):
    """A value placed at CLIENTS (one a client, or one for all if `all_equal`) or at SERVER."""

    __slots__ = ("all_equal", "member", "placement")

    def __init__(self, member: Any, placement: Any, all_equal: bool | None = None) -> None:
        member = to_type(member)
        placement = to_placement(placement)
        if all_equal is None:
            all_equal = placement is SERVER
        if placement is SERVER and not all_equal:
            raise FederatedTypeError("a value placed at SERVER is always all-equal")
        bad = _first_within(member, (FederatedType, FunctionType, PlacementType))
        if bad is not None:
            raise FederatedTypeError(
                f"a federated type cannot hold a {_kind(bad)} type, found {bad}"
            )
        object.__setattr__(self, "member", member)
        object.__setattr__(self, "placement", placement)
        object.__setattr__(self, "all_equal", bool(all_equal))
        where = placement.name
        text = f"{member}@{where}" if all_equal else f"{{{member}}}@{where}"
        self._finish(("federated", member._key, where, bool(all_equal)), text, member.depth + 1)

    def children(self) -> tuple[Type, ...]:
        return (self.member,)


class PlacementType(Type):
    """The type of a placement literal (CLIENTS or SERVER)."""

    __slots__ = ()

    def __init__(self) -> None:
        self._finish(("placement",), "placement", 1)


TypeLike = Type | str | np.dtype | type | Sequence[Any] | dict


def to_type(spec: Any) -> Type:
    """Converts a type, its text, a NumPy dtype or a Python container of those to a `Type`."""
    if isinstance(spec, Type):
        return spec
    if isinstance(spec, str):
        from fedcc.ir.type_text import parse_type

        return parse_type(spec)
    if isinstance(spec, dict):
        return StructType(list(spec.items()))
    if isinstance(spec, tuple) and hasattr(spec, "_fields"):
        return StructType(list(zip(spec._fields, spec)))
    if isinstance(spec, (list, tuple)):
        return StructType(list(spec))
    if isinstance(spec, (np.dtype, type)):
        return TensorType(spec)
    raise FederatedTypeError(f"expected a type, its text or a NumPy dtype, found {spec!r}")


def to_placement(value: Any) -> PlacementLiteral:
    if isinstance(value, PlacementLiteral):
        return value
    if isinstance(value, str):
        for placement in PlacementLiteral:
            if value.lower() == placement.value:
                return placement
    raise FederatedTypeError(f"expected a placement (CLIENTS or SERVER), found {value!r}")


def _kind(t: Type) -> str:
    return {
        FederatedType: "federated",
        FunctionType: "function",
        SequenceType: "sequence",
        PlacementType: "placement",
    }.get(type(t), type(t).__name__)


def _first_within(t: Type, kinds: tuple[type, ...]) -> Type | None:
    """The first type of one of `kinds` in `t`, looking through structs only."""
    stack = [t]
    while stack:
        current = stack.pop()
        if isinstance(current, kinds):
            return current
        if isinstance(current, StructType):
            stack.extend(reversed(current.children()))
    return None


def is_assignable_from(target: Type, source: Type) -> bool:
    """Whether a value of type `source` may stand where `target` is expected (DESIGN §3)."""
    if target == source:
        return True
    if isinstance(target, TensorType):
        return (
            isinstance(source, TensorType)
            and target.dtype == source.dtype
            and target.rank == source.rank
            and all(t is None or t == s for t, s in zip(target.shape, source.shape))
        )
    if isinstance(target, StructType):
        return (
            isinstance(source, StructType)
            and len(target) == len(source)
            and all(
                (tn is None or tn == sn) and is_assignable_from(tt, st)
                for (tn, tt), (sn, st) in zip(target.elements, source.elements)
            )
        )
    if isinstance(target, SequenceType):
        return isinstance(source, SequenceType) and is_assignable_from(
            target.element, source.element
        )
    if isinstance(target, FunctionType):
        if not isinstance(source, FunctionType):
            return False
        if (target.parameter is None) != (source.parameter is None):
            return False
        if target.parameter is not None and not is_assignable_from(
            source.parameter, target.parameter
        ):
            return False
        return is_assignable_from(target.result, source.result)
    if isinstance(target, FederatedType):
        return (
            isinstance(source, FederatedType)
            and target.placement is source.placement
            and (source.all_equal or not target.all_equal)
            and is_assignable_from(target.member, source.member)
        )
    return isinstance(target, PlacementType) and isinstance(source, PlacementType)


def walk_types(t: Type) -> Iterator[Type]:
    """Every type inside `t`, `t` first, depth-first."""
    stack = [t]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children()))


def contains_federated(t: Type) -> bool:
    """Whether `t` has a federated type anywhere inside, including in function signatures."""
    return any(isinstance(x, FederatedType) for x in walk_types(t))


def tensor_leaves(t: Type) -> list[TensorType]:
    """The tensor types of a (nested) struct of tensors, in order; raises for other types."""
    leaves: list[TensorType] = []
    for current in walk_types(t):
        if isinstance(current, TensorType):
            leaves.append(current)
        elif not isinstance(current, StructType):
            raise FederatedTypeError(f"expected a struct of tensors, found {t}")
    return leaves
