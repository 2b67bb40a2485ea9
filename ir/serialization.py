"""Writes programs to the protobuf file format (`proto/fedcc/v1/ir.proto`) and reads them back.

The format is flat (DESIGN §6): a type table and a node table whose entries refer
to earlier entries by index, so no message nests another recursively and a
program of any depth stays within protobuf's parser limits. Writing walks the
program with explicit worklists, shares equal types and equal subtrees, and is
deterministic: the same program gives the same bytes in every process.

Reading trusts nothing. It rebuilds every type and node bottom-up with the `ir`
constructors, which type-check, compares each node's stored type with the type
its construction computes, and checks every index, enum value, tensor size and
limit *before* acting on it, so that malformed, truncated, over-deep or lying
input raises `IRFormatError` naming what is wrong and where: never another
exception, a deep recursion, a hang or an allocation out of proportion to the
input. Reading checks each node's own typing, not scoping: `verify` does that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from fedcc.ir.building_blocks import (
    Block,
    BuildingBlock,
    Call,
    Data,
    Intrinsic,
    Lambda,
    Literal,
    LocalGraph,
    Placement,
    Reference,
    Selection,
    Struct,
)
from fedcc.ir.errors import FedccError, IRFormatError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.program import FORMAT_VERSION, Program
from fedcc.ir.tensors import frozen_array, little_endian_bytes
from fedcc.ir.types import (
    CLIENTS,
    DTYPES,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementLiteral,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
)
from fedcc.proto.fedcc.v1 import ir_pb2 as pb

# Programs nested deeper than this are refused, on writing and on reading: such
# input is taken for corrupt or hostile (DESIGN §6 "over-deep").
MAX_NODE_DEPTH = 1000
# Shared subtrees make a small file stand for a huge tree (each node a pair of
# the previous one: 2**1000 nodes). Tools walk trees, so their unfolded size is bounded.
MAX_UNFOLDED_NODES = 10_000_000
# A type table entry refers to earlier entries, so a small file can describe a type
# whose unfolded form (its text, its leaves) is gigabytes: `<t,t>` nested 40 times.
# Types are interned and compared by identity, so a node's typing costs O(1) per type it
# refers to, however big; but some checks unfold a type (a local graph's tensor leaves,
# a first comparison of two different types, an error message naming it). So reading
# charges each *distinct* type, once, the length of its text (its unfolded size)
# against this allowance plus some per input byte; a type mentioned by a million
# nodes is charged once, not a million times.
TYPE_TEXT_ALLOWANCE = 2**24
TYPE_TEXT_PER_INPUT_BYTE = 256
# How much of a type an error message about the input shows.
SHOWN_TYPE_LENGTH = 400
# NumPy's own limit on the number of dimensions.
MAX_TENSOR_RANK = 64
# Even an empty tensor may not declare absurd dimensions: NumPy could not represent them.
MAX_TENSOR_EXTENT = 2**48

# `serialize(block)` stores a single building block as the one computation of a
# program carrying this metadata entry, so that `deserialize` gives the block back.
SINGLE_COMPUTATION_KEY = "fedcc.single_computation"
SINGLE_COMPUTATION_VALUE = "true"
SINGLE_COMPUTATION_NAME = "main"

# An op's construction runs the primitive's shape rule, registry code that may
# meet a garbage attribute with a NumPy error; the file is still what is wrong.
_CONSTRUCTION_ERRORS = (FedccError, ValueError, TypeError, ArithmeticError, IndexError, KeyError)

_DTYPE_CODES: dict[str, int] = {name: pb.DType.Value(f"DTYPE_{name.upper()}") for name in DTYPES}
_DTYPE_NAMES: dict[int, str] = {code: name for name, code in _DTYPE_CODES.items()}
_PLACEMENT_CODES: dict[PlacementLiteral, int] = {
    CLIENTS: pb.PLACEMENT_LITERAL_CLIENTS,
    SERVER: pb.PLACEMENT_LITERAL_SERVER,
}
_PLACEMENTS: dict[int, PlacementLiteral] = {code: p for p, code in _PLACEMENT_CODES.items()}


# ---------------------------------------------------------------- writing


class _Writer:
    """Builds the tables of one `pb.Program`, sharing equal types and equal subtrees."""

    def __init__(self) -> None:
        self.message = pb.Program(format_version=FORMAT_VERSION)
        self._type_indices: dict[Type, int] = {}
        # Nodes are shared by a digest of their encoded entry, which is exact (NaN payloads,
        # -0.0) without holding big literals twice. `_visited` maps node objects (by id: the
        # program keeps them all alive while it is written) so a shared object is walked once.
        self._node_indices: dict[bytes, int] = {}
        self._visited: dict[int, int] = {}
        self._measure = _TreeMeasure()

    def type_index(self, root: Type) -> int:
        """The index of `root` in the type table, adding it and its children if needed."""
        stack: list[tuple[Type, bool]] = [(root, False)]
        while stack:
            current, children_done = stack.pop()
            if current in self._type_indices:
                continue
            if not children_done:
                stack.append((current, True))
                stack.extend((child, False) for child in reversed(current.children()))
                continue
            entry = pb.Type()
            _TYPE_CODECS[type(current)].encode(self, entry, current)
            self._type_indices[current] = len(self.message.types)
            self.message.types.append(entry)
        return self._type_indices[root]

    def node_index(self, root: BuildingBlock) -> int:
        """The index of `root` in the node table, adding it and its subtree if needed."""
        stack: list[tuple[BuildingBlock, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in self._visited:
                continue
            if not children_done:
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.children()))
                continue
            self._visited[id(node)] = self._add_node(node)
        return self._visited[id(root)]

    def visited_index(self, node: BuildingBlock) -> int:
        return self._visited[id(node)]

    def _add_node(self, node: BuildingBlock) -> int:
        codec = _NODE_CODECS.get(node.kind)
        if codec is None or type(node) is not codec.node_class:
            raise IRFormatError(f"cannot store a {type(node).__name__}: not a fedcc building block")
        entry = pb.Node(type=self.type_index(node.type_signature))
        body = getattr(entry, node.kind)
        body.SetInParent()
        codec.encode(self, body, node)
        key = hashlib.sha256(entry.SerializeToString(deterministic=True)).digest()
        index = self._node_indices.get(key)
        if index is None:
            index = len(self.message.nodes)
            self._measure.add(codec.children(body))
            self._node_indices[key] = index
            self.message.nodes.append(entry)
        return index


def _encode_program(program: Program) -> bytes:
    writer = _Writer()
    for name, computation in program.computations.items():
        try:
            root = writer.node_index(computation)
        except IRFormatError as error:
            raise IRFormatError(f"cannot store computation {name!r}: {error}") from None
        writer.message.computations.add(name=name, root=root)
    for key, value in program.metadata.items():
        writer.message.metadata.add(key=key, value=value)
    return writer.message.SerializeToString(deterministic=True)


def _encode_tensor(message: pb.Tensor, array: np.ndarray) -> None:
    message.dtype = _DTYPE_CODES[array.dtype.name]
    message.shape.extend(array.shape)
    message.content = little_endian_bytes(array)


def _encode_ints(message: pb.Attribute, value: tuple[int, ...]) -> None:
    message.ints_value.SetInParent()
    message.ints_value.values.extend(value)


_ATTRIBUTE_ENCODERS: dict[type, Callable[[pb.Attribute, Any], None]] = {
    bool: lambda m, v: setattr(m, "bool_value", v),
    int: lambda m, v: setattr(m, "int_value", v),
    float: lambda m, v: setattr(m, "float_value", v),
    str: lambda m, v: setattr(m, "string_value", v),
    tuple: _encode_ints,
    np.ndarray: lambda m, v: _encode_tensor(m.tensor_value, v),
    type(None): lambda m, v: m.none_value.SetInParent(),
}


def _encode_graph(writer: _Writer, message: pb.LocalGraph, graph: Graph) -> None:
    if graph.parameter_type is not None:
        message.parameter_type = writer.type_index(graph.parameter_type)
    message.result_type = writer.type_index(graph.result_type)
    for position, op in enumerate(graph.ops):
        op_message = message.ops.add(
            primitive=op.primitive, inputs=op.inputs, result_type=writer.type_index(op.result_type)
        )
        for name, value in op.attributes:
            attribute = op_message.attributes.add(name=name)
            try:
                _ATTRIBUTE_ENCODERS[type(value)](attribute, value)
            except (KeyError, ValueError, TypeError) as error:
                raise IRFormatError(
                    f"op {position} ({op.primitive}): attribute {name}={value!r} cannot be "
                    f"stored ({error})"
                ) from None
    message.outputs.extend(graph.outputs)


# ---------------------------------------------------------------- reading


class _TreeMeasure:
    """Depth and unfolded size of each node of a table, from its children's; checks the limits."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.sizes: list[int] = []

    def add(self, children: list[int]) -> None:
        depth = 1 + max((self.depths[c] for c in children), default=0)
        if depth > MAX_NODE_DEPTH:
            raise IRFormatError(
                f"the program is nested more than {MAX_NODE_DEPTH} levels deep, "
                f"the most the file format allows"
            )
        size = 1 + sum(self.sizes[c] for c in children)
        if size > MAX_UNFOLDED_NODES:
            raise IRFormatError(
                f"shared subtrees unfold to more than {MAX_UNFOLDED_NODES} nodes, "
                f"the most the file format allows"
            )
        self.depths.append(depth)
        self.sizes.append(size)


