"""The lossless text form of the IR: `to_text`, `to_compact_text` and their inverse `parse_text`.

The syntax is TFF's compact form extended with the types needed to be
lossless (grammar and examples: `ir/program.lark`; DESIGN §6):
`parse_text(to_text(x)) == x` and `parse_text(to_compact_text(x)) == x` for
every building block, open ones included, and every `Program`.

What makes it lossless:

- A reference prints bare when the innermost binder of its name in the
  printed text gives it its type, otherwise with its type, `(x:int32)`.
- An intrinsic prints bare as the function of a call when
  `intrinsic_type(uri, argument type)` is its type and no binder shadows its
  name, otherwise with its type, `federated_map:(<...> -> ...)`.
- Literal values print with the fewest digits that read back to the same
  value of their dtype; a NaN other than the dtype's canonical quiet NaN
  prints its bits, `nan:0x7fc00001`.

Printing walks the IR with an explicit work stack (programs can be thousands
of levels deep) and tracks the names in scope to make the choices above.

Parsing runs in two passes, neither recursive in Python:

1. lark's LALR parser runs `_SyntaxBuilder` inline, as rules reduce (no parse
   tree). Whatever does not depend on scope is built right away: types,
   literals, data, local graphs, typed references and typed intrinsics. The
   rest becomes a light `_Syntax` node that remembers its line and column,
   because a bare name's meaning comes from its binder, which the parser
   reduces only *after* the name.
2. `_Resolver` walks the `_Syntax` tree with an explicit work stack and a
   scope (name -> stack of types) and builds the IR bottom-up. A bare name is
   a reference to its innermost binder, else a placement literal, else (as the
   function of a call) an intrinsic typed by the call's argument.

Every error becomes a `TextSyntaxError` showing the line, the column and the
offending line: text that does not parse, and text that parses but builds
ill-typed IR (with the type error's message, at the offending construct).
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import lark
import numpy as np

from fedcc.ir import intrinsics
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
    call_intrinsic,
)
from fedcc.ir.errors import FederatedTypeError, TextSyntaxError, caret_message
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.program import FORMAT_VERSION, Program
from fedcc.ir.type_text import GRAMMAR_DIR, TypeBuilder
from fedcc.ir.types import (
    PlacementLiteral,
    Type,
    is_valid_field_name,
    is_valid_variable_name,
    tensor_leaves,
    text_with_names,
)

_INDENT = "  "
# Indentation stops growing here, so deeply nested blocks still print in linear size.
_MAX_INDENT_LEVELS = 32

_PLACEMENTS_BY_NAME = {placement.name: placement for placement in PlacementLiteral}

# ---------------------------------------------------------------------------------------------
# Tensor values and graph attributes as text.

_FLOAT_TEXT = re.compile(r"-?(inf|nan|[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?)\Z")
_NAN_BITS_TEXT = re.compile(r"nan:0x([0-9a-fA-F]+)\Z")
_INT_TEXT = re.compile(r"-?[0-9]+\Z")
_BOOL_TEXTS = {"true": True, "false": False}
_SCALAR_WORDS = {"none": None, "true": True, "false": False}
_BITS_VIEW = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # float width in bytes -> unsigned view


def _canonical_nan_bits(dtype: np.dtype) -> int:
    return int(np.array(np.nan, dtype).view(_BITS_VIEW[dtype.itemsize]))


def _nan_bits_text(bits: int, dtype: np.dtype) -> str:
    return f"nan:0x{bits:0{2 * dtype.itemsize}x}"


def _float_texts(flat: np.ndarray) -> list[str]:
    if flat.dtype == np.float64:
        texts = [repr(value) for value in flat.tolist()]  # shortest round-trip digits
    else:
        texts = [_narrow_float_text(value) for value in flat]
    nan_positions = np.flatnonzero(np.isnan(flat))
    if nan_positions.size:
        bits = flat.view(_BITS_VIEW[flat.dtype.itemsize])
        canonical = _canonical_nan_bits(flat.dtype)
        for position in nan_positions.tolist():
            if int(bits[position]) != canonical:
                texts[position] = _nan_bits_text(int(bits[position]), flat.dtype)
    return texts


def _narrow_float_text(value: np.floating) -> str:
    # The fewest digits that read back to this float16/float32 value, laid out like
    # Python's repr of a float (positional between 1e-4 and 1e16), independent of
    # NumPy's print options.
    magnitude = abs(float(value))
    if magnitude == 0 or 1e-4 <= magnitude < 1e16 or not np.isfinite(value):
        return np.format_float_positional(value, unique=True, trim="0")
    return np.format_float_scientific(value, unique=True, trim="-")


_ELEMENT_PRINTERS: dict[str, Callable[[np.ndarray], list[str]]] = {
    "b": lambda flat: ["true" if value else "false" for value in flat.tolist()],
    "i": lambda flat: [str(value) for value in flat.tolist()],
    "u": lambda flat: [str(value) for value in flat.tolist()],
    "f": _float_texts,
}


def _literal_text(array: np.ndarray) -> str:
    shape = "[" + ",".join(str(dim) for dim in array.shape) + "]" if array.ndim else ""
    values = ",".join(_ELEMENT_PRINTERS[array.dtype.kind](array.reshape(-1)))
    return f"{array.dtype.name}{shape}({values})"


class _BadValue(Exception):
    """The value at `index` of a value list is wrong; the caller knows where the list is."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def _parse_bools(texts: list[str], dtype: np.dtype) -> np.ndarray:
    values = []
    for index, text in enumerate(texts):
        if text not in _BOOL_TEXTS:
            raise _BadValue(index, f"expected true or false for a bool, found {text!r}")
        values.append(_BOOL_TEXTS[text])
    return np.array(values, dtype)


