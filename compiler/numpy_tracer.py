"""The NumPy tracer: runs a Python function on symbolic arrays and records a local op graph.

A `Tracer` stands for an array whose value is not known at trace time: it holds
its type and its value number in the graph being built. NumPy hands every ufunc
call on a tracer to `Tracer.__array_ufunc__` and every overridable function to
`Tracer.__array_function__`; Python operators, methods and indexing are defined
on the class. Each of these lowers to primitives of `fedcc.ir.primitives`
through one hook, the trace's `GraphBuilder.op`, which infers each result type
with the primitive's shape rule (like `bind` in JAX's autodidax).

Lowering follows NumPy 2 exactly, so a traced function computes the same bits
as the function run on arrays:

- Dtypes come from NumPy itself: `ufunc.resolve_dtypes` picks the loop NumPy
  would run, with Python scalars weakly typed (NEP 50: a float32 array times
  2.0 stays float32, an int32 array plus 1 stays int32), and the inputs are
  cast to the loop's dtypes before the primitive (which takes one dtype).
- Concrete values (NumPy arrays and scalars, lists) that meet a tracer become
  constants; `x ** 2` becomes `square`, and on floats `x ** -1` and
  `x ** 0.5` become `reciprocal` and `sqrt`, as NumPy 2.4's `ndarray.__pow__`
  does.
- Reductions give NumPy's result dtype (`np.sum` of int32 is int64, `np.mean`
  of ints is float64) by casting first, which gives the same value.

Known differences (docs/primitives.md lists them all): `astype` from float to
int saturates (see the `cast` primitive) where NumPy's result depends on the
CPU; full reductions give 0-d arrays, not NumPy scalars; in-place operators
(`x += y`) rebind the name instead of mutating an array other names share.
The tracer needs NumPy 2 (NEP 50 promotion).

Errors a user can make (an unsupported NumPy function, `bool()` of a tracer,
shapes or dtypes that do not fit) are `FederatedTypeError`s at trace time that
start with the user's `file:line`. docs/primitives.md lists the supported
NumPy surface.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import functools
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcc.ir import primitives
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.graph_builder import GraphBuilder
from fedcc.ir.local_graph import Graph, struct_of_leaves
from fedcc.ir.primitives import SLICE_TO_BEGINNING, SLICE_TO_END, array_text
from fedcc.ir.types import (
    DTYPES,
    MAX_TYPE_DEPTH,
    StructType,
    TensorType,
    Type,
    is_assignable_from,
    is_valid_field_name,
    to_type,
)

# ---------------------------------------------------------------------------
# Where the user is: errors name the innermost frame outside fedcc and NumPy.


@functools.cache
def _own_directories() -> tuple[str, ...]:
    """The folders of fedcc's packages and of NumPy: frames there are not the user's code."""
    folders = []
    for name in ("fedcc", "fedcc.compiler", "fedcc.ir", "fedcc.runtimes", "fedcc.proto", "numpy"):
        spec = importlib.util.find_spec(name)  # finds the folder without importing it
        for folder in (spec.submodule_search_locations or []) if spec else []:
            folders.append(os.path.join(os.path.realpath(folder), ""))
    return tuple(folders)


def user_source_line() -> str:
    """`file:line` of the innermost calling frame outside fedcc's and NumPy's own files."""
    own = _own_directories()
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.realpath(filename).startswith(own):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown location>"


class _LocatedError(FederatedTypeError):
    """A trace-time error whose message already starts with the user's `file:line`."""


