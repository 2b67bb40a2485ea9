"""Aggregators: how the server gets the (weighted) mean of the clients' values (DESIGN §9).

An aggregator factory (`mean()`, `clipped_mean(clip)`, `dp_mean(...)`,
`quantized_mean(bits)`, `secure_mean(bitwidth)`) holds settings only.
`factory.create(value_type)` builds an `Aggregator` for one value type (a
named struct of float tensors, e.g. a model delta): its initial state and its
`next`, a federated computation

    next(state@SERVER, values{V}@CLIENTS, weights{float32}@CLIENTS)
      -> <state=S@SERVER, mean=V@SERVER, measurements=<name=M@SERVER, ...>>

Build-time settings (a clipping norm, a bit count) are constants of the
computations; anything that changes from round to round (the noise key of
`dp_mean`) is in the state, which the caller keeps (FedAvg keeps it in the
process state). `clipped_mean(clip, inner=...)` composes: it clips, then
aggregates with `inner`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

import fedcc as fc
from fedcc import FederatedType, StructType, TensorType, Type
from fedcc.learning import tree
from fedcc.learning.errors import LearningSettingError, check_int, check_number

WEIGHT_TYPE = TensorType(np.float32)
STATE, MEAN, MEASUREMENTS = "state", "mean", "measurements"


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """An aggregator for one value type: its initial state and its `next` computation.

    `measurement_names` are the fields of `next`'s measurements, each a value at SERVER.
    """

    value_type: StructType
    state_type: Type
    initial_state: Any
    next: fc.Computation
    measurement_names: tuple[str, ...]


class AggregatorFactory(abc.ABC):
    """Settings of an aggregator; `create` builds it for a value type."""

    @abc.abstractmethod
    def create(self, value_type: StructType) -> Aggregator:
        """The aggregator of values of `value_type` (a named struct of float tensors)."""


def _check_value_type(value_type: Any, what: str) -> StructType:
    if (
        not isinstance(value_type, StructType)
        or not tree.is_named_struct(value_type)
        or not all(
            isinstance(t, TensorType) and t.dtype.kind == "f" and t.is_fully_defined()
            for t in tree.leaf_types(value_type)
        )
    ):
        raise fc.FederatedTypeError(
            f"{what} aggregates named structs of float tensors of known shapes, found {value_type}"
        )
    return value_type


def _next_computation(
    name: str,
    state_type: Type,
    value_type: StructType,
    body: Callable[[Any, Any, Any], dict[str, Any]],
) -> fc.Computation:
    body.__name__ = name
    return fc.federated_computation(
        FederatedType(state_type, fc.SERVER),
        FederatedType(value_type, fc.CLIENTS),
        FederatedType(WEIGHT_TYPE, fc.CLIENTS),
    )(body)


def _measurements_of(result: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The measurements of an inner aggregator's traced result, by name."""
    return {name: result[MEASUREMENTS][name] for name in names}


# -- mean ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeanFactory(AggregatorFactory):
    """The mean of the clients' values weighted by their weights (`fc.federated_mean`)."""

    def create(self, value_type: StructType) -> Aggregator:
        value_type = _check_value_type(value_type, "mean()")

        def weighted_mean(state, values, weights):
            mean = fc.federated_mean(values, weight=weights)
            return {STATE: state, MEAN: mean, MEASUREMENTS: {}}

        state_type = StructType([])
        computation = _next_computation("weighted_mean", state_type, value_type, weighted_mean)
        return Aggregator(value_type, state_type, (), computation, ())


# -- clipping -----------------------------------------------------------------------------------


def _l2_clipping(value_type: StructType, clip: float) -> fc.Computation:
    """`value -> {"value": value scaled to L2 norm at most clip, "clipped": 1.0 if it was}`."""

    def clip_to_norm(value):
        norm = np.sqrt(tree.squared_norm(value))
        # A zero norm gives clip / 0 = inf, and a factor of 1.
        factor = np.minimum(np.float32(1.0), np.float32(clip) / norm)
        scaled = tree.map_leaves(lambda leaf: leaf * factor.astype(leaf.dtype), value)
        return {"value": scaled, "clipped": (norm > np.float32(clip)).astype(np.float32)}

    return fc.numpy_computation(value_type)(clip_to_norm)