def _parse_ints(texts: list[str], dtype: np.dtype) -> np.ndarray:
    limits = np.iinfo(dtype)
    values = []
    for index, text in enumerate(texts):
        if not _INT_TEXT.match(text):
            raise _BadValue(index, f"expected an integer for {dtype.name}, found {text!r}")
        value = int(text)
        if not limits.min <= value <= limits.max:
            raise _BadValue(
                index, f"{text} is out of range for {dtype.name} [{limits.min}, {limits.max}]"
            )
        values.append(value)
    return np.array(values, dtype)


def _parse_floats(texts: list[str], dtype: np.dtype) -> np.ndarray:
    values: list[float] = []
    nan_bits: list[tuple[int, int]] = []
    for index, text in enumerate(texts):
        if _FLOAT_TEXT.match(text):
            values.append(float(text))
            continue
        match = _NAN_BITS_TEXT.match(text)
        if match is None:
            raise _BadValue(index, f"expected a number for {dtype.name}, found {text!r}")
        values.append(float("nan"))
        nan_bits.append((index, int(match[1], 16)))
    with np.errstate(over="ignore"):
        # Text -> float64 is correctly rounded, and float64 -> float32/float16 then gives
        # the value the shortest digits of that dtype stand for.
        array = np.array(values, np.float64).astype(dtype)
    for index in np.flatnonzero(np.isinf(array)).tolist():
        if "inf" not in texts[index]:
            raise _BadValue(index, f"{texts[index]} is out of range for {dtype.name}")
    if nan_bits:
        bits_view = array.view(_BITS_VIEW[dtype.itemsize])
        for index, bits in nan_bits:
            if bits >= 1 << (8 * dtype.itemsize):
                raise _BadValue(index, f"{texts[index]} has more bits than {dtype.name}")
            bits_view[index] = bits
            if not np.isnan(array[index]):
                raise _BadValue(index, f"{texts[index]} is not the bits of a {dtype.name} NaN")
    return array


_ELEMENT_PARSERS: dict[str, Callable[[list[str], np.dtype], np.ndarray]] = {
    "b": _parse_bools,
    "i": _parse_ints,
    "u": _parse_ints,
    "f": _parse_floats,
}


def _float_attribute_text(value: float) -> str:
    bits = struct.unpack("<Q", struct.pack("<d", value))[0]
    if value != value and bits != _canonical_nan_bits(np.dtype(np.float64)):
        return _nan_bits_text(bits, np.dtype(np.float64))
    return repr(value)


_ATTRIBUTE_PRINTERS: dict[type, Callable[[Any], str]] = {
    type(None): lambda value: "none",
    bool: lambda value: "true" if value else "false",
    int: str,
    float: _float_attribute_text,
    str: json.dumps,
    tuple: lambda value: "(" + ", ".join(str(item) for item in value) + ")",
    np.ndarray: _literal_text,
}


def _attribute_text(name: str, value: Any) -> str:
    key = name if is_valid_field_name(name) else json.dumps(name)
    kind = np.ndarray if isinstance(value, np.ndarray) else type(value)
    return f"{key}={_ATTRIBUTE_PRINTERS[kind](value)}"


def _scalar_attribute_value(text: str) -> Any:
    if text in _SCALAR_WORDS:
        return _SCALAR_WORDS[text]
    if _INT_TEXT.match(text):
        return int(text)
    match = _NAN_BITS_TEXT.match(text)
    if match is None:
        return float(text)
    bits = int(match[1], 16)
    if bits >= 1 << 64:
        raise ValueError(f"{text} has more bits than a float64")
    value = struct.unpack("<d", struct.pack("<Q", bits))[0]
    if value == value:
        raise ValueError(f"{text} is not the bits of a float64 NaN")
    return value


