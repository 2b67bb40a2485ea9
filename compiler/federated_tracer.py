"""Traces Python federated code into building blocks (DESIGN §4).

A federated computation's Python body runs once, on `Value` proxies instead
of data. Each proxy holds the building block that computes it; selecting from
a proxy, calling a computation or an intrinsic builds IR. Every call is bound
to a fresh name in the `let` block of the function being traced, so a value
used twice is computed once, and the traced body reads like TFF's compact
form: `(v -> (let map_1=federated_map(<f,v>) in federated_mean(map_1)))`.

The pieces, in order:

- where a user error happened: `user_location` finds the innermost frame
  outside fedcc's own sources, and `located` turns a `FederatedTypeError`
  raised inside it into one that says what was being built and at which
  `file:line`;
- scopes: one per Python function being traced, nested for functions traced
  inline (a Python callable passed to an intrinsic); a `Value` can be used in
  its own scope and in scopes nested inside it while they are being traced;
- `Value`, the proxy, and the conversion of Python constants and containers
  to building blocks (`to_block`) and of Python values to types (`infer_type`);
- `trace_function`: a Python function and its parameter type to a `Lambda`;
- calling function-like things in a trace (`call_function`), and the intrinsic
  builders, one a user-facing intrinsic (`build_federated_map`, ...), which
  check the types at trace time through the intrinsic table's typing rules.

This module knows nothing of computations' user-facing objects or of
runtimes: anything that can stand for a function implements `FunctionLike`.
"""

from __future__ import annotations

import abc
import contextvars
import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcc.compiler import numpy_tracer
from fedcc.ir import building_blocks as bb
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementLiteral,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    contains_federated,
    is_assignable_from,
    is_valid_variable_name,
    to_placement,
    to_type,
)

# ---------------------------------------------------------------------------
# Where the user's code is.


def _own_source_directories() -> tuple[str, ...]:
    """The folders of fedcc's packages (and NumPy's): frames there are never the user's line."""
    directories = set()
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("fedcc", "numpy"):
            for path in getattr(module, "__path__", None) or ():
                directories.add(os.path.join(os.path.realpath(path), ""))
    return tuple(sorted(directories))


@functools.lru_cache(maxsize=1024)
def _is_own_source(filename: str, own: tuple[str, ...]) -> bool:
    if filename.startswith("<frozen"):
        return True
    return os.path.realpath(filename).startswith(own)


def user_location() -> str:
    """`file:line` of the innermost frame outside fedcc's own source files."""
    own = _own_source_directories()
    frame = sys._getframe(1)
    while frame is not None:
        if not _is_own_source(frame.f_code.co_filename, own):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown location>"


def located_error(
    what: str, message: str, kind: type[FederatedTypeError] = FederatedTypeError
) -> FederatedTypeError:
    """A `FederatedTypeError` saying `what` failed, at the user's `file:line`, and why."""
    location = user_location()
    error = kind(f"{what} at {location}: {message}")
    error.location = location
    return error


class located:
    """Within it, a `FederatedTypeError` not yet located becomes one naming `what` and the line.

    A class rather than a generator-based context manager, so that no frame of
    `contextlib` stands between fedcc's frames and the user's.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> located:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
        if isinstance(error, FederatedTypeError) and not hasattr(error, "location"):
            raise located_error(self.what, str(error), type(error)) from None
        return False


class FieldError(FederatedTypeError, AttributeError):
    """A struct has no field of that name (an AttributeError too, so `hasattr` works)."""


# ---------------------------------------------------------------------------
# Scopes.


class _Names:
    """Fresh variable names for one trace (a top-level function and everything traced inline)."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.counts: dict[str, int] = {}

    def fresh(self, stem: str) -> str:
        """`stem_1`, `stem_2`, ...: the next name of `stem` not used yet."""
        stem = stem if is_valid_variable_name(stem) else "value"
        count = self.counts.get(stem, 0)
        while True:
            count += 1
            name = f"{stem}_{count}"
            if name not in self.used:
                break
        self.counts[stem] = count
        self.used.add(name)
        return name

    def preferred(self, name: str) -> str:
        """`name` itself if it is a valid, unused variable name, else a fresh one like it."""
        if is_valid_variable_name(name) and name not in self.used:
            self.used.add(name)
            return name
        return self.fresh(name)


class Scope:
    """The let-bindings of one Python function being traced."""

    __slots__ = ("bindings", "is_open", "names", "parent")

    def __init__(self, parent: Scope | None, names: _Names) -> None:
        self.parent = parent
        self.names = names
        self.bindings: list[tuple[str, bb.BuildingBlock]] = []
        self.is_open = True

    def bind(self, block: bb.BuildingBlock, stem: str) -> bb.Reference:
        """Binds `block` to a fresh name; the reference to it."""
        name = self.names.fresh(stem)
        self.bindings.append((name, block))
        return bb.Reference(name, block.type_signature)

    def encloses(self, other: Scope) -> bool:
        """Whether `other` is this scope or one nested inside it."""
        current: Scope | None = other
        while current is not None:
            if current is self:
                return True
            current = current.parent
        return False

    def finish(self, result: bb.BuildingBlock) -> bb.BuildingBlock:
        """The body `let <bindings> in result`; a last binding used only as result is inlined."""
        bindings = list(self.bindings)
        if bindings and isinstance(result, bb.Reference) and result.name == bindings[-1][0]:
            result = bindings.pop()[1]
        return bb.Block(bindings, result) if bindings else result