class _Reader:
    """Rebuilds the types and nodes of one `pb.Program`, checking everything on the way."""

    def __init__(self, message: pb.Program, input_size: int) -> None:
        self.message = message
        self.types: list[Type] = []
        self.nodes: list[BuildingBlock] = []
        self._text_left = TYPE_TEXT_ALLOWANCE + TYPE_TEXT_PER_INPUT_BYTE * input_size

    def charge_text(self, characters: int) -> None:
        """Accounts for the unfolded size of a type (its text length) that reading may have to
        walk; refuses when the input's allowance is spent."""
        self._text_left -= characters
        if self._text_left < 0:
            raise IRFormatError(
                "the program's types expand to far more type text than its size accounts for "
                "(types shared inside themselves too often)"
            )

    def earlier_type(self, index: int, position: int, role: str) -> Type:
        """Type `index`, which type entry `position` refers to as its `role`."""
        if not 0 <= index < position:
            raise IRFormatError(
                f"its {role} is type {index}, but only types before it (0 to {position - 1}) "
                f"may be referred to"
            )
        return self.types[index]

    def type_at(self, index: int, role: str) -> Type:
        """Type `index`, which a node refers to as its `role`."""
        if not 0 <= index < len(self.types):
            raise IRFormatError(
                f"its {role} is type {index}, but the type table has {len(self.types)} entries"
            )
        return self.types[index]

    def read_types(self) -> None:
        for position, entry in enumerate(self.message.types):
            kind = entry.WhichOneof("kind")
            try:
                if kind is None:
                    raise IRFormatError(f"it has no kind (expected one of {_TYPE_KINDS})")
                built = _TYPE_CODECS_BY_KIND[kind].decode(self, getattr(entry, kind), position)
                # Building it cost O(its entry): its text is built only if printed. Its
                # unfolded size is charged here, once for every node that refers to it.
                self.charge_text(built.text_length)
            except FedccError as error:
                raise IRFormatError(f"type {position} ({kind}): {error}") from None
            self.types.append(built)

    def read_nodes(self) -> None:
        measure = _TreeMeasure()
        for position, entry in enumerate(self.message.nodes):
            kind = entry.WhichOneof("kind")
            try:
                if kind is None:
                    raise IRFormatError(f"it has no kind (expected one of {_NODE_KINDS})")
                codec = _NODE_CODECS[kind]
                body = getattr(entry, kind)
                children = codec.children(body)
                for child in children:
                    if not 0 <= child < position:
                        raise IRFormatError(
                            f"it refers to node {child}, but only nodes before it "
                            f"(0 to {position - 1}) may be referred to"
                        )
                measure.add(children)
                stored = self.type_at(entry.type, "type")
                # No charge here: the types a node refers to are table entries, charged once,
                # interned, and checked in O(1) (identity), remembered assignability and
                # remembered intrinsic rules; only a local graph unfolds its types (below).
                built = codec.decode(self, body, stored)
                if built.type_signature is not stored:
                    raise IRFormatError(
                        f"its stored type {_shown(stored)} differs from "
                        f"{_shown(built.type_signature)}, the type its construction computes"
                    )
            except _CONSTRUCTION_ERRORS as error:
                where = f"node {position} ({kind}{self._users(position)})"
                raise IRFormatError(f"{where}: {error}") from None
            self.nodes.append(built)

    def _users(self, position: int) -> str:
        """`, in computation 'next'`: which computations reach node `position` (for errors)."""
        users = [
            computation.name
            for computation in self.message.computations
            if _reaches(self.message.nodes, computation.root, position)
        ]
        if not users:
            return ", used by no computation"
        return ", in computation " + ", ".join(repr(name) for name in users)

    def read_program(self) -> Program:
        version = self.message.format_version
        if version != FORMAT_VERSION:
            found = "none (is this a fedcc program?)" if version == 0 else str(version)
            raise IRFormatError(
                f"unknown format version: this fedcc reads version {FORMAT_VERSION}, "
                f"the input has {found}"
            )
        self.read_types()
        self.read_nodes()
        computations = []
        for computation in self.message.computations:
            if not 0 <= computation.root < len(self.nodes):
                raise IRFormatError(
                    f"computation {computation.name!r} has root node {computation.root}, "
                    f"but the node table has {len(self.nodes)} entries"
                )
            computations.append((computation.name, self.nodes[computation.root]))
        metadata: dict[str, str] = {}
        for entry in self.message.metadata:
            if entry.key in metadata:
                raise IRFormatError(f"metadata key {entry.key!r} appears more than once")
            metadata[entry.key] = entry.value
        try:
            return Program(computations, metadata)
        except FedccError as error:
            raise IRFormatError(f"invalid program: {error}") from None


