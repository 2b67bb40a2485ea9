"""Parses the text syntax of types (`ir/types.lark`) into `Type` values.

Printing lives on the types themselves (`str(t)`), which is canonical, so
`parse_type(str(t)) == t` for every type.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lark

from fedcc.ir import types as t
from fedcc.ir.errors import FederatedTypeError, TypeSyntaxError, caret_message

GRAMMAR_DIR = Path(__file__).parent


class TypeBuilder(lark.Transformer):
    """Builds `Type` values bottom-up from a parse tree of `types.lark`."""

    def tensor(self, children):
        dtype = str(children[0])
        shape = children[1] if len(children) > 1 else ()
        return t.TensorType(dtype, shape)

    def shape(self, dims):
        return tuple(None if d == "?" else int(d) for d in dims)

    def struct(self, elements):
        return t.StructType([] if elements == [None] else elements)

    def element(self, children):
        if len(children) == 2:
            return (str(children[0]), children[1])
        return (None, children[0])

    def sequence(self, children):
        return t.SequenceType(children[0])

    def function(self, children):
        parameter, result = children
        return t.FunctionType(parameter, result)

    def federated_each(self, children):
        return t.FederatedType(children[0], str(children[1]), all_equal=False)

    def federated_all_equal(self, children):
        return t.FederatedType(children[0], str(children[1]), all_equal=True)

    def placement_type(self, _):
        return t.PlacementType()

    def type_alias(self, children):
        # Only program text defines aliases (ir/program.lark); the text parser overrides this.
        raise FederatedTypeError(
            f"type alias {children[0]} is not defined: aliases are defined in program text only"
        )


@functools.cache
def _parser() -> lark.Lark:
    # The transformer runs inside the LALR parser as rules reduce: no parse tree,
    # no recursion, so the nesting depth is bounded only by the type's own limit.
    return lark.Lark.open(
        str(GRAMMAR_DIR / "types.lark"),
        start="type",
        parser="lalr",
        maybe_placeholders=True,
        transformer=TypeBuilder(),
    )


@functools.lru_cache(maxsize=4096)
def parse_type(text: str) -> t.Type:
    """Parses a type from its text, e.g. `parse_type("{float32[10]}@CLIENTS")`.

    Raises `TypeSyntaxError` (a `FedccError`) showing the text and the column
    when the text does not parse, and `FederatedTypeError` when it parses but
    breaks a nesting rule.
    """
    if not isinstance(text, str):
        raise FederatedTypeError(f"expected the text of a type, found {text!r}")
    try:
        return _parser().parse(text)
    except lark.exceptions.UnexpectedInput as error:
        line, column, what = error.line, error.column, f"cannot parse type {text!r}"
        if isinstance(error, lark.exceptions.UnexpectedToken) and error.token.type == "$END":
            # lark reports the end of input at the last token; point past the text instead.
            lines = text.split("\n")
            line, column, what = len(lines), len(lines[-1]) + 1, f"{what}: it ends too early"
        raise TypeSyntaxError(caret_message(what, text, line, column)) from None
    except FederatedTypeError as error:
        raise FederatedTypeError(f"invalid type {text!r}: {error}") from None