_current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "fedcc_federated_trace_scope", default=None
)


def current_scope() -> Scope | None:
    """The scope of the function being traced, or None outside tracing."""
    return _current_scope.get()


def is_tracing() -> bool:
    """Whether a federated computation is being traced in this thread (or context)."""
    return _current_scope.get() is not None


def _require_scope(what: str) -> Scope:
    scope = _current_scope.get()
    if scope is None:
        raise located_error(what, "this needs a federated computation being traced")
    return scope


# ---------------------------------------------------------------------------
# Skeletons: the Python containers a value was built from, leaves replaced by None.


def is_namedtuple(value: Any) -> bool:
    """Whether `value` is an instance of a namedtuple class."""
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def is_dataclass_instance(value: Any) -> bool:
    """Whether `value` is an instance (not the class) of a dataclass."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def container_items(value: Any) -> list[tuple[str | None, Any]] | None:
    """The (name, element) pairs of a Python container, in order; None for a non-container."""
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    if is_dataclass_instance(value):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    if is_namedtuple(value):
        return list(zip(type(value)._fields, value))
    if isinstance(value, (tuple, list)):
        return [(None, v) for v in value]
    return None


def rebuild_container(container: Any, children: list[Any]) -> Any:
    """A container like `container` holding `children` instead of its elements."""
    if isinstance(container, Mapping):
        return dict(zip(container.keys(), children))
    if is_dataclass_instance(container):
        names = [f.name for f in dataclasses.fields(container)]
        return dataclasses.replace(container, **dict(zip(names, children)))
    if is_namedtuple(container):
        return type(container)(*children)
    return type(container)(children) if isinstance(container, list) else tuple(children)


def skeleton_of(value: Any) -> Any:
    """The container structure of a Python value holding `Value`s: their skeletons at the leaves."""
    if isinstance(value, Value):
        return value._skeleton
    items = container_items(value)
    if items is None:
        return None
    return rebuild_container(value, [skeleton_of(v) for _, v in items])


def _skeleton_child(skeleton: Any, index: int) -> Any:
    items = container_items(skeleton)
    if items is None or not 0 <= index < len(items):
        return None
    return items[index][1]


# ---------------------------------------------------------------------------
# Value proxies.

_NO_NUMPY = (
    "a traced federated value has no NumPy value; write the math in a fc.numpy_computation "
    "and apply it with fc.federated_map (at CLIENTS) or call it on an unplaced value"
)


class Value:
    """A value of a federated computation being traced: the building block that computes it.

    Select elements of struct values with `v.name`, `v["name"]`, `v[0]`, slices,
    or unpacking; on a placed struct (`{<a=...,b=...>}@CLIENTS`) selection maps
    over the placement. `type_signature` is the value's type.
    """

    __slots__ = ("_block", "_scope", "_skeleton")

    def __init__(self, block: bb.BuildingBlock, scope: Scope, skeleton: Any = None) -> None:
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_scope", scope)
        object.__setattr__(self, "_skeleton", skeleton)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("traced values are immutable")

    @property
    def type_signature(self) -> Type:
        """The type of this value."""
        return self._block.type_signature

    def __repr__(self) -> str:
        return f"<Value {_short_text(self._block)}: {self.type_signature}>"

    def __getattr__(self, name: str) -> Value:
        if name.startswith("_"):
            raise AttributeError(name)
        return select(self, name)

    def __getitem__(self, key: int | str | slice) -> Value:
        return select(self, key)

    def __len__(self) -> int:
        return len(_struct_of(self, "len()"))

    def __iter__(self) -> Iterator[Value]:
        count = len(_struct_of(self, "iterating over it"))
        return (select(self, index) for index in range(count))

    def __call__(self, *args: Any) -> Value:
        return call_block(self, args, "calling a traced function value")

    def __bool__(self) -> bool:
        raise located_error(
            "using a traced value as a bool",
            f"the value of type {self.type_signature} is not known while tracing; "
            "Python control flow cannot depend on it",
        )

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise located_error("converting a traced value to a NumPy array", _NO_NUMPY)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        raise located_error(f"np.{ufunc.__name__} on a traced federated value", _NO_NUMPY)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise located_error(f"np.{func.__name__} on a traced federated value", _NO_NUMPY)


def _short_text(block: bb.BuildingBlock) -> str:
    """A value's block as its name (`v`, `arg[0]`) when it is one, else its compact text."""
    selections = []
    while isinstance(block, bb.Selection):
        selections.append(block.index)
        block = block.source
    if not isinstance(block, bb.Reference):
        return (
            str(block)
            if not selections
            else f"({block})" + "".join(f"[{i}]" for i in reversed(selections))
        )
    return block.name + "".join(f"[{i}]" for i in reversed(selections))