def _reaches(nodes: Any, root: int, target: int) -> bool:
    """Whether node `target` is inside node `root`, following only valid (earlier) children."""
    if not 0 <= root < len(nodes):
        return False
    stack, seen = [root], {root}
    while stack:
        current = stack.pop()
        if current == target:
            return True
        entry = nodes[current]
        kind = entry.WhichOneof("kind")
        if kind is None:
            continue
        for child in _NODE_CODECS[kind].children(getattr(entry, kind)):
            if target <= child < current and child not in seen:
                seen.add(child)
                stack.append(child)
    return False


def _parse(data: bytes) -> pb.Program:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise IRFormatError(f"expected the bytes of a program, found {type(data).__name__}")
    message = pb.Program()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as error:
        raise IRFormatError(
            f"not a fedcc program: malformed or truncated protobuf ({error})"
        ) from None
    return message


def _decode_program(data: bytes) -> Program:
    return _Reader(_parse(data), len(data)).read_program()


def _decode_tensor(message: pb.Tensor) -> np.ndarray:
    """A read-only view of the tensor's bytes, after checking they are exactly what it declares."""
    name = _DTYPE_NAMES.get(message.dtype)
    if name is None:
        raise IRFormatError(f"a tensor has unknown dtype code {message.dtype}")
    shape = tuple(message.shape)
    if len(shape) > MAX_TENSOR_RANK:
        raise IRFormatError(f"a tensor has {len(shape)} dimensions; at most {MAX_TENSOR_RANK}")
    extent = 1  # the product of the nonzero dims, computed without building huge integers
    for dim in shape:
        extent *= max(dim, 1)
        if extent > MAX_TENSOR_EXTENT:
            raise IRFormatError(f"a tensor declares the absurd shape {list(shape)}")
    dtype = np.dtype(name).newbyteorder("<")
    needed = (0 if 0 in shape else extent) * dtype.itemsize
    content = message.content
    if len(content) != needed:
        raise IRFormatError(
            f"a tensor of dtype {name} and shape {list(shape)} needs {needed} bytes, "
            f"but {len(content)} are stored"
        )
    if name == "bool" and content.translate(None, b"\x00\x01"):
        raise IRFormatError("a bool tensor holds bytes other than 0 and 1")
    return np.frombuffer(content, dtype=dtype).reshape(shape)


