"""The registry of local primitives: for each, its NumPy implementation and its shape/dtype rule.

This is the one place that says what a primitive means. The graph evaluator
calls `evaluate`, graph construction calls `infer_result_type`, and the
autodiff transformation looks up gradient rules here. `docs/primitives.md`
documents the closed set.

Decisions every entry follows:

- Attributes are canonical. `canonical_attributes` checks each attribute's
  kind, converts it to one canonical value (a float attribute given as `1`
  becomes `1.0`, axes given as `1` become `(1,)`, a dtype becomes its name)
  and fills every default, so an `Op` (which canonicalizes in its
  constructor) written with or without a default attribute is the same op,
  prints the same and serializes to the same bytes.
- The shape rule decides the result dtype and the implementation matches it.
  Elementwise binaries take inputs of one dtype (the tracer inserts `cast`s
  for NumPy's promotion); reductions keep the input dtype (`reduce_sum` of
  int32 is int32, not NumPy's platform integer); `reduce_mean` takes floats.
- Unknown dims (`None`) flow through every rule: broadcasting `None` with 1
  gives `None`, with k gives k; known dims that cannot agree are errors.
- Implementations run with NumPy's floating-point warnings silenced: results
  follow IEEE arithmetic (inf, nan), whatever the warning settings are.
- A differentiable primitive has its gradient rule beside it: a function that
  emits, through a `GraphEmitter` (so `ir` never imports the compiler), the
  ops that turn the cotangent of the result into cotangents of the inputs.
  `fedcc.compiler.autodiff` chains them; tests/test_autodiff.py checks each
  against finite differences.
- Randomness is keyed and bit-identical on every platform and NumPy version:
  bits come from the Philox counter-based bit generator keyed by the seed
  (its raw stream is stable), and are turned into floats with basic IEEE
  arithmetic only (see `_philox_bits`, `_uniform`, `_normal`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.tensors import frozen_array
from fedcc.ir.types import DTYPES, TensorType, to_dtype

REQUIRED = object()


@dataclass(frozen=True)
class Attribute:
    """A static attribute of a primitive: its kind and its default (REQUIRED if none)."""

    kind: str  # "int", "ints", "axes", "float", "bool", "str", "dtype", "tensor", "shape"
    default: Any = REQUIRED


class GraphEmitter(Protocol):
    """What a gradient rule emits ops through; `fedcc.ir.graph_builder.GraphBuilder` is one.

    Values are SSA value numbers of the graph being built.
    """

    def op(self, primitive: str, *inputs: int, **attributes: Any) -> int:
        """Appends `primitive(*inputs, **attributes)`; returns its value number."""
        ...

    def constant(self, value: Any, dtype: Any = None) -> int:
        """A constant op for `value` (as an array of `dtype`); returns its value number."""
        ...

    def type_of(self, value: int) -> TensorType:
        """The type of a value."""
        ...


# A gradient rule: (emit, cotangent, inputs, result, **attributes) -> one cotangent value
# per input, or None where nothing flows (a condition, indices, a shape donor). It emits
# through `emit` the ops that compute d(loss)/d(input) from d(loss)/d(result) (the
# `cotangent`, shaped like the result), the op's input values and its result value.
# A rule is only called when the result is a float; a returned cotangent has its
# input's dtype and a type assignable to the input's type.
GradientRule = Callable[..., tuple[int | None, ...]]


@dataclass(frozen=True)
class Primitive:
    name: str
    description: str
    num_inputs: int | None  # None: any number, at least one
    shape_rule: Callable[..., TensorType]  # (input_types, **attrs) -> result type
    impl: Callable[..., np.ndarray]  # (*arrays, **attrs) -> array of the rule's type
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    gradient: GradientRule | None = None  # None: not differentiable (zero gradient)

    @property
    def differentiable(self) -> bool:
        return self.gradient is not None


PRIMITIVES: dict[str, Primitive] = {}


def register(primitive: Primitive) -> Primitive:
    if primitive.name in PRIMITIVES:
        raise ValueError(f"primitive {primitive.name!r} is registered twice")
    PRIMITIVES[primitive.name] = primitive
    return primitive


def lookup(name: str) -> Primitive:
    try:
        return PRIMITIVES[name]
    except KeyError:
        raise FederatedTypeError(
            f"unknown primitive {name!r}; known: {', '.join(sorted(PRIMITIVES))}"
        ) from None


# ---------------------------------------------------------------------------
# Attribute kinds: each converts a value to its canonical form or says what it expected.


class _AttributeKindError(Exception):
    """A value does not fit an attribute kind."""


def _as_int(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _AttributeKindError
    return int(value)


def _as_ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise _AttributeKindError
    return tuple(_as_int(item) for item in value)


def _as_axes(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    return _as_ints(value if isinstance(value, (tuple, list)) else (value,))


def _as_float(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise _AttributeKindError
    return float(value)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _AttributeKindError
    return bool(value)


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _AttributeKindError
    return value


def _as_dtype(value: Any) -> str:
    if isinstance(value, str) and value not in DTYPES:
        raise _AttributeKindError
    try:
        return to_dtype(value).name
    except FederatedTypeError:
        raise _AttributeKindError from None


def _as_tensor(value: Any) -> np.ndarray:
    if not isinstance(value, (np.ndarray, np.generic)):
        raise _AttributeKindError
    if (
        isinstance(value, np.ndarray)
        and not value.flags.writeable
        and value.dtype.name in DTYPES
        and value.dtype.byteorder != ">"
        and value.flags.c_contiguous
    ):
        return value  # already frozen: keep it, constants are evaluated often
    try:
        return frozen_array(value)
    except FederatedTypeError:
        raise _AttributeKindError from None


def _as_shape(value: Any) -> tuple[int, ...]:
    dims = _as_ints(value)
    if any(d < -1 for d in dims):
        raise _AttributeKindError
    return dims


@dataclass(frozen=True)
class AttributeKind:
    """How to check an attribute of one kind and bring it to its canonical value."""

    canonical: Callable[[Any], Any]  # raises _AttributeKindError for a value of another kind
    expects: str  # for error messages


_DTYPE_NAMES = ", ".join(DTYPES)

ATTRIBUTE_KINDS: dict[str, AttributeKind] = {
    "int": AttributeKind(_as_int, "an int"),
    "ints": AttributeKind(_as_ints, "a tuple of ints"),
    "axes": AttributeKind(_as_axes, "axes (None, an int or a tuple of ints)"),
    "float": AttributeKind(_as_float, "a float"),
    "bool": AttributeKind(_as_bool, "a bool"),
    "str": AttributeKind(_as_str, "a str"),
    "dtype": AttributeKind(_as_dtype, f"a dtype name ({_DTYPE_NAMES})"),
    "tensor": AttributeKind(_as_tensor, f"a NumPy array of one of {_DTYPE_NAMES}"),
    "shape": AttributeKind(_as_shape, "a shape (a tuple of ints >= 0, -1 where allowed)"),
}


# ---------------------------------------------------------------------------
# The public interface: canonical attributes, result types, evaluation.


def _context(name: str, where: str) -> str:
    return f"primitive {name!r}" + (f" at {where}" if where else "")


def array_text(array: np.ndarray) -> str:
    """An array's dtype and shape, written like a tensor type: `float32[2,3]`."""
    dims = ",".join(str(d) for d in array.shape)
    return f"{array.dtype.name}[{dims}]" if array.ndim else array.dtype.name


def _show(value: Any) -> str:
    return f"an array of {array_text(value)}" if isinstance(value, np.ndarray) else repr(value)