def _no_arithmetic(symbol: str) -> Callable[..., Any]:
    def operator(self: Value, *other: Any) -> Any:
        raise located_error(f"the operator {symbol} on a traced federated value", _NO_NUMPY)

    return operator


_OPERATORS = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "truediv": "/",
    "floordiv": "//",
    "mod": "%",
    "pow": "**",
    "matmul": "@",
    "and": "&",
    "or": "|",
    "xor": "^",
    "lshift": "<<",
    "rshift": ">>",
}
for _name, _symbol in _OPERATORS.items():
    setattr(Value, f"__{_name}__", _no_arithmetic(_symbol))
    setattr(Value, f"__r{_name}__", _no_arithmetic(_symbol))
for _name, _symbol in {
    "neg": "-",
    "pos": "+",
    "abs": "abs()",
    "invert": "~",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
}.items():
    setattr(Value, f"__{_name}__", _no_arithmetic(_symbol))


def block_of(value: Value) -> bb.BuildingBlock:
    """The building block of `value`, checking that it may be used where tracing is now."""
    scope = _current_scope.get()
    own = value._scope
    if scope is None or not own.is_open or not own.encloses(scope):
        raise FederatedTypeError(
            f"the traced value {value._block} ({value.type_signature}) is used outside the "
            "function it was traced in; return it from that function instead"
        )
    if own is not scope and contains_federated(value.type_signature):
        raise FederatedTypeError(
            f"a function traced inline uses the federated value {value._block} "
            f"({value.type_signature}) of an enclosing computation; pass it in as an argument "
            "(zip it with the mapped value) instead"
        )
    return value._block


def _bind(block: bb.BuildingBlock, stem: str, skeleton: Any = None) -> Value:
    scope = _current_scope.get()
    assert scope is not None
    return Value(scope.bind(block, stem), scope, skeleton)


def _wrap(block: bb.BuildingBlock, skeleton: Any = None) -> Value:
    scope = _current_scope.get()
    assert scope is not None
    return Value(block, scope, skeleton)


def _struct_of(value: Value, what: str) -> StructType:
    t = value.type_signature
    if isinstance(t, StructType):
        return t
    if isinstance(t, FederatedType) and isinstance(t.member, StructType):
        return t.member
    raise located_error(what, f"a value of type {t} is not a struct", FieldError)


def _index_of(struct: StructType, key: int | str) -> int:
    if isinstance(key, str):
        try:
            return struct.index_of(key)
        except FederatedTypeError:
            raise FieldError(f"{struct} has no field named {key!r}") from None
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        index = int(key)
        if -len(struct) <= index < len(struct):
            return index % len(struct)
        raise FederatedTypeError(f"index {index} is out of range for {struct}")
    raise FederatedTypeError(f"select struct elements by int or str, found {key!r}")


def select(value: Value, key: int | str | slice) -> Value:
    """`value[key]`: an element (or a slice of elements) of a struct, or of a placed struct."""
    with located(f"selecting {key!r}"):
        block = block_of(value)
        t = value.type_signature
        struct = _struct_of(value, f"selecting {key!r}")
        if isinstance(key, slice):
            indices = range(len(struct))[key]
            names = struct.names()
            if isinstance(t, FederatedType):
                return _map_structure(
                    value,
                    lambda r: bb.Struct([(names[i], bb.Selection(r, i)) for i in indices]),
                    "slice",
                )
            return _wrap(bb.Struct([(names[i], bb.Selection(block, i)) for i in indices]))
        index = _index_of(struct, key)
        skeleton = _skeleton_child(value._skeleton, index)
        if isinstance(t, FederatedType):
            name = struct.names()[index] or f"element_{index}"
            return _map_structure(value, lambda r: bb.Selection(r, index), name, skeleton)
        return _wrap(bb.Selection(block, index), skeleton)


def _map_structure(
    value: Value,
    body: Callable[[bb.Reference], bb.BuildingBlock],
    stem: str,
    skeleton: Any = None,
) -> Value:
    """Applies a selection-only function to each member of a placed struct value."""
    t = value.type_signature
    assert isinstance(t, FederatedType)
    scope = _require_scope("selecting")
    parameter = bb.Reference(scope.names.fresh("member"), t.member)
    function = bb.Lambda(parameter.name, t.member, body(parameter))
    uri = "federated_apply" if t.placement is SERVER else "federated_map"
    call = bb.call_intrinsic(uri, bb.Struct([function, block_of(value)]))
    return _bind(call, stem, skeleton)


# ---------------------------------------------------------------------------
# Python values to types and building blocks.

# Which kinds of data (NumPy dtype kinds) may become which declared kinds, as for arguments.
_CONVERTIBLE_KINDS = {"b": "biuf", "i": "iuf", "u": "iuf", "f": "f"}


