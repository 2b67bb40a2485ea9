"""fedcc: federated computations compiled to a portable IR and run on pluggable backends.

The public API re-exports the parts users need; see DESIGN.md for the contract.
"""

from fedcc.ir.errors import (
    BackendError,
    FedccError,
    FederatedTypeError,
    IRFormatError,
    TextSyntaxError,
    TypeSyntaxError,
)
from fedcc.ir.program import Program
from fedcc.ir.serialization import deserialize, serialize
from fedcc.ir.text import parse_text, to_text
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
from fedcc.persistence import load, save

__version__ = "0.1.0"

__all__ = [
    "CLIENTS",
    "SERVER",
    "BackendError",
    "FedccError",
    "FederatedType",
    "FederatedTypeError",
    "FunctionType",
    "IRFormatError",
    "PlacementLiteral",
    "PlacementType",
    "Program",
    "SequenceType",
    "StructType",
    "TensorType",
    "TextSyntaxError",
    "Type",
    "TypeSyntaxError",
    "deserialize",
    "load",
    "parse_text",
    "parse_type",
    "save",
    "serialize",
    "to_text",
    "to_type",
]
