"""The federated type system: immutable, hashable, structurally compared types (DESIGN §3).

Types are abstract values: they never hold data. They are interned (one
instance a distinct type), so comparing and hashing them is O(1). Each type
computes its hash, nesting depth, text length and the kinds of type it holds
once, at construction, from its children's; its canonical text on first use.
No operation on types recurses deeply, and none walks a type shared inside
itself in more than its distinct parts, except those that return its unfolded
contents (`walk_types`, `tensor_leaves`).
"""

from __future__ import annotations

import enum
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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


# Bits of `Type._within` and `Type._within_structs`: what kinds of type (and tensor dtype
# kinds) a type holds, so nesting rules and intrinsic rules are answered without a walk.
_TENSOR, _STRUCT, _SEQUENCE, _FUNCTION, _FEDERATED, _PLACEMENT = (1 << i for i in range(6))
_DTYPE_KIND_BITS = {"b": 1 << 6, "i": 1 << 7, "u": 1 << 8, "f": 1 << 9}
_ALL_DTYPE_KIND_BITS = sum(_DTYPE_KIND_BITS.values())

# One instance a distinct type (hash-consing): constructing a type that exists returns the
# existing instance, so equal types are identical, equality and hashing are O(1), and a type
# that a program mentions n times is built, validated and printed once. Weak values: a type
# nothing else holds is dropped, so the table never outgrows the live types.
_INTERNED: weakref.WeakValueDictionary[tuple, Type] = weakref.WeakValueDictionary()
# Reentrant: a garbage-collector finalizer that runs while this thread holds the lock may
# itself build a type.
_INTERNING = threading.RLock()


def _interned(key: tuple, build: Callable[[], Type]) -> Any:
    """The one instance of the type of `key`, built (and so validated) only if it is new."""
    with _INTERNING:
        found = _INTERNED.get(key)
    if found is not None:
        return found
    built = build()
    with _INTERNING:
        return _INTERNED.setdefault(key, built)


class Type:
    """Base of all types: interned, so equal types are one instance.

    Subclasses build instances in `__new__` through `_interned`, with a `_key` of
    their own fields and their children *instances*: hashing or comparing a key
    costs one step per child, never a walk of the whole type. What a whole-type
    walk would give is computed once, at construction, from the children's
    values: depth, text length, the kinds of type held. The canonical text is
    built on first use and cached: a type built only to be compared or
    serialized never pays for its text, whose size can be exponential in the
    number of distinct types inside it.
    """

    __slots__ = (
        "__weakref__",
        "_assignable",
        "_depth",
        "_hash",
        "_key",
        "_text",
        "_text_length",
        "_within",
        "_within_structs",
    )

    def _finish(self, key: tuple, text: str | None, depth: int) -> None:
        if depth > MAX_TYPE_DEPTH:
            raise FederatedTypeError(
                f"type nesting is {depth} levels deep; at most {MAX_TYPE_DEPTH} are supported"
            )
        children = self.children()
        own = _own_bits(self)
        within_structs = own
        if isinstance(self, StructType):
            for child in children:
                within_structs |= child._within_structs
        within = own
        for child in children:
            within |= child._within
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_text", text)
        length = self._measure_text() if text is None else len(text)
        object.__setattr__(self, "_text_length", length)
        object.__setattr__(self, "_depth", depth)
        object.__setattr__(self, "_hash", hash(key))
        object.__setattr__(self, "_within", within)
        object.__setattr__(self, "_within_structs", within_structs)
        object.__setattr__(self, "_assignable", None)

    def _measure_text(self) -> int:
        """The length of the canonical text, from the children's lengths."""
        raise NotImplementedError

    def _make_text(self, text_of: Callable[[Type], str] = str) -> str:
        """The canonical text, with `text_of(child)` for each child's text."""
        return self._text

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        # Interned types are equal only if identical; comparing keys (child by child, each
        # child again by identity first) keeps equality structural for a type built around
        # the table, such as one made with object.__new__.
        if not isinstance(other, Type) or self._hash != other._hash:
            return False
        return type(self) is type(other) and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        if self._text is None:
            # Children first, with an explicit stack: types nest up to MAX_TYPE_DEPTH levels,
            # more than Python's recursion limit allows when each level is a few frames.
            stack: list[tuple[Type, bool]] = [(self, False)]
            while stack:
                current, children_done = stack.pop()
                if current._text is not None:
                    continue
                if children_done:
                    object.__setattr__(current, "_text", current._make_text())
                    continue
                stack.append((current, True))
                stack.extend((child, False) for child in current.children())
        return self._text

    def __repr__(self) -> str:
        return f"fc.parse_type({str(self)!r})"

    def __reduce__(self):
        from fedcc.ir.type_text import parse_type

        return (parse_type, (str(self),))

    @property
    def depth(self) -> int:
        """Nesting depth: 1 for a leaf type."""
        return self._depth

    @property
    def text_length(self) -> int:
        """`len(str(self))`, known without building the text."""
        return self._text_length

    def children(self) -> tuple[Type, ...]:
        """The types directly inside this one."""
        return ()