def _default_scalar_dtype(value: Any) -> np.dtype:
    """TFF's defaults for Python scalars: bool, int32 (int64 if it does not fit), float32."""
    if isinstance(value, (bool, np.bool_)):
        return np.dtype(np.bool_)
    if isinstance(value, int):
        return np.dtype(np.int32 if -(2**31) <= value < 2**31 else np.int64)
    return np.dtype(np.float32)


def _tensor_type_of(value: Any, where: str) -> TensorType:
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
        return TensorType(_default_scalar_dtype(value))
    array = np.asarray(value)
    try:
        return TensorType(array.dtype, array.shape)
    except FederatedTypeError as error:
        raise FederatedTypeError(f"{where}: {error}") from None


def infer_type(value: Any, where: str = "value") -> Type:
    """The type of a Python value: arrays and scalars are tensors, containers structs.

    Python floats are float32 and ints int32 (as in TFF); tuples and lists are
    unnamed structs; dicts, namedtuples and dataclasses named ones; traced
    values and objects with a `__fedcc_type__()` method (eager client values
    and sequences) have their own type.
    """
    if isinstance(value, Value):
        return value.type_signature
    if isinstance(value, numpy_tracer.Tracer):
        return value.tensor_type
    own_type = getattr(value, "__fedcc_type__", None)
    if own_type is not None and not isinstance(value, type):
        return own_type()
    if isinstance(value, PlacementLiteral):
        return PlacementType()
    if isinstance(value, (np.ndarray, np.generic, bool, int, float)):
        return _tensor_type_of(value, where)
    items = container_items(value)
    if items is not None:
        return StructType(
            [
                (name, infer_type(v, f"{where}[{name if name is not None else i}]"))
                for i, (name, v) in enumerate(items)
            ]
        )
    raise FederatedTypeError(
        f"{where}: cannot tell the type of {_describe(value)}; give the computation's types "
        "explicitly (e.g. @fc.federated_computation('float32[3]'))"
    )


def _literal(value: Any, expected: Type | None, where: str) -> bb.Literal:
    if expected is not None and not isinstance(expected, TensorType):
        raise FederatedTypeError(f"{where}: expected {expected}, found {_describe(value)}")
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
        data = np.asarray(value, dtype=None if expected else _default_scalar_dtype(value))
    else:
        data = np.asarray(value)
    if data.dtype.kind not in _CONVERTIBLE_KINDS:
        raise FederatedTypeError(f"{where}: {_describe(value)} is not numeric data")
    if expected is None:
        return bb.Literal(data)
    if data.size and expected.dtype.kind not in _CONVERTIBLE_KINDS[data.dtype.kind]:
        raise FederatedTypeError(
            f"{where}: expected {expected}, found {data.dtype} data, which does not convert to "
            f"{expected.dtype} without loss"
        )
    if not is_assignable_from(expected, TensorType(expected.dtype, data.shape)):
        raise FederatedTypeError(f"{where}: expected {expected}, found shape {data.shape}")
    if data.dtype.kind in "iu" and expected.dtype.kind in "iu" and data.size:
        limits = np.iinfo(expected.dtype)
        if data.min() < limits.min or data.max() > limits.max:
            raise FederatedTypeError(
                f"{where}: the values of {_describe(value)} do not fit {expected.dtype}"
            )
    return bb.Literal(data.astype(expected.dtype))


def _expected_elements(expected: Type | None, count: int) -> list[tuple[str | None, Type | None]]:
    if isinstance(expected, StructType) and len(expected) == count:
        return list(expected.elements)
    return [(None, None)] * count


def to_block(value: Any, expected: Type | None = None, where: str = "value") -> bb.BuildingBlock:
    """The building block of a Python value in the function being traced.

    `Value`s give their blocks; function-like objects (computations) their
    function blocks; Python and NumPy numbers and arrays become literals (of
    `expected`'s dtype when given, else Python floats float32 and ints int32);
    containers become structs (a tuple takes the field names of an expected
    named struct).
    """
    if isinstance(value, Value):
        return block_of(value)
    if isinstance(value, bb.BuildingBlock):
        return value
    if isinstance(value, FunctionLike):
        parameter = expected.parameter if isinstance(expected, FunctionType) else None
        return value.function_block(parameter)
    if isinstance(value, PlacementLiteral):
        return bb.Placement(value)
    if isinstance(value, (np.ndarray, np.generic, bool, int, float)):
        return _literal(value, expected, where)
    items = container_items(value)
    if items is not None:
        elements = []
        for i, ((name, item), (expected_name, expected_type)) in enumerate(
            zip(items, _expected_elements(expected, len(items)))
        ):
            label = name if name is not None else str(i)
            block = to_block(item, expected_type, f"{where}[{label}]")
            elements.append((name if name is not None else expected_name, block))
        return bb.Struct(elements)
    if callable(value):
        raise FederatedTypeError(
            f"{where}: a Python function can stand only where an intrinsic expects a function "
            "(e.g. fc.federated_map's first argument); decorate it with "
            "@fc.federated_computation or @fc.numpy_computation"
        )
    raise FederatedTypeError(f"{where}: cannot use {_describe(value)} in a federated computation")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype} with shape {value.shape}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} elements"
    if isinstance(value, (bool, int, float, str, np.generic)):
        return f"{type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------
