from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_UINT16: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_UINT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]

class PlacementLiteral(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLACEMENT_LITERAL_UNSPECIFIED: _ClassVar[PlacementLiteral]
    PLACEMENT_LITERAL_CLIENTS: _ClassVar[PlacementLiteral]
    PLACEMENT_LITERAL_SERVER: _ClassVar[PlacementLiteral]
DTYPE_UNSPECIFIED: DType
DTYPE_BOOL: DType
DTYPE_INT8: DType
DTYPE_INT16: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_UINT8: DType
DTYPE_UINT16: DType
DTYPE_UINT32: DType
DTYPE_UINT64: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
PLACEMENT_LITERAL_UNSPECIFIED: PlacementLiteral
PLACEMENT_LITERAL_CLIENTS: PlacementLiteral
PLACEMENT_LITERAL_SERVER: PlacementLiteral

class Program(_message.Message):
    __slots__ = ("format_version", "computations", "metadata", "types", "nodes")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPUTATIONS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    computations: _containers.RepeatedCompositeFieldContainer[Computation]
    metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    types: _containers.RepeatedCompositeFieldContainer[Type]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, format_version: _Optional[int] = ..., computations: _Optional[_Iterable[_Union[Computation, _Mapping]]] = ..., metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ..., types: _Optional[_Iterable[_Union[Type, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class Computation(_message.Message):
    __slots__ = ("name", "root")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    name: str
    root: int
    def __init__(self, name: _Optional[str] = ..., root: _Optional[int] = ...) -> None: ...

class MetadataEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "content")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ...) -> None: ...

class Type(_message.Message):
    __slots__ = ("tensor", "struct", "sequence", "function", "federated", "placement")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    STRUCT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    tensor: TensorType
    struct: StructType
    sequence: SequenceType
    function: FunctionType
    federated: FederatedType
    placement: PlacementType
    def __init__(self, tensor: _Optional[_Union[TensorType, _Mapping]] = ..., struct: _Optional[_Union[StructType, _Mapping]] = ..., sequence: _Optional[_Union[SequenceType, _Mapping]] = ..., function: _Optional[_Union[FunctionType, _Mapping]] = ..., federated: _Optional[_Union[FederatedType, _Mapping]] = ..., placement: _Optional[_Union[PlacementType, _Mapping]] = ...) -> None: ...

class TensorType(_message.Message):
    __slots__ = ("dtype", "dims")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class StructType(_message.Message):
    __slots__ = ("elements",)
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    elements: _containers.RepeatedCompositeFieldContainer[StructTypeElement]
    def __init__(self, elements: _Optional[_Iterable[_Union[StructTypeElement, _Mapping]]] = ...) -> None: ...

class StructTypeElement(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[int] = ...) -> None: ...

class SequenceType(_message.Message):
    __slots__ = ("element",)
    ELEMENT_FIELD_NUMBER: _ClassVar[int]
    element: int
    def __init__(self, element: _Optional[int] = ...) -> None: ...

class FunctionType(_message.Message):
    __slots__ = ("parameter", "result")
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    parameter: int
    result: int
    def __init__(self, parameter: _Optional[int] = ..., result: _Optional[int] = ...) -> None: ...

class FederatedType(_message.Message):
    __slots__ = ("member", "placement", "all_equal")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ALL_EQUAL_FIELD_NUMBER: _ClassVar[int]
    member: int
    placement: PlacementLiteral
    all_equal: bool
    def __init__(self, member: _Optional[int] = ..., placement: _Optional[_Union[PlacementLiteral, str]] = ..., all_equal: bool = ...) -> None: ...

class PlacementType(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Node(_message.Message):
    __slots__ = ("type", "reference", "block", "call", "struct", "selection", "intrinsic", "placement", "literal", "data", "local_graph")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    STRUCT_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    INTRINSIC_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    LITERAL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LOCAL_GRAPH_FIELD_NUMBER: _ClassVar[int]
    type: int
    reference: Reference
    block: Block
    call: Call
    struct: Struct
    selection: Selection
    intrinsic: Intrinsic
    placement: Placement
    literal: Literal
    data: Data
    local_graph: LocalGraph
    def __init__(self, type: _Optional[int] = ..., reference: _Optional[_Union[Reference, _Mapping]] = ..., block: _Optional[_Union[Block, _Mapping]] = ..., call: _Optional[_Union[Call, _Mapping]] = ..., struct: _Optional[_Union[Struct, _Mapping]] = ..., selection: _Optional[_Union[Selection, _Mapping]] = ..., intrinsic: _Optional[_Union[Intrinsic, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., literal: _Optional[_Union[Literal, _Mapping]] = ..., data: _Optional[_Union[Data, _Mapping]] = ..., local_graph: _Optional[_Union[LocalGraph, _Mapping]] = ..., **kwargs) -> None: ...

class Reference(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Lambda(_message.Message):
    __slots__ = ("parameter_name", "parameter_type", "result")
    PARAMETER_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    parameter_name: str
    parameter_type: int
    result: int
    def __init__(self, parameter_name: _Optional[str] = ..., parameter_type: _Optional[int] = ..., result: _Optional[int] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("locals", "result")
    LOCALS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    locals: _containers.RepeatedCompositeFieldContainer[Binding]
    result: int
    def __init__(self, locals: _Optional[_Iterable[_Union[Binding, _Mapping]]] = ..., result: _Optional[int] = ...) -> None: ...

class Binding(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("function", "argument")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    ARGUMENT_FIELD_NUMBER: _ClassVar[int]
    function: int
    argument: int
    def __init__(self, function: _Optional[int] = ..., argument: _Optional[int] = ...) -> None: ...

class Struct(_message.Message):
    __slots__ = ("elements",)
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    elements: _containers.RepeatedCompositeFieldContainer[StructElement]
    def __init__(self, elements: _Optional[_Iterable[_Union[StructElement, _Mapping]]] = ...) -> None: ...

class StructElement(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...

class Selection(_message.Message):
    __slots__ = ("source", "index")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    source: int
    index: int
    def __init__(self, source: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class Intrinsic(_message.Message):
    __slots__ = ("uri",)
    URI_FIELD_NUMBER: _ClassVar[int]
    uri: str
    def __init__(self, uri: _Optional[str] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: PlacementLiteral
    def __init__(self, value: _Optional[_Union[PlacementLiteral, str]] = ...) -> None: ...

class Literal(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: Tensor
    def __init__(self, value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Data(_message.Message):
    __slots__ = ("uri",)
    URI_FIELD_NUMBER: _ClassVar[int]
    uri: str
    def __init__(self, uri: _Optional[str] = ...) -> None: ...

class LocalGraph(_message.Message):
    __slots__ = ("parameter_type", "result_type", "ops", "outputs")
    PARAMETER_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    parameter_type: int
    result_type: int
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    outputs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, parameter_type: _Optional[int] = ..., result_type: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ..., outputs: _Optional[_Iterable[int]] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("primitive", "inputs", "attributes", "result_type")
    PRIMITIVE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    RESULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    primitive: str
    inputs: _containers.RepeatedScalarFieldContainer[int]
    attributes: _containers.RepeatedCompositeFieldContainer[Attribute]
    result_type: int
    def __init__(self, primitive: _Optional[str] = ..., inputs: _Optional[_Iterable[int]] = ..., attributes: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ..., result_type: _Optional[int] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("name", "int_value", "float_value", "bool_value", "string_value", "ints_value", "tensor_value", "none_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INTS_VALUE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_VALUE_FIELD_NUMBER: _ClassVar[int]
    NONE_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    int_value: int
    float_value: float
    bool_value: bool
    string_value: str
    ints_value: IntList
    tensor_value: Tensor
    none_value: NoneValue
    def __init__(self, name: _Optional[str] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., bool_value: bool = ..., string_value: _Optional[str] = ..., ints_value: _Optional[_Union[IntList, _Mapping]] = ..., tensor_value: _Optional[_Union[Tensor, _Mapping]] = ..., none_value: _Optional[_Union[NoneValue, _Mapping]] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class NoneValue(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