class TensorType(Type):
    """A dense tensor of a fixed dtype; dims may be `None` (unknown)."""

    __slots__ = ("dtype", "shape")

    def __new__(cls, dtype: Any, shape: Iterable[int | None] = ()) -> TensorType:
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
        key = ("tensor", resolved.name, tuple(dims))

        def build() -> TensorType:
            self = object.__new__(cls)
            object.__setattr__(self, "dtype", resolved)
            object.__setattr__(self, "shape", key[2])
            text = resolved.name
            if dims:
                text += "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
            self._finish(key, text, 1)
            return self

        return _interned(key, build)

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

    # The names and a name -> position table are made on first use: a struct of k fields
    # selected field by field would otherwise cost k per selection.
    __slots__ = ("_name_positions", "_names", "elements")

    def __new__(cls, elements: Iterable[Any]) -> StructType:
        items: list[tuple[str | None, Type]] = []
        for element in elements:
            if isinstance(element, tuple) and len(element) == 2 and (
                element[0] is None or isinstance(element[0], str)
            ):
                name, value = element
            else:
                name, value = None, element
            items.append((name, to_type(value)))
        key = ("struct", tuple(items))

        def build() -> StructType:
            for name, _ in items:
                if name is not None and not is_valid_field_name(name):
                    raise FederatedTypeError(f"struct field name {name!r} is not an identifier")
            names = [n for n, _ in items if n is not None]
            if len(set(names)) != len(names):
                raise FederatedTypeError(f"struct field names repeat: {names}")
            for _, t in items:
                if isinstance(t, PlacementType):
                    raise FederatedTypeError("a struct cannot hold a placement type")
            self = object.__new__(cls)
            object.__setattr__(self, "elements", key[1])
            object.__setattr__(self, "_names", None)
            object.__setattr__(self, "_name_positions", None)
            depth = 1 + max((t.depth for _, t in items), default=0)
            self._finish(key, None, depth)
            return self

        return _interned(key, build)

    def _measure_text(self) -> int:
        length = 2 + max(len(self.elements) - 1, 0)
        for name, t in self.elements:
            length += t.text_length + (0 if name is None else len(name) + 1)
        return length

    def _make_text(self, text_of: Callable[[Type], str] = str) -> str:
        parts = (text_of(t) if n is None else f"{n}={text_of(t)}" for n, t in self.elements)
        return "<" + ",".join(parts) + ">"

    def __len__(self) -> int:
        return len(self.elements)

    def __iter__(self) -> Iterator[Type]:
        return (t for _, t in self.elements)

    def __getitem__(self, index: int) -> Type:
        return self.elements[index][1]

    def names(self) -> tuple[str | None, ...]:
        names = getattr(self, "_names", None)  # unset in a struct built around __new__
        if names is None:
            names = tuple(n for n, _ in self.elements)
            object.__setattr__(self, "_names", names)
        return names

    def index_of(self, name: str) -> int:
        positions = getattr(self, "_name_positions", None)
        if positions is None:
            positions = {n: i for i, (n, _) in enumerate(self.elements) if n is not None}
            object.__setattr__(self, "_name_positions", positions)
        position = positions.get(name)
        if position is None:
            raise FederatedTypeError(f"struct {self} has no field named {name!r}")
        return position

    def children(self) -> tuple[Type, ...]:
        return tuple(t for _, t in self.elements)