# Functions.


class FunctionLike(abc.ABC):
    """Anything that stands for a function in a trace: computations, polymorphic or not."""

    name: str

    @abc.abstractmethod
    def function_block(self, parameter_type: Type | None) -> bb.BuildingBlock:
        """A closed function block taking `parameter_type` (a hint for polymorphic ones)."""

    def result_skeleton_for(self, parameter_type: Type | None) -> Any:
        """The containers of the function's result, as its Python code built them, or None."""
        return None


@dataclass(frozen=True)
class ParameterLayout:
    """How a Python function's parameters make up one IR parameter.

    `names` are the Python parameters the IR parameter covers; `packed` says
    they are the elements of one struct parameter (several parameters, as in TFF).
    """

    parameter_type: Type | None
    names: tuple[str, ...]
    packed: bool

    @property
    def count(self) -> int:
        return len(self.names)

    def part_types(self) -> list[Type]:
        """The type of each Python parameter, in order."""
        if self.parameter_type is None:
            return []
        if self.packed:
            assert isinstance(self.parameter_type, StructType)
            return list(self.parameter_type)
        return [self.parameter_type]


def positional_parameters(fn: Callable[..., Any]) -> tuple[list[str], int]:
    """The names of `fn`'s positional parameters and how many of them have no default."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        raise FederatedTypeError(f"cannot read the parameters of {fn!r}") from None
    names, required = [], 0
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            names.append(parameter.name)
            required += parameter.default is parameter.empty
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            raise FederatedTypeError(
                f"{_function_name(fn)} has the keyword-only parameter {parameter.name!r} without "
                "a default; computations take positional parameters"
            )
    return names, required


def layout_parameters(fn: Callable[..., Any], types: Sequence[Any]) -> ParameterLayout:
    """The parameter layout of `fn` given the declared types, one a parameter or one in all.

    One type for a function of several parameters must be a struct of as many
    elements, which the parameters unpack.
    """
    names, required = positional_parameters(fn)
    label = _function_name(fn)
    if not types:
        if required:
            raise FederatedTypeError(f"{label} takes {required} parameter(s) but no type is given")
        return ParameterLayout(None, (), False)
    parts = [to_type(t) for t in types]
    if len(parts) == 1 and required > 1:
        (only,) = parts
        if isinstance(only, StructType) and len(only) == required:
            return ParameterLayout(only, tuple(names[:required]), True)
        raise FederatedTypeError(
            f"{label} takes {required} parameters, but the one type given, {only}, is not a "
            f"struct of {required} elements"
        )
    if len(parts) > len(names) or len(parts) < required:
        raise FederatedTypeError(
            f"{label} takes {_count_text(required, len(names))} parameter(s), "
            f"but {len(parts)} types are given: {', '.join(str(p) for p in parts)}"
        )
    if len(parts) > 1:
        return ParameterLayout(StructType(parts), tuple(names[: len(parts)]), True)
    return ParameterLayout(parts[0], (names[0],), False)


def layout_for_parameter(fn: Callable[..., Any], parameter_type: Type | None) -> ParameterLayout:
    """The layout of a Python function called with one value of `parameter_type`.

    A function of n > 1 parameters unpacks a struct of n elements.
    """
    if parameter_type is None:
        return layout_parameters(fn, ())
    names, required = positional_parameters(fn)
    if required > 1 and isinstance(parameter_type, StructType) and len(parameter_type) == required:
        return ParameterLayout(parameter_type, tuple(names[:required]), True)
    return layout_parameters(fn, (parameter_type,))


def _count_text(low: int, high: int) -> str:
    return str(low) if low == high else f"{low} to {high}"


def _function_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


@dataclass(frozen=True)
class TracedLambda:
    """A traced Python function: its `Lambda` and the containers its result was built from."""

    block: bb.Lambda
    result_skeleton: Any


def trace_function(
    fn: Callable[..., Any], layout: ParameterLayout, *, inline: bool = False
) -> TracedLambda:
    """Runs `fn` on `Value`s of its parameters and builds the `Lambda` it computes.

    With `inline`, `fn` is traced in a scope nested in the current one (a Python
    callable given to an intrinsic), so it may use the enclosing function's
    unplaced values; otherwise it is traced on its own, closed.
    """
    parent = _current_scope.get() if inline else None
    if inline and parent is None:
        raise FederatedTypeError("tracing a function inline needs a trace in progress")
    names = parent.names if parent is not None else _Names()
    scope = Scope(parent, names)
    parameter_name = None
    arguments: list[Value] = []
    if layout.parameter_type is not None:
        preferred = layout.names[0] if not layout.packed else "arg"
        parameter_name = names.preferred(preferred)
        reference = bb.Reference(parameter_name, layout.parameter_type)
        if layout.packed:
            arguments = [Value(bb.Selection(reference, i), scope) for i in range(layout.count)]
        else:
            arguments = [Value(reference, scope)]
    token = _current_scope.set(scope)
    try:
        result = fn(*arguments)
        if result is None:
            raise located_error(
                f"tracing {_function_name(fn)}",
                "the function returned None; a computation must return a value",
            )
        with located(f"the result of {_function_name(fn)}"):
            result_block = to_block(result, where="the result")
        skeleton = skeleton_of(result)
    finally:
        _current_scope.reset(token)
        scope.is_open = False
    body = scope.finish(result_block)
    return TracedLambda(bb.Lambda(parameter_name, layout.parameter_type, body), skeleton)


def function_block(fn: Any, parameter_type: Type | None, what: str) -> tuple[bb.BuildingBlock, Any]:
    """A function building block for `fn` taking `parameter_type`, and its result skeleton.

    `fn` is a computation (`FunctionLike`), a traced function value, or a
    Python callable, which is traced inline with `parameter_type`.
    """
    if isinstance(fn, FunctionLike):
        return fn.function_block(parameter_type), fn.result_skeleton_for(parameter_type)
    if isinstance(fn, Value):
        if not isinstance(fn.type_signature, FunctionType):
            raise FederatedTypeError(f"{what}: expected a function, found {fn.type_signature}")
        return block_of(fn), None
    if isinstance(fn, bb.BuildingBlock) and isinstance(fn.type_signature, FunctionType):
        return fn, None
    if callable(fn) and not isinstance(fn, type):
        traced = trace_function(fn, layout_for_parameter(fn, parameter_type), inline=True)
        return traced.block, traced.result_skeleton
    raise FederatedTypeError(
        f"{what}: expected a computation or a Python function, found {_describe(fn)}"
    )


# ---------------------------------------------------------------------------
# Calls.


def _argument_hint(parameter: Type, argument: Type) -> str:
    if contains_federated(argument) and not contains_federated(parameter):
        return (
            "; the function takes unplaced values: apply it to each client's value with "
            "fc.federated_map(fn, value)"
        )
    return ""


def pack_argument(
    arguments: Sequence[Any], layout: ParameterLayout, what: str
) -> bb.BuildingBlock | None:
    """The argument block for a function of `layout` called with Python/traced `arguments`."""
    if len(arguments) != layout.count:
        names = ", ".join(layout.names) or "none"
        raise FederatedTypeError(
            f"{what} takes {layout.count} argument(s) ({names}), found {len(arguments)}"
        )
    if layout.parameter_type is None:
        return None
    blocks = []
    for name, part_type, argument in zip(layout.names, layout.part_types(), arguments):
        block = to_block(argument, part_type, f"parameter {name!r}")
        if not is_assignable_from(part_type, block.type_signature):
            raise FederatedTypeError(
                f"parameter {name!r} expects {part_type}, found {block.type_signature}"
                + _argument_hint(part_type, block.type_signature)
            )
        blocks.append(block)
    if not layout.packed:
        return blocks[0]
    assert isinstance(layout.parameter_type, StructType)
    return bb.Struct(list(zip(layout.parameter_type.names(), blocks)))


def call_function(
    function: bb.BuildingBlock,
    arguments: Sequence[Any],
    layout: ParameterLayout,
    name: str,
    result_skeleton: Any = None,
) -> Value:
    """Inserts a call of `function` (a Lambda or LocalGraph) on `arguments` into the trace."""
    with located(f"calling {name}"):
        _require_scope(f"calling {name}")
        argument = pack_argument(arguments, layout, name)
        call = bb.Call(function, argument)
        return _bind(call, name.rsplit(".", 1)[-1], result_skeleton)


def call_block(value: Value, arguments: Sequence[Any], what: str) -> Value:
    """Calls a traced value of function type on one argument (or none)."""
    with located(what):
        function = block_of(value)
        fn_type = function.type_signature
        if not isinstance(fn_type, FunctionType):
            raise FederatedTypeError(f"a value of type {fn_type} is not a function")
        if len(arguments) > 1:
            raise FederatedTypeError(f"expected at most one argument, found {len(arguments)}")
        argument = to_block(arguments[0], fn_type.parameter) if arguments else None
        return _bind(bb.Call(function, argument), "call")


# ---------------------------------------------------------------------------
# Intrinsic builders. Each checks its arguments at trace time: the intrinsic
# table's typing rule raises a FederatedTypeError naming the intrinsic, the
# expected and the found types, and `located` adds the user's line.


def _call_intrinsic(uri: str, argument: bb.BuildingBlock | None, stem: str, skeleton: Any) -> Value:
    return _bind(bb.call_intrinsic(uri, argument), stem, skeleton)


def _placed_block(value: Any, what: str) -> tuple[bb.BuildingBlock, Any]:
    """A placed value's block; a Python container of placed values is zipped first (TFF)."""
    if isinstance(value, Value):
        return block_of(value), value._skeleton
    items = container_items(value)
    if items is not None and items and any(isinstance(v, Value) for _, v in items):
        zipped = build_federated_zip(value)
        return block_of(zipped), zipped._skeleton
    raise FederatedTypeError(
        f"{what} expects a placed value (or a list of placed values to zip), "
        f"found {_describe(value)}"
    )


