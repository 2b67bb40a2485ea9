"""The pass registry: every compiler pass by name, in one table (`PASSES`).

A pass is an object with a `name` (as written on the command line,
`fedcc opt --passes beta-reduce,dce`), a one-line `description` and
`apply(comp) -> comp`. It keeps the computation's type signature and the
values it computes, bit for bit, and is idempotent: applying it to its own
result changes nothing. Each pass lives in a module of this package (one a
pass or a small family) and registers itself with `register_pass`; this
package imports all its modules, so a new module's passes appear here
without editing this file. Each pass has golden-text tests under
`tests/golden/passes/<name>/`.

Two helpers cover most passes: `PatternPass` (rewrite patterns applied to a
fixed point by the walker of `fedcc.compiler.rewriting`) and `FunctionPass`
(a function of the whole computation).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from fedcc.compiler.rewriting import RewriteLog, RewritePattern, apply_patterns
from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import FedccError


@runtime_checkable
class CompilerPass(Protocol):
    """What the registry holds: a named, described, type- and value-preserving rewrite."""

    name: str
    description: str

    def apply(self, comp: BuildingBlock) -> BuildingBlock:
        """The rewritten computation (`comp` itself when nothing changes)."""
        ...


@dataclass(frozen=True)
class PatternPass:
    """A pass made of rewrite patterns, applied bottom-up to a fixed point."""

    name: str
    description: str
    patterns: tuple[RewritePattern, ...]

    def apply(self, comp: BuildingBlock) -> BuildingBlock:
        return apply_patterns(comp, self.patterns)

    def apply_logged(self, comp: BuildingBlock) -> tuple[BuildingBlock, RewriteLog]:
        """The result and the log of every rewrite made (pattern, node kinds)."""
        log = RewriteLog()
        return apply_patterns(comp, self.patterns, log=log), log


@dataclass(frozen=True)
class FunctionPass:
    """A pass given as one function of the whole computation."""

    name: str
    description: str
    function: Callable[[BuildingBlock], BuildingBlock]

    def apply(self, comp: BuildingBlock) -> BuildingBlock:
        return self.function(comp)


class UnknownPassError(FedccError, KeyError):
    """A pass name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


PASSES: dict[str, CompilerPass] = {}

_PASS_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")

P = TypeVar("P", bound=CompilerPass)


def register_pass(compiler_pass: P) -> P:
    """Adds `compiler_pass` to `PASSES` under its name and returns it:
    `DCE = register_pass(PatternPass("dce", "...", (RemoveDeadLocals(),)))`.

    Names are lower-case words joined by hyphens (`merge-chained-maps`); the
    description is one line. Registering a second pass under a taken name is an error.
    """
    name = getattr(compiler_pass, "name", None)
    description = getattr(compiler_pass, "description", None)
    if not isinstance(name, str) or not _PASS_NAME.match(name):
        raise ValueError(f"a pass name is lower-case words joined by '-', found {name!r}")
    if not isinstance(description, str) or not description or "\n" in description:
        raise ValueError(f"pass {name}: the description is one non-empty line")
    if not callable(getattr(compiler_pass, "apply", None)):
        raise ValueError(f"pass {name} has no apply(comp) method")
    existing = PASSES.get(name)
    if existing is not None and existing is not compiler_pass:
        raise ValueError(f"a pass named {name!r} is already registered: {existing!r}")
    PASSES[name] = compiler_pass
    return compiler_pass


def get_pass(name: str) -> CompilerPass:
    """The registered pass `name`; raises `UnknownPassError` listing the known names."""
    found = PASSES.get(name)
    if found is None:
        raise UnknownPassError(
            f"unknown pass {name!r}; the passes are: {', '.join(sorted(PASSES))}"
        )
    return found


def parse_pipeline(text: str) -> list[str]:
    """The pass names of a pipeline written `a,b,c` (spaces allowed); each must be registered."""
    names = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise UnknownPassError(
            f"expected pass names separated by commas, found {text!r}; "
            f"the passes are: {', '.join(sorted(PASSES))}"
        )
    for name in names:
        get_pass(name)
    return names


def registered(names: Sequence[str]) -> list[str]:
    """Those of `names` that are registered, in the given order."""
    return [name for name in names if name in PASSES]


def _import_pass_modules() -> None:
    # Every module of this package defines and registers passes; importing them all fills
    # the table, so adding a pass never means editing this file.
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_pass_modules()