def _shown(t: Type) -> str:
    """`t`'s text for an error message, cut short: a type the input built may be huge."""
    if t.text_length <= SHOWN_TYPE_LENGTH:
        return str(t)
    return f"{t.__class__.__name__} of {t.text_length} characters of text"


def _name_or_none(name: str) -> str | None:
    return name or None


def _decode_graph(reader: _Reader, message: pb.LocalGraph) -> Graph:
    parameter_type = (
        reader.type_at(message.parameter_type, "graph parameter type")
        if message.HasField("parameter_type")
        else None
    )
    result_type = reader.type_at(message.result_type, "graph result type")
    # A graph lists the tensor leaves of its parameter and result: unfolded, once a graph.
    reader.charge_text(
        (0 if parameter_type is None else parameter_type.text_length) + result_type.text_length
    )
    ops = []
    for position, op in enumerate(message.ops):
        try:
            ops.append(_decode_op(reader, op))
        except _CONSTRUCTION_ERRORS as error:
            raise IRFormatError(f"op {position} ({op.primitive!r}): {error}") from None
    return Graph(parameter_type, ops, message.outputs, result_type)


def _decode_op(reader: _Reader, message: pb.Op) -> Op:
    result_type = reader.type_at(message.result_type, "result type")
    if not isinstance(result_type, TensorType):
        raise IRFormatError(f"its result type {result_type} is not a tensor type")
    attributes: dict[str, Any] = {}
    for attribute in message.attributes:
        if attribute.name in attributes:
            raise IRFormatError(f"attribute {attribute.name!r} appears more than once")
        which = attribute.WhichOneof("value")
        if which is None:
            raise IRFormatError(f"attribute {attribute.name!r} has no value")
        attributes[attribute.name] = _ATTRIBUTE_DECODERS[which](getattr(attribute, which))
    return Op(message.primitive, message.inputs, attributes, result_type)