def canonical_attributes(name: str, attrs: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Every attribute of primitive `name`, checked and in canonical form, defaults filled.

    Raises FederatedTypeError for an unknown primitive or attribute, a missing
    required attribute, or a value of the wrong kind.
    """
    context = _context(name, where)
    if name not in PRIMITIVES:
        raise FederatedTypeError(
            f"unknown primitive {name!r}{' at ' + where if where else ''}; "
            f"known: {', '.join(sorted(PRIMITIVES))}"
        )
    primitive = PRIMITIVES[name]
    declared = primitive.attributes
    unknown = sorted(set(attrs) - set(declared))
    if unknown:
        takes = ", ".join(declared) if declared else "no attributes"
        raise FederatedTypeError(
            f"{context}: unknown attribute {unknown[0]!r}; it takes {takes}"
        )
    canonical: dict[str, Any] = {}
    for attribute_name, attribute in declared.items():
        if attribute_name in attrs:
            value = attrs[attribute_name]
        elif attribute.default is REQUIRED:
            expects = ATTRIBUTE_KINDS[attribute.kind].expects
            raise FederatedTypeError(
                f"{context}: missing required attribute {attribute_name!r}, {expects}"
            )
        else:
            canonical[attribute_name] = attribute.default
            continue
        kind = ATTRIBUTE_KINDS[attribute.kind]
        try:
            canonical[attribute_name] = kind.canonical(value)
        except _AttributeKindError:
            raise FederatedTypeError(
                f"{context}: attribute {attribute_name!r} expects {kind.expects}, "
                f"found {_show(value)}"
            ) from None
    return canonical


def infer_result_type(
    name: str,
    input_types: Sequence[TensorType],
    attrs: Mapping[str, Any],
    where: str = "",
) -> TensorType:
    """The result type of primitive `name` on inputs of `input_types` with attributes `attrs`.

    Checks the input count and types, the attributes (see `canonical_attributes`)
    and the primitive's shape rule; every failure is a FederatedTypeError that
    names the primitive, `where` (e.g. "%7"), what was expected and what was found.
    """
    context = _context(name, where)
    values = canonical_attributes(name, attrs, where)
    primitive = PRIMITIVES[name]
    input_types = tuple(input_types)
    for position, input_type in enumerate(input_types):
        if not isinstance(input_type, TensorType):
            raise FederatedTypeError(
                f"{context}: input {position} must be a tensor type, found {input_type}"
            )
    expected = primitive.num_inputs
    if (expected is None and not input_types) or (
        expected is not None and len(input_types) != expected
    ):
        want = "at least 1 input" if expected is None else f"{expected} input(s)"
        found = ", ".join(str(t) for t in input_types) or "none"
        raise FederatedTypeError(
            f"{context}: expects {want}, found {len(input_types)} ({found})"
        )
    try:
        return primitive.shape_rule(input_types, **values)
    except FederatedTypeError as error:
        raise FederatedTypeError(f"{context}: {error}") from None


def evaluate(
    name: str,
    inputs: Sequence[np.ndarray],
    attrs: Mapping[str, Any],
    result_type: TensorType | None = None,
) -> np.ndarray:
    """Runs primitive `name` on `inputs`: an array of exactly the type the shape rule gives.

    `result_type`, when given, is the already inferred type of the result (the
    graph evaluator passes the op's declared type); otherwise it is inferred
    from the inputs' dtypes and shapes, which also checks them. A failure at
    run time (e.g. an unknown dim that turns out not to broadcast, an index
    out of range) is a FederatedTypeError naming the primitive and the inputs.
    """
    arrays = [np.asarray(x) for x in inputs]
    values = canonical_attributes(name, attrs)
    if result_type is None:
        result_type = infer_result_type(
            name, [TensorType(x.dtype, x.shape) for x in arrays], values
        )
    with np.errstate(all="ignore"):
        return run_checked(PRIMITIVES[name], arrays, values, result_type)


def run_checked(
    primitive: Primitive,
    arrays: Sequence[np.ndarray],
    attrs: Mapping[str, Any],
    result_type: TensorType,
) -> np.ndarray:
    """Runs `primitive`'s implementation with canonical `attrs` and checks the result's type.

    The fast path for evaluators that prepared the op once (attributes already
    canonical, as `Op` keeps them); the caller sets NumPy's error state.
    """
    try:
        result = primitive.impl(*arrays, **attrs)
    except (ValueError, IndexError) as error:
        raise implementation_error(primitive, arrays, error) from None
    return conform_result(primitive, result, result_type)


def implementation_error(
    primitive: Primitive, arrays: Sequence[np.ndarray], error: Exception
) -> FederatedTypeError:
    """The error for an implementation that failed at run time (e.g. a `?` dim that disagrees)."""
    shown = ", ".join(array_text(np.asarray(x)) for x in arrays) or "no inputs"
    return FederatedTypeError(f"primitive {primitive.name!r} failed on inputs {shown}: {error}")


def conform_result(primitive: Primitive, result: Any, result_type: TensorType) -> np.ndarray:
    """`result` as an array of exactly `result_type`'s dtype; its shape must fit the type."""
    result = np.asarray(result)
    if result.dtype != result_type.dtype:
        # The rule decides the dtype; NumPy's promotion must not leak through.
        result = result.astype(result_type.dtype)
    if result.ndim != result_type.rank or any(
        d is not None and d != s for d, s in zip(result_type.shape, result.shape, strict=True)
    ):
        raise FederatedTypeError(
            f"primitive {primitive.name!r} gave an array of {array_text(result)}, "
            f"but its result type is {result_type}"
        )
    return result


# ---------------------------------------------------------------------------
# Shape-rule helpers. They raise FederatedTypeError with the detail;
# `infer_result_type` adds which primitive and where.

Dim = int | None

BOOL = "b"
SIGNED_INTEGER = "i"
INTEGER = "iu"
FLOAT = "f"
NUMERIC = "iuf"
ANY = "biuf"


def _kinds_text(kinds: str) -> str:
    names = [name for name, dtype in DTYPES.items() if dtype.kind in kinds]
    return "one of " + ", ".join(names)


def _require_kind(t: TensorType, kinds: str, what: str) -> None:
    if t.dtype.kind not in kinds:
        raise FederatedTypeError(f"{what} must be {_kinds_text(kinds)}, found {t}")


def _same_dtype(types: Sequence[TensorType], kinds: str) -> np.dtype:
    first = types[0].dtype
    if any(t.dtype != first for t in types):
        found = ", ".join(str(t) for t in types)
        raise FederatedTypeError(
            f"inputs must have the same dtype (the tracer inserts casts), found {found}"
        )
    for position, t in enumerate(types):
        _require_kind(t, kinds, f"input {position}")
    return first


def _broadcast_dim(a: Dim, b: Dim) -> Dim:
    """One dim of a broadcast; raises ValueError for known dims that cannot agree."""
    if a == b or b == 1:
        return a
    if a == 1:
        return b
    if a is None:
        return b
    if b is None:
        return a
    raise ValueError


def _broadcast(types: Sequence[TensorType]) -> tuple[Dim, ...]:
    """NumPy broadcasting of the shapes of `types`, with unknown dims."""
    rank = max(t.rank for t in types)
    result: list[Dim] = [1] * rank
    for t in types:
        offset = rank - t.rank
        for i, dim in enumerate(t.shape):
            try:
                result[offset + i] = _broadcast_dim(result[offset + i], dim)
            except ValueError:
                found = ", ".join(str(t) for t in types)
                raise FederatedTypeError(
                    f"shapes do not broadcast: axis {offset + i - rank} is "
                    f"{result[offset + i]} in one input and {dim} in another ({found})"
                ) from None
    return tuple(result)


def _normalize_axis(axis: int, rank: int, t: TensorType) -> int:
    if not -rank <= axis < rank:
        raise FederatedTypeError(f"axis {axis} is out of range for {t} of rank {rank}")
    return axis % rank


def _normalize_axes(axes: tuple[int, ...] | None, t: TensorType) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(t.rank))
    normalized = tuple(_normalize_axis(a, t.rank, t) for a in axes)
    if len(set(normalized)) != len(normalized):
        raise FederatedTypeError(f"axes {axes} repeat an axis of {t}")
    return normalized


def _unify_dim(a: Dim, b: Dim) -> Dim:
    """Two dims that must be equal; raises ValueError if both are known and differ."""
    if a is None:
        return b
    if b is None or a == b:
        return a
    raise ValueError


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


# ---------------------------------------------------------------------------
# Gradient-rule helpers. Rules emit ops through a `GraphEmitter`; these build the
# pieces that many rules share.


def _scalar(emit: GraphEmitter, value: float, like: int) -> int:
    """A scalar constant with the dtype of the value `like`."""
    return emit.constant(np.asarray(value, dtype=emit.type_of(like).dtype))


def _unbroadcast(emit: GraphEmitter, cotangent: int, x: int) -> int:
    """The cotangent of `x` from one of the broadcast shape: summed over the stretched axes."""
    x_type = emit.type_of(x)
    if x_type.is_fully_defined() and emit.type_of(cotangent).shape == x_type.shape:
        return cotangent
    # With an unknown dim, whether broadcasting stretched it is only known at run time.
    return emit.op("sum_to_like", cotangent, x)


def _reshaped_like(emit: GraphEmitter, value: int, x: int) -> int:
    """`value` (with as many elements as `x`) in the shape of `x`."""
    x_type = emit.type_of(x)
    if emit.type_of(value).shape == x_type.shape:
        return value
    if x_type.is_fully_defined():
        return emit.op("reshape", value, shape=x_type.shape)
    return emit.op("reshape_like", value, x)


def _with_reduced_axes_kept(
    emit: GraphEmitter, value: int, x: int, axis: tuple[int, ...] | None, keepdims: bool
) -> int:
    """`value`, shaped like a reduction of `x` over `axis`, with the reduced axes back as 1s."""
    if keepdims:
        return value
    for position in sorted(_normalize_axes(axis, emit.type_of(x))):
        value = emit.op("expand_dims", value, axis=position)
    return value


def _swap_last_axes(emit: GraphEmitter, x: int) -> int:
    rank = emit.type_of(x).rank
    return emit.op("transpose", x, perm=(*range(rank - 2), rank - 1, rank - 2))


# ---------------------------------------------------------------------------
# Families of primitives: one factory each, so the table below stays one line an entry.


def _elementwise_binary(
    name: str,
    ufunc: Callable[[np.ndarray, np.ndarray], np.ndarray],
    kinds: str,
    result_dtype: str | None,
    gradient: GradientRule | None,
    meaning: str,
) -> Primitive:
    def rule(input_types: Sequence[TensorType]) -> TensorType:
        dtype = _same_dtype(input_types, kinds)
        return TensorType(result_dtype or dtype, _broadcast(input_types))

    return Primitive(name, f"{meaning}, with broadcasting", 2, rule, ufunc, gradient=gradient)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _elementwise_unary(
    name: str,
    function: Callable[[np.ndarray], np.ndarray],
    kinds: str,
    gradient: GradientRule | None,
    meaning: str,
) -> Primitive:
    def rule(input_types: Sequence[TensorType]) -> TensorType:
        (x,) = input_types
        _require_kind(x, kinds, "the input")
        return x

    return Primitive(name, meaning, 1, rule, function, gradient=gradient)


_REDUCTION_ATTRIBUTES = {"axis": Attribute("axes", None), "keepdims": Attribute("bool", False)}


def _reduced_shape(
    x: TensorType, axes: tuple[int, ...], keepdims: bool, needs_elements: bool
) -> tuple[Dim, ...]:
    if needs_elements:
        for axis in axes:
            if x.shape[axis] == 0:
                raise FederatedTypeError(
                    f"reduces over axis {axis} of {x}, which is empty; "
                    "this reduction has no identity"
                )
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def _reduction(
    name: str,
    function: Callable[..., np.ndarray],
    kinds: str,
    needs_elements: bool,
    gradient: GradientRule | None,
    meaning: str,
) -> Primitive:
    def rule(
        input_types: Sequence[TensorType], *, axis: tuple[int, ...] | None, keepdims: bool
    ) -> TensorType:
        (x,) = input_types
        _require_kind(x, kinds, "the input")
        axes = _normalize_axes(axis, x)
        return TensorType(x.dtype, _reduced_shape(x, axes, keepdims, needs_elements))

    return Primitive(
        name, meaning, 1, rule, function, _REDUCTION_ATTRIBUTES, gradient=gradient
    )


def _arg_reduction(
    name: str, function: Callable[..., np.ndarray], meaning: str
) -> Primitive:
    def rule(
        input_types: Sequence[TensorType], *, axis: tuple[int, ...] | None, keepdims: bool
    ) -> TensorType:
        (x,) = input_types
        _require_kind(x, ANY, "the input")
        if axis is not None and len(axis) != 1:
            raise FederatedTypeError(f"takes one axis or None (all axes), found axis={axis}")
        axes = _normalize_axes(axis, x)
        return TensorType(np.int64, _reduced_shape(x, axes, keepdims, needs_elements=True))

    def impl(x: np.ndarray, *, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
        position = None if axis is None else axis[0]
        return function(x, axis=position, keepdims=keepdims).astype(np.int64)

    return Primitive(name, meaning, 1, rule, impl, _REDUCTION_ATTRIBUTES)


# ---------------------------------------------------------------------------
# Elementwise implementations that are more than one NumPy call.


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number never overflows, so both branches are stable.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _clip(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, lo), hi)


def _saturating_float_to_int(x: np.ndarray, target: np.dtype) -> np.ndarray:
    # A plain astype of nan, inf or an out-of-range float is platform dependent;
    # saturating makes the cast the same everywhere.
    info = np.iinfo(target)
    truncated = np.trunc(x.astype(np.float64))
    too_high = truncated >= float(info.max + 1)  # a power of two: exact in float64
    too_low = truncated < float(info.min)
    nan = np.isnan(truncated)
    in_range = np.where(too_high | too_low | nan, 0.0, truncated).astype(target)
    saturated = np.where(too_low, np.array(info.min, target), in_range)
    return np.where(too_high, np.array(info.max, target), saturated).astype(target)


def _cast(x: np.ndarray, *, dtype: str) -> np.ndarray:
    target = DTYPES[dtype]
    if x.dtype.kind == "f" and target.kind in INTEGER:
        return _saturating_float_to_int(x, target)
    return x.astype(target)


def _cast_rule(input_types: Sequence[TensorType], *, dtype: str) -> TensorType:
    (x,) = input_types
    return TensorType(dtype, x.shape)


def _where_rule(input_types: Sequence[TensorType]) -> TensorType:
    condition, x, y = input_types
    _require_kind(condition, BOOL, "the condition (input 0)")
    dtype = _same_dtype((x, y), ANY)
    return TensorType(dtype, _broadcast(input_types))


def _clip_rule(input_types: Sequence[TensorType]) -> TensorType:
    dtype = _same_dtype(input_types, NUMERIC)
    return TensorType(dtype, _broadcast(input_types))


def _same_as_input_rule(input_types: Sequence[TensorType]) -> TensorType:
    return input_types[0]


# ---------------------------------------------------------------------------
# Gradient rules of the elementwise primitives. A unary rule is the cotangent times
# the derivative; a binary rule gives each input's share of the cotangent, which
# `_binary_gradient` sums back to the input's shape where broadcasting stretched it.

Derivative = Callable[[GraphEmitter, int, int], int]  # (emit, x, f(x)) -> f'(x)
Partials = Callable[[GraphEmitter, int, int, int, int], tuple[int, int]]


def _chain(derivative: Derivative) -> GradientRule:
    def rule(
        emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
    ) -> tuple[int | None, ...]:
        (x,) = inputs
        return (emit.op("multiply", cotangent, derivative(emit, x, result)),)

    return rule


def _negative_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return _scalar(emit, -1, x)


def _abs_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("sign", x)  # 0 at 0, as in JAX


def _exp_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return result


def _log_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("reciprocal", x)


def _log1p_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("reciprocal", emit.op("add", x, _scalar(emit, 1, x)))


def _expm1_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("add", result, _scalar(emit, 1, x))


def _tanh_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("subtract", _scalar(emit, 1, x), emit.op("square", result))


def _sqrt_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("divide", _scalar(emit, 0.5, x), result)


def _square_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("multiply", _scalar(emit, 2, x), x)


def _reciprocal_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("negative", emit.op("square", result))


def _sigmoid_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("multiply", result, emit.op("subtract", _scalar(emit, 1, x), result))


def _sin_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("cos", x)


def _cos_derivative(emit: GraphEmitter, x: int, result: int) -> int:
    return emit.op("negative", emit.op("sin", x))


def _binary_gradient(partials: Partials) -> GradientRule:
    def rule(
        emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
    ) -> tuple[int | None, ...]:
        x, y = inputs
        for_x, for_y = partials(emit, cotangent, x, y, result)
        return _unbroadcast(emit, for_x, x), _unbroadcast(emit, for_y, y)

    return rule


def _add_partials(emit: GraphEmitter, g: int, x: int, y: int, result: int) -> tuple[int, int]:
    return g, g


def _subtract_partials(
    emit: GraphEmitter, g: int, x: int, y: int, result: int
) -> tuple[int, int]:
    return g, emit.op("negative", g)


def _multiply_partials(
    emit: GraphEmitter, g: int, x: int, y: int, result: int
) -> tuple[int, int]:
    return emit.op("multiply", g, y), emit.op("multiply", g, x)


def _divide_partials(emit: GraphEmitter, g: int, x: int, y: int, result: int) -> tuple[int, int]:
    # d(x/y)/dy = -x/y**2 = -result/y.
    for_y = emit.op("negative", emit.op("divide", emit.op("multiply", g, result), y))
    return emit.op("divide", g, y), for_y


def _mod_partials(emit: GraphEmitter, g: int, x: int, y: int, result: int) -> tuple[int, int]:
    # x % y = x - floor(x / y) * y, with floor(x / y) piecewise constant.
    return g, emit.op("negative", emit.op("multiply", g, emit.op("floor_divide", x, y)))


def _power_partials(emit: GraphEmitter, g: int, x: int, y: int, result: int) -> tuple[int, int]:
    one = _scalar(emit, 1, x)
    d_x = emit.op("multiply", y, emit.op("power", x, emit.op("subtract", y, one)))
    # d(x**y)/dy = log(x) * x**y; at x = 0 the result is 0 (or inf) and log(0) would turn
    # the product into nan, so log(1) stands in there, as in JAX.
    is_zero = emit.op("equal", x, _scalar(emit, 0, x))
    log_x = emit.op("log", emit.op("where", is_zero, one, x))
    d_y = emit.op("multiply", log_x, result)
    return emit.op("multiply", g, d_x), emit.op("multiply", g, d_y)


def _extremum_partials(
    emit: GraphEmitter, g: int, x: int, y: int, result: int
) -> tuple[int, int]:
    # The input that was picked gets the cotangent; on a tie each gets half (as in JAX).
    zero, half, one = (_scalar(emit, value, g) for value in (0, 0.5, 1))
    x_picked = emit.op("equal", x, result)
    y_picked = emit.op("equal", y, result)
    x_share = emit.op("where", x_picked, emit.op("where", y_picked, half, one), zero)
    y_share = emit.op("where", y_picked, emit.op("where", x_picked, half, one), zero)
    return emit.op("multiply", g, x_share), emit.op("multiply", g, y_share)


def _where_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
) -> tuple[int | None, ...]:
    condition, x, y = inputs
    zero = _scalar(emit, 0, cotangent)
    for_x = emit.op("where", condition, cotangent, zero)
    for_y = emit.op("where", condition, zero, cotangent)
    return None, _unbroadcast(emit, for_x, x), _unbroadcast(emit, for_y, y)