@dataclasses.dataclass(frozen=True)
class ClippedMeanFactory(AggregatorFactory):
    """Clips each client's value to L2 norm `clip` (over all its tensors), then aggregates.

    Measures `clipped_fraction`, the fraction of clients whose value was clipped.
    """

    clip: float
    inner: AggregatorFactory = dataclasses.field(default_factory=MeanFactory)

    def __post_init__(self) -> None:
        check_number("clipped_mean clip", self.clip, minimum=0.0, exclusive_minimum=True)
        if not isinstance(self.inner, AggregatorFactory):
            raise LearningSettingError(
                f"clipped_mean inner must be an aggregator factory, found {self.inner!r}"
            )

    def create(self, value_type: StructType) -> Aggregator:
        value_type = _check_value_type(value_type, "clipped_mean()")
        inner = self.inner.create(value_type)
        if "clipped_fraction" in inner.measurement_names:
            raise LearningSettingError(
                "clipped_mean inside clipped_mean measures clipped_fraction twice; "
                "clip once with the smaller norm"
            )
        clipping = _l2_clipping(value_type, float(self.clip))

        def clipped_mean(state, values, weights):
            clipped = fc.federated_map(clipping, values)
            result = inner.next(state, clipped["value"], weights)
            measurements = _measurements_of(result, inner.measurement_names)
            measurements["clipped_fraction"] = fc.federated_mean(clipped["clipped"])
            return {STATE: result[STATE], MEAN: result[MEAN], MEASUREMENTS: measurements}

        computation = _next_computation("clipped_mean", inner.state_type, value_type, clipped_mean)
        names = (*inner.measurement_names, "clipped_fraction")
        return Aggregator(value_type, inner.state_type, inner.initial_state, computation, names)


# -- differential privacy -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DPMeanFactory(AggregatorFactory):
    """The Gaussian mechanism on the sum of clipped values, over the number of clients.

    Each round: every client's value is clipped to L2 norm `clip` (over all
    its tensors); the server sums the clipped values, adds to every
    coordinate Gaussian noise of standard deviation `noise_multiplier * clip`,
    and divides by the number of participating clients. Weights are ignored:
    each client counts once, so that one client changes the sum by at most
    `clip`.

    Privacy parameters: the L2 sensitivity of the sum to adding or removing
    one client is `clip`, and the noise multiplier (noise standard deviation
    over sensitivity) is `noise_multiplier`; this is user-level DP-FedAvg
    (McMahan et al., "Learning Differentially Private Recurrent Language
    Models", 2018) with the number of clients treated as public. Each round
    is a Gaussian mechanism with noise multiplier `noise_multiplier`; the
    (ε, δ) over many rounds follows from an RDP/moments accountant given the
    number of rounds and the client sampling rate, which the caller chooses.
    The noise comes from keyed randomness: the state holds a key (from
    `seed`), each round draws with `fold_in(key, 0)` and passes on
    `fold_in(key, 1)`, so a run is reproducible bit for bit from `seed`.
    Measures `clipped_fraction`.
    """

    noise_multiplier: float
    clip: float
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("dp_mean noise_multiplier", self.noise_multiplier, minimum=0.0)
        check_number("dp_mean clip", self.clip, minimum=0.0, exclusive_minimum=True)
        check_int("dp_mean seed", self.seed, -(2**63), 2**63 - 1)

    def create(self, value_type: StructType) -> Aggregator:
        value_type = _check_value_type(value_type, "dp_mean()")
        clipping = _l2_clipping(value_type, float(self.clip))
        state_type = StructType([("key", TensorType(np.int64))])
        stddev = float(self.noise_multiplier) * float(self.clip)
        noise_type = StructType(
            [(STATE, state_type), ("total", value_type), ("clients", WEIGHT_TYPE)]
        )

        @fc.numpy_computation(WEIGHT_TYPE)
        def one_client(weight):
            return np.ones_like(weight)

        def add_noise(argument):
            key = argument[STATE]["key"]
            draw_key = fc.random.fold_in(key, np.int64(0))
            leaf_index = iter(range(len(tree.leaves(argument["total"]))))

            def noised(total):
                leaf_key = fc.random.fold_in(draw_key, np.int64(next(leaf_index)))
                noise = fc.random.normal(leaf_key, total.shape, total.dtype)
                return (total + noise * total.dtype.type(stddev)) / argument["clients"]

            mean = tree.map_leaves(noised, argument["total"])
            return {STATE: {"key": fc.random.fold_in(key, np.int64(1))}, MEAN: mean}

        add_noise.__name__ = "add_gaussian_noise"
        noise_step = fc.numpy_computation(noise_type)(add_noise)

        def dp_mean(state, values, weights):
            clipped = fc.federated_map(clipping, values)
            total = fc.federated_sum(clipped["value"])
            clients = fc.federated_sum(fc.federated_map(one_client, weights))
            noised = fc.federated_apply(
                noise_step, fc.federated_zip({STATE: state, "total": total, "clients": clients})
            )
            measurements = {"clipped_fraction": fc.federated_mean(clipped["clipped"])}
            return {STATE: noised[STATE], MEAN: noised[MEAN], MEASUREMENTS: measurements}

        computation = _next_computation("dp_mean", state_type, value_type, dp_mean)
        initial_state = {"key": np.int64(self.seed)}
        return Aggregator(value_type, state_type, initial_state, computation, ("clipped_fraction",))