# ---------------------------------------------------------------------------------------------
# Printing.

# Markers of the printer's work items that edit the scope rather than print.
_BIND = object()
_UNBIND = object()


class _Printer:
    """Prints building blocks iteratively; work items are text, types, `(node, level)` or scope
    edits. Types stay `Type` pieces until `_render` decides which of them to print by alias."""

    def __init__(self, multiline: bool) -> None:
        self._multiline = multiline
        self._scope: dict[str, list[Type]] = {}

    def pieces(self, root: BuildingBlock) -> list[str | Type]:
        pieces: list[str | Type] = []
        work: list[Any] = [(root, 0)]
        while work:
            item = work.pop()
            if type(item) is str or isinstance(item, Type):
                pieces.append(item)
            elif item[0] is _BIND:
                self._scope.setdefault(item[1], []).append(item[2])
            elif item[0] is _UNBIND:
                self._scope[item[1]].pop()
            else:
                node, node_level = item
                work.extend(reversed(_NODE_PRINTERS[type(node)](self, node, node_level)))
        return pieces

    def _break(self, level: int, compact: str) -> str:
        """A new line indented to `level` in the multi-line form; `compact` in the compact one."""
        if not self._multiline:
            return compact
        return "\n" + _INDENT * min(level, _MAX_INDENT_LEVELS)

    def _reference(self, node: Reference, level: int) -> list[Any]:
        bound = self._scope.get(node.name)
        if bound and bound[-1] == node.type_signature:
            return [node.name]
        return [f"({node.name}:", node.type_signature, ")"]

    def _lambda(self, node: Lambda, level: int) -> list[Any]:
        name = node.parameter_name
        if name is None:
            return ["( -> ", (node.result, level), ")"]
        return [
            f"({name}:",
            node.parameter_type,
            " -> ",
            (_BIND, name, node.parameter_type),
            (node.result, level),
            (_UNBIND, name),
            ")",
        ]

    def _block(self, node: Block, level: int) -> list[Any]:
        items: list[Any] = ["(let"]
        for position, (name, value) in enumerate(node.locals):
            separator = "," if position else ""
            items.append(separator + self._break(level + 1, "" if position else " "))
            items.extend([f"{name}=", (value, level + 1), (_BIND, name, value.type_signature)])
        items.extend([self._break(level, " "), "in ", (node.result, level)])
        items.extend((_UNBIND, name) for name, _ in reversed(node.locals))
        items.append(")")
        return items

    def _call(self, node: Call, level: int) -> list[Any]:
        function, argument = node.function, node.argument
        head = function.uri if self._prints_bare(function, argument) else (function, level)
        if argument is None:
            return [head, "()"]
        return [head, "(", (argument, level), ")"]

    def _prints_bare(self, function: BuildingBlock, argument: BuildingBlock | None) -> bool:
        """Whether a called intrinsic's type follows from its argument, so its name suffices."""
        if not isinstance(function, Intrinsic) or argument is None or self._scope.get(function.uri):
            return False
        try:
            expected = intrinsics.intrinsic_type(function.uri, argument.type_signature)
        except FederatedTypeError:
            return False
        return expected == function.type_signature

    def _struct(self, node: Struct, level: int) -> list[Any]:
        items: list[Any] = ["<"]
        for position, (name, value) in enumerate(node.elements):
            if position:
                items.append(",")
            if name is not None:
                items.append(f"{name}=")
            items.append((value, level))
        items.append(">")
        return items

    def _selection(self, node: Selection, level: int) -> list[Any]:
        return [(node.source, level), f"[{node.index}]"]

    def _intrinsic(self, node: Intrinsic, level: int) -> list[Any]:
        return [f"{node.uri}:", node.type_signature]

    def _placement(self, node: Placement, level: int) -> list[Any]:
        return [node.placement.name]

    def _literal(self, node: Literal, level: int) -> list[Any]:
        return [_literal_text(node.value)]

    def _data(self, node: Data, level: int) -> list[Any]:
        return [f"data({json.dumps(node.uri)}):", node.type_signature]

    def _local_graph(self, node: LocalGraph, level: int) -> list[Any]:
        graph = node.graph
        lines = []
        for index, op in enumerate(graph.ops, start=graph.num_parameters):
            inputs = ", ".join(f"%{i}" for i in op.inputs)
            line = f"%{index}:{op.result_type} = {op.primitive}({inputs})"
            if op.attributes:
                line += " {" + ", ".join(_attribute_text(k, v) for k, v in op.attributes) + "}"
            lines.append(line)
        lines.append("return (" + ", ".join(f"%{i}" for i in graph.outputs) + ")")
        # Op result types are tensors, short: they print in full; the signature may hold a
        # program's big struct type, which may print by alias.
        if not self._multiline:
            return ["graph", graph.function_type, " {" + "; ".join(lines) + "}"]
        body = "".join(self._break(level + 1, "") + line for line in lines)
        return ["graph", graph.function_type, " {" + body + self._break(level, "") + "}"]