class SequenceType(Type):
    """A stream of elements, such as one client's local data set."""

    __slots__ = ("element",)

    def __new__(cls, element: Any) -> SequenceType:
        element = to_type(element)
        key = ("sequence", element)

        def build() -> SequenceType:
            bad = _first_within(element, (FederatedType, FunctionType, SequenceType, PlacementType))
            if bad is not None:
                raise FederatedTypeError(
                    f"a sequence cannot hold a {_kind(bad)} type, found {bad}"
                )
            self = object.__new__(cls)
            object.__setattr__(self, "element", element)
            self._finish(key, None, element.depth + 1)
            return self

        return _interned(key, build)

    def _measure_text(self) -> int:
        return self.element.text_length + 1

    def _make_text(self, text_of: Callable[[Type], str] = str) -> str:
        return f"{text_of(self.element)}*"

    def children(self) -> tuple[Type, ...]:
        return (self.element,)


class FunctionType(Type):
    """A function from `parameter` (None: no parameter) to `result`."""

    __slots__ = ("parameter", "result")

    def __new__(cls, parameter: Any, result: Any) -> FunctionType:
        parameter = None if parameter is None else to_type(parameter)
        result = to_type(result)
        key = ("function", parameter, result)

        def build() -> FunctionType:
            self = object.__new__(cls)
            object.__setattr__(self, "parameter", parameter)
            object.__setattr__(self, "result", result)
            depth = 1 + max(result.depth, 0 if parameter is None else parameter.depth)
            self._finish(key, None, depth)
            return self

        return _interned(key, build)

    def _measure_text(self) -> int:
        parameter = 0 if self.parameter is None else self.parameter.text_length
        return parameter + self.result.text_length + len("( -> )")

    def _make_text(self, text_of: Callable[[Type], str] = str) -> str:
        parameter = "" if self.parameter is None else text_of(self.parameter)
        return f"({parameter} -> {text_of(self.result)})"

    def children(self) -> tuple[Type, ...]:
        return (self.result,) if self.parameter is None else (self.parameter, self.result)


class FederatedType(Type):
    """A value placed at CLIENTS (one a client, or one for all if `all_equal`) or at SERVER."""

    __slots__ = ("all_equal", "member", "placement")

    def __new__(cls, member: Any, placement: Any, all_equal: bool | None = None) -> FederatedType:
        member = to_type(member)
        placement = to_placement(placement)
        if all_equal is None:
            all_equal = placement is SERVER
        all_equal = bool(all_equal)
        key = ("federated", member, placement.name, all_equal)

        def build() -> FederatedType:
            if placement is SERVER and not all_equal:
                raise FederatedTypeError("a value placed at SERVER is always all-equal")
            bad = _first_within(member, (FederatedType, FunctionType, PlacementType))
            if bad is not None:
                raise FederatedTypeError(
                    f"a federated type cannot hold a {_kind(bad)} type, found {bad}"
                )
            self = object.__new__(cls)
            object.__setattr__(self, "member", member)
            object.__setattr__(self, "placement", placement)
            object.__setattr__(self, "all_equal", all_equal)
            self._finish(key, None, member.depth + 1)
            return self

        return _interned(key, build)

    def _measure_text(self) -> int:
        braces = 0 if self.all_equal else 2
        return self.member.text_length + braces + 1 + len(self.placement.name)

    def _make_text(self, text_of: Callable[[Type], str] = str) -> str:
        where, member = self.placement.name, text_of(self.member)
        return f"{member}@{where}" if self.all_equal else f"{{{member}}}@{where}"

    def children(self) -> tuple[Type, ...]:
        return (self.member,)


class PlacementType(Type):
    """The type of a placement literal (CLIENTS or SERVER)."""

    __slots__ = ()

    def __new__(cls) -> PlacementType:
        def build() -> PlacementType:
            self = object.__new__(cls)
            self._finish(("placement",), "placement", 1)
            return self

        return _interned(("placement",), build)


_KIND_BITS: dict[type, int] = {
    TensorType: _TENSOR,
    StructType: _STRUCT,
    SequenceType: _SEQUENCE,
    FunctionType: _FUNCTION,
    FederatedType: _FEDERATED,
    PlacementType: _PLACEMENT,
}


def _own_bits(t: Type) -> int:
    bits = _KIND_BITS[type(t)]
    if isinstance(t, TensorType):
        bits |= _DTYPE_KIND_BITS[t.dtype.kind]
    return bits