# -- compression --------------------------------------------------------------------------------

_CODE_DTYPES = ((8, np.uint8), (16, np.uint16))


@dataclasses.dataclass(frozen=True)
class QuantizedMeanFactory(AggregatorFactory):
    """The weighted mean of values each client sends as `bits`-bit codes.

    A client encodes each tensor `v` by its range: `low = min(v)`, `scale =
    (max(v) - low) / (2**bits - 1)`, codes `round((v - low) / scale)` as
    unsigned integers. What leaves the client (the value `federated_aggregate`
    aggregates) is the codes plus two float32 numbers a tensor; the
    aggregation decodes `low + codes * scale` and accumulates the weighted
    sum. Rounding is to nearest, so each element is off by at most `scale / 2`.

    Measures `bytes_saved`: over the round's clients, the float32 bytes of
    the values minus the bytes of the codes packed at `bits` bits and of the
    two range numbers of each tensor.
    """

    bits: int

    def __post_init__(self) -> None:
        check_int("quantized_mean bits", self.bits, 1, 16)

    def create(self, value_type: StructType) -> Aggregator:
        value_type = _check_value_type(value_type, "quantized_mean()")
        bits = int(self.bits)
        levels = float(2**bits - 1)
        code_dtype = next(dtype for width, dtype in _CODE_DTYPES if bits <= width)
        element_counts = [t.num_elements() for t in tree.leaf_types(value_type)]
        saved_per_client = sum(
            4 * count - math.ceil(bits * count / 8) - 8 for count in element_counts
        )

        def encode_leaf(v):
            low = np.min(v)
            scale = (np.max(v) - low) / v.dtype.type(levels)
            safe_scale = np.where(scale > 0, scale, v.dtype.type(1.0))
            codes = np.clip(np.round((v - low) / safe_scale), 0.0, levels).astype(code_dtype)
            return {"codes": codes, "low": low, "scale": scale}

        def encode(value, weight):
            return {"tensors": tree.map_leaves(encode_leaf, value), "weight": weight}

        encode.__name__ = f"quantize_{bits}_bits"
        encode_computation = fc.numpy_computation(value_type, WEIGHT_TYPE)(encode)
        encoded_type = encode_computation.type_signature.result
        accumulator_type = StructType(
            [("total", value_type), ("weight", WEIGHT_TYPE), ("clients", TensorType(np.int64))]
        )

        # The value type's tree says where the encoded tensors are, whatever their names.
        template = tree.zeros_of_type(value_type)

        def decode_leaf(_: Any, encoded: Any) -> Any:
            low, scale = encoded["low"], encoded["scale"]
            return low + encoded["codes"].astype(low.dtype) * scale

        def decode(tensors):
            return tree.map_leaves(decode_leaf, template, tensors)

        @fc.numpy_computation(accumulator_type, encoded_type)
        def accumulate(accumulator, encoded):
            weight = encoded["weight"]
            weighted = tree.map_leaves(lambda v: v * weight, decode(encoded["tensors"]))
            return {
                "total": tree.map_leaves(np.add, accumulator["total"], weighted),
                "weight": accumulator["weight"] + weight,
                "clients": accumulator["clients"] + np.int64(1),
            }

        @fc.numpy_computation(accumulator_type, accumulator_type)
        def merge(first, second):
            return tree.map_leaves(np.add, first, second)

        @fc.numpy_computation(accumulator_type)
        def report(accumulator):
            weight = accumulator["weight"]
            return {
                "mean": tree.map_leaves(lambda total: total / weight, accumulator["total"]),
                "bytes_saved": accumulator["clients"] * np.int64(saved_per_client),
            }

        zero = {
            "total": tree.zeros_of_type(value_type),
            "weight": np.float32(0.0),
            "clients": np.int64(0),
        }

        def quantized_mean(state, values, weights):
            encoded = fc.federated_map(encode_computation, [values, weights])
            result = fc.federated_aggregate(encoded, zero, accumulate, merge, report)
            measurements = {"bytes_saved": result["bytes_saved"]}
            return {STATE: state, MEAN: result["mean"], MEASUREMENTS: measurements}

        state_type = StructType([])
        computation = _next_computation("quantized_mean", state_type, value_type, quantized_mean)
        return Aggregator(value_type, state_type, (), computation, ("bytes_saved",))


# -- secure aggregation -------------------------------------------------------------------------

_MAX_SECURE_BITS = 62  # the int64 sum of many clients' values needs headroom below 2**63