_NODE_PRINTERS: dict[type, Callable[[_Printer, Any, int], list[Any]]] = {
    Reference: _Printer._reference,
    Lambda: _Printer._lambda,
    Block: _Printer._block,
    Call: _Printer._call,
    Struct: _Printer._struct,
    Selection: _Printer._selection,
    Intrinsic: _Printer._intrinsic,
    Placement: _Printer._placement,
    Literal: _Printer._literal,
    Data: _Printer._data,
    LocalGraph: _Printer._local_graph,
}


# A type whose text is at least this long prints by alias (`!t0`) when it would otherwise
# print more than once: long enough that small programs print as before, short enough that
# a wide struct type repeated at every selection costs one line, not one copy a use.
ALIAS_MIN_LENGTH = 120


def _alias_names(pieces: list[str | Type]) -> dict[Type, str]:
    """The types of `pieces` (and inside them) to print by alias, with their names.

    A type is aliased when its text is long and it would print at least twice,
    counting its prints inside other types that are not aliased themselves.
    Counts saturate at 2, so a type shared inside itself costs its distinct parts.
    """
    printed = [p for p in pieces if isinstance(p, Type)]
    counts: dict[Type, int] = {}
    order: dict[Type, int] = {}  # first appearance, depth-first in print order: names follow it
    stack = [t for t in reversed(printed) if t.text_length >= ALIAS_MIN_LENGTH]
    for t in printed:
        if t.text_length >= ALIAS_MIN_LENGTH:
            counts[t] = min(2, counts.get(t, 0) + 1)
    while stack:
        current = stack.pop()
        if current in order:
            continue
        order[current] = len(order)
        stack.extend(
            child
            for child in reversed(current.children())
            if child.text_length >= ALIAS_MIN_LENGTH
        )
    aliased = []
    # Outer types first (a type is deeper than anything inside it): a type's count is final
    # when every type holding it has passed its own prints on.
    for t in sorted(order, key=lambda t: (-t.depth, order[t])):
        count = counts.get(t, 0)
        if count >= 2:
            aliased.append(t)
            count = 1  # its definition prints its parts once
        for child in t.children():
            if child in order:
                counts[child] = min(2, counts.get(child, 0) + count)
    aliased.sort(key=lambda t: order[t])
    return {t: f"!t{number}" for number, t in enumerate(aliased)}


def _render(parts: list[list[str | Type]], multiline: bool) -> tuple[str, list[str]]:
    """The alias definitions and the texts of printed `parts` (one list of pieces a text)."""
    names = _alias_names([piece for pieces in parts for piece in pieces])
    definitions = [
        f"{name} = {text_with_names(t, names)};"
        # Parts before wholes: a definition may use only the aliases before it.
        for t, name in sorted(names.items(), key=lambda item: (item[0].depth, item[1]))
    ]
    texts = [
        "".join(
            piece if type(piece) is str else names.get(piece) or text_with_names(piece, names)
            for piece in pieces
        )
        for pieces in parts
    ]
    return ("\n" if multiline else " ").join(definitions), texts


def _block_text(block: BuildingBlock, multiline: bool) -> str:
    definitions, (text,) = _render([_Printer(multiline).pieces(block)], multiline)
    if not definitions:
        return text
    return definitions + ("\n" if multiline else " ") + text


def _program_text(program: Program) -> str:
    lines = [f"program v{FORMAT_VERSION}"]
    for key, value in program.metadata.items():
        shown_key = key if is_valid_field_name(key) else json.dumps(key)
        lines.append(f"metadata {shown_key} = {json.dumps(value)}")
    names = list(program.computations)
    definitions, texts = _render(
        [_Printer(multiline=True).pieces(c) for c in program.computations.values()], True
    )
    if definitions:
        lines.extend(["", definitions])
    for name, text in zip(names, texts, strict=True):
        lines.append("")
        lines.append(f"computation {name} = {text}")
    return "\n".join(lines) + "\n"


def to_text(x: BuildingBlock | Program) -> str:
    """The readable multi-line text of a building block or a program; `parse_text` reads it back.

    Blocks put each binding on its own indented line and local graphs one op a
    line; everything else prints as in `to_compact_text`. A program's text
    starts with `program v1`, then its metadata, then `computation NAME = ...`
    entries in order, and ends with a newline.
    """
    if isinstance(x, Program):
        return _program_text(x)
    if isinstance(x, BuildingBlock):
        return _block_text(x, multiline=True)
    raise FederatedTypeError(f"to_text expects a BuildingBlock or a Program, found {x!r}")


