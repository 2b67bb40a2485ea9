"""`fc.eager()`: computations run their Python bodies on concrete values, for debugging (DESIGN §4).

Inside `with fc.eager():` a computation's Python body runs directly, so
`print` and `pdb` work in it. Its values are concrete:

- a value placed at CLIENTS is a `ClientValues`, whose `values` list holds
  one value a client (an all-equal value holds its one value); on struct
  values it selects like a traced value does (`v.x`, `v[0]` at every client);
- a value placed at SERVER is the value itself;
- a sequence is a `SequenceValues` list of its elements;
- tensors are NumPy arrays (rank 0: NumPy scalars); named structs are
  `Struct` namedtuples, which also take `s["name"]`, so code selects from
  them as from traced values; unnamed structs are tuples. A NumPy body gets
  its arguments as its tracer does: arrays, dicts and tuples.

The answers are the traced program's, bit for bit:

- an intrinsic that takes no function (sums, means, extrema, secure sums,
  zips, broadcasts, placing values, `sequence_sum`) is evaluated by tracing
  the very same intrinsic call on the values' types and running it on the
  reference backend, so its arithmetic, its reduction order and its type
  errors are the traced program's;
- an intrinsic that takes functions calls them eagerly, in the order the
  interpreter does: clients in order, `federated_aggregate` along the
  canonical tree of `runtimes/reduction.py`, sequences in order;
- a `numpy_computation` body runs as plain NumPy on arrays of its declared
  types; a computation without a Python body (read from a file, or made by
  `fc.grad`) runs on the reference backend.

A computation called from Python at the top level returns what a backend run
returns (lists for client values); called from inside another eager body, it
returns eager values, so the placements are kept.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fedcc.compiler import federated_tracer as tracer
from fedcc.compiler.federated_tracer import FunctionLike, ParameterLayout
from fedcc.ir.building_blocks import LocalGraph
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    to_placement,
    walk_types,
)
from fedcc.runtimes import run as run_block
from fedcc.runtimes.reduction import tree_reduce
from fedcc.runtimes.values import Container, from_runtime, to_runtime

# The backend eager mode evaluates intrinsics on: the oracle.
EAGER_BACKEND = "reference"


@dataclasses.dataclass
class _EagerState:
    given_clients: int | None = None  # `fc.eager(num_clients=...)`
    num_clients: int | None = None  # of the outermost computation call running
    depth: int = 0  # computation calls running inside each other


_state: contextvars.ContextVar[_EagerState | None] = contextvars.ContextVar(
    "fedcc_eager", default=None
)


@contextlib.contextmanager
def eager(num_clients: int | None = None) -> Iterator[None]:
    """Within it, computations run their Python bodies on concrete values (see the module doc).

    `num_clients` says how many clients there are for computations that take
    no client values (as `num_clients=` does for a backend run); otherwise
    the client lists among a call's arguments say it.
    """
    if num_clients is not None and (
        isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0
    ):
        raise FederatedTypeError(f"num_clients must be a non-negative int, found {num_clients!r}")
    token = _state.set(_EagerState(num_clients, num_clients))
    try:
        yield
    finally:
        _state.reset(token)


def is_eager() -> bool:
    """Whether computations run eagerly here (inside `with fc.eager():`)."""
    return _state.get() is not None


def _current_state() -> _EagerState:
    state = _state.get()
    if state is None:
        raise FederatedTypeError("eager evaluation needs `with fc.eager():`")
    return state


# ---------------------------------------------------------------------------
# Eager values.


def _select_member(member: Any, key: int | str, where: str) -> Any:
    items = tracer.container_items(member)
    if items is None:
        raise tracer.FieldError(f"{where}: {type(member).__name__} value is not a struct")
    if isinstance(key, str):
        for name, value in items:
            if name == key:
                return value
        raise tracer.FieldError(f"{where}: the struct has no field named {key!r}")
    return items[key][1]


def _member_element_type(member_type: Type | None, key: int | str) -> Type | None:
    if not isinstance(member_type, StructType):
        return None
    index = member_type.index_of(key) if isinstance(key, str) else key
    return member_type[index]


class ClientValues:
    """Values placed at CLIENTS: `values` holds one value a client (or one for all, `all_equal`).

    It is used in code as a traced placed value is: on struct values, `v.name`,
    `v["name"]`, `v[0]`, `len(v)` and unpacking select elements at every
    client. Values that are not structs act as the list of the clients' values.
    """

    __slots__ = ("all_equal", "member_type", "values")

    def __init__(
        self, values: Iterable[Any] = (), member_type: Type | None = None, all_equal: bool = False
    ) -> None:
        self.values = list(values)
        self.member_type = member_type
        self.all_equal = all_equal

    def __fedcc_type__(self) -> FederatedType:
        member = self.member_type
        if member is None:
            member = _joined_type(
                [tracer.infer_type(v) for v in self.values], "the clients' values"
            )
        return FederatedType(member, CLIENTS, all_equal=self.all_equal)

    @property
    def type_signature(self) -> FederatedType:
        """The type of these values, as a traced value's."""
        return self.__fedcc_type__()

    def _holds_structs(self) -> bool:
        if self.member_type is not None:
            return isinstance(self.member_type, StructType)
        return bool(self.values) and tracer.container_items(self.values[0]) is not None

    def _select(self, key: int | str) -> ClientValues:
        where = f"selecting {key!r} from client values"
        return ClientValues(
            [_select_member(v, key, where) for v in self.values],
            _member_element_type(self.member_type, key),
            self.all_equal,
        )

    def __getattr__(self, name: str) -> ClientValues:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._select(name)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str) or self._holds_structs():
            if isinstance(key, slice):
                count = len(self.type_signature.member)
                return tuple(self._select(i) for i in range(count)[key])
            return self._select(key)
        return self.values[key]

    def __len__(self) -> int:
        if self._holds_structs():
            return len(self.type_signature.member)
        return len(self.values)

    def __iter__(self) -> Iterator[Any]:
        if self._holds_structs():
            return (self._select(i) for i in range(len(self)))
        return iter(self.values)

    def __repr__(self) -> str:
        if self.all_equal and len(self.values) == 1:
            return f"ClientValues(all_equal={self.values[0]!r})"
        return f"ClientValues({self.values!r})"