def _clip_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
) -> tuple[int | None, ...]:
    x, lo, hi = inputs
    # clip is minimum(maximum(x, lo), hi): the cotangent goes to hi where hi won, else to
    # lo where x was below it, else to x (so on a tie, to x).
    to_hi = emit.op("greater", emit.op("maximum", x, lo), hi)
    below = emit.op("less", x, lo)
    to_lo = emit.op("logical_and", emit.op("logical_not", to_hi), below)
    to_x = emit.op("logical_not", emit.op("logical_or", to_hi, below))
    zero = _scalar(emit, 0, cotangent)
    return tuple(
        _unbroadcast(emit, emit.op("where", routed, cotangent, zero), target)
        for routed, target in ((to_x, x), (to_lo, lo), (to_hi, hi))
    )


def _cast_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int, *, dtype: str
) -> tuple[int | None, ...]:
    (x,) = inputs
    x_dtype = emit.type_of(x).dtype
    if x_dtype.kind != "f":
        return (None,)  # integers and bools get no gradient
    return (emit.op("cast", cotangent, dtype=x_dtype.name),)


# ---------------------------------------------------------------------------
# Reductions.


# The reductions call the ufuncs' reduce directly: it is what np.sum, np.max, ... run on
# an ndarray, without their Python-level argument handling (several microseconds a call).
def _sum(x: np.ndarray, *, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.add.reduce(x, axis=axis, dtype=x.dtype, keepdims=keepdims)


def _prod(x: np.ndarray, *, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.multiply.reduce(x, axis=axis, dtype=x.dtype, keepdims=keepdims)


def _mean(x: np.ndarray, *, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    count = x.size if axis is None else math.prod(x.shape[a] for a in axis)
    if count == 0:
        # np.mean would warn through Python's warnings, and 0 / 0 gives a nan whose
        # sign bit depends on the CPU; this nan is the same everywhere.
        return np.full_like(np.sum(x, axis=axis, keepdims=keepdims), np.nan)
    return np.mean(x, axis=axis, keepdims=keepdims)


def _max(x: np.ndarray, *, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.maximum.reduce(x, axis=axis, keepdims=keepdims)


def _min(x: np.ndarray, *, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    return np.minimum.reduce(x, axis=axis, keepdims=keepdims)


def _reduce_sum_gradient(
    emit: GraphEmitter,
    cotangent: int,
    inputs: tuple[int, ...],
    result: int,
    *,
    axis: tuple[int, ...] | None,
    keepdims: bool,
) -> tuple[int | None, ...]:
    (x,) = inputs
    kept = _with_reduced_axes_kept(emit, cotangent, x, axis, keepdims)
    return (emit.op("broadcast_like", kept, x),)


def _reduced_count(emit: GraphEmitter, x: int, axis: tuple[int, ...] | None) -> int:
    """How many elements of `x` each result of a reduction over `axis` covers, in x's dtype."""
    x_type = emit.type_of(x)
    dims = [x_type.shape[a] for a in _normalize_axes(axis, x_type)]
    if None not in dims:
        return _scalar(emit, math.prod(dims), x)
    return emit.op("reduce_sum", emit.op("ones_like", x), axis=axis, keepdims=True)


def _reduce_mean_gradient(
    emit: GraphEmitter,
    cotangent: int,
    inputs: tuple[int, ...],
    result: int,
    *,
    axis: tuple[int, ...] | None,
    keepdims: bool,
) -> tuple[int | None, ...]:
    (x,) = inputs
    kept = _with_reduced_axes_kept(emit, cotangent, x, axis, keepdims)
    share = emit.op("divide", kept, _reduced_count(emit, x, axis))
    return (emit.op("broadcast_like", share, x),)


def _reduce_prod_gradient(
    emit: GraphEmitter,
    cotangent: int,
    inputs: tuple[int, ...],
    result: int,
    *,
    axis: tuple[int, ...] | None,
    keepdims: bool,
) -> tuple[int | None, ...]:
    # d prod / d x_i is the product of the other elements. prod / x_i fails at zeros, so
    # count them: with none it is prod / x_i; with one, the product of the non-zero
    # elements at the zero and 0 elsewhere; with more, 0 everywhere.
    (x,) = inputs
    zero, one = _scalar(emit, 0, x), _scalar(emit, 1, x)
    is_zero = emit.op("equal", x, zero)
    nonzero_x = emit.op("where", is_zero, one, x)
    nonzero_product = emit.op("reduce_prod", nonzero_x, axis=axis, keepdims=True)
    zeros = emit.op(
        "reduce_sum",
        emit.op("cast", is_zero, dtype=emit.type_of(x).dtype.name),
        axis=axis,
        keepdims=True,
    )
    lone_zero = emit.op("logical_and", is_zero, emit.op("equal", zeros, one))
    others = emit.op(
        "where",
        emit.op("equal", zeros, zero),
        emit.op("divide", nonzero_product, nonzero_x),
        emit.op("where", lone_zero, nonzero_product, zero),
    )
    kept = _with_reduced_axes_kept(emit, cotangent, x, axis, keepdims)
    return (emit.op("multiply", kept, others),)


def _extremum_reduction_gradient(
    emit: GraphEmitter,
    cotangent: int,
    inputs: tuple[int, ...],
    result: int,
    *,
    axis: tuple[int, ...] | None,
    keepdims: bool,
) -> tuple[int | None, ...]:
    # The elements equal to the max (min) share the cotangent equally, as in JAX.
    (x,) = inputs
    extremum = _with_reduced_axes_kept(emit, result, x, axis, keepdims)
    hits = emit.op("cast", emit.op("equal", x, extremum), dtype=emit.type_of(x).dtype.name)
    ties = emit.op("reduce_sum", hits, axis=axis, keepdims=True)
    # A nan extremum equals no element: max(ties, 1) gives it a zero gradient, not 0/0.
    ties = emit.op("maximum", ties, _scalar(emit, 1, x))
    kept = _with_reduced_axes_kept(emit, cotangent, x, axis, keepdims)
    return (emit.op("multiply", hits, emit.op("divide", kept, ties)),)


# ---------------------------------------------------------------------------
# Linear algebra.


def _matmul_rule(input_types: Sequence[TensorType]) -> TensorType:
    a, b = input_types
    dtype = _same_dtype(input_types, NUMERIC)
    if a.rank == 0 or b.rank == 0:
        raise FederatedTypeError(f"inputs must have rank >= 1, found {a} and {b}")
    # NumPy's rule: a vector on the left is a row, on the right a column, and
    # the added dim is dropped from the result.
    a_shape = (1, *a.shape) if a.rank == 1 else a.shape
    b_shape = (*b.shape, 1) if b.rank == 1 else b.shape
    try:
        _unify_dim(a_shape[-1], b_shape[-2])
    except ValueError:
        raise FederatedTypeError(
            f"contracted dims differ: {a} has {a_shape[-1]} columns, {b} has {b_shape[-2]} rows"
        ) from None
    batch = _broadcast((TensorType(dtype, a_shape[:-2]), TensorType(dtype, b_shape[:-2])))
    rows = (a_shape[-2],) if a.rank > 1 else ()
    columns = (b_shape[-1],) if b.rank > 1 else ()
    return TensorType(dtype, (*batch, *rows, *columns))


def _matmul_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
) -> tuple[int | None, ...]:
    a, b = inputs
    a_is_vector, b_is_vector = emit.type_of(a).rank == 1, emit.type_of(b).rank == 1
    # Work with matrices: a vector on the left is a row, on the right a column, and the
    # cotangent gets back the dims the product dropped.
    a_matrix = emit.op("expand_dims", a, axis=0) if a_is_vector else a
    b_matrix = emit.op("expand_dims", b, axis=-1) if b_is_vector else b
    g = emit.op("expand_dims", cotangent, axis=-1) if b_is_vector else cotangent
    g = emit.op("expand_dims", g, axis=-2) if a_is_vector else g
    for_a = emit.op("matmul", g, _swap_last_axes(emit, b_matrix))
    for_b = emit.op("matmul", _swap_last_axes(emit, a_matrix), g)
    for_a = emit.op("squeeze", for_a, axis=-2) if a_is_vector else for_a
    for_b = emit.op("squeeze", for_b, axis=-1) if b_is_vector else for_b
    # Batch dims broadcast, so each side sums over the batch dims it did not have.
    return _unbroadcast(emit, for_a, a), _unbroadcast(emit, for_b, b)


# ---------------------------------------------------------------------------
# Shape operations.


def _reshape_rule(input_types: Sequence[TensorType], *, shape: tuple[int, ...]) -> TensorType:
    (x,) = input_types
    if shape.count(-1) > 1:
        raise FederatedTypeError(f"shape {_shape_text(shape)} has more than one -1")
    explicit = math.prod(d for d in shape if d != -1)
    known_input = math.prod(d for d in x.shape if d is not None)
    impossible = FederatedTypeError(f"cannot reshape {x} to shape {_shape_text(shape)}")
    if -1 in shape:
        if explicit == 0:
            raise impossible  # the -1 would be ambiguous
        if not x.is_fully_defined():
            return TensorType(x.dtype, tuple(None if d == -1 else d for d in shape))
        if known_input % explicit:
            raise impossible
        return TensorType(x.dtype, tuple(known_input // explicit if d == -1 else d for d in shape))
    if x.is_fully_defined():
        if known_input != explicit:
            raise impossible
    elif (known_input == 0 and explicit != 0) or (known_input and explicit % known_input):
        raise impossible  # no size of the unknown dims gives `explicit` elements
    return TensorType(x.dtype, shape)


def _reshape(x: np.ndarray, *, shape: tuple[int, ...]) -> np.ndarray:
    return np.reshape(x, shape)


def _transpose_rule(
    input_types: Sequence[TensorType], *, perm: tuple[int, ...] | None
) -> TensorType:
    (x,) = input_types
    if perm is None:
        return TensorType(x.dtype, x.shape[::-1])
    if sorted(perm) != list(range(x.rank)):
        raise FederatedTypeError(
            f"perm {_shape_text(perm)} is not a permutation of the {x.rank} axes of {x}"
        )
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm))


def _transpose(x: np.ndarray, *, perm: tuple[int, ...] | None) -> np.ndarray:
    return np.transpose(x, perm)


def _broadcast_into(x: TensorType, target: tuple[Dim, ...], what: str) -> tuple[Dim, ...]:
    """The shape of `x` broadcast into `target` (NumPy's broadcast_to), with unknown dims."""
    if x.rank > len(target):
        raise FederatedTypeError(f"cannot broadcast {x} to the lower-rank {what}")
    offset = len(target) - x.rank
    result = list(target)
    for i, dim in enumerate(x.shape):
        wanted = target[offset + i]
        if dim == 1 or dim is None or wanted is None or dim == wanted:
            if wanted is None and dim not in (None, 1):
                result[offset + i] = dim  # the target must turn out to be dim
            continue
        raise FederatedTypeError(
            f"cannot broadcast {x} to {what}: axis {offset + i} is {dim}, wanted {wanted}"
        )
    return tuple(result)


def _broadcast_to_rule(input_types: Sequence[TensorType], *, shape: tuple[int, ...]) -> TensorType:
    (x,) = input_types
    if -1 in shape:
        raise FederatedTypeError(f"shape {_shape_text(shape)} must not hold -1")
    return TensorType(x.dtype, _broadcast_into(x, shape, f"shape {_shape_text(shape)}"))


def _broadcast_to(x: np.ndarray, *, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(x, shape)


def _expand_dims_rule(input_types: Sequence[TensorType], *, axis: int) -> TensorType:
    (x,) = input_types
    position = _normalize_axis(axis, x.rank + 1, x)
    return TensorType(x.dtype, (*x.shape[:position], 1, *x.shape[position:]))


def _expand_dims(x: np.ndarray, *, axis: int) -> np.ndarray:
    # A reshape is what np.expand_dims returns, without its axis normalization.
    position = axis if axis >= 0 else axis + x.ndim + 1
    return x.reshape((*x.shape[:position], 1, *x.shape[position:]))


def _squeeze_rule(
    input_types: Sequence[TensorType], *, axis: tuple[int, ...] | None
) -> TensorType:
    (x,) = input_types
    if axis is None:
        if not x.is_fully_defined():
            raise FederatedTypeError(
                f"squeezing all size-1 axes of {x} needs known dims; give axis explicitly"
            )
        return TensorType(x.dtype, tuple(d for d in x.shape if d != 1))
    axes = _normalize_axes(axis, x)
    for a in axes:
        if x.shape[a] not in (1, None):
            raise FederatedTypeError(f"axis {a} of {x} has size {x.shape[a]}, not 1")
    return TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def _squeeze(x: np.ndarray, *, axis: tuple[int, ...] | None) -> np.ndarray:
    return np.squeeze(x, axis=axis)


def _concatenate_rule(input_types: Sequence[TensorType], *, axis: int) -> TensorType:
    dtype = _same_dtype(input_types, ANY)
    first = input_types[0]
    if any(t.rank != first.rank for t in input_types) or first.rank == 0:
        found = ", ".join(str(t) for t in input_types)
        raise FederatedTypeError(f"inputs must have one rank >= 1, found {found}")
    position = _normalize_axis(axis, first.rank, first)
    shape = list(first.shape)
    for t in input_types[1:]:
        for i, dim in enumerate(t.shape):
            if i == position:
                shape[i] = None if shape[i] is None or dim is None else shape[i] + dim
                continue
            try:
                shape[i] = _unify_dim(shape[i], dim)
            except ValueError:
                found = ", ".join(str(t) for t in input_types)
                raise FederatedTypeError(
                    f"inputs differ on axis {i}, which is not the concatenation axis: {found}"
                ) from None
    return TensorType(dtype, shape)


def _concatenate(*xs: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate(xs, axis=axis)


# Slice bounds meaning "to the end" and "to the beginning", whatever the dim:
# NumPy (like Python) clamps bounds, so these work for unknown dims too.
SLICE_TO_END = 2**63 - 1
SLICE_TO_BEGINNING = -(2**63)


def _slice_rule(
    input_types: Sequence[TensorType],
    *,
    start: tuple[int, ...],
    stop: tuple[int, ...],
    step: tuple[int, ...],
) -> TensorType:
    (x,) = input_types
    for attribute_name, values in (("start", start), ("stop", stop), ("step", step)):
        if len(values) != x.rank:
            raise FederatedTypeError(
                f"{attribute_name} {_shape_text(values)} must have one entry per axis of {x}"
            )
    if 0 in step:
        raise FederatedTypeError(f"step {_shape_text(step)} must not hold 0")
    shape = tuple(
        None if dim is None else len(range(*slice(b, e, s).indices(dim)))
        for dim, b, e, s in zip(x.shape, start, stop, step, strict=True)
    )
    return TensorType(x.dtype, shape)


def _slice(
    x: np.ndarray, *, start: tuple[int, ...], stop: tuple[int, ...], step: tuple[int, ...]
) -> np.ndarray:
    return x[tuple(slice(b, e, s) for b, e, s in zip(start, stop, step, strict=True))]


def _take_rule(input_types: Sequence[TensorType], *, axis: int) -> TensorType:
    x, indices = input_types
    _require_kind(indices, SIGNED_INTEGER, "the indices (input 1)")
    if x.rank == 0:
        raise FederatedTypeError(f"cannot take from the scalar {x}")
    position = _normalize_axis(axis, x.rank, x)
    return TensorType(x.dtype, (*x.shape[:position], *indices.shape, *x.shape[position + 1 :]))


def _take(x: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    return np.take(x, indices, axis=axis)


def _broadcast_like_rule(input_types: Sequence[TensorType]) -> TensorType:
    x, like = input_types
    return TensorType(x.dtype, _broadcast_into(x, like.shape, f"the shape of {like}"))


# Up to this many elements broadcast_like copies (one allocation) instead of making a view.
_SMALL_BROADCAST = 4096


def _broadcast_like(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    # Autodiff emits this for every broadcast it undoes; most are no-ops at run time.
    if x.shape == like.shape:
        return x
    if like.size <= _SMALL_BROADCAST:
        # np.broadcast_to costs several microseconds of argument handling; a small
        # copy, the same values, costs one.
        result = np.empty(like.shape, x.dtype)
        result[...] = x
        return result
    return np.broadcast_to(x, like.shape)


def _reshape_like_rule(input_types: Sequence[TensorType]) -> TensorType:
    x, like = input_types
    if x.is_fully_defined() and like.is_fully_defined() and (
        x.num_elements() != like.num_elements()
    ):
        raise FederatedTypeError(f"cannot reshape {x} to the shape of {like}")
    return TensorType(x.dtype, like.shape)


def _reshape_like(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.reshape(x, like.shape)


def _sum_to_like_rule(input_types: Sequence[TensorType]) -> TensorType:
    x, like = input_types
    _require_kind(x, NUMERIC, "input 0")
    _broadcast_into(like, x.shape, f"the shape of {x}")
    return TensorType(x.dtype, like.shape)


def _sum_to_like(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    target = like.shape
    # Autodiff emits this for every broadcast it undoes; most sum over no axis at run
    # time. Those give x itself (a sum over no axes would also turn -0.0 into 0.0).
    if target == x.shape:
        return x
    lead = x.ndim - len(target)
    # `like` broadcasts to x's shape: no more dims, and each is x's or 1.
    if lead < 0 or any(
        dim != 1 and dim != x.shape[lead + i] for i, dim in enumerate(target)
    ):
        raise ValueError(f"shape {list(target)} does not broadcast to {list(x.shape)}")
    axes = tuple(range(lead)) + tuple(
        lead + i for i, dim in enumerate(target) if dim == 1 and x.shape[lead + i] != 1
    )
    return np.add.reduce(x, axis=axes, dtype=x.dtype, keepdims=True).reshape(target)


# ---------------------------------------------------------------------------
# Gradient rules of the shape operations: each moves the cotangent back to where the
# input's elements came from. The `*_like` primitives carry shapes known only when the
# graph runs (an unknown batch size).


def _reshape_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int, **shape: Any
) -> tuple[int | None, ...]:
    (x,) = inputs
    return (_reshaped_like(emit, cotangent, x),)


def _squeeze_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int, **axis: Any
) -> tuple[int | None, ...]:
    (x,) = inputs
    return (_reshaped_like(emit, cotangent, x),)


def _transpose_gradient(
    emit: GraphEmitter,
    cotangent: int,
    inputs: tuple[int, ...],
    result: int,
    *,
    perm: tuple[int, ...] | None,
) -> tuple[int | None, ...]:
    inverse = None if perm is None else tuple(int(i) for i in np.argsort(perm))
    return (emit.op("transpose", cotangent, perm=inverse),)


def _broadcast_to_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int, **shape: Any
) -> tuple[int | None, ...]:
    (x,) = inputs
    return (_unbroadcast(emit, cotangent, x),)


def _expand_dims_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int, *, axis: int
) -> tuple[int | None, ...]:
    return (emit.op("squeeze", cotangent, axis=axis),)


def _concatenated_start(sizes: Sequence[Dim], index: int) -> int | None:
    """Where input `index` of a concatenation starts, counted from the front or else from the
    back (a negative bound); None if unknown sizes on both sides leave it open."""
    if None not in sizes[:index]:
        return sum(sizes[:index])
    tail = sizes[index:]
    if None in tail:
        return None
    return -sum(tail) if sum(tail) else SLICE_TO_END


def _concatenate_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int, *, axis: int
) -> tuple[int | None, ...]:
    types = [emit.type_of(x) for x in inputs]
    rank = types[0].rank
    position = _normalize_axis(axis, rank, types[0])
    sizes = [t.shape[position] for t in types]
    cotangents: list[int | None] = []
    for index, x in enumerate(inputs):
        start = _concatenated_start(sizes, index)
        stop = _concatenated_start(sizes, index + 1)
        if start is None or stop is None:
            found = ", ".join(str(t) for t in types)
            raise FederatedTypeError(
                f"the gradient of concatenate needs to know where input {index} lies on axis "
                f"{position}: the sizes of all inputs before it or all after it, found {found}"
            )
        starts = [SLICE_TO_BEGINNING] * rank
        stops = [SLICE_TO_END] * rank
        starts[position], stops[position] = start, stop
        part = emit.op("slice", cotangent, start=starts, stop=stops, step=(1,) * rank)
        cotangents.append(_reshaped_like(emit, part, x))
    return tuple(cotangents)


def _is_whole_axis(dim: Dim, start: int, stop: int, step: int) -> bool:
    if dim is not None:
        return range(*slice(start, stop, step).indices(dim)) == range(dim)
    return step == 1 and start in (0, SLICE_TO_BEGINNING) and stop == SLICE_TO_END


def _unslice_known_axis(
    emit: GraphEmitter, g: int, axis: int, rank: int, dim: int, bounds: slice
) -> int | None:
    """`g` with the elements of axis `axis` put back at the positions the slice took them
    from, zeros elsewhere; None if the slice took nothing."""
    positions = np.arange(dim)[bounds]
    if positions.size == 0:
        return None
    source = np.zeros(dim, dtype=np.int64)
    source[positions] = np.arange(positions.size)
    taken = np.zeros(dim, dtype=bool)
    taken[positions] = True
    gathered = emit.op("take", g, emit.constant(source), axis=axis)
    mask = emit.constant(taken.reshape((dim,) + (1,) * (rank - axis - 1)))
    return emit.op("where", mask, gathered, _scalar(emit, 0, g))


def _unslice_unknown_axis(
    emit: GraphEmitter,
    g: int,
    x: int,
    axis: int,
    start: tuple[int, ...],
    stop: tuple[int, ...],
    step: tuple[int, ...],
) -> int:
    """`g` padded with zeros on axis `axis` (a step-1 slice of an unknown dim): the zeros are
    shaped like the parts of `x` before and after the slice, so no size is needed."""

    def zeros_like_part(lo: int, hi: int) -> int:
        # Axes before `axis` are already whole again; axes after it are still sliced.
        starts = [SLICE_TO_BEGINNING] * axis + [lo] + list(start[axis + 1 :])
        stops = [SLICE_TO_END] * axis + [hi] + list(stop[axis + 1 :])
        steps = [1] * (axis + 1) + list(step[axis + 1 :])
        return emit.op("zeros_like", emit.op("slice", x, start=starts, stop=stops, step=steps))

    before = zeros_like_part(SLICE_TO_BEGINNING, start[axis])
    after = zeros_like_part(stop[axis], SLICE_TO_END)
    return emit.op("concatenate", before, g, after, axis=axis)


def _slice_gradient(
    emit: GraphEmitter,
    cotangent: int,
    inputs: tuple[int, ...],
    result: int,
    *,
    start: tuple[int, ...],
    stop: tuple[int, ...],
    step: tuple[int, ...],
) -> tuple[int | None, ...]:
    (x,) = inputs
    x_type = emit.type_of(x)
    g: int | None = cotangent
    for axis, dim in enumerate(x_type.shape):
        if _is_whole_axis(dim, start[axis], stop[axis], step[axis]):
            continue
        if dim is not None:
            bounds = slice(start[axis], stop[axis], step[axis])
            g = _unslice_known_axis(emit, g, axis, x_type.rank, dim, bounds)
            if g is None:
                return (emit.op("zeros_like", x),)
        elif step[axis] == 1:
            g = _unslice_unknown_axis(emit, g, x, axis, start, stop, step)
        else:
            raise FederatedTypeError(
                f"the gradient of a slice with step {step[axis]} needs axis {axis} of {x_type} "
                "known"
            )
    return (_reshaped_like(emit, g, x),)


def _take_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int, *, axis: int
) -> tuple[int | None, ...]:
    x, indices = inputs
    x_type, indices_type = emit.type_of(x), emit.type_of(indices)
    position = _normalize_axis(axis, x_type.rank, x_type)
    depth = x_type.shape[position]
    if depth is None:
        raise FederatedTypeError(
            f"the gradient of take along axis {position} of {x_type} needs that dim known"
        )
    # Each taken element adds its cotangent where it came from: compare every index with
    # every position (one_hot), select the cotangent there, and sum over the indices.
    wrapped = emit.op(  # an index may count from the end; one_hot needs [0, depth)
        "mod", emit.op("cast", indices, dtype="int64"), emit.constant(np.int64(depth))
    )
    hits = emit.op("one_hot", wrapped, depth=depth, dtype="bool")  # indices.shape + (depth,)
    for _ in range(x_type.rank - position - 1):
        hits = emit.op("expand_dims", hits, axis=-1)
    spread = emit.op("expand_dims", cotangent, axis=position + indices_type.rank)
    selected = emit.op("where", hits, spread, _scalar(emit, 0, cotangent))
    if indices_type.rank:
        index_axes = tuple(range(position, position + indices_type.rank))
        selected = emit.op("reduce_sum", selected, axis=index_axes)
    return _reshaped_like(emit, selected, x), None


def _broadcast_like_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
) -> tuple[int | None, ...]:
    x, _ = inputs
    return _unbroadcast(emit, cotangent, x), None


def _reshape_like_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
) -> tuple[int | None, ...]:
    x, _ = inputs
    return _reshaped_like(emit, cotangent, x), None


def _sum_to_like_gradient(
    emit: GraphEmitter, cotangent: int, inputs: tuple[int, ...], result: int
) -> tuple[int | None, ...]:
    x, _ = inputs
    return emit.op("broadcast_like", cotangent, x), None


# ---------------------------------------------------------------------------
# Constants and encodings.


def _constant_rule(input_types: Sequence[TensorType], *, value: np.ndarray) -> TensorType:
    return TensorType(value.dtype, value.shape)


def _constant(*, value: np.ndarray) -> np.ndarray:
    return value


def _one_hot_rule(
    input_types: Sequence[TensorType], *, depth: int, dtype: str
) -> TensorType:
    (indices,) = input_types
    _require_kind(indices, INTEGER, "the indices")
    if depth < 0:
        raise FederatedTypeError(f"depth must be >= 0, found {depth}")
    return TensorType(dtype, (*indices.shape, depth))


def _one_hot(indices: np.ndarray, *, depth: int, dtype: str) -> np.ndarray:
    return (indices[..., np.newaxis] == np.arange(depth)).astype(dtype)


# ---------------------------------------------------------------------------
# Keyed randomness. Only the Philox bit generator's raw stream (stable across
# NumPy versions) and basic IEEE arithmetic (+ - * / sqrt floor, correctly
# rounded everywhere) are used: NumPy's log/sin/cos may use different SIMD
# code on different CPUs, so `_log` and `_sin_cos` are written out below.

_SIGNIFICAND_BITS = {"float16": 11, "float32": 24, "float64": 53}


def _seed_word(seed: np.ndarray) -> int:
    return int(seed) % 2**64  # int32 and int64 seeds of one value give one stream


def _philox_bits(seed: np.ndarray, count: int) -> np.ndarray:
    generator = np.random.Philox(key=np.array([_seed_word(seed), 0], dtype=np.uint64))
    return generator.random_raw(count)


def _unit_interval(bits: np.ndarray, significand_bits: int) -> np.ndarray:
    """Floats k * 2**-m on [0, 1) from the top m bits: exact in float64 and in the dtype."""
    return (bits >> np.uint64(64 - significand_bits)).astype(np.float64) * 2.0**-significand_bits


_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
# log(m) = 2 * atanh(s) = 2 * (s + s**3/3 + s**5/5 + ...), s = (m - 1) / (m + 1).
_ATANH_SERIES = tuple(1.0 / (2 * k + 1) for k in range(1, 13))


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive, finite float64 values, from basic arithmetic only."""
    mantissa, exponent = np.frexp(x)  # exact: x = mantissa * 2**exponent, mantissa in [0.5, 1)
    small = mantissa < math.sqrt(0.5)
    mantissa = np.where(small, mantissa * 2.0, mantissa)
    exponent = (exponent - small).astype(np.float64)
    s = (mantissa - 1.0) / (mantissa + 1.0)
    z = s * s
    series = np.full_like(z, _ATANH_SERIES[-1])
    for coefficient in _ATANH_SERIES[-2::-1]:
        series = series * z + coefficient
    log_mantissa = 2.0 * s + 2.0 * (s * z * series)
    return exponent * _LN2_HI + (exponent * _LN2_LO + log_mantissa)


_SIN_SERIES = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(11))
_COS_SERIES = tuple((-1) ** k / math.factorial(2 * k) for k in range(11))


def _polynomial(z: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    result = np.full_like(z, coefficients[-1])
    for coefficient in coefficients[-2::-1]:
        result = result * z + coefficient
    return result


def _sin_cos_of_turns(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin(2 pi u) and cos(2 pi u) for u in [0, 1), from basic arithmetic only."""
    quarters = u * 4.0  # exact
    quadrant = np.floor(quarters)
    rest = quarters - quadrant  # exact, in [0, 1)
    upper = rest >= 0.5
    rest = np.where(upper, rest - 1.0, rest)  # exact, in [-0.5, 0.5)
    quadrant = (quadrant.astype(np.int64) + upper) % 4
    angle = rest * (math.pi / 2)  # in [-pi/4, pi/4): the series converge fast
    z = angle * angle
    sin = angle * _polynomial(z, _SIN_SERIES)
    cos = _polynomial(z, _COS_SERIES)
    # sin and cos of angle + quadrant * pi/2.
    return np.choose(quadrant, [sin, cos, -sin, -cos]), np.choose(quadrant, [cos, -sin, -cos, sin])


def _uniform(seed: np.ndarray, *, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    count = math.prod(shape)
    values = _unit_interval(_philox_bits(seed, count), _SIGNIFICAND_BITS[dtype])
    return values.astype(dtype).reshape(shape)


def _normal(seed: np.ndarray, *, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    count = math.prod(shape)
    pairs = (count + 1) // 2
    bits = _philox_bits(seed, 2 * pairs)
    # Box-Muller: 1 - u is in (0, 1], so the log is finite.
    radius_source = 1.0 - _unit_interval(bits[0::2], 53)
    turns = _unit_interval(bits[1::2], 53)
    radius = np.sqrt(-2.0 * _log(radius_source))
    sin, cos = _sin_cos_of_turns(turns)
    values = np.empty(2 * pairs, dtype=np.float64)
    values[0::2] = radius * cos
    values[1::2] = radius * sin
    return values[:count].astype(dtype).reshape(shape)


def _random_rule(
    input_types: Sequence[TensorType], *, shape: tuple[int, ...], dtype: str
) -> TensorType:
    (seed,) = input_types
    _require_scalar_integer(seed, "the seed")
    if -1 in shape:
        raise FederatedTypeError(f"shape {_shape_text(shape)} must be fully defined, without -1")
    if DTYPES[dtype].kind != "f":
        raise FederatedTypeError(f"dtype must be {_kinds_text(FLOAT)}, found {dtype}")
    return TensorType(dtype, shape)


def _require_scalar_integer(t: TensorType, what: str) -> None:
    _require_kind(t, INTEGER, what)
    if t.rank != 0:
        raise FederatedTypeError(f"{what} must be a scalar, found {t}")


def _fold_in_rule(input_types: Sequence[TensorType]) -> TensorType:
    seed, data = input_types
    _require_scalar_integer(seed, "the seed (input 0)")
    _require_scalar_integer(data, "the data (input 1)")
    return TensorType(np.int64, ())


def _fold_in(seed: np.ndarray, data: np.ndarray) -> np.ndarray:
    message = _seed_word(seed).to_bytes(8, "little") + (int(data) % 2**64).to_bytes(8, "little")
    digest = hashlib.blake2b(message, digest_size=8, person=b"fedcc.fold_in").digest()
    return np.array(int.from_bytes(digest, "little", signed=True), dtype=np.int64)


_RANDOM_ATTRIBUTES = {"shape": Attribute("shape"), "dtype": Attribute("dtype", "float32")}


# ---------------------------------------------------------------------------
# The table.

# (name, NumPy function, input kinds, result dtype (None: the inputs'), gradient, meaning)
_ELEMENTWISE_BINARIES = (
    ("add", np.add, NUMERIC, None, _binary_gradient(_add_partials), "x + y"),
    ("subtract", np.subtract, NUMERIC, None, _binary_gradient(_subtract_partials), "x - y"),
    ("multiply", np.multiply, NUMERIC, None, _binary_gradient(_multiply_partials), "x * y"),
    ("divide", np.divide, FLOAT, None, _binary_gradient(_divide_partials), "x / y"),
    ("floor_divide", np.floor_divide, NUMERIC, None, None, "x // y"),
    ("mod", np.mod, NUMERIC, None, _binary_gradient(_mod_partials),
     "x % y (the sign of y, like Python)"),
    ("power", np.power, NUMERIC, None, _binary_gradient(_power_partials), "x ** y"),
    ("maximum", np.maximum, ANY, None, _binary_gradient(_extremum_partials),
     "np.maximum(x, y) (nan wins)"),
    ("minimum", np.minimum, ANY, None, _binary_gradient(_extremum_partials),
     "np.minimum(x, y) (nan wins)"),
    ("equal", np.equal, ANY, "bool", None, "x == y"),
    ("not_equal", np.not_equal, ANY, "bool", None, "x != y"),
    ("less", np.less, ANY, "bool", None, "x < y"),
    ("less_equal", np.less_equal, ANY, "bool", None, "x <= y"),
    ("greater", np.greater, ANY, "bool", None, "x > y"),
    ("greater_equal", np.greater_equal, ANY, "bool", None, "x >= y"),
    ("logical_and", np.logical_and, BOOL, None, None, "x & y on bools"),
    ("logical_or", np.logical_or, BOOL, None, None, "x | y on bools"),
    ("logical_xor", np.logical_xor, BOOL, None, None, "x ^ y on bools"),
)

# (name, function, input kinds, gradient, meaning)
_ELEMENTWISE_UNARIES = (
    ("negative", np.negative, NUMERIC, _chain(_negative_derivative), "-x"),
    ("abs", np.abs, NUMERIC, _chain(_abs_derivative), "np.abs(x)"),
    ("sign", np.sign, NUMERIC, None, "np.sign(x)"),
    ("exp", np.exp, FLOAT, _chain(_exp_derivative), "np.exp(x)"),
    ("log", np.log, FLOAT, _chain(_log_derivative), "np.log(x)"),
    ("log1p", np.log1p, FLOAT, _chain(_log1p_derivative), "np.log1p(x)"),
    ("expm1", np.expm1, FLOAT, _chain(_expm1_derivative), "np.expm1(x)"),
    ("tanh", np.tanh, FLOAT, _chain(_tanh_derivative), "np.tanh(x)"),
    ("sqrt", np.sqrt, FLOAT, _chain(_sqrt_derivative), "np.sqrt(x)"),
    ("square", np.square, NUMERIC, _chain(_square_derivative), "x * x"),
    ("reciprocal", np.reciprocal, FLOAT, _chain(_reciprocal_derivative), "1 / x"),
    ("sigmoid", _sigmoid, FLOAT, _chain(_sigmoid_derivative),
     "1 / (1 + exp(-x)), computed without overflow"),
    ("floor", np.floor, FLOAT, None, "np.floor(x)"),
    ("ceil", np.ceil, FLOAT, None, "np.ceil(x)"),
    ("round", np.rint, FLOAT, None, "np.round(x): halves to even"),
    ("sin", np.sin, FLOAT, _chain(_sin_derivative), "np.sin(x)"),
    ("cos", np.cos, FLOAT, _chain(_cos_derivative), "np.cos(x)"),
    ("logical_not", np.logical_not, BOOL, None, "~x on bools"),
    # As jax.lax.stop_gradient: a constant to autodiff, e.g. the row maximum that a
    # log-sum-exp subtracts (its gradient contributions cancel; computing them is waste).
    ("stop_gradient", _identity, ANY, None, "x itself; no gradient flows back through it"),
)

# (name, function, input kinds, needs a non-empty axis, gradient, meaning)
_REDUCTIONS = (
    ("reduce_sum", _sum, NUMERIC, False, _reduce_sum_gradient,
     "np.sum(x, axis, dtype=x.dtype, keepdims)"),
    ("reduce_prod", _prod, NUMERIC, False, _reduce_prod_gradient,
     "np.prod(x, axis, dtype=x.dtype, keepdims)"),
    ("reduce_mean", _mean, FLOAT, False, _reduce_mean_gradient, "np.mean(x, axis, keepdims)"),
    ("reduce_max", _max, ANY, True, _extremum_reduction_gradient, "np.max(x, axis, keepdims)"),
    ("reduce_min", _min, ANY, True, _extremum_reduction_gradient, "np.min(x, axis, keepdims)"),
)

for _name, _function, _kinds, _result, _gradient, _meaning in _ELEMENTWISE_BINARIES:
    register(_elementwise_binary(_name, _function, _kinds, _result, _gradient, _meaning))
for _name, _function, _kinds, _gradient, _meaning in _ELEMENTWISE_UNARIES:
    register(_elementwise_unary(_name, _function, _kinds, _gradient, _meaning))
for _name, _function, _kinds, _nonempty, _gradient, _meaning in _REDUCTIONS:
    register(_reduction(_name, _function, _kinds, _nonempty, _gradient, _meaning))

register(_arg_reduction("argmax", np.argmax, "np.argmax(x, axis, keepdims) as int64"))
register(_arg_reduction("argmin", np.argmin, "np.argmin(x, axis, keepdims) as int64"))

register(Primitive(
    "where", "np.where(condition, x, y), with broadcasting", 3, _where_rule, np.where,
    gradient=_where_gradient,
))
register(Primitive(
    "clip", "np.minimum(np.maximum(x, lo), hi), with broadcasting", 3, _clip_rule, _clip,
    gradient=_clip_gradient,
))
register(Primitive(
    "cast", "x.astype(dtype); float to int truncates and saturates, nan gives 0", 1,
    _cast_rule, _cast, {"dtype": Attribute("dtype")}, gradient=_cast_gradient,
))
register(Primitive(
    "zeros_like", "np.zeros_like(x)", 1, _same_as_input_rule, np.zeros_like,
))
register(Primitive(
    "ones_like", "np.ones_like(x)", 1, _same_as_input_rule, np.ones_like,
))
register(Primitive(
    "matmul", "x @ y (np.matmul: vectors, matrices and batches)", 2, _matmul_rule, np.matmul,
    gradient=_matmul_gradient,
))
register(Primitive(
    "reshape", "np.reshape(x, shape); one dim may be -1", 1, _reshape_rule, _reshape,
    {"shape": Attribute("shape")}, gradient=_reshape_gradient,
))
register(Primitive(
    "transpose", "np.transpose(x, perm); perm None reverses the axes", 1, _transpose_rule,
    _transpose, {"perm": Attribute("axes", None)}, gradient=_transpose_gradient,
))
register(Primitive(
    "broadcast_to", "np.broadcast_to(x, shape)", 1, _broadcast_to_rule, _broadcast_to,
    {"shape": Attribute("shape")}, gradient=_broadcast_to_gradient,
))
register(Primitive(
    "expand_dims", "np.expand_dims(x, axis)", 1, _expand_dims_rule, _expand_dims,
    {"axis": Attribute("int")}, gradient=_expand_dims_gradient,
))
register(Primitive(
    "squeeze", "np.squeeze(x, axis)", 1, _squeeze_rule, _squeeze,
    {"axis": Attribute("axes", None)}, gradient=_squeeze_gradient,
))
register(Primitive(
    "concatenate", "np.concatenate(xs, axis)", None, _concatenate_rule, _concatenate,
    {"axis": Attribute("int", 0)}, gradient=_concatenate_gradient,
))
register(Primitive(
    "slice", "x[start0:stop0:step0, start1:stop1:step1, ...], one triple per axis", 1,
    _slice_rule, _slice,
    {"start": Attribute("ints"), "stop": Attribute("ints"), "step": Attribute("ints")},
    gradient=_slice_gradient,
))
register(Primitive(
    "take", "np.take(x, indices, axis): gather along one axis", 2, _take_rule, _take,
    {"axis": Attribute("int", 0)}, gradient=_take_gradient,
))
register(Primitive(
    "broadcast_like", "np.broadcast_to(x, like.shape)", 2, _broadcast_like_rule,
    _broadcast_like, gradient=_broadcast_like_gradient,
))
register(Primitive(
    "reshape_like", "np.reshape(x, like.shape)", 2, _reshape_like_rule, _reshape_like,
    gradient=_reshape_like_gradient,
))
register(Primitive(
    "sum_to_like", "sums x over the axes that broadcasting `like` to x's shape stretched", 2,
    _sum_to_like_rule, _sum_to_like, gradient=_sum_to_like_gradient,
))
register(Primitive(
    "constant", "the tensor `value`", 0, _constant_rule, _constant,
    {"value": Attribute("tensor")},
))
register(Primitive(
    "one_hot", "(indices[..., None] == np.arange(depth)).astype(dtype)", 1, _one_hot_rule,
    _one_hot, {"depth": Attribute("int"), "dtype": Attribute("dtype", "float32")},
))
register(Primitive(
    "random_uniform", "keyed uniform floats on [0, 1) (Philox bits)", 1, _random_rule,
    _uniform, _RANDOM_ATTRIBUTES,
))
register(Primitive(
    "random_normal", "keyed standard normal floats (Philox bits, Box-Muller)", 1, _random_rule,
    _normal, _RANDOM_ATTRIBUTES,
))
register(Primitive(
    "random_fold_in", "a new int64 seed from a seed and an integer (BLAKE2b)", 2,
    _fold_in_rule, _fold_in,
))