_ATTRIBUTE_DECODERS: dict[str, Callable[[Any], Any]] = {
    "int_value": int,
    "float_value": float,
    "bool_value": bool,
    "string_value": str,
    "ints_value": lambda m: tuple(m.values),
    "tensor_value": lambda m: frozen_array(_decode_tensor(m)),
    "none_value": lambda m: None,
}


# ---------------------------------------------------------------- the type codecs


@dataclass(frozen=True)
class _TypeCodec:
    """How one kind of type is written and read; `kind` is its field in `pb.Type`'s oneof."""

    kind: str
    encode: Callable[[_Writer, Any, Any], None]  # (writer, pb.Type, Type): sets the oneof
    decode: Callable[[_Reader, Any, int], Type]  # (reader, the oneof's message, position)


def _encode_tensor_type(writer: _Writer, entry: pb.Type, t: TensorType) -> None:
    entry.tensor.dtype = _DTYPE_CODES[t.dtype.name]
    entry.tensor.dims.extend(-1 if dim is None else dim for dim in t.shape)


def _decode_tensor_type(reader: _Reader, message: pb.TensorType, position: int) -> Type:
    name = _DTYPE_NAMES.get(message.dtype)
    if name is None:
        raise IRFormatError(f"unknown dtype code {message.dtype}")
    dims = []
    for dim in message.dims:
        if dim < -1:
            raise IRFormatError(f"dimension {dim} is negative (-1 stands for unknown)")
        dims.append(None if dim == -1 else dim)
    return TensorType(name, dims)


