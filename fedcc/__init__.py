"""fedcc: federated computations compiled to a portable IR and run on pluggable backends.

The public API re-exports the parts users need; see DESIGN.md for the contract.
"""

from fedcc import forms, random
from fedcc.computation import (
    Computation,
    ComputationBundle,
    PolymorphicComputation,
    run,
)
from fedcc.decorators import (
    federated_computation,
    grad,
    numpy_computation,
    stop_gradient,
    value_and_grad,
)

# `fc.eager` is the context manager; the module `fedcc.eager` that defines it is
# imported as `from fedcc.eager import ...`.
from fedcc.eager import eager
from fedcc.intrinsic_api import (
    federated_aggregate,
    federated_apply,
    federated_broadcast,
    federated_eval,
    federated_map,
    federated_max,
    federated_mean,
    federated_min,
    federated_secure_sum,
    federated_secure_sum_bitwidth,
    federated_sum,
    federated_value,
    federated_zip,
    sequence_map,
    sequence_reduce,
    sequence_sum,
)
from fedcc.ir.errors import (
    BackendError,
    FedccError,
    FederatedTypeError,
    IRFormatError,
    TextSyntaxError,
    TypeSyntaxError,
)
from fedcc.ir.program import Program
from fedcc.ir.type_text import parse_type
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
    to_type,
)
from fedcc.optimization import optimize
from fedcc.persistence import deserialize, load, parse_text, save, serialize, to_text
from fedcc.runtimes import backends, use_backend

__version__ = "0.1.0"

# The learning library and federated data build on everything above; they load on first use.
_LAZY_SUBPACKAGES = ("data", "learning")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        import importlib

        return importlib.import_module(f"fedcc.{name}")
    raise AttributeError(f"module 'fedcc' has no attribute {name!r}")


__all__ = [
    "CLIENTS",
    "SERVER",
    "BackendError",
    "Computation",
    "ComputationBundle",
    "FedccError",
    "FederatedType",
    "FederatedTypeError",
    "FunctionType",
    "IRFormatError",
    "PlacementLiteral",
    "PlacementType",
    "PolymorphicComputation",
    "Program",
    "SequenceType",
    "StructType",
    "TensorType",
    "TextSyntaxError",
    "Type",
    "TypeSyntaxError",
    "backends",
    "data",
    "deserialize",
    "eager",
    "federated_aggregate",
    "federated_apply",
    "federated_broadcast",
    "federated_computation",
    "federated_eval",
    "federated_map",
    "federated_max",
    "federated_mean",
    "federated_min",
    "federated_secure_sum",
    "federated_secure_sum_bitwidth",
    "federated_sum",
    "federated_value",
    "federated_zip",
    "forms",
    "grad",
    "learning",
    "load",
    "numpy_computation",
    "optimize",
    "parse_text",
    "parse_type",
    "random",
    "run",
    "save",
    "sequence_map",
    "sequence_reduce",
    "sequence_sum",
    "serialize",
    "stop_gradient",
    "to_text",
    "to_type",
    "use_backend",
    "value_and_grad",
]