def to_compact_text(x: BuildingBlock) -> str:
    """The one-line text of a building block, like TFF's compact form; `parse_text` inverts it."""
    if not isinstance(x, BuildingBlock):
        raise FederatedTypeError(f"to_compact_text expects a BuildingBlock, found {x!r}")
    return _block_text(x, multiline=False)


# ---------------------------------------------------------------------------------------------
# Parsing, pass 1: the LALR parser builds what does not depend on scope, `_Syntax` for the rest.


class _Position(NamedTuple):
    line: int
    column: int


class _PositionedError(Exception):
    """An error at a line and column of the text; `parse_text` turns it into a TextSyntaxError."""

    def __init__(self, message: str, where: Any) -> None:
        super().__init__(message)
        self.message = message
        self.line = where.line
        self.column = where.column


class _Syntax:
    """A parsed construct and where it starts. `kind` says what `parts` hold.

    built: a BuildingBlock; name: a str; lambda: (name token or None, Type or None, body);
    block: ([(name token, value)], result); call: (function, argument or None);
    selection: (source, index); struct: [(field name or None, value)].
    """

    __slots__ = ("column", "kind", "line", "parts")

    def __init__(self, kind: str, parts: Any, where: Any) -> None:
        self.kind = kind
        self.parts = parts
        self.line = where.line
        self.column = where.column


class _Metadata(NamedTuple):
    key: str
    value: str
    where: lark.Token


class _Computation(NamedTuple):
    name: str
    body: _Syntax
    where: lark.Token


class _ProgramSyntax(NamedTuple):
    metadata: dict[str, str]
    computations: list[_Computation]


def _built(where: Any, make: Callable[..., BuildingBlock], *arguments: Any) -> _Syntax:
    try:
        return _Syntax("built", make(*arguments), where)
    except FederatedTypeError as error:
        raise _PositionedError(str(error), where) from None


def _json_string(token: lark.Token) -> str:
    try:
        return json.loads(token)
    except json.JSONDecodeError as error:
        raise _PositionedError(f"invalid string {token}: {error.msg}", token) from None


def _value_texts(token: lark.Token) -> list[str]:
    inner = token[1:-1]
    return [] if not inner.strip() else [part.strip() for part in inner.split(",")]


def _value_position(token: lark.Token, index: int) -> _Position:
    """Where the `index`-th value of a parenthesized value list token starts."""
    parts = token[1:-1].split(",")
    offset = 1 + sum(len(part) + 1 for part in parts[:index])
    offset += len(parts[index]) - len(parts[index].lstrip())
    before = token[:offset]
    if "\n" not in before:
        return _Position(token.line, token.column + offset)
    return _Position(token.line + before.count("\n"), offset - before.rfind("\n"))