def _federated_type(block: bb.BuildingBlock, what: str, expected: str) -> FederatedType:
    t = block.type_signature
    if not isinstance(t, FederatedType):
        raise FederatedTypeError(f"{what} expects {expected}, found the unplaced type {t}")
    return t


def build_federated_map(fn: Any, value: Any) -> Value:
    """`federated_map(fn, value)` at CLIENTS, `federated_apply` for a value at SERVER.

    `value` may be a list, tuple or dict of placed values: they are zipped first.
    """
    what = "fc.federated_map"
    with located(what):
        _require_scope(what)
        block, _ = _placed_block(value, what)
        t = _federated_type(block, what, "a value placed at CLIENTS or SERVER")
        uri = "federated_apply" if t.placement is SERVER else "federated_map"
        fn_block, skeleton = function_block(fn, t.member, what)
        return _call_intrinsic(uri, bb.Struct([fn_block, block]), "map", skeleton)


def build_federated_apply(fn: Any, value: Any) -> Value:
    """`federated_apply(fn, value)`: `fn` on the server's value."""
    what = "fc.federated_apply"
    with located(what):
        _require_scope(what)
        block, _ = _placed_block(value, what)
        t = _federated_type(block, what, "a value placed at SERVER")
        fn_block, skeleton = function_block(fn, t.member, what)
        return _call_intrinsic("federated_apply", bb.Struct([fn_block, block]), "apply", skeleton)