class SequenceValues(list):
    """A sequence's elements, in order, with the element type when known."""

    def __init__(self, values: Iterable[Any] = (), element_type: Type | None = None) -> None:
        super().__init__(values)
        self.element_type = element_type

    def __fedcc_type__(self) -> SequenceType:
        element = self.element_type
        if element is None:
            element = _joined_type([tracer.infer_type(v) for v in self], "the sequence's elements")
        return SequenceType(element)

    def __repr__(self) -> str:
        return f"SequenceValues({list.__repr__(self)})"


def _struct_getitem(self: Any, key: Any) -> Any:
    if isinstance(key, str):
        if key not in self._fields:
            raise KeyError(key)
        return getattr(self, key)
    return tuple.__getitem__(self, key)


@functools.cache
def _struct_class(names: tuple[str, ...]) -> type | None:
    """A namedtuple class for a named struct, also indexed by name; None if the names do not fit."""
    try:
        base = collections.namedtuple("Struct", names)
    except ValueError:  # names namedtuple refuses: keywords, leading underscores
        return None
    return type("Struct", (base,), {"__slots__": (), "__getitem__": _struct_getitem})


@functools.cache
def _eager_container(t: Type) -> Container | None:
    """How eager code sees structs of `t`: named ones as `Struct`s, unnamed ones as tuples."""
    while isinstance(t, (FederatedType, SequenceType)):
        t = t.member if isinstance(t, FederatedType) else t.element
    if not isinstance(t, StructType):
        return None
    names = t.names()
    cls: type | None = tuple
    if names and None not in names:
        cls = _struct_class(names) or dict
    return Container(cls, tuple(_eager_container(element) for element in t))


def _join(a: Type, b: Type) -> Type | None:
    """The most specific type both `a` and `b` are assignable to (dims that differ become `?`)."""
    if a == b:
        return a
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype != b.dtype or a.rank != b.rank:
            return None
        return TensorType(a.dtype, [x if x == y else None for x, y in zip(a.shape, b.shape)])
    if isinstance(a, StructType) and isinstance(b, StructType):
        if a.names() != b.names():
            return None
        elements = [_join(x, y) for x, y in zip(a, b)]
        if any(e is None for e in elements):
            return None
        return StructType(list(zip(a.names(), elements)))
    if isinstance(a, SequenceType) and isinstance(b, SequenceType):
        element = _join(a.element, b.element)
        return None if element is None else SequenceType(element)
    return None