class _SyntaxBuilder(TypeBuilder):
    """The callbacks lark's LALR parser runs as rules of `program.lark` reduce.

    Inherits the type rules imported by name (`function`, `shape`); the other
    imported type rules are merged in under their `types__` namespace.
    """

    def start(self, children):
        return children[-1]  # after the type alias definitions, if any

    def program(self, children):
        version, *entries = children
        if version != f"v{FORMAT_VERSION}":
            raise _PositionedError(
                f"unsupported format version {version}: expected v{FORMAT_VERSION}", version
            )
        metadata: dict[str, str] = {}
        computations: list[_Computation] = []
        for entry in entries:
            if entry is None:  # a type alias definition: it did its work as it reduced
                continue
            if isinstance(entry, _Metadata):
                if entry.key in metadata:
                    raise _PositionedError(f"metadata key {entry.key!r} repeats", entry.where)
                metadata[entry.key] = entry.value
            else:
                if any(entry.name == seen.name for seen in computations):
                    raise _PositionedError(f"computation {entry.name!r} repeats", entry.where)
                computations.append(entry)
        return _ProgramSyntax(metadata, computations)

    def metadata_entry(self, children):
        key, value = children
        key_text = _json_string(key) if key.type == "STRING" else str(key)
        return _Metadata(key_text, _json_string(value), key)

    def computation(self, children):
        name, body = children
        return _Computation(str(name), body, name)

    def type_alias_definition(self, children):
        token, defined = children
        aliases = _TYPE_ALIASES.get()
        if str(token) in aliases:
            raise _PositionedError(f"type alias {token} is defined twice", token)
        aliases[str(token)] = defined

    def call(self, children):
        function, argument = children
        return _Syntax("call", (function, argument), function)

    def selection(self, children):
        source, index = children
        return _Syntax("selection", (source, int(index)), index)

    def name(self, children):
        (token,) = children
        return _Syntax("name", str(token), token)

    def typed_intrinsic(self, children):
        token, function_type = children
        return _built(token, Intrinsic, str(token), function_type)

    def typed_reference(self, children):
        token, reference_type = children
        return _built(token, Reference, str(token), reference_type)

    def lambda_with_parameter(self, children):
        token, parameter_type, result = children
        return _Syntax("lambda", (token, parameter_type, result), token)

    def lambda_without_parameter(self, children):
        (result,) = children
        return _Syntax("lambda", (None, None, result), result)

    def block(self, children):
        let, *bindings, result = children
        return _Syntax("block", ([b for b in bindings if b is not None], result), let)

    def binding(self, children):
        token, value = children
        return (token, value)

    def struct(self, children):
        opening, *elements = children
        return _Syntax("struct", [e for e in elements if e is not None], opening)

    def struct_element(self, children):
        if len(children) == 2:
            return (str(children[0]), children[1])
        return (None, children[0])

    def data(self, children):
        keyword, uri, data_type = children
        return _built(keyword, Data, _json_string(uri), data_type)

    def literal(self, children):
        dtype_token, shape, values = children
        shape = shape or ()
        if None in shape:
            raise _PositionedError(f"a literal's shape must be known, found {list(shape)}", values)
        dtype = np.dtype(str(dtype_token))
        texts = _value_texts(values)
        count = math.prod(shape)
        if len(texts) != count:
            raise _PositionedError(
                f"a {dtype.name} literal of shape {list(shape)} needs {count} values, "
                f"found {len(texts)}",
                values,
            )
        try:
            array = _ELEMENT_PARSERS[dtype.kind](texts, dtype).reshape(shape)
        except _BadValue as error:
            raise _PositionedError(error.message, _value_position(values, error.index)) from None
        return _built(dtype_token, Literal, array)

    def literal_expression(self, children):
        return children[0]

    def graph(self, children):
        keyword, function_type, *ops, outputs = children
        try:
            parameter = function_type.parameter
            first_id = 0 if parameter is None else len(tensor_leaves(parameter))
        except FederatedTypeError as error:
            raise _PositionedError(f"a local graph takes tensors: {error}", keyword) from None
        built_ops = []
        for position, (token, result_type, primitive, inputs, attributes) in enumerate(ops):
            expected = f"%{first_id + position}"
            if token != expected:
                raise _PositionedError(
                    f"graph values are numbered in order: expected {expected}, found {token}", token
                )
            try:
                built_ops.append(Op(primitive, inputs, attributes, result_type))
            except FederatedTypeError as error:
                raise _PositionedError(str(error), token) from None
        return _built(
            keyword,
            lambda: LocalGraph(Graph(parameter, built_ops, outputs, function_type.result)),
        )

    def graph_op(self, children):
        token, result_type, primitive, inputs, attributes = children
        return (token, result_type, str(primitive), inputs, attributes or {})

    def value_ids(self, children):
        return [int(token[1:]) for token in children if token is not None]

    def attributes(self, children):
        result: dict[str, Any] = {}
        for key, value, where in (child for child in children if child is not None):
            if key in result:
                raise _PositionedError(f"attribute {key!r} repeats", where)
            result[key] = value
        return result

    def attribute(self, children):
        key, value = children
        key_text = _json_string(key) if key.type == "STRING" else str(key)
        return (key_text, value, key)

    def scalar_attribute(self, children):
        (token,) = children
        try:
            return _scalar_attribute_value(str(token))
        except ValueError as error:
            raise _PositionedError(str(error), token) from None

    def string_attribute(self, children):
        return _json_string(children[0])

    def ints_attribute(self, children):
        (token,) = children
        texts = _value_texts(token)
        for index, text in enumerate(texts):
            if not _INT_TEXT.match(text):
                raise _PositionedError(
                    f"a tuple attribute holds integers, found {text!r}",
                    _value_position(token, index),
                )
        return tuple(int(text) for text in texts)

    def tensor_attribute(self, children):
        return children[0].parts.value


class _AliasingTypeBuilder(TypeBuilder):
    """The type rules of program text, where a type alias stands for the type it was defined as."""

    def type_alias(self, children):
        (token,) = children
        defined = _TYPE_ALIASES.get().get(str(token))
        if defined is None:
            raise _PositionedError(f"type alias {token} is not defined before this use", token)
        return defined


# The type aliases defined so far in the text being parsed; a fresh dict a `parse_text`
# call, so that parses in several threads (one shared parser) do not see each other's.
_TYPE_ALIASES: contextvars.ContextVar[dict[str, Type]] = contextvars.ContextVar("type_aliases")


@functools.cache
def _parser() -> lark.Lark:
    # The builder runs inside the LALR parser as rules reduce: no parse tree, no recursion.
    builder = lark.visitors.merge_transformers(_SyntaxBuilder(), types=_AliasingTypeBuilder())
    return lark.Lark.open(
        str(GRAMMAR_DIR / "program.lark"),
        start="start",
        parser="lalr",
        maybe_placeholders=True,
        transformer=builder,
    )