@dataclasses.dataclass(frozen=True)
class SecureMeanFactory(AggregatorFactory):
    """The weighted mean through `fc.federated_secure_sum_bitwidth`: the server sees only sums.

    Each client clips every element to `[-value_bound, value_bound]` and
    quantizes it to an integer `q` in `[0, 2**bitwidth - 1]`; its weight
    becomes an integer `w` (rounded, at most `2**weight_bits - 1`: larger
    weights count as that). The client sends `w * q` (each element below
    `2**(bitwidth + weight_bits)`) and `w` (below `2**weight_bits`) to the
    secure sum; the server divides the sums and maps the mean back to
    `[-value_bound, value_bound]`. The result is the weighted mean of the
    quantized, clipped values: each element is off by at most half a step,
    `value_bound / (2**bitwidth - 1)`, plus what clipping removed.
    """

    bitwidth: int
    value_bound: float = 1.0
    weight_bits: int = 20

    def __post_init__(self) -> None:
        check_int("secure_mean bitwidth", self.bitwidth, 1, _MAX_SECURE_BITS - 1)
        check_int("secure_mean weight_bits", self.weight_bits, 1, _MAX_SECURE_BITS - 1)
        if self.bitwidth + self.weight_bits > _MAX_SECURE_BITS:
            raise LearningSettingError(
                f"secure_mean bitwidth + weight_bits must be at most {_MAX_SECURE_BITS} "
                f"(the sums are int64), found {self.bitwidth} + {self.weight_bits}"
            )
        check_number(
            "secure_mean value_bound", self.value_bound, minimum=0.0, exclusive_minimum=True
        )

    def create(self, value_type: StructType) -> Aggregator:
        value_type = _check_value_type(value_type, "secure_mean()")
        bitwidth, weight_bits = int(self.bitwidth), int(self.weight_bits)
        bound = float(self.value_bound)
        levels = 2**bitwidth - 1
        max_weight = 2**weight_bits - 1
        step = 2.0 * bound / levels

        def encode(value, weight):
            w = np.clip(np.round(weight), 0.0, float(max_weight)).astype(np.int64)

            def quantize(v):
                clipped = np.clip(v.astype(np.float64), -bound, bound)
                q = np.clip(np.round((clipped + bound) / step), 0.0, float(levels))
                return q.astype(np.int64) * w

            return {"values": tree.map_leaves(quantize, value), "weight": w}

        encode.__name__ = f"quantize_for_secure_sum_{bitwidth}_bits"
        encode_computation = fc.numpy_computation(value_type, WEIGHT_TYPE)(encode)
        encoded_type = encode_computation.type_signature.result
        bitwidths = {
            "values": tree.map_leaves(
                lambda _: np.int64(bitwidth + weight_bits), tree.zeros_of_type(value_type)
            ),
            "weight": np.int64(weight_bits),
        }

        @fc.numpy_computation(encoded_type)
        def decode(total):
            weight = total["weight"].astype(np.float64)

            def dequantize(t, like):
                mean = t.astype(np.float64) / weight * step - bound
                return mean.astype(like.dtype)

            zeros = tree.zeros_of_type(value_type)
            return tree.map_leaves(dequantize, total["values"], zeros)

        def secure_mean(state, values, weights):
            encoded = fc.federated_map(encode_computation, [values, weights])
            total = fc.federated_secure_sum_bitwidth(encoded, bitwidths)
            mean = fc.federated_apply(decode, total)
            return {STATE: state, MEAN: mean, MEASUREMENTS: {}}

        state_type = StructType([])
        computation = _next_computation("secure_mean", state_type, value_type, secure_mean)
        return Aggregator(value_type, state_type, (), computation, ())


# -- the factories by their DESIGN names ---------------------------------------------------------


def mean() -> MeanFactory:
    """The weighted mean (the default aggregator)."""
    return MeanFactory()


def clipped_mean(clip: float, inner: AggregatorFactory | None = None) -> ClippedMeanFactory:
    """Clip each client's value to L2 norm `clip`, then aggregate with `inner` (default: mean)."""
    return ClippedMeanFactory(clip, inner if inner is not None else MeanFactory())


def dp_mean(noise_multiplier: float, clip: float, seed: int = 0) -> DPMeanFactory:
    """Differentially private mean: clipping plus Gaussian noise (see `DPMeanFactory`)."""
    return DPMeanFactory(noise_multiplier, clip, seed)


def quantized_mean(bits: int) -> QuantizedMeanFactory:
    """The weighted mean of values sent as `bits`-bit codes (see `QuantizedMeanFactory`)."""
    return QuantizedMeanFactory(bits)


def secure_mean(
    bitwidth: int, value_bound: float = 1.0, weight_bits: int = 20
) -> SecureMeanFactory:
    """The weighted mean through a secure sum (see `SecureMeanFactory`)."""
    return SecureMeanFactory(bitwidth, value_bound, weight_bits)