def _joined_type(types: Sequence[Type], what: str) -> Type:
    if not types:
        raise FederatedTypeError(f"cannot tell the type of {what}: there are none")
    joined: Type | None = types[0]
    for other in types[1:]:
        joined = _join(joined, other)
        if joined is None:
            shown = ", ".join(sorted({str(t) for t in types}))
            raise FederatedTypeError(f"{what} do not have one type: found {shown}")
    return joined


def _contains_client_values(value: Any) -> bool:
    if isinstance(value, ClientValues):
        return True
    if isinstance(value, SequenceValues):
        return False
    items = tracer.container_items(value)
    return items is not None and any(_contains_client_values(v) for _, v in items)


def eager_type(value: Any, where: str = "value", placed: bool = False) -> Type:
    """The type of an eager value; with `placed`, a value not at CLIENTS is at SERVER.

    A container holding client values is a struct of placed values (as
    `fc.federated_zip` and `fc.federated_map` take them).
    """
    if placed and not isinstance(value, ClientValues) and _contains_client_values(value):
        items = tracer.container_items(value)
        return StructType(
            [(name, eager_type(v, f"{where}[{i}]", placed)) for i, (name, v) in enumerate(items)]
        )
    t = tracer.infer_type(value, where)
    if placed and not isinstance(t, FederatedType):
        return FederatedType(t, SERVER)
    return t


@functools.cache
def _holds_placed_or_sequence(t: Type) -> bool:
    return any(isinstance(x, (FederatedType, SequenceType)) for x in walk_types(t))


def _note_clients(count: int, where: str) -> None:
    state = _state.get()
    if state is None:
        return
    if state.num_clients is None:
        state.num_clients = count
    elif state.num_clients != count:
        raise FederatedTypeError(
            f"{where} has {count} clients, but the client values before it have "
            f"{state.num_clients}"
        )


def _num_clients(where: str) -> int:
    state = _state.get()
    if state is None or state.num_clients is None:
        raise FederatedTypeError(
            f"{where}: the number of clients is not known in eager mode; pass the computation "
            "an argument placed at CLIENTS (a list with one value a client), or use "
            "`fc.eager(num_clients=...)`"
        )
    return state.num_clients


def _struct_items(value: Any, t: StructType, where: str) -> list[Any]:
    names = t.names()
    items = tracer.container_items(value)
    if items is None or isinstance(value, SequenceValues):
        raise FederatedTypeError(f"{where}: expected {t}, found a {type(value).__name__}")
    if isinstance(value, (tuple, list)) and not tracer.is_namedtuple(value):
        if len(items) != len(t):
            raise FederatedTypeError(
                f"{where}: expected {t} ({len(t)} elements), found {len(items)} elements"
            )
        return [v for _, v in items]
    fields = dict(items)
    if None in names or set(fields) != set(names):
        raise FederatedTypeError(
            f"{where}: expected {t}, found a {type(value).__name__} with fields "
            f"{', '.join(str(n) for n in fields)}"
        )
    return [fields[n] for n in names]


def to_eager(value: Any, t: Type, where: str) -> Any:
    """The eager value of Python `value` for declared type `t`, converted and checked.

    Errors name `where` (and the client index or field) as a backend run's do.
    """
    if isinstance(t, FederatedType):
        return _federated_to_eager(value, t, where)
    if isinstance(t, SequenceType):
        elements = to_runtime(value, t, where)
        container = _eager_container(t.element)
        return SequenceValues(
            [from_runtime(e, t.element, container) for e in elements], t.element
        )
    if isinstance(t, StructType) and _holds_placed_or_sequence(t):
        items = _struct_items(value, t, where)
        parts = [
            to_eager(v, element, f"{where}.{name}" if name else f"{where}[{i}]")
            for i, (v, (name, element)) in enumerate(zip(items, t.elements))
        ]
        container = _eager_container(t)
        assert container is not None
        return container.build(t.names(), parts)
    return from_runtime(to_runtime(value, t, where), t, _eager_container(t))


def _federated_to_eager(value: Any, t: FederatedType, where: str) -> Any:
    if t.placement is SERVER:
        if isinstance(value, ClientValues):
            raise FederatedTypeError(f"{where}: expected {t}, found values placed at CLIENTS")
        return to_eager(value, t.member, where)
    if t.all_equal:
        if isinstance(value, ClientValues):
            if not value.all_equal:
                raise FederatedTypeError(
                    f"{where}: expected {t} (one value for all clients), found per-client values"
                )
            value = value.values[0]
        return ClientValues([to_eager(value, t.member, where)], t.member, True)
    if isinstance(value, ClientValues):
        values = value.values * _num_clients(where) if value.all_equal else value.values
    elif isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > 0):
        values = list(value)
    else:
        raise FederatedTypeError(
            f"{where}: expected {t}, a list with one value a client, found "
            f"a {type(value).__name__}"
        )
    _note_clients(len(values), where)
    return ClientValues(
        [to_eager(v, t.member, f"{where}, client {i}") for i, v in enumerate(values)],
        t.member,
    )