# Terminals whose pattern is a regular expression, described for error messages.
_TERMINAL_DESCRIPTIONS = {
    "NAME": "a name",
    "FIELD_NAME": "a name followed by '='",
    "DTYPE": "a dtype",
    "INT": "an integer",
    "STRING": "a quoted string",
    "VALUES": "a parenthesized list of values",
    "SCALAR": "a number, true, false or none",
    "VALUE_ID": "a value number like %0",
    "FORMAT_VERSION": "a format version like v1",
    "PLACEMENT_NAME": "CLIENTS or SERVER",
    "types__PLACEMENT_NAME": "CLIENTS or SERVER",
    "$END": "the end of the text",
}


def _describe_expected(names: set[str]) -> str:
    parser = _parser()
    described = set()
    for name in names:
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            pattern = None
        if isinstance(pattern, lark.lexer.PatternStr):
            described.add(repr(pattern.value))
        else:
            described.add(_TERMINAL_DESCRIPTIONS.get(name, name))
    return ", ".join(sorted(described))


def _end_of(text: str) -> _Position:
    return _Position(text.count("\n") + 1, len(text) - (text.rfind("\n") + 1) + 1)


def _parse_syntax(text: str) -> _Syntax | _ProgramSyntax:
    interactive = _parser().parse_interactive(text)
    token = None
    try:
        for token in interactive.iter_parse():  # noqa: B007 (the last token locates type errors)
            pass
        return interactive.feed_eof(token)
    except lark.exceptions.UnexpectedCharacters as error:
        raise _PositionedError(
            f"unexpected character {text[error.pos_in_stream]!r}; "
            f"expected {_describe_expected(error.allowed)}",
            error,
        ) from None
    except lark.exceptions.UnexpectedToken as error:
        expected = _describe_expected(error.expected)
        if error.token.type == "$END":
            raise _PositionedError(
                f"unexpected end of text; expected {expected}", _end_of(text)
            ) from None
        raise _PositionedError(
            f"unexpected {error.token.value!r}; expected {expected}", error.token
        ) from None
    except FederatedTypeError as error:
        # A type rule broke a nesting rule; the parser had just read `token`.
        where = token if token is not None else _Position(1, 1)
        raise _PositionedError(f"invalid type: {error}", where) from None


# ---------------------------------------------------------------------------------------------
# Parsing, pass 2: resolve names against their binders and build the IR bottom-up.


def _check_variable_name(name: str, where: Any) -> None:
    if not is_valid_variable_name(name):
        raise _PositionedError(f"{name!r} is a reserved word; it cannot name a variable", where)