def _at_user_line(function: Callable) -> Callable:
    """Marks an entry point from user code: its FederatedTypeErrors get the user's file:line."""

    @functools.wraps(function)
    def located(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except _LocatedError:
            raise
        except FederatedTypeError as error:
            raise _LocatedError(f"{user_source_line()}: {error}") from None

    return located


def _function_location(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", repr(fn))
    return f"{name} at {code.co_filename}:{code.co_firstlineno}" if code else name


# ---------------------------------------------------------------------------
# The trace: the graph being built. One is active while a function is traced.


class _Trace:
    __slots__ = ("builder",)

    def __init__(self, builder: GraphBuilder) -> None:
        self.builder = builder

    def emit(self, primitive: str, *inputs: int, **attributes: Any) -> Tracer:
        try:
            return Tracer(self, self.builder.op(primitive, *inputs, **attributes))
        except FederatedTypeError as error:
            # The builder names the op's value number; the user wrote no such thing.
            raise FederatedTypeError(_PRIMITIVE_CONTEXT.sub("", str(error))) from None

    def constant(self, array: np.ndarray) -> Tracer:
        return Tracer(self, self.builder.constant(array))


_PRIMITIVE_CONTEXT = re.compile(r"^primitive '[a-z_]+' at %\d+: ")

_ACTIVE_TRACE: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar(
    "fedcc_numpy_trace", default=None
)


def _current_trace(operands: Sequence[Any]) -> _Trace:
    """The active trace, checking that every tracer among `operands` belongs to it."""
    trace = _ACTIVE_TRACE.get()
    for operand in operands:
        if isinstance(operand, Tracer) and operand._trace is not trace:
            raise FederatedTypeError(
                "a traced array was used outside the tracing that made it (kept in a global "
                "or a closure, or passed into a nested trace); pass it as an argument instead"
            )
    if trace is None:
        raise FederatedTypeError("no NumPy tracing is active")
    return trace


# ---------------------------------------------------------------------------
# Operands: tracers, weakly typed Python scalars, and concrete arrays (constants).

_PYTHON_SCALARS = (bool, int, float)


def _is_weak(operand: Any) -> bool:
    """Whether NumPy 2 types `operand` weakly: a Python scalar (np.float64 subclasses float but
    is a NumPy scalar, strongly typed)."""
    return isinstance(operand, _PYTHON_SCALARS) and not isinstance(operand, np.generic)


def _concrete(operand: Any) -> np.ndarray:
    """A concrete operand (NumPy array or scalar, list) as an array of a supported dtype."""
    if operand is None:
        raise FederatedTypeError(
            "found None where an array was expected (an unknown dim in a traced "
            "array's .shape is None: its size is not known at trace time)"
        )
    array = np.asarray(operand)
    if array.dtype.name not in DTYPES:
        raise FederatedTypeError(
            f"a concrete value of dtype {array.dtype} meets a traced array; "
            f"supported dtypes: {', '.join(DTYPES)}"
        )
    return array


def _promotion_dtype(operand: Any) -> np.dtype | type:
    """What NumPy's dtype resolution sees: a dtype, or `int`/`float` for a weak Python scalar."""
    if isinstance(operand, Tracer):
        return operand.dtype
    if _is_weak(operand):
        return {bool: np.dtype(bool), int: int, float: float}[_python_type(operand)]
    return _concrete(operand).dtype


def _python_type(scalar: bool | int | float) -> type:
    return next(t for t in _PYTHON_SCALARS if isinstance(scalar, t))  # bool before int


def _result_dtype(*operands: Any) -> np.dtype:
    """NumPy's promotion of the operands, Python scalars weakly typed (np.result_type)."""
    return np.result_type(
        *(operand if _is_weak(operand) else _promotion_dtype(operand) for operand in operands)
    )


def _describe(operand: Any) -> str:
    if isinstance(operand, Tracer):
        return str(operand.tensor_type)
    if isinstance(operand, (np.ndarray, np.generic)):
        return f"a concrete {array_text(np.asarray(operand))}"
    if _is_weak(operand):
        return f"the Python {type(operand).__name__} {operand!r}"
    return repr(operand)


def _describe_all(operands: Sequence[Any]) -> str:
    return " and ".join(_describe(operand) for operand in operands)


def _value(trace: _Trace, operand: Any, dtype: np.dtype) -> int:
    """The value number of `operand` as an array of `dtype`: a tracer (cast) or a constant."""
    if isinstance(operand, Tracer):
        if operand.dtype == dtype:
            return operand.value
        return trace.emit("cast", operand.value, dtype=dtype.name).value
    if _is_weak(operand):
        try:
            array = np.asarray(operand, dtype=dtype)
        except OverflowError as error:
            raise FederatedTypeError(
                f"{_describe(operand)} does not fit in {dtype}: {error}"
            ) from None
    else:
        array = _concrete(operand).astype(dtype, copy=False)
    return trace.builder.constant(array)


def _tracer(trace: _Trace, operand: Any, dtype: np.dtype | None = None) -> Tracer:
    """`operand` as a tracer of `dtype` (default: its own, Python scalars as NumPy makes them)."""
    if dtype is None:
        dtype = operand.dtype if isinstance(operand, Tracer) else _concrete(operand).dtype
    return Tracer(trace, _value(trace, operand, np.dtype(dtype)))


# ---------------------------------------------------------------------------
# Ufuncs: NumPy picks the loop (the dtypes), a table picks the primitive for its kind.

IDENTITY = "identity"  # NumPy's loop returns the input unchanged (np.floor of ints)


@dataclass(frozen=True)
class UfuncLowering:
    """How a NumPy ufunc becomes a primitive: by the dtype kind of the loop NumPy picks."""

    primitive_for_kind: dict[str, str]  # "b", "i", "u", "f" -> primitive name or IDENTITY
    written: str = ""  # how users write it, for messages: "x + y"
    inputs_as_bool: bool = False  # logical_*: NumPy takes the truth of any input

    def kinds_text(self) -> str:
        names = {"b": "bool", "i": "int", "u": "unsigned int", "f": "float"}
        return ", ".join(names[kind] for kind in "biuf" if kind in self.primitive_for_kind)


def _lowering(written: str = "", inputs_as_bool: bool = False, **by_kinds: str) -> UfuncLowering:
    """A lowering from keywords naming dtype kinds: `iuf="add"` covers int, uint and float."""
    table = {kind: primitive for kinds, primitive in by_kinds.items() for kind in kinds}
    return UfuncLowering(table, written, inputs_as_bool)


UFUNCS: dict[np.ufunc, UfuncLowering] = {
    np.add: _lowering("x + y", iuf="add", b="logical_or"),
    np.subtract: _lowering("x - y", iuf="subtract"),
    np.multiply: _lowering("x * y", iuf="multiply", b="logical_and"),
    np.divide: _lowering("x / y", f="divide"),
    np.floor_divide: _lowering("x // y", iuf="floor_divide"),
    np.remainder: _lowering("x % y", iuf="mod"),
    np.power: _lowering("x ** y", iuf="power"),
    np.matmul: _lowering("x @ y", iuf="matmul"),
    np.maximum: _lowering(biuf="maximum"),
    np.minimum: _lowering(biuf="minimum"),
    np.equal: _lowering("x == y", biuf="equal"),
    np.not_equal: _lowering("x != y", biuf="not_equal"),
    np.less: _lowering("x < y", biuf="less"),
    np.less_equal: _lowering("x <= y", biuf="less_equal"),
    np.greater: _lowering("x > y", biuf="greater"),
    np.greater_equal: _lowering("x >= y", biuf="greater_equal"),
    np.logical_and: _lowering(inputs_as_bool=True, b="logical_and"),
    np.logical_or: _lowering(inputs_as_bool=True, b="logical_or"),
    np.logical_xor: _lowering(inputs_as_bool=True, b="logical_xor"),
    np.logical_not: _lowering(inputs_as_bool=True, b="logical_not"),
    np.bitwise_and: _lowering("x & y", b="logical_and"),
    np.bitwise_or: _lowering("x | y", b="logical_or"),
    np.bitwise_xor: _lowering("x ^ y", b="logical_xor"),
    np.invert: _lowering("~x", b="logical_not"),
    np.negative: _lowering("-x", iuf="negative"),
    np.positive: _lowering("+x", iuf=IDENTITY),
    np.absolute: _lowering("abs(x)", iuf="abs", b=IDENTITY),
    np.sign: _lowering(iuf="sign"),
    np.exp: _lowering(f="exp"),
    np.log: _lowering(f="log"),
    np.log1p: _lowering(f="log1p"),
    np.expm1: _lowering(f="expm1"),
    np.tanh: _lowering(f="tanh"),
    np.sqrt: _lowering(f="sqrt"),
    np.sin: _lowering(f="sin"),
    np.cos: _lowering(f="cos"),
    np.square: _lowering(iuf="square"),
    np.reciprocal: _lowering(f="reciprocal"),
    np.floor: _lowering(f="floor", biu=IDENTITY),
    np.ceil: _lowering(f="ceil", biu=IDENTITY),
    np.rint: _lowering(f="round"),
}


def _ufunc_name(ufunc: np.ufunc) -> str:
    written = UFUNCS[ufunc].written if ufunc in UFUNCS else ""
    return f"np.{ufunc.__name__}" + (f" (`{written}`)" if written else "")


def apply_ufunc(ufunc: np.ufunc, *operands: Any) -> Tracer:
    """`ufunc(*operands)` on tracers and concrete values, lowered as NumPy 2 would compute it."""
    lowering = UFUNCS.get(ufunc)
    if lowering is None:
        supported = ", ".join(sorted(f"np.{u.__name__}" for u in UFUNCS))
        raise FederatedTypeError(
            f"np.{ufunc.__name__} is not supported by the NumPy tracer; supported ufuncs: "
            f"{supported}"
        )
    trace = _current_trace(operands)
    name = _ufunc_name(ufunc)
    try:
        loop = ufunc.resolve_dtypes((*(_promotion_dtype(x) for x in operands), None))
    except (TypeError, ValueError) as error:  # NumPy has no loop for these dtypes
        raise FederatedTypeError(
            f"{name} does not take {_describe_all(operands)}: {error}"
        ) from None
    input_dtypes, result_dtype = loop[: ufunc.nin], loop[ufunc.nin]
    if lowering.inputs_as_bool:
        input_dtypes = (np.dtype(bool),) * ufunc.nin
    primitive = (
        lowering.primitive_for_kind.get(input_dtypes[0].kind)
        if len(set(input_dtypes)) == 1
        else None
    )
    if primitive is None:
        loop_text = ", ".join(d.name for d in input_dtypes)
        raise FederatedTypeError(
            f"{name} of {_describe_all(operands)} is not supported: NumPy computes it in "
            f"{loop_text}, fedcc lowers it for {lowering.kinds_text()} inputs"
        )
    values = [_value(trace, x, dtype) for x, dtype in zip(operands, input_dtypes)]
    if primitive == IDENTITY:
        return Tracer(trace, values[0])
    try:
        result = trace.emit(primitive, *values)
    except FederatedTypeError as error:
        raise FederatedTypeError(f"{name} of {_describe_all(operands)}: {error}") from None
    if result.dtype != result_dtype:  # the table and the registry disagree with NumPy
        raise FederatedTypeError(
            f"{name}: NumPy gives {result_dtype}, the {primitive!r} primitive {result.dtype}"
        )
    return result


# ---------------------------------------------------------------------------
# NumPy functions. Each handler takes NumPy's parameters (those fedcc supports) and
# lowers the call; `apply_function` checks the arguments against its signature.

_MISSING: Any = object()


def _static_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FederatedTypeError(f"{what} must be an int known at trace time, found {value!r}")
    return int(value)


def _static_axes(axis: Any) -> tuple[int, ...] | None:
    if axis is None:
        return None
    if isinstance(axis, (tuple, list)):
        return tuple(_static_int(a, "axis") for a in axis)
    return (_static_int(axis, "axis"),)


def _static_shape(shape: Any, what: str) -> tuple[int, ...]:
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    for dim in dims:
        if dim is None:
            raise FederatedTypeError(
                f"{what} {tuple(dims)} holds None (an unknown dim of a traced .shape); "
                "use -1 for one dim, or keep the unknown dim with reshape(x.shape[0] known)"
            )
    return tuple(_static_int(dim, what) for dim in dims)


def _no_out(out: Any) -> None:
    if out is not None:
        raise FederatedTypeError("out= is not supported: traced arrays are immutable")


def _require_none(value: Any, what: str, instead: str) -> None:
    if value is not None:
        raise FederatedTypeError(f"{what} is not supported; {instead}")


def _reduction(primitive: str, numpy_function: Callable, has_dtype: bool) -> Callable:
    """A handler for np.sum-like reductions: NumPy's result dtype, then the primitive."""

    def reduce(x: Tracer, axis: Any, keepdims: Any) -> Tracer:
        trace = _current_trace([x])
        x = _tracer(trace, x)
        # NumPy's result dtype (np.sum of int32 is int64); casting first gives its value.
        dtype = numpy_function(np.zeros((1,) * x.ndim, x.dtype)).dtype
        x = _tracer(trace, x, dtype)
        if not isinstance(keepdims, (bool, np.bool_)):
            raise FederatedTypeError(f"keepdims must be a bool, found {keepdims!r}")
        return trace.emit(primitive, x.value, axis=_static_axes(axis), keepdims=bool(keepdims))

    if has_dtype:

        def handler(a, axis=None, dtype=None, out=None, keepdims=False):
            _require_none(dtype, "dtype=", "cast with .astype(...) first")
            _no_out(out)
            return reduce(a, axis, keepdims)

    else:

        def handler(a, axis=None, out=None, keepdims=False):
            _no_out(out)
            return reduce(a, axis, keepdims)

    return handler


def _arg_reduction(primitive: str) -> Callable:
    def handler(a, axis=None, out=None, *, keepdims=False):
        _no_out(out)
        trace = _current_trace([a])
        position = None if axis is None else _static_int(axis, "axis")
        return trace.emit(primitive, _tracer(trace, a).value, axis=position, keepdims=keepdims)

    return handler


def _reshape(a, shape, order="C"):
    if order != "C":
        raise FederatedTypeError(f"only order='C' is supported, found order={order!r}")
    trace = _current_trace([a])
    return trace.emit("reshape", _tracer(trace, a).value, shape=_static_shape(shape, "shape"))


def _ravel(a, order="C"):
    return _reshape(a, (-1,), order)


def _normalized_axis(axis: Any, rank: int, x: Tracer) -> int:
    position = _static_int(axis, "axis")
    if not -rank <= position < rank:
        raise FederatedTypeError(f"axis {position} is out of range for {x.tensor_type}")
    return position % rank


def _transpose(a, axes=None):
    trace = _current_trace([a])
    x = _tracer(trace, a)
    perm = None if axes is None else tuple(_normalized_axis(i, x.ndim, x) for i in axes)
    return trace.emit("transpose", x.value, perm=perm)


def _swapaxes(a, axis1, axis2):
    x = _tracer(_current_trace([a]), a)
    perm = list(range(x.ndim))
    first, second = _normalized_axis(axis1, x.ndim, x), _normalized_axis(axis2, x.ndim, x)
    perm[first], perm[second] = perm[second], perm[first]
    return _transpose(x, perm)


def _expand_dims(a, axis):
    trace = _current_trace([a])
    x = _tracer(trace, a)
    axes = _static_axes(axis) or ()
    rank = x.ndim + len(axes)
    # In the result's numbering; an out-of-range axis is left for the primitive to report.
    positions = sorted(axis % rank if -rank <= axis < rank else axis for axis in axes)
    for position in positions:
        x = trace.emit("expand_dims", x.value, axis=position)
    return x


def _squeeze(a, axis=None):
    trace = _current_trace([a])
    return trace.emit("squeeze", _tracer(trace, a).value, axis=_static_axes(axis))


def _joined(arrays: Any, what: str) -> tuple[_Trace, list[Tracer]]:
    """The arrays of np.concatenate/np.stack as tracers of their common (promoted) dtype."""
    if isinstance(arrays, Tracer) or not isinstance(arrays, (list, tuple)) or not arrays:
        raise FederatedTypeError(f"{what} takes a non-empty list or tuple of arrays")
    trace = _current_trace(arrays)
    dtype = _result_dtype(*(x if isinstance(x, Tracer) else _concrete(x) for x in arrays))
    return trace, [_tracer(trace, x, dtype) for x in arrays]


def _concatenate(arrays, axis=0, out=None):
    _no_out(out)
    trace, parts = _joined(arrays, "np.concatenate")
    if axis is None:
        parts, axis = [_ravel(part) for part in parts], 0
    return trace.emit("concatenate", *(p.value for p in parts), axis=_static_int(axis, "axis"))


def _stack(arrays, axis=0, out=None):
    _no_out(out)
    trace, parts = _joined(arrays, "np.stack")
    rank = parts[0].ndim + 1
    position = _static_int(axis, "axis")
    if not -rank <= position < rank:
        raise FederatedTypeError(f"axis {position} is out of range for stacking rank {rank - 1}")
    expanded = [trace.emit("expand_dims", p.value, axis=position % rank) for p in parts]
    return trace.emit("concatenate", *(e.value for e in expanded), axis=position % rank)


def _where(condition, x=_MISSING, y=_MISSING):
    if x is _MISSING or y is _MISSING:
        raise FederatedTypeError(
            "np.where(condition) with one argument gives a shape that depends on the values; "
            "use np.where(condition, x, y)"
        )
    trace = _current_trace([condition, x, y])
    dtype = _result_dtype(x, y)
    truth = _tracer(trace, condition, np.dtype(bool))  # nonzero is true, as in NumPy
    return trace.emit(
        "where", truth.value, _value(trace, x, dtype), _value(trace, y, dtype)
    )


def _clip(a, a_min=_MISSING, a_max=_MISSING, out=None, *, min=_MISSING, max=_MISSING):
    _no_out(out)
    lo = min if a_min is _MISSING else a_min
    hi = max if a_max is _MISSING else a_max
    lo, hi = (None if bound is _MISSING else bound for bound in (lo, hi))
    if lo is None and hi is None:
        raise FederatedTypeError("np.clip needs a lower or an upper bound")
    if hi is None:
        return apply_ufunc(np.maximum, a, lo)
    if lo is None:
        return apply_ufunc(np.minimum, a, hi)
    trace = _current_trace([a, lo, hi])
    dtype = _result_dtype(a, lo, hi)
    values = [_value(trace, operand, dtype) for operand in (a, lo, hi)]
    return trace.emit("clip", *values)


def _indices(trace: _Trace, indices: Any) -> Tracer:
    """Integer indices as a signed-int tracer (a concrete list becomes an int64 constant)."""
    index = indices if isinstance(indices, Tracer) else _concrete(indices)
    if index.dtype.kind not in "iu":
        raise FederatedTypeError(
            f"indices must be integers, found {_describe(indices)}"
            + ("; a boolean mask selects a data-dependent number of elements: use np.where"
               if index.dtype.kind == "b" else "")
        )
    dtype = index.dtype if index.dtype.kind == "i" else np.dtype(np.int64)
    return _tracer(trace, indices, dtype)


def _take(a, indices, axis=None, out=None, mode="raise"):
    _no_out(out)
    if mode != "raise":
        raise FederatedTypeError(f"only mode='raise' is supported, found mode={mode!r}")
    trace = _current_trace([a, indices])
    x = _tracer(trace, a)
    if axis is None:
        x, axis = _ravel(x), 0
    position = _static_int(axis, "axis")
    return trace.emit("take", x.value, _indices(trace, indices).value, axis=position)


def _filled_like(primitive: str) -> Callable:
    def handler(a, dtype=None):
        trace = _current_trace([a])
        result = trace.emit(primitive, _tracer(trace, a).value)
        return result if dtype is None else _tracer(trace, result, np.dtype(dtype))

    return handler


def _full_like(a, fill_value, dtype=None):
    trace = _current_trace([a, fill_value])
    like = _tracer(trace, a)
    dtype = like.dtype if dtype is None else np.dtype(dtype)
    if isinstance(fill_value, Tracer):
        fill = _tracer(trace, fill_value, dtype)
    else:  # NumPy copies the fill value in with an unsafe cast
        fill = trace.constant(_concrete(fill_value).astype(dtype))
    return trace.emit("broadcast_like", fill.value, like.value)


def _broadcast_to(array, shape, subok=False):
    trace = _current_trace([array])
    shape = _static_shape(shape, "shape")
    return trace.emit("broadcast_to", _tracer(trace, array).value, shape=shape)


def _dot(a, b, out=None):
    _no_out(out)
    # np.dot converts Python scalars to arrays: they are strongly typed here.
    a, b = (x if isinstance(x, Tracer) else _concrete(x) for x in (a, b))
    ranks = [a.ndim, b.ndim]
    if 0 in ranks:
        return apply_ufunc(np.multiply, a, b)
    if max(ranks) > 2:
        raise FederatedTypeError(
            f"np.dot of {_describe_all((a, b))} is not supported above rank 2; use np.matmul "
            "(x @ y), whose batch semantics differ"
        )
    return apply_ufunc(np.matmul, a, b)


def _round(a, decimals=0, out=None):
    _no_out(out)
    if decimals != 0:
        raise FederatedTypeError(f"only decimals=0 is supported, found decimals={decimals!r}")
    if isinstance(a, Tracer) and a.dtype.kind in "iu":
        return a  # NumPy returns integers unchanged
    return apply_ufunc(np.rint, a)


def _astype(x, dtype, /, *, copy=True):
    trace = _current_trace([x])
    try:
        target = np.dtype(dtype)
    except TypeError as error:
        raise FederatedTypeError(f"astype expects a dtype, found {dtype!r}") from error
    if target.name not in DTYPES:
        raise FederatedTypeError(f"unsupported dtype {target}: expected one of {', '.join(DTYPES)}")
    return _tracer(trace, x, target)


def _copy(a, order="K"):
    return a  # traced arrays are immutable: a copy is the same value


def _shape(a):
    return a.shape


def _ndim(a):
    return a.ndim


def _size(a, axis=None):
    return a.size if axis is None else _known_dim(a, _static_int(axis, "axis"))


def _known_dim(x: Tracer, axis: int) -> int:
    dim = x.shape[axis]
    if dim is None:
        raise FederatedTypeError(f"axis {axis} of {x.tensor_type} is unknown at trace time")
    return dim


FUNCTIONS: dict[Callable, Callable] = {
    np.sum: _reduction("reduce_sum", np.sum, has_dtype=True),
    np.prod: _reduction("reduce_prod", np.prod, has_dtype=True),
    np.mean: _reduction("reduce_mean", np.mean, has_dtype=True),
    np.max: _reduction("reduce_max", np.max, has_dtype=False),
    np.amax: _reduction("reduce_max", np.max, has_dtype=False),
    np.min: _reduction("reduce_min", np.min, has_dtype=False),
    np.amin: _reduction("reduce_min", np.min, has_dtype=False),
    np.argmax: _arg_reduction("argmax"),
    np.argmin: _arg_reduction("argmin"),
    np.reshape: _reshape,
    np.ravel: _ravel,
    np.transpose: _transpose,
    np.swapaxes: _swapaxes,
    np.expand_dims: _expand_dims,
    np.squeeze: _squeeze,
    np.concatenate: _concatenate,
    np.stack: _stack,
    np.where: _where,
    np.clip: _clip,
    np.take: _take,
    np.zeros_like: _filled_like("zeros_like"),
    np.ones_like: _filled_like("ones_like"),
    np.full_like: _full_like,
    np.broadcast_to: _broadcast_to,
    np.dot: _dot,
    np.round: _round,
    np.around: _round,
    np.copy: _copy,
    np.shape: _shape,
    np.ndim: _ndim,
    np.size: _size,
}
if hasattr(np, "astype"):  # NumPy >= 2.1
    FUNCTIONS[np.astype] = _astype


def _function_name(function: Callable) -> str:
    module = getattr(function, "__module__", "") or ""
    prefix = "np" + module[len("numpy") :] if module.startswith("numpy") else module
    prefix = "np" if prefix.startswith("np._") else prefix  # np._core.fromnumeric -> np
    return f"{prefix}.{getattr(function, '__name__', repr(function))}"


def apply_function(function: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """`function(*args, **kwargs)` for a NumPy function that fedcc lowers (see FUNCTIONS)."""
    handler = FUNCTIONS.get(function)
    name = _function_name(function)
    if handler is None:
        supported = ", ".join(sorted(_function_name(f) for f in FUNCTIONS))
        raise FederatedTypeError(
            f"{name} is not supported by the NumPy tracer; supported functions: {supported}; "
            f"and the ufuncs {', '.join(sorted('np.' + u.__name__ for u in UFUNCS))}"
        )
    signature = inspect.signature(handler)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise FederatedTypeError(
            f"{name}: {error}; the NumPy tracer supports {name}{signature}"
        ) from None
    try:
        return handler(*bound.args, **bound.kwargs)
    except _LocatedError:
        raise
    except FederatedTypeError as error:
        raise FederatedTypeError(f"{name}: {error}") from None


# ---------------------------------------------------------------------------
# Static indexing: ints, slices, None, Ellipsis lower to slice + squeeze + expand_dims;
# a single integer-array index lowers to take.


def _slice_bounds(item: slice) -> tuple[int, int, int]:
    step = 1 if item.step is None else _static_int(item.step, "a slice step")
    if step == 0:
        raise FederatedTypeError("a slice step cannot be zero")
    forward = step > 0
    start = (
        (SLICE_TO_BEGINNING if forward else SLICE_TO_END)
        if item.start is None
        else _static_int(item.start, "a slice bound")
    )
    stop = (
        (SLICE_TO_END if forward else SLICE_TO_BEGINNING)
        if item.stop is None
        else _static_int(item.stop, "a slice bound")
    )
    return start, stop, step


def _index_bounds(index: int, dim: int | None, axis: int) -> tuple[int, int, int]:
    if dim is not None and not -dim <= index < dim:
        raise FederatedTypeError(f"index {index} is out of bounds for axis {axis} with size {dim}")
    return index, (SLICE_TO_END if index == -1 else index + 1), 1


def _whole(dim: int | None, start: int, stop: int, step: int) -> bool:
    if dim is not None:
        return range(*slice(start, stop, step).indices(dim)) == range(dim)
    return step == 1 and start in (0, SLICE_TO_BEGINNING) and stop == SLICE_TO_END


def _is_array_index(item: Any) -> bool:
    return isinstance(item, (Tracer, list, np.ndarray))


def getitem(x: Tracer, key: Any) -> Tracer:
    """`x[key]` for static basic indexing or one integer-array index."""
    trace = _current_trace([x, key])
    if _is_array_index(key):
        return trace.emit("take", x.value, _indices(trace, key).value, axis=0)
    items = key if isinstance(key, tuple) else (key,)
    if any(_is_array_index(item) for item in items):
        raise FederatedTypeError(
            "indexing with an array inside a tuple is not supported; use np.take(x, indices, "
            "axis) (one integer-array index on the first axis, x[indices], is supported)"
        )
    explicit = sum(1 for item in items if item is not None and item is not Ellipsis)
    ellipses = sum(1 for item in items if item is Ellipsis)
    if ellipses > 1:
        raise FederatedTypeError("an index can only have a single ellipsis ('...')")
    if explicit > x.ndim:
        raise FederatedTypeError(f"too many indices for {x.tensor_type}: {explicit} given")
    whole = (slice(None),) * (x.ndim - explicit)
    if ellipses:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        items = items[:at] + whole + items[at + 1 :]
    else:
        items = items + whole
    starts, stops, steps, squeezed, inserted = [], [], [], [], []
    axis = produced = 0
    for item in items:
        if item is None:
            inserted.append(produced)
            produced += 1
            continue
        dim = x.shape[axis]
        if isinstance(item, slice):
            bounds = _slice_bounds(item)
            produced += 1
        elif isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            bounds = _index_bounds(int(item), dim, axis)
            squeezed.append(axis)
        else:
            raise FederatedTypeError(
                f"unsupported index {item!r}: use ints, slices, None and ... known at trace time"
            )
        for bound_list, bound in zip((starts, stops, steps), bounds):
            bound_list.append(bound)
        axis += 1
    result = x
    if not all(_whole(d, *b) for d, b in zip(x.shape, zip(starts, stops, steps))):
        result = trace.emit("slice", result.value, start=starts, stop=stops, step=steps)
    if squeezed:
        result = trace.emit("squeeze", result.value, axis=tuple(squeezed))
    for position in inserted:
        result = trace.emit("expand_dims", result.value, axis=position)
    return result


# ---------------------------------------------------------------------------
# The tracer.


_FLOAT_FAST_POWERS = {(int, 2): np.square, (int, -1): np.reciprocal, (float, 0.5): np.sqrt}


def _no_value(what: str, instead: str) -> Callable:
    def method(self: Tracer, *args: Any, **kwargs: Any) -> Any:
        raise FederatedTypeError(
            f"{what} of a traced array ({self.tensor_type}) is not known at trace time; {instead}"
        )

    return _at_user_line(method)


class Tracer:
    """A symbolic array in a traced NumPy function: a value number of the graph and its type."""

    __slots__ = ("_trace", "tensor_type", "value")

    def __init__(self, trace: _Trace, value: int) -> None:
        self._trace = trace
        self.value = value
        self.tensor_type: TensorType = trace.builder.type_of(value)

    # Abstract properties: known at trace time.

    @property
    def shape(self) -> tuple[int | None, ...]:
        """The shape, with None for unknown dims."""
        return self.tensor_type.shape

    @property
    def dtype(self) -> np.dtype:
        return self.tensor_type.dtype

    @property
    def ndim(self) -> int:
        return self.tensor_type.rank

    @property
    @_at_user_line
    def size(self) -> int:
        size = self.tensor_type.num_elements()
        if size is None:
            raise FederatedTypeError(f"the size of {self.tensor_type} is not known at trace time")
        return size

    @property
    @_at_user_line
    def T(self) -> Tracer:
        return _transpose(self)

    def __repr__(self) -> str:
        return f"Tracer({self.tensor_type})"

    @_at_user_line
    def __len__(self) -> int:
        if self.ndim == 0:
            raise FederatedTypeError(f"len() of the scalar {self.tensor_type}")
        return _known_dim(self, 0)

    def __iter__(self) -> Iterator[Tracer]:
        length = len(self)
        return (self[i] for i in range(length))

    # No values at trace time.

    __bool__ = _no_value(
        "the truth value",
        "Python `if`, `while`, `and`, `or` and `not` cannot branch on it; "
        "use np.where(condition, x, y) to select values",
    )
    __int__ = _no_value("int()", "keep it an array, or use .astype(np.int32)")
    __float__ = _no_value("float()", "keep it an array, or use .astype(np.float32)")
    __complex__ = _no_value("complex()", "complex numbers are not supported")
    __index__ = _no_value(
        "the index value", "indices and slice bounds must be Python ints; use np.take(x, i)"
    )
    __array__ = _no_value(
        "a concrete NumPy array",
        "np.asarray/np.array and NumPy functions the tracer does not lower need values; "
        "use the supported functions (np.stack to join traced arrays)",
    )
    item = _no_value("item()", "keep it an array")
    tolist = _no_value("tolist()", "keep it an array")

    @_at_user_line
    def __setitem__(self, key: Any, value: Any) -> None:
        raise FederatedTypeError(
            f"traced arrays ({self.tensor_type}) are immutable; build a new array "
            "(np.where(mask, new, x), np.concatenate) instead of assigning into one"
        )

    # NumPy's protocols.

    @_at_user_line
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__":
            raise FederatedTypeError(
                f"np.{ufunc.__name__}.{method} is not supported; use the functions "
                "(np.sum, np.max, ...) or call the ufunc itself"
            )
        if kwargs:
            raise FederatedTypeError(
                f"np.{ufunc.__name__} with {', '.join(f'{k}=' for k in kwargs)} is not "
                "supported; call it with its array arguments only"
            )
        return apply_ufunc(ufunc, *inputs)

    @_at_user_line
    def __array_function__(self, function: Callable, types: Any, args: Any, kwargs: Any) -> Any:
        return apply_function(function, args, kwargs)

    @_at_user_line
    def __getitem__(self, key: Any) -> Tracer:
        return getitem(self, key)

    @_at_user_line
    def __pow__(self, exponent: Any) -> Tracer:
        # ndarray.__pow__ computes some exponents (exactly a Python int or float) with other
        # ufuncs, which differ in corner cases and dtypes (a bool array ** 2 is int8); as in
        # NumPy 2.4: ** 2 is np.square, and on floats ** -1 is np.reciprocal, ** 0.5 np.sqrt.
        key = (type(exponent), exponent) if type(exponent) in (int, float) else None
        if key == (int, 2) or (self.dtype.kind == "f" and key in _FLOAT_FAST_POWERS):
            return apply_ufunc(_FLOAT_FAST_POWERS.get(key, np.square), self)
        return apply_ufunc(np.power, self, exponent)

    @_at_user_line
    def __rpow__(self, base: Any) -> Tracer:
        return apply_ufunc(np.power, base, self)

    # Methods: the functions of FUNCTIONS with the array first.

    @_at_user_line
    def reshape(self, *shape: Any, order: str = "C") -> Tracer:
        return apply_function(np.reshape, (self, shape[0] if len(shape) == 1 else shape, order), {})

    @_at_user_line
    def transpose(self, *axes: Any) -> Tracer:
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        return apply_function(np.transpose, (self, axes or None), {})

    @_at_user_line
    def astype(self, dtype: Any, copy: bool = True) -> Tracer:
        return _astype(self, dtype)

    @_at_user_line
    def clip(self, min: Any = None, max: Any = None) -> Tracer:
        return apply_function(np.clip, (self, min, max), {})

    @_at_user_line
    def dot(self, other: Any) -> Tracer:
        return apply_function(np.dot, (self, other), {})

    @_at_user_line
    def copy(self) -> Tracer:
        return self

    @_at_user_line
    def flatten(self) -> Tracer:
        return apply_function(np.ravel, (self,), {})


def _method(function: Callable) -> Callable:
    def method(self: Tracer, *args: Any, **kwargs: Any) -> Any:
        return apply_function(function, (self, *args), kwargs)

    method.__name__ = function.__name__
    method.__doc__ = f"Like `np.{function.__name__}` with this array first."
    return _at_user_line(method)


def _operator(ufunc: np.ufunc, reflected: bool = False) -> Callable:
    if ufunc.nin == 1:
        return _at_user_line(lambda self: apply_ufunc(ufunc, self))
    if reflected:
        return _at_user_line(lambda self, other: apply_ufunc(ufunc, other, self))
    return _at_user_line(lambda self, other: apply_ufunc(ufunc, self, other))


# Python's operators (and their reflected forms) call the ufuncs NumPy's arrays call.
_BINARY_OPERATORS = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "matmul": np.matmul,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
}
_COMPARISONS = {
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal,
}
_UNARY_OPERATORS = {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}
_METHODS = (
    np.sum, np.prod, np.mean, np.max, np.min, np.argmax, np.argmin, np.squeeze, np.ravel,
    np.swapaxes, np.take, np.round,
)

for _name, _ufunc in _BINARY_OPERATORS.items():
    setattr(Tracer, f"__{_name}__", _operator(_ufunc))
    setattr(Tracer, f"__r{_name}__", _operator(_ufunc, reflected=True))
for _name, _ufunc in {**_COMPARISONS, **_UNARY_OPERATORS}.items():
    setattr(Tracer, f"__{_name}__", _operator(_ufunc))
for _function in _METHODS:
    setattr(Tracer, _function.__name__, _method(_function))
Tracer.__hash__ = None  # == builds an array, as on NumPy arrays


# ---------------------------------------------------------------------------
# Binding single primitives and inlining graphs (for fc.random and calls of traced
# computations): traced while a trace is active, evaluated on concrete values otherwise.


@_at_user_line
def bind(primitive: str, *inputs: Any, **attributes: Any) -> Tracer | np.ndarray:
    """Applies `primitive` to `inputs`: an op of the active trace, or a concrete result.

    Inputs are tracers or concrete values (NumPy arrays and scalars, Python
    scalars as NumPy makes them: int64, float64, bool). With no trace active
    the primitive is evaluated at once with `fedcc.ir.primitives.evaluate`.
    """
    if _ACTIVE_TRACE.get() is None and not any(isinstance(x, Tracer) for x in inputs):
        return primitives.evaluate(primitive, [_concrete(x) for x in inputs], attributes)
    trace = _current_trace(inputs)
    return trace.emit(primitive, *(_tracer(trace, x).value for x in inputs), **attributes)


@_at_user_line
def inline_graph(graph: Graph, leaves: Sequence[Any]) -> list[Tracer]:
    """The outputs of `graph` applied to `leaves` (its parameter leaves, in order), as ops of
    the active trace."""
    trace = _current_trace(leaves)
    if len(leaves) != graph.num_parameters:
        raise FederatedTypeError(
            f"{graph.function_type} takes {graph.num_parameters} parameter leaves, "
            f"found {len(leaves)}"
        )
    values: list[int] = []
    for position, (leaf_type, leaf) in enumerate(zip(graph.parameter_leaves, leaves)):
        # A Python scalar takes the leaf's dtype if NumPy would keep it (2 for a float32 leaf).
        fits = _is_weak(leaf) and np.result_type(leaf_type.dtype, leaf) == leaf_type.dtype
        value = _tracer(trace, leaf, leaf_type.dtype if fits else None)
        if value.dtype != leaf_type.dtype or not is_assignable_from(leaf_type, value.tensor_type):
            raise FederatedTypeError(
                f"parameter leaf {position} of {graph.function_type} expects {leaf_type}, "
                f"found {value.tensor_type}"
            )
        values.append(value.value)
    for op in graph.ops:
        inputs = [values[i] for i in op.inputs]
        values.append(trace.emit(op.primitive, *inputs, **op.attrs).value)
    return [Tracer(trace, values[output]) for output in graph.outputs]


# ---------------------------------------------------------------------------
# Tracing a function: parameters in, Python results out.


@dataclass(frozen=True)
class TracedFunction:
    """A traced NumPy function: its graph, and its Python result with arrays replaced by
    their output index (containers kept, to rebuild results in the same shape)."""

    graph: Graph
    result_skeleton: Any


def _parameter_argument(trace: _Trace, t: Type, leaves: Iterator[int]) -> Any:
    """The Python argument for a parameter of type `t`: a tracer, or a dict (named struct) or
    tuple of them. Recursion is bounded by the type depth limit."""
    if isinstance(t, TensorType):
        return Tracer(trace, next(leaves))
    items = [_parameter_argument(trace, element, leaves) for element in t]
    names = t.names()
    if names and all(name is not None for name in names):
        return dict(zip(names, items))
    return tuple(items)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _result_structure(
    trace: _Trace, value: Any, outputs: list[int], depth: int
) -> tuple[Any, Type]:
    """The skeleton and type of a returned value; appends its arrays' value numbers to
    `outputs`. Recursion is bounded: nesting deeper than types allow is an error."""
    if depth > MAX_TYPE_DEPTH:
        raise FederatedTypeError(f"the result is nested more than {MAX_TYPE_DEPTH} levels deep")
    if isinstance(value, Tracer):
        if value._trace is not trace:
            raise FederatedTypeError("the result holds a traced array of another tracing")
        outputs.append(value.value)
        return len(outputs) - 1, value.tensor_type
    if isinstance(value, (np.ndarray, np.generic, *_PYTHON_SCALARS)):
        return _result_structure(trace, trace.constant(_concrete(value)), outputs, depth)
    if isinstance(value, dict):
        for key in value:
            if not is_valid_field_name(key):
                raise FederatedTypeError(
                    f"a returned dict's keys name struct fields: identifiers, found {key!r}"
                )
        parts = {k: _result_structure(trace, v, outputs, depth + 1) for k, v in value.items()}
        return {k: s for k, (s, _) in parts.items()}, StructType(
            [(k, t) for k, (_, t) in parts.items()]
        )
    if _is_namedtuple(value):
        parts = [_result_structure(trace, v, outputs, depth + 1) for v in value]
        skeleton = type(value)(*(s for s, _ in parts))
        return skeleton, StructType([(n, t) for n, (_, t) in zip(value._fields, parts)])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        parts = [_result_structure(trace, getattr(value, n), outputs, depth + 1) for n in names]
        skeleton = copy.copy(value)
        for name, (part, _) in zip(names, parts):
            object.__setattr__(skeleton, name, part)  # also for frozen dataclasses
        return skeleton, StructType([(n, t) for n, (_, t) in zip(names, parts)])
    if isinstance(value, (tuple, list)):
        parts = [_result_structure(trace, v, outputs, depth + 1) for v in value]
        return type(value)(s for s, _ in parts), StructType([t for _, t in parts])
    raise FederatedTypeError(
        f"the function returned {type(value).__name__} {value!r:.80}; expected arrays, "
        "scalars, or dicts, tuples, lists, namedtuples and dataclasses of them"
    )


def _parameter_type(spec: Any, position: int, fn: Callable) -> Type:
    t = to_type(spec)
    if not struct_of_leaves(t):
        raise FederatedTypeError(
            f"parameter {position} of {_function_location(fn)}: a NumPy function takes "
            f"tensors or structs of tensors, found {t}"
        )
    return t


def _check_arity(fn: Callable, arguments: list[Any]) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and the like: let the call say it
    try:
        signature.bind(*arguments)
    except TypeError as error:
        raise FederatedTypeError(
            f"{_function_location(fn)} cannot take {len(arguments)} positional argument(s), "
            f"one per parameter type: {error}"
        ) from None


def trace_numpy(fn: Callable, parameter_types: Sequence[Any]) -> TracedFunction:
    """Traces `fn` on symbolic arrays of `parameter_types` (one per positional parameter).

    A tensor parameter arrives as a `Tracer`, a named struct as a dict, an
    unnamed one as a tuple. The graph's parameter is the one parameter type,
    an unnamed struct of them when there are several, or None when there are
    none. Its result type mirrors what `fn` returned: a tensor for one array,
    a named struct for a dict, namedtuple or dataclass, an unnamed one for a
    tuple or list. Raises FederatedTypeError, naming the user's file:line,
    for NumPy code the tracer cannot lower.
    """
    types = [_parameter_type(spec, i, fn) for i, spec in enumerate(parameter_types)]
    graph_parameter = None if not types else types[0] if len(types) == 1 else StructType(types)
    builder = GraphBuilder(graph_parameter)
    trace = _Trace(builder)
    leaves = iter(builder.parameters())
    arguments = [_parameter_argument(trace, t, leaves) for t in types]
    _check_arity(fn, arguments)
    token = _ACTIVE_TRACE.set(trace)
    try:
        returned = fn(*arguments)
    finally:
        _ACTIVE_TRACE.reset(token)
    outputs: list[int] = []
    try:
        skeleton, result_type = _result_structure(trace, returned, outputs, 0)
    except FederatedTypeError as error:
        raise FederatedTypeError(f"{_function_location(fn)}: {error}") from None
    return TracedFunction(builder.build(outputs, result_type), skeleton)