def _encode_struct_type(writer: _Writer, entry: pb.Type, t: StructType) -> None:
    entry.struct.SetInParent()
    for name, element in t.elements:
        entry.struct.elements.add(name=name or "", type=writer.type_index(element))


def _decode_struct_type(reader: _Reader, message: pb.StructType, position: int) -> Type:
    elements = [
        (_name_or_none(e.name), reader.earlier_type(e.type, position, f"element {i}"))
        for i, e in enumerate(message.elements)
    ]
    return StructType(elements)


def _encode_sequence_type(writer: _Writer, entry: pb.Type, t: SequenceType) -> None:
    entry.sequence.element = writer.type_index(t.element)


def _decode_sequence_type(reader: _Reader, message: pb.SequenceType, position: int) -> Type:
    element = reader.earlier_type(message.element, position, "element")
    return SequenceType(element)


def _encode_function_type(writer: _Writer, entry: pb.Type, t: FunctionType) -> None:
    entry.function.SetInParent()
    if t.parameter is not None:
        entry.function.parameter = writer.type_index(t.parameter)
    entry.function.result = writer.type_index(t.result)


def _decode_function_type(reader: _Reader, message: pb.FunctionType, position: int) -> Type:
    parameter = (
        reader.earlier_type(message.parameter, position, "parameter")
        if message.HasField("parameter")
        else None
    )
    result = reader.earlier_type(message.result, position, "result")
    return FunctionType(parameter, result)


def _encode_federated_type(writer: _Writer, entry: pb.Type, t: FederatedType) -> None:
    entry.federated.member = writer.type_index(t.member)
    entry.federated.placement = _PLACEMENT_CODES[t.placement]
    entry.federated.all_equal = t.all_equal


def _decode_federated_type(reader: _Reader, message: pb.FederatedType, position: int) -> Type:
    member = reader.earlier_type(message.member, position, "member")
    placement = _decode_placement(message.placement)
    return FederatedType(member, placement, all_equal=message.all_equal)


def _decode_placement(code: int) -> PlacementLiteral:
    if code not in _PLACEMENTS:
        raise IRFormatError(f"unknown placement code {code} (expected CLIENTS or SERVER)")
    return _PLACEMENTS[code]


def _decode_placement_type(reader: _Reader, message: pb.PlacementType, position: int) -> Type:
    return PlacementType()


_TYPE_CODECS: dict[type[Type], _TypeCodec] = {
    TensorType: _TypeCodec("tensor", _encode_tensor_type, _decode_tensor_type),
    StructType: _TypeCodec("struct", _encode_struct_type, _decode_struct_type),
    SequenceType: _TypeCodec("sequence", _encode_sequence_type, _decode_sequence_type),
    FunctionType: _TypeCodec("function", _encode_function_type, _decode_function_type),
    FederatedType: _TypeCodec("federated", _encode_federated_type, _decode_federated_type),
    PlacementType: _TypeCodec(
        "placement", lambda w, e, t: e.placement.SetInParent(), _decode_placement_type
    ),
}
_TYPE_CODECS_BY_KIND: dict[str, _TypeCodec] = {c.kind: c for c in _TYPE_CODECS.values()}
_TYPE_KINDS = ", ".join(_TYPE_CODECS_BY_KIND)


# ---------------------------------------------------------------- the node codecs


@dataclass(frozen=True)
class _NodeCodec:
    """How one kind of building block is written and read.

    Its field in `pb.Node`'s oneof is the class's `kind`; `children` lists the
    node indices a stored node refers to, in the order of `BuildingBlock.children()`.
    """

    node_class: type[BuildingBlock]
    encode: Callable[[_Writer, Any, Any], None]  # (writer, the oneof's message, node)
    children: Callable[[Any], list[int]]  # (the oneof's message) -> node indices
    decode: Callable[[_Reader, Any, Type], BuildingBlock]  # (reader, message, stored type)