class _Resolver:
    """Builds the IR of a `_Syntax` tree; work items are `_Syntax` or (action, where, payload)."""

    def __init__(self) -> None:
        self._scope: dict[str, list[Type]] = {}
        self._values: list[BuildingBlock] = []

    def build(self, root: _Syntax) -> BuildingBlock:
        work: list[Any] = [root]
        while work:
            item = work.pop()
            try:
                if type(item) is _Syntax:
                    where = item
                    _EXPANDERS[item.kind](self, item, work)
                else:
                    action, where, payload = item
                    action(self, where, payload)
            except FederatedTypeError as error:
                raise _PositionedError(str(error), where) from None
        (result,) = self._values
        return result

    def _bind(self, name: str, bound_type: Type) -> None:
        self._scope.setdefault(name, []).append(bound_type)

    def _is_bound(self, name: str) -> bool:
        return bool(self._scope.get(name))

    def _expand_built(self, syntax: _Syntax, work: list[Any]) -> None:
        self._values.append(syntax.parts)

    def _expand_name(self, syntax: _Syntax, work: list[Any]) -> None:
        name = syntax.parts
        if self._is_bound(name):
            self._values.append(Reference(name, self._scope[name][-1]))
        elif name in _PLACEMENTS_BY_NAME:
            self._values.append(Placement(_PLACEMENTS_BY_NAME[name]))
        elif name in intrinsics.INTRINSICS:
            raise _PositionedError(
                f"intrinsic {name} needs its type here: call it with an argument, "
                f"or write {name}:(PARAMETER -> RESULT)",
                syntax,
            )
        else:
            raise _PositionedError(
                f"{name!r} is not bound here; a free reference needs its type, as in ({name}:TYPE)",
                syntax,
            )

    def _expand_lambda(self, syntax: _Syntax, work: list[Any]) -> None:
        token, parameter_type, result = syntax.parts
        work.append((_Resolver._finish_lambda, syntax, None))
        if token is not None:
            _check_variable_name(str(token), token)
            work.append((_Resolver._unbind, syntax, [str(token)]))
            self._bind(str(token), parameter_type)
        work.append(result)

    def _expand_block(self, syntax: _Syntax, work: list[Any]) -> None:
        bindings, result = syntax.parts
        work.append((_Resolver._finish_block, syntax, None))
        work.append((_Resolver._unbind, syntax, [str(token) for token, _ in bindings]))
        work.append(result)
        for token, value in reversed(bindings):
            work.append((_Resolver._bind_last_value, token, str(token)))
            work.append(value)

    def _expand_call(self, syntax: _Syntax, work: list[Any]) -> None:
        function, argument = syntax.parts
        calls_intrinsic = (
            function.kind == "name"
            and function.parts in intrinsics.INTRINSICS
            and not self._is_bound(function.parts)
        )
        finish = _Resolver._finish_intrinsic_call if calls_intrinsic else _Resolver._finish_call
        work.append((finish, syntax, None))
        if argument is not None:
            work.append(argument)
        if not calls_intrinsic:
            work.append(function)

    def _expand_selection(self, syntax: _Syntax, work: list[Any]) -> None:
        work.append((_Resolver._finish_selection, syntax, None))
        work.append(syntax.parts[0])

    def _expand_struct(self, syntax: _Syntax, work: list[Any]) -> None:
        work.append((_Resolver._finish_struct, syntax, None))
        work.extend(value for _, value in reversed(syntax.parts))

    def _pop(self, count: int) -> list[BuildingBlock]:
        if not count:
            return []
        values = self._values[-count:]
        del self._values[-count:]
        return values

    def _bind_last_value(self, where: Any, name: str) -> None:
        _check_variable_name(name, where)
        self._bind(name, self._values[-1].type_signature)

    def _unbind(self, where: Any, names: list[str]) -> None:
        for name in names:
            self._scope[name].pop()

    def _finish_lambda(self, syntax: _Syntax, _: None) -> None:
        token, parameter_type, _ = syntax.parts
        name = None if token is None else str(token)
        self._values.append(Lambda(name, parameter_type, self._values.pop()))

    def _finish_block(self, syntax: _Syntax, _: None) -> None:
        bindings, _ = syntax.parts
        result = self._values.pop()
        values = self._pop(len(bindings))
        names = [str(token) for token, _ in bindings]
        self._values.append(Block(zip(names, values, strict=True), result))

    def _finish_call(self, syntax: _Syntax, _: None) -> None:
        argument = None if syntax.parts[1] is None else self._values.pop()
        self._values.append(Call(self._values.pop(), argument))

    def _finish_intrinsic_call(self, syntax: _Syntax, _: None) -> None:
        argument = None if syntax.parts[1] is None else self._values.pop()
        self._values.append(call_intrinsic(syntax.parts[0].parts, argument))

    def _finish_selection(self, syntax: _Syntax, _: None) -> None:
        self._values.append(Selection(self._values.pop(), syntax.parts[1]))

    def _finish_struct(self, syntax: _Syntax, _: None) -> None:
        values = self._pop(len(syntax.parts))
        self._values.append(Struct(list(zip((n for n, _ in syntax.parts), values, strict=True))))


_EXPANDERS: dict[str, Callable[[_Resolver, _Syntax, list[Any]], None]] = {
    "built": _Resolver._expand_built,
    "name": _Resolver._expand_name,
    "lambda": _Resolver._expand_lambda,
    "block": _Resolver._expand_block,
    "call": _Resolver._expand_call,
    "selection": _Resolver._expand_selection,
    "struct": _Resolver._expand_struct,
}


def _build_program(syntax: _ProgramSyntax) -> Program:
    computations = [(c.name, _Resolver().build(c.body)) for c in syntax.computations]
    return Program(computations, syntax.metadata)


def parse_text(text: str) -> BuildingBlock | Program:
    """Parses the text of a building block or a program (one that starts with `program v1`).

    The inverse of `to_text` and `to_compact_text`. Raises `TextSyntaxError`
    showing the line, the column and the offending line when the text does
    not parse, or when it parses but builds ill-typed IR (with the type
    error's message, at the construct that is ill-typed).
    """
    if not isinstance(text, str):
        raise TextSyntaxError(f"expected the text of a program, found {type(text).__name__}")
    aliases = _TYPE_ALIASES.set({})
    try:
        syntax = _parse_syntax(text)
        if isinstance(syntax, _ProgramSyntax):
            return _build_program(syntax)
        return _Resolver().build(syntax)
    except _PositionedError as error:
        raise TextSyntaxError(
            caret_message(error.message, text, error.line, error.column)
        ) from None
    finally:
        _TYPE_ALIASES.reset(aliases)