def _unary(uri: str, stem: str) -> Callable[[Any], Value]:
    def build(value: Any) -> Value:
        what = f"fc.{uri}"
        with located(what):
            _require_scope(what)
            block, skeleton = _placed_block(value, what)
            return _call_intrinsic(uri, block, stem, skeleton)

    build.__name__ = f"build_{uri}"
    build.__doc__ = f"`{uri}(value)`, type-checked at trace time."
    return build


build_federated_broadcast = _unary("federated_broadcast", "broadcast")
build_federated_sum = _unary("federated_sum", "sum")
build_federated_min = _unary("federated_min", "min")
build_federated_max = _unary("federated_max", "max")


def build_federated_mean(value: Any, weight: Any = None) -> Value:
    """`federated_mean(value)`, or `federated_weighted_mean(<value, weight>)` with a weight."""
    what = "fc.federated_mean"
    with located(what):
        _require_scope(what)
        block, skeleton = _placed_block(value, what)
        if weight is None:
            return _call_intrinsic("federated_mean", block, "mean", skeleton)
        weight_block = to_block(weight, where="the weight")
        return _call_intrinsic(
            "federated_weighted_mean", bb.Struct([block, weight_block]), "mean", skeleton
        )


def build_federated_zip(value: Any) -> Value:
    """`federated_zip(value)`: a struct (or Python container) of values placed alike, zipped.

    Containers nested in a Python container are zipped first, so
    `federated_zip({"a": a, "b": (b, c)})` has the member `<a=A,b=<B,C>>`.
    """
    what = "fc.federated_zip"
    with located(what):
        _require_scope(what)
        items = container_items(value)
        if items is not None:
            zipped = [
                build_federated_zip(v) if container_items(v) is not None else v for _, v in items
            ]
            value = rebuild_container(value, zipped)
        block = to_block(value, where="the zipped values")
        return _call_intrinsic("federated_zip", block, "zip", skeleton_of(value))


_VALUE_URIS = {CLIENTS: "federated_value_at_clients", SERVER: "federated_value_at_server"}
_EVAL_URIS = {CLIENTS: "federated_eval_at_clients", SERVER: "federated_eval_at_server"}


def build_federated_value(value: Any, placement: Any) -> Value:
    """`federated_value(value, placement)`: an unplaced value placed at CLIENTS or SERVER."""
    what = "fc.federated_value"
    with located(what):
        _require_scope(what)
        uri = _VALUE_URIS[to_placement(placement)]
        block = to_block(value, where="the value")
        return _call_intrinsic(uri, block, "value", skeleton_of(value))


def build_federated_eval(fn: Any, placement: Any) -> Value:
    """`federated_eval(fn, placement)`: a function of no argument run at CLIENTS or SERVER."""
    what = "fc.federated_eval"
    with located(what):
        _require_scope(what)
        uri = _EVAL_URIS[to_placement(placement)]
        fn_block, skeleton = function_block(fn, None, what)
        return _call_intrinsic(uri, fn_block, "eval", skeleton)


def _bound_block(bound: Any, member: Type, name: str) -> bb.BuildingBlock:
    # An integer bound takes the dtype of the (first) value leaf, so `max_input=255` fits.
    expected = None
    if not isinstance(bound, Value):
        leaves = [t for t in _leaves(member) if isinstance(t, TensorType)]
        if leaves and not isinstance(bound, (tuple, list, Mapping)):
            expected = TensorType(leaves[0].dtype)
    return to_block(bound, expected, name)


def _leaves(t: Type) -> list[Type]:
    if isinstance(t, StructType):
        return [leaf for element in t for leaf in _leaves(element)]
    return [t]


