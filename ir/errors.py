"""The exception hierarchy every part of fedcc raises (DESIGN §11)."""

from __future__ import annotations


class FedccError(Exception):
    """Base of every error fedcc raises on purpose."""


class FederatedTypeError(FedccError, TypeError):
    """A value or program does not have the type an operation expects."""


class IRFormatError(FedccError, ValueError):
    """Serialized IR (bytes, a `.pb` file or its text form) is malformed or inconsistent."""


class BackendError(FedccError, RuntimeError):
    """A backend could not run a computation (a dead or hung worker, a failing client)."""


class TypeSyntaxError(FedccError, ValueError):
    """The text of a type does not parse; the message shows the text and the column."""


class TextSyntaxError(IRFormatError):
    """The text form of a program does not parse; the message shows line and column."""


def caret_message(what: str, text: str, line: int, column: int) -> str:
    """Formats a parse error as a message with the offending line and a caret under the column."""
    lines = text.splitlines() or [""]
    shown = lines[line - 1] if 0 < line <= len(lines) else ""
    return f"{what} at line {line}, column {column}:\n  {shown}\n  {' ' * (column - 1)}^"