def _plain(value: Any, t: Type) -> Any:
    """An eager value as a backend run takes it: client values as lists."""
    if isinstance(t, FederatedType):
        if isinstance(value, ClientValues):
            if t.all_equal:
                return _plain(value.values[0], t.member)
            return value.values
        return value
    if isinstance(t, StructType) and _holds_placed_or_sequence(t):
        items = tracer.container_items(value)
        if items is not None and len(items) == len(t):
            return tuple(_plain(v, element) for (_, v), element in zip(items, t))
    return value


def from_eager(value: Any, t: Type, container: Container | None = None) -> Any:
    """The Python value a backend run would return for the eager `value` of type `t`."""
    runtime = to_runtime(_plain(value, t), t, "the result")
    return from_runtime(runtime, t, container, lambda client_list: client_list.values)


def numpy_arguments(values: Sequence[Any], types: Sequence[Type], names: Sequence[str]) -> list:
    """Arguments for a NumPy body, as its tracer gives them: arrays, dicts and tuples."""
    return [
        from_runtime(to_runtime(_plain(v, t), t, f"parameter {n!r}"), t)
        for v, t, n in zip(values, types, names)
    ]


# ---------------------------------------------------------------------------
# Computations.


def call_computation(computation: Any, parts: Sequence[Any]) -> Any:
    """Runs a `Computation` eagerly on its Python arguments, one a parameter.

    At the top level the result is what a backend run returns; inside another
    eager computation it is an eager value.
    """
    state = _current_state()
    outermost = state.depth == 0
    if outermost:
        state.num_clients = state.given_clients
    layout: ParameterLayout = computation.layout
    if len(parts) != layout.count:
        names = ", ".join(layout.names) or "none"
        raise FederatedTypeError(
            f"{computation.name} takes {layout.count} argument(s) ({names}), found {len(parts)}"
        )
    types = layout.part_types()
    arguments = [
        to_eager(value, part_type, f"{computation.name}: parameter {name!r}")
        for name, part_type, value in zip(layout.names, types, parts)
    ]
    result_type = computation.type_signature.result
    state.depth += 1
    try:
        if computation.python_function is None:
            result = run_block(
                computation.building_block,
                *[_plain(a, t) for a, t in zip(arguments, types)],
                backend=EAGER_BACKEND,
                **_clients_option(arguments),
            )
        elif isinstance(computation.building_block, LocalGraph):
            names = layout.names
            result = computation.python_function(*numpy_arguments(arguments, types, names))
        else:
            result = computation.python_function(*arguments)
        converted = to_eager(result, result_type, f"the result of {computation.name}")
    finally:
        state.depth -= 1
    if not outermost:
        return converted
    state.num_clients = state.given_clients
    return from_eager(converted, result_type, computation.result_container)


def _clients_option(arguments: Sequence[Any]) -> dict[str, int]:
    # A run counts the clients of its client lists; without any, eager mode tells it how many.
    if any(not v.all_equal for v in _client_values_in(arguments)):
        return {}
    state = _state.get()
    if state is not None and state.num_clients is not None:
        return {"num_clients": state.num_clients}
    return {}


def _client_values_in(values: Iterable[Any]) -> Iterator[ClientValues]:
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, ClientValues):
            yield value
        elif not isinstance(value, SequenceValues):
            items = tracer.container_items(value)
            if items is not None:
                stack.extend(v for _, v in items)


def _parts_of(argument: Any, layout: ParameterLayout, what: str) -> list[Any]:
    if layout.count == 0:
        return []
    if not layout.packed:
        return [argument]
    items = tracer.container_items(argument)
    if items is None or len(items) != layout.count:
        raise FederatedTypeError(
            f"{what}: a function of {layout.count} parameters takes a struct of "
            f"{layout.count} elements, found {type(argument).__name__}"
        )
    return [v for _, v in items]


_NO_ARGUMENT = object()