def _kinds_bits(kinds: tuple[type, ...]) -> int:
    return sum(_KIND_BITS[k] for k in kinds)


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
    if not t._within_structs & _kinds_bits(kinds):
        return None
    return _first_found(t, kinds, through=(StructType,))


def first_inside(t: Type, kinds: tuple[type, ...]) -> Type | None:
    """The first type of one of `kinds` in `t` (`t` included), looking through every type."""
    if not t._within & _kinds_bits(kinds):
        return None
    return _first_found(t, kinds, through=(Type,))


def _first_found(t: Type, kinds: tuple[type, ...], through: tuple[type, ...]) -> Type | None:
    # Depth-first, children in order, each distinct type once: a type shared inside itself
    # costs its distinct parts, not its unfolded size.
    stack, seen = [t], set()
    while stack:
        current = stack.pop()
        if isinstance(current, kinds):
            return current
        if id(current) not in seen and isinstance(current, through):
            seen.add(id(current))
            stack.extend(reversed(current.children()))
    return None


def tensor_leaf_dtype_kinds(t: Type) -> str | None:
    """The NumPy dtype kinds (`b`, `i`, `u`, `f`) of the tensors of a (nested) struct of tensors,
    or None if something else than a tensor or a struct is inside; known without a walk."""
    if t._within_structs & (_SEQUENCE | _FUNCTION | _FEDERATED | _PLACEMENT):
        return None
    return "".join(kind for kind, bit in _DTYPE_KIND_BITS.items() if t._within_structs & bit)


def is_assignable_from(target: Type, source: Type) -> bool:
    """Whether a value of type `source` may stand where `target` is expected (DESIGN §3)."""
    if target is source or target == source:
        return True
    if isinstance(target, TensorType):
        return (
            isinstance(source, TensorType)
            and target.dtype == source.dtype
            and target.rank == source.rank
            and all(t is None or t == s for t, s in zip(target.shape, source.shape))
        )
    # Remembered per (target, source) pair on the target, weakly in the source: a program
    # checks the same pair at many nodes, and with the answers of the parts remembered too,
    # a type shared inside itself is compared in time of its distinct parts.
    remembered = target._assignable
    if remembered is None:
        remembered = weakref.WeakKeyDictionary()
        object.__setattr__(target, "_assignable", remembered)
    answer = remembered.get(source)
    if answer is None:
        answer = _is_assignable_composite(target, source)
        remembered[source] = answer
    return answer


def _is_assignable_composite(target: Type, source: Type) -> bool:
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


def text_with_names(t: Type, names: Mapping[Type, str]) -> str:
    """`str(t)`, except that each type inside `t` (not `t` itself) that `names` maps prints as
    its name: the text of a type whose big parts have been given names (type aliases).

    Each distinct type is printed once, so the cost is the size of the result plus the
    distinct types that are long enough to hold a named one.
    """
    if not names:
        return str(t)
    # A type shorter than every named type cannot hold one: its canonical text is the answer.
    shortest = min(named.text_length for named in names)
    texts: dict[Type, str] = {}

    def text_of(child: Type) -> str:
        return texts[child]

    stack: list[tuple[Type, bool]] = [(t, False)]
    while stack:
        current, children_done = stack.pop()
        if current in texts:
            continue
        if current is not t and current in names:
            texts[current] = names[current]
        elif current.text_length < shortest:
            texts[current] = str(current)
        elif children_done:
            texts[current] = current._make_text(text_of)
        else:
            stack.append((current, True))
            stack.extend((child, False) for child in current.children())
    return texts[t]


def walk_types(t: Type) -> Iterator[Type]:
    """Every type inside `t`, `t` first, depth-first."""
    stack = [t]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children()))


def contains_federated(t: Type) -> bool:
    """Whether `t` has a federated type anywhere inside, including in function signatures."""
    return bool(t._within & _FEDERATED)


def tensor_leaves(t: Type) -> list[TensorType]:
    """The tensor types of a (nested) struct of tensors, in order; raises for other types."""
    leaves: list[TensorType] = []
    for current in walk_types(t):
        if isinstance(current, TensorType):
            leaves.append(current)
        elif not isinstance(current, StructType):
            raise FederatedTypeError(f"expected a struct of tensors, found {t}")
    return leaves