def _no_children(message: Any) -> list[int]:
    return []


def _encode_lambda(writer: _Writer, message: pb.Lambda, node: Lambda) -> None:
    if node.parameter_type is not None:
        message.parameter_name = node.parameter_name
        message.parameter_type = writer.type_index(node.parameter_type)
    message.result = writer.visited_index(node.result)


def _decode_lambda(reader: _Reader, message: pb.Lambda, stored: Type) -> BuildingBlock:
    parameter_type = None
    if message.HasField("parameter_type"):
        parameter_type = reader.type_at(message.parameter_type, "parameter type")
    return Lambda(
        _name_or_none(message.parameter_name), parameter_type, reader.nodes[message.result]
    )


def _encode_block(writer: _Writer, message: pb.Block, node: Block) -> None:
    for name, value in node.locals:
        message.locals.add(name=name, value=writer.visited_index(value))
    message.result = writer.visited_index(node.result)


def _decode_block(reader: _Reader, message: pb.Block, stored: Type) -> BuildingBlock:
    bindings = [(binding.name, reader.nodes[binding.value]) for binding in message.locals]
    return Block(bindings, reader.nodes[message.result])


def _encode_call(writer: _Writer, message: pb.Call, node: Call) -> None:
    message.function = writer.visited_index(node.function)
    if node.argument is not None:
        message.argument = writer.visited_index(node.argument)


def _call_children(message: pb.Call) -> list[int]:
    if message.HasField("argument"):
        return [message.function, message.argument]
    return [message.function]


def _decode_call(reader: _Reader, message: pb.Call, stored: Type) -> BuildingBlock:
    argument = reader.nodes[message.argument] if message.HasField("argument") else None
    return Call(reader.nodes[message.function], argument)


def _encode_struct(writer: _Writer, message: pb.Struct, node: Struct) -> None:
    for name, value in node.elements:
        message.elements.add(name=name or "", value=writer.visited_index(value))


def _decode_struct(reader: _Reader, message: pb.Struct, stored: Type) -> BuildingBlock:
    return Struct([(_name_or_none(e.name), reader.nodes[e.value]) for e in message.elements])


def _encode_selection(writer: _Writer, message: pb.Selection, node: Selection) -> None:
    message.source = writer.visited_index(node.source)
    message.index = node.index


def _decode_selection(reader: _Reader, message: pb.Selection, stored: Type) -> BuildingBlock:
    return Selection(reader.nodes[message.source], message.index)


def _encode_placement(writer: _Writer, message: pb.Placement, node: Placement) -> None:
    message.value = _PLACEMENT_CODES[node.placement]


def _encode_local_graph(writer: _Writer, message: pb.LocalGraph, node: LocalGraph) -> None:
    _encode_graph(writer, message, node.graph)


_NODE_CODECS: dict[str, _NodeCodec] = {
    codec.node_class.kind: codec
    for codec in (
        _NodeCodec(
            Reference,
            lambda w, m, n: setattr(m, "name", n.name),
            _no_children,
            lambda r, m, stored: Reference(m.name, stored),
        ),
        _NodeCodec(Lambda, _encode_lambda, lambda m: [m.result], _decode_lambda),
        _NodeCodec(
            Block,
            _encode_block,
            lambda m: [*(binding.value for binding in m.locals), m.result],
            _decode_block,
        ),
        _NodeCodec(Call, _encode_call, _call_children, _decode_call),
        _NodeCodec(Struct, _encode_struct, lambda m: [e.value for e in m.elements], _decode_struct),
        _NodeCodec(Selection, _encode_selection, lambda m: [m.source], _decode_selection),
        _NodeCodec(
            Intrinsic,
            lambda w, m, n: setattr(m, "uri", n.uri),
            _no_children,
            lambda r, m, stored: Intrinsic(m.uri, stored),
        ),
        _NodeCodec(
            Placement,
            _encode_placement,
            _no_children,
            lambda r, m, stored: Placement(_decode_placement(m.value)),
        ),
        _NodeCodec(
            Literal,
            lambda w, m, n: _encode_tensor(m.value, n.value),
            _no_children,
            lambda r, m, stored: Literal(_decode_tensor(m.value)),
        ),
        _NodeCodec(
            Data,
            lambda w, m, n: setattr(m, "uri", n.uri),
            _no_children,
            lambda r, m, stored: Data(m.uri, stored),
        ),
        _NodeCodec(
            LocalGraph,
            _encode_local_graph,
            _no_children,
            lambda r, m, stored: LocalGraph(_decode_graph(r, m)),
        ),
    )
}
_NODE_KINDS = ", ".join(_NODE_CODECS)