def _call_function(fn: Any, argument: Any, what: str) -> tuple[Any, Type | None]:
    """Calls a computation or a Python function eagerly; its result and result type if known."""
    if isinstance(fn, FunctionLike):
        if hasattr(fn, "concrete"):  # polymorphic: traced for the argument's type
            parameter = None if argument is _NO_ARGUMENT else eager_type(argument, what)
            fn = fn.concrete(parameter)
        parts = [] if argument is _NO_ARGUMENT else _parts_of(argument, fn.layout, what)
        state = _current_state()
        state.depth += 1  # results stay eager values
        try:
            return call_computation(fn, parts), fn.type_signature.result
        finally:
            state.depth -= 1
    if callable(fn) and not isinstance(fn, type):
        if argument is _NO_ARGUMENT:
            return fn(), None
        _, required = tracer.positional_parameters(fn)
        items = tracer.container_items(argument)
        if required > 1 and items is not None and len(items) == required:
            return fn(*[v for _, v in items]), None
        return fn(argument), None
    raise FederatedTypeError(f"{what}: expected a computation or a Python function, found {fn!r}")


# ---------------------------------------------------------------------------
# Intrinsics without functions: traced on the values' types and run on the reference backend.


def _evaluate(
    build: Callable[..., Any], values: Sequence[Any], *, placed: bool = True
) -> Any:
    types = [eager_type(v, f"argument {i}", placed) for i, v in enumerate(values)]
    layout = ParameterLayout(
        StructType(types) if len(types) > 1 else types[0],
        tuple(f"arg{i}" for i in range(len(types))),
        len(types) > 1,
    )

    def build_on_parameters(*parameters: Any) -> Any:
        # The builder sees the Python containers the eager code passed, as traced code's do.
        return build(*[_as_written(p, v) for p, v in zip(parameters, values)])

    traced = tracer.trace_function(build_on_parameters, layout)
    result = run_block(
        traced.block,
        *[_plain(v, t) for v, t in zip(values, types)],
        backend=EAGER_BACKEND,
        **_clients_option(values),
    )
    return to_eager(result, traced.block.type_signature.result, "the result")


def _as_written(parameter: Any, value: Any) -> Any:
    """A traced parameter in the Python containers of the eager `value` it stands for."""
    if isinstance(value, ClientValues) or not _contains_client_values(value):
        return parameter
    items = tracer.container_items(value)
    return tracer.rebuild_container(
        value, [_as_written(parameter[i], v) for i, (_, v) in enumerate(items)]
    )


def federated_broadcast(value: Any) -> Any:
    """Eager `fc.federated_broadcast`."""
    return _evaluate(tracer.build_federated_broadcast, [value])


def federated_sum(value: Any) -> Any:
    """Eager `fc.federated_sum`."""
    return _evaluate(tracer.build_federated_sum, [value])


def federated_mean(value: Any, weight: Any = None) -> Any:
    """Eager `fc.federated_mean`."""
    if weight is None:
        return _evaluate(tracer.build_federated_mean, [value])
    return _evaluate(tracer.build_federated_mean, [value, weight])


def federated_min(value: Any) -> Any:
    """Eager `fc.federated_min`."""
    return _evaluate(tracer.build_federated_min, [value])


def federated_max(value: Any) -> Any:
    """Eager `fc.federated_max`."""
    return _evaluate(tracer.build_federated_max, [value])


def federated_secure_sum(value: Any, max_input: Any) -> Any:
    """Eager `fc.federated_secure_sum`."""
    return _evaluate(lambda v: tracer.build_federated_secure_sum(v, max_input), [value])


def federated_secure_sum_bitwidth(value: Any, bitwidth: Any) -> Any:
    """Eager `fc.federated_secure_sum_bitwidth`."""
    return _evaluate(lambda v: tracer.build_federated_secure_sum_bitwidth(v, bitwidth), [value])


def federated_zip(value: Any) -> Any:
    """Eager `fc.federated_zip`."""
    return _evaluate(tracer.build_federated_zip, [value])


def federated_value(value: Any, placement: Any) -> Any:
    """Eager `fc.federated_value`."""
    to_placement(placement)
    return _evaluate(lambda v: tracer.build_federated_value(v, placement), [value], placed=False)


def sequence_sum(sequence: Any) -> Any:
    """Eager `fc.sequence_sum`."""
    return _evaluate(tracer.build_sequence_sum, [sequence], placed=False)


# ---------------------------------------------------------------------------
# Intrinsics with functions: the functions run eagerly, in the interpreter's order.