def _secure(uri: str, bound_name: str) -> Callable[[Any, Any], Value]:
    def build(value: Any, bound: Any) -> Value:
        what = f"fc.{uri}"
        with located(what):
            _require_scope(what)
            block, skeleton = _placed_block(value, what)
            member = (
                block.type_signature.member
                if isinstance(block.type_signature, FederatedType)
                else block.type_signature
            )
            bound_block = _bound_block(bound, member, bound_name)
            return _call_intrinsic(uri, bb.Struct([block, bound_block]), "secure_sum", skeleton)

    build.__name__ = f"build_{uri}"
    build.__doc__ = f"`{uri}(value, {bound_name})`, type-checked at trace time."
    return build


build_federated_secure_sum = _secure("federated_secure_sum", "max_input")
build_federated_secure_sum_bitwidth = _secure("federated_secure_sum_bitwidth", "bitwidth")


def _zero_block(zero: Any, accumulate: Any, what: str) -> bb.BuildingBlock:
    # A typed accumulate function says the accumulator's type, so `0.0` can be any float dtype.
    expected = None
    if isinstance(accumulate, FunctionLike):
        parameter = getattr(accumulate, "type_signature", None)
        parameter = parameter.parameter if isinstance(parameter, FunctionType) else None
        if isinstance(parameter, StructType) and len(parameter) == 2:
            expected = parameter[0]
    return to_block(zero, expected, f"{what}'s zero")


def build_federated_aggregate(
    value: Any, zero: Any, accumulate: Any, merge: Any, report: Any
) -> Value:
    """`federated_aggregate(value, zero, accumulate, merge, report)`."""
    what = "fc.federated_aggregate"
    with located(what):
        _require_scope(what)
        block, _ = _placed_block(value, what)
        t = _federated_type(block, what, "a value placed at CLIENTS")
        zero_block = _zero_block(zero, accumulate, what)
        accumulator = zero_block.type_signature
        accumulate_block, _ = function_block(
            accumulate, StructType([accumulator, t.member]), f"{what}'s accumulate"
        )
        merge_block, _ = function_block(
            merge, StructType([accumulator, accumulator]), f"{what}'s merge"
        )
        report_block, skeleton = function_block(report, accumulator, f"{what}'s report")
        argument = bb.Struct([block, zero_block, accumulate_block, merge_block, report_block])
        return _call_intrinsic("federated_aggregate", argument, "aggregate", skeleton)


def _sequence_block(sequence: Any, what: str) -> bb.BuildingBlock:
    block = to_block(sequence, where="the sequence")
    if not isinstance(block.type_signature, SequenceType):
        raise FederatedTypeError(f"{what} expects a sequence (T*), found {block.type_signature}")
    return block


def build_sequence_map(fn: Any, sequence: Any) -> Value:
    """`sequence_map(fn, sequence)`: `fn` on each element."""
    what = "fc.sequence_map"
    with located(what):
        _require_scope(what)
        block = _sequence_block(sequence, what)
        fn_block, skeleton = function_block(fn, block.type_signature.element, what)
        return _call_intrinsic("sequence_map", bb.Struct([fn_block, block]), "sequence", skeleton)


def build_sequence_reduce(sequence: Any, zero: Any, op: Any) -> Value:
    """`sequence_reduce(sequence, zero, op)`: folds the elements in order, starting from `zero`."""
    what = "fc.sequence_reduce"
    with located(what):
        _require_scope(what)
        block = _sequence_block(sequence, what)
        zero_block = _zero_block(zero, op, what)
        op_block, _ = function_block(
            op, StructType([zero_block.type_signature, block.type_signature.element]), what
        )
        argument = bb.Struct([block, zero_block, op_block])
        return _call_intrinsic("sequence_reduce", argument, "reduce", skeleton_of(zero))


def build_sequence_sum(sequence: Any) -> Value:
    """`sequence_sum(sequence)`: the sum of the elements."""
    what = "fc.sequence_sum"
    with located(what):
        _require_scope(what)
        block = _sequence_block(sequence, what)
        skeleton = sequence._skeleton if isinstance(sequence, Value) else None
        return _call_intrinsic("sequence_sum", block, "sum", skeleton)


# The user-facing intrinsic functions and their builders, by name.
BUILDERS: dict[str, Callable[..., Value]] = {
    "federated_broadcast": build_federated_broadcast,
    "federated_map": build_federated_map,
    "federated_apply": build_federated_apply,
    "federated_sum": build_federated_sum,
    "federated_mean": build_federated_mean,
    "federated_aggregate": build_federated_aggregate,
    "federated_zip": build_federated_zip,
    "federated_value": build_federated_value,
    "federated_eval": build_federated_eval,
    "federated_min": build_federated_min,
    "federated_max": build_federated_max,
    "federated_secure_sum": build_federated_secure_sum,
    "federated_secure_sum_bitwidth": build_federated_secure_sum_bitwidth,
    "sequence_map": build_sequence_map,
    "sequence_reduce": build_sequence_reduce,
    "sequence_sum": build_sequence_sum,
}