# ---------------------------------------------------------------- the public functions


def serialize_program(program: Program) -> bytes:
    """The file-format bytes of `program`; the same program always gives the same bytes.

    Raises `IRFormatError` if the program cannot be stored: nested deeper than
    `MAX_NODE_DEPTH`, an attribute out of the format's range, or metadata using
    the reserved key `SINGLE_COMPUTATION_KEY`.
    """
    if not isinstance(program, Program):
        raise IRFormatError(f"expected a Program, found {type(program).__name__}")
    if SINGLE_COMPUTATION_KEY in program.metadata:
        raise IRFormatError(f"metadata key {SINGLE_COMPUTATION_KEY!r} is reserved")
    return _encode_program(program)


def deserialize_program(data: bytes) -> Program:
    """The `Program` stored in `data`; a single stored building block comes back as a program
    of one computation named `main`.

    Raises `IRFormatError`, and nothing else, for any input that is not a valid program.
    """
    program = _decode_program(data)
    if _single_computation(program) is None:
        return program
    metadata = {k: v for k, v in program.metadata.items() if k != SINGLE_COMPUTATION_KEY}
    return Program(program.computations, metadata)


def serialize(x: BuildingBlock | Program, metadata: dict[str, str] | None = None) -> bytes:
    """The file-format bytes of a program or of a single building block (see `deserialize`).

    `metadata` (e.g. the passes applied) is stored with a single building
    block; `deserialize_program` shows it, `deserialize` gives the block alone.
    A program carries its own metadata.
    """
    if isinstance(x, BuildingBlock):
        if metadata and SINGLE_COMPUTATION_KEY in metadata:
            raise IRFormatError(f"metadata key {SINGLE_COMPUTATION_KEY!r} is reserved")
        program = Program(
            {SINGLE_COMPUTATION_NAME: x},
            {**(metadata or {}), SINGLE_COMPUTATION_KEY: SINGLE_COMPUTATION_VALUE},
        )
        return _encode_program(program)
    if metadata:
        raise IRFormatError("a Program carries its own metadata: pass Program(..., metadata)")
    return serialize_program(x)


def deserialize(data: bytes) -> BuildingBlock | Program:
    """What `serialize` stored: a `BuildingBlock` or a `Program`, equal to the original.

    Raises `IRFormatError`, and nothing else, for any input that is not a valid program.
    """
    program = _decode_program(data)
    single = _single_computation(program)
    return program if single is None else single


def _single_computation(program: Program) -> BuildingBlock | None:
    """The building block of a program written by `serialize(block)`, or None for a program."""
    marker = program.metadata.get(SINGLE_COMPUTATION_KEY)
    if marker is None:
        return None
    if marker != SINGLE_COMPUTATION_VALUE:
        raise IRFormatError(
            f"metadata {SINGLE_COMPUTATION_KEY!r} is {marker!r}, expected "
            f"{SINGLE_COMPUTATION_VALUE!r}"
        )
    if list(program.computations) != [SINGLE_COMPUTATION_NAME]:
        raise IRFormatError(
            f"metadata {SINGLE_COMPUTATION_KEY!r} marks a single building block, stored as one "
            f"computation named {SINGLE_COMPUTATION_NAME!r}, but the computations are "
            f"{list(program.computations)}"
        )
    return program.computations[SINGLE_COMPUTATION_NAME]