def _zipped(value: Any) -> Any:
    if not isinstance(value, ClientValues) and _contains_client_values(value):
        return federated_zip(value)
    return value


def federated_map(fn: Any, value: Any) -> Any:
    """Eager `fc.federated_map`: `fn` on each client's value (on the value at SERVER)."""
    value = _zipped(value)
    if not isinstance(value, ClientValues):
        return federated_apply(fn, value)
    results, result_type = [], None
    for index, member in enumerate(value.values):
        result, result_type = _call_function(fn, member, f"fc.federated_map, client {index}")
        results.append(result)
    return ClientValues(results, result_type, value.all_equal)


def federated_apply(fn: Any, value: Any) -> Any:
    """Eager `fc.federated_apply`: `fn` on the value at SERVER."""
    if isinstance(value, ClientValues):
        raise tracer.located_error(
            "fc.federated_apply", "expected a value placed at SERVER, found values at CLIENTS"
        )
    result, _ = _call_function(fn, value, "fc.federated_apply")
    return result


def federated_eval(fn: Any, placement: Any) -> Any:
    """Eager `fc.federated_eval`: `fn()` at the server, or at each client."""
    if to_placement(placement) is SERVER:
        return _call_function(fn, _NO_ARGUMENT, "fc.federated_eval")[0]
    results, result_type = [], None
    for index in range(_num_clients("fc.federated_eval")):
        result, result_type = _call_function(fn, _NO_ARGUMENT, f"fc.federated_eval, client {index}")
        results.append(result)
    return ClientValues(results, result_type)


def _typed_zero(zero: Any, function: Any, where: str) -> Any:
    # The zero gets the type the tracer gives it: the accumulator type of a typed
    # function, else the type of the constant (a Python float is float32).
    fn_type = getattr(function, "type_signature", None)
    parameter = getattr(fn_type, "parameter", None)
    if isinstance(parameter, StructType) and len(parameter) == 2:
        return to_eager(zero, parameter[0], where)
    return to_eager(zero, eager_type(zero, where), where)


def federated_aggregate(value: Any, zero: Any, accumulate: Any, merge: Any, report: Any) -> Any:
    """Eager `fc.federated_aggregate`: accumulate each client's value into a fresh zero,
    merge along the canonical reduction tree, report."""
    what = "fc.federated_aggregate"
    if not isinstance(value, ClientValues):
        raise tracer.located_error(what, "expected a value placed at CLIENTS")
    members = value.values * _num_clients(what) if value.all_equal else value.values
    zero = _typed_zero(zero, accumulate, f"{what}'s zero")
    leaves = [
        _call_function(accumulate, (zero, member), f"{what}'s accumulate, client {i}")[0]
        for i, member in enumerate(members)
    ]
    root = (
        tree_reduce(leaves, lambda a, b: _call_function(merge, (a, b), f"{what}'s merge")[0])
        if leaves
        else zero
    )
    return _call_function(report, root, f"{what}'s report")[0]


def sequence_map(fn: Any, sequence: Any) -> Any:
    """Eager `fc.sequence_map`: `fn` on each element, in order."""
    results, result_type = [], None
    for index, element in enumerate(sequence):
        result, result_type = _call_function(fn, element, f"fc.sequence_map, element {index}")
        results.append(result)
    return SequenceValues(results, result_type)


def sequence_reduce(sequence: Any, zero: Any, op: Any) -> Any:
    """Eager `fc.sequence_reduce`: folds the elements in order, starting from `zero`."""
    accumulator = _typed_zero(zero, op, "fc.sequence_reduce's zero")
    for index, element in enumerate(sequence):
        accumulator, _ = _call_function(
            op, (accumulator, element), f"fc.sequence_reduce, element {index}"
        )
    return accumulator


# The eager implementation of each user-facing intrinsic, by name.
IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "federated_broadcast": federated_broadcast,
    "federated_map": federated_map,
    "federated_apply": federated_apply,
    "federated_sum": federated_sum,
    "federated_mean": federated_mean,
    "federated_aggregate": federated_aggregate,
    "federated_zip": federated_zip,
    "federated_value": federated_value,
    "federated_eval": federated_eval,
    "federated_min": federated_min,
    "federated_max": federated_max,
    "federated_secure_sum": federated_secure_sum,
    "federated_secure_sum_bitwidth": federated_secure_sum_bitwidth,
    "sequence_map": sequence_map,
    "sequence_reduce": sequence_reduce,
    "sequence_sum": sequence_sum,
}
