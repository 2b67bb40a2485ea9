"""`verify`: checks a whole computation — scoping, reference types, node types, nesting, depth.

Node constructors check local typing, so IR built through them is locally
well-typed; what they cannot see is scoping (a reference is bound by an
enclosing lambda or an earlier block local, at the binder's exact type) and
the program as a whole. `verify` checks both, and re-derives every node's type
from its parts, so IR assembled by bypassing the constructors (a buggy pass, a
forged node) is caught too. It runs after every pass in tests and with
`fedcc opt --verify-each`.

One explicit worklist, no recursion: linear in the number of nodes, and safe
for programs deeper than Python's recursion limit (up to `max_depth`).
An error names the problem and the path to the offending node, e.g.
`next: lambda.result.block[local 'a'].call.argument: reference 'y' ... is not bound`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

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
)
from fedcc.ir.errors import FedccError, FederatedTypeError
from fedcc.ir.local_graph import Graph, Op
from fedcc.ir.program import Program
from fedcc.ir.types import (
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
    is_assignable_from,
    is_valid_field_name,
    is_valid_variable_name,
    to_type,
)

# Deeper programs are refused: every consumer of the IR (printers, serializers, backends)
# can rely on this bound.
DEFAULT_MAX_DEPTH = 10_000


_SUPPORTED_DTYPES = frozenset(DTYPES.values())  # dtype objects: `in` is faster than `.name`


class _Invalid(Exception):
    """A problem with one node; the walker adds the path and raises FederatedTypeError."""


# ---------------------------------------------------------------------------
# Types: the nesting rules of DESIGN §3, re-checked field by field.

# For each kind of type that restricts what it holds: the kinds it may not hold (looking
# through structs), and what to call it in messages.
_FORBIDDEN_INSIDE: dict[type, tuple[tuple[type, ...], str]] = {
    FederatedType: ((FederatedType, FunctionType, PlacementType), "a federated type"),
    SequenceType: ((FederatedType, FunctionType, SequenceType, PlacementType), "a sequence"),
}


def _inner_types(t: Type) -> tuple[Type, ...]:
    if isinstance(t, StructType):
        return tuple(e for _, e in t.elements)
    if isinstance(t, SequenceType):
        return (t.element,)
    if isinstance(t, FederatedType):
        return (t.member,)
    if isinstance(t, FunctionType):
        return (t.result,) if t.parameter is None else (t.parameter, t.result)
    return ()


def _check_type_node(t: Type) -> None:
    """Checks one type's own fields (not those of the types inside it)."""
    if isinstance(t, TensorType):
        if t.dtype not in _SUPPORTED_DTYPES:
            raise _Invalid(f"tensor type {t} has unsupported dtype {t.dtype!r}")
        if any(d is not None and (not isinstance(d, int) or d < 0) for d in t.shape):
            raise _Invalid(f"tensor type {t} has an invalid shape {t.shape!r}")
    elif isinstance(t, StructType):
        names = [n for n, _ in t.elements if n is not None]
        if len(set(names)) != len(names) or not all(map(is_valid_field_name, names)):
            raise _Invalid(f"struct type {t} has repeated or invalid field names {names}")
        if any(isinstance(e, PlacementType) for _, e in t.elements):
            raise _Invalid(f"struct type {t} holds a placement type")
    elif isinstance(t, FederatedType):
        if not isinstance(t.placement, PlacementLiteral):
            raise _Invalid(f"federated type {t} has no valid placement: {t.placement!r}")
        if t.placement is SERVER and not t.all_equal:
            raise _Invalid(f"federated type {t} is at SERVER but not all-equal")
    elif not isinstance(t, (SequenceType, FunctionType, PlacementType)):
        raise _Invalid(f"expected a type, found {type(t).__name__}")
    rule = _FORBIDDEN_INSIDE.get(type(t))
    if rule is not None:
        forbidden, what = rule
        work = list(_inner_types(t))
        while work:
            inner = work.pop()
            if isinstance(inner, forbidden):
                raise _Invalid(f"{what} cannot hold {inner} (in {t})")
            if isinstance(inner, StructType):
                work.extend(_inner_types(inner))


class _TypeChecker:
    """Checks types against the nesting rules, each distinct type once per `verify` call."""

    def __init__(self) -> None:
        self._checked: set[Type] = set()

    def check(self, t: Any) -> None:
        if t in self._checked:
            return
        work = [t]
        while work:
            current = work.pop()
            if not isinstance(current, Type):
                raise _Invalid(f"expected a type, found {current!r}")
            if current in self._checked:
                continue
            _check_type_node(current)
            self._checked.add(current)
            work.extend(_inner_types(current))


# ---------------------------------------------------------------------------
# Local graphs.


def verify_graph(graph: Graph) -> None:
    """Re-validates a local graph: ops in SSA order, each result exactly what its primitive's
    shape rule gives, outputs defined and assignable to the result type.

    Raises `FederatedTypeError` naming the op (`%3 (add) ...`) on the first problem.
    """
    if not isinstance(graph, Graph):
        raise FederatedTypeError(f"expected a local Graph, found {type(graph).__name__}")
    for position, op in enumerate(graph.ops):
        if not isinstance(op, Op) or not isinstance(op.result_type, TensorType):
            raise FederatedTypeError(f"op {position} of the graph is not a typed Op: {op!r}")
    # The constructor is the one definition of a valid graph: rebuild and compare.
    rebuilt = Graph(graph.parameter_type, graph.ops, graph.outputs, graph.result_type)
    if rebuilt.function_type != graph.function_type:
        raise FederatedTypeError(
            f"the graph is declared {graph.function_type}, "
            f"but its parameter and result give {rebuilt.function_type}"
        )


# ---------------------------------------------------------------------------
# One check per node class: the node's declared type against what its parts give.


def _require_type(node: BuildingBlock, kind: type, what: str) -> Any:
    if not isinstance(node.type_signature, kind):
        raise _Invalid(f"{node.kind} has type {node.type_signature}, expected {what}")
    return node.type_signature


def _mismatch(node: BuildingBlock, derived: Any) -> _Invalid:
    return _Invalid(f"{node.kind} is declared {node.type_signature}, but its parts give {derived}")


def _check_reference(node: Reference) -> None:
    if not is_valid_variable_name(node.name):
        raise _Invalid(f"reference name {node.name!r} is not a valid variable name")


def _check_lambda(node: Lambda) -> None:
    fn = _require_type(node, FunctionType, "a function type")
    if (node.parameter_name is None) != (node.parameter_type is None):
        raise _Invalid("lambda has a parameter name without a type, or a type without a name")
    if node.parameter_name is not None and not is_valid_variable_name(node.parameter_name):
        raise _Invalid(f"lambda parameter {node.parameter_name!r} is not a valid variable name")
    if fn.parameter != node.parameter_type or fn.result != node.result.type_signature:
        parameter = "" if node.parameter_type is None else node.parameter_type
        raise _mismatch(node, f"({parameter} -> {node.result.type_signature})")


def _check_block(node: Block) -> None:
    for name, _ in node.locals:
        if not is_valid_variable_name(name):
            raise _Invalid(f"block local {name!r} is not a valid variable name")
    if node.type_signature != node.result.type_signature:
        raise _mismatch(node, node.result.type_signature)


def _check_call(node: Call) -> None:
    fn = node.function.type_signature
    if not isinstance(fn, FunctionType):
        raise _Invalid(f"call of a value of non-function type {fn}")
    if node.argument is None and fn.parameter is not None:
        raise _Invalid(f"call of a function of type {fn} without an argument")
    if node.argument is not None:
        if fn.parameter is None:
            raise _Invalid(f"call of a function of type {fn} (no parameter) with an argument")
        if not is_assignable_from(fn.parameter, node.argument.type_signature):
            raise _Invalid(
                f"call of a function of type {fn} with an argument of type "
                f"{node.argument.type_signature}, not assignable to {fn.parameter}"
            )
    if node.type_signature != fn.result:
        raise _mismatch(node, fn.result)


def _check_struct(node: Struct) -> None:
    t = _require_type(node, StructType, "a struct type")
    elements = node.elements
    derived = [(n, v.type_signature) for n, v in elements]
    if list(t.elements) != derived:
        parts = ",".join(
            str(v.type_signature) if n is None else f"{n}={v.type_signature}" for n, v in elements
        )
        raise _mismatch(node, f"<{parts}>")


def _check_selection(node: Selection) -> None:
    source = node.source.type_signature
    if not isinstance(source, StructType):
        raise _Invalid(f"selection from a value of non-struct type {source}")
    if not isinstance(node.index, int) or not 0 <= node.index < len(source):
        raise _Invalid(f"selection index {node.index!r} is out of range for {source}")
    if node.type_signature != source[node.index]:
        raise _mismatch(node, source[node.index])


def _check_intrinsic(node: Intrinsic) -> None:
    fn = _require_type(node, FunctionType, "a function type")
    definition = intrinsics.INTRINSICS.get(node.uri)
    if definition is None:
        raise _Invalid(f"unknown intrinsic {node.uri!r}")
    try:
        result = definition.result_type(fn.parameter)
    except FederatedTypeError as error:
        raise _Invalid(str(error)) from None
    if result != fn.result:
        raise _Invalid(
            f"intrinsic {node.uri} called with {fn.parameter} returns {result}, not {fn.result}"
        )


def _check_placement(node: Placement) -> None:
    _require_type(node, PlacementType, "placement")
    if not isinstance(node.placement, PlacementLiteral):
        raise _Invalid(f"placement literal {node.placement!r} is neither CLIENTS nor SERVER")


def _check_literal(node: Literal) -> None:
    value = node.value
    if not isinstance(value, np.ndarray) or value.dtype not in _SUPPORTED_DTYPES:
        raise _Invalid(f"literal holds {type(value).__name__}, not an array of a supported dtype")
    t = node.type_signature
    if not isinstance(t, TensorType) or t.dtype != value.dtype or t.shape != value.shape:
        raise _mismatch(node, TensorType(value.dtype, value.shape))


def _check_data(node: Data) -> None:
    if not isinstance(node.uri, str) or not node.uri:
        raise _Invalid(f"data URI must be a non-empty string, found {node.uri!r}")


def _check_local_graph(node: LocalGraph) -> None:
    # The graph itself is re-validated by the walker, once per distinct graph.
    graph = node.graph
    if not isinstance(graph, Graph):
        raise _Invalid(f"local graph holds {type(graph).__name__}, not a Graph")
    if node.type_signature != graph.function_type:
        raise _mismatch(node, graph.function_type)


_NODE_CHECKS: dict[type, Callable[[Any], None]] = {
    Reference: _check_reference,
    Lambda: _check_lambda,
    Block: _check_block,
    Call: _check_call,
    Struct: _check_struct,
    Selection: _check_selection,
    Intrinsic: _check_intrinsic,
    Placement: _check_placement,
    Literal: _check_literal,
    Data: _check_data,
    LocalGraph: _check_local_graph,
}


# ---------------------------------------------------------------------------
# Paths: how an error names the node it is about.


def _edge(parent: BuildingBlock, position: int) -> str:
    """The label of `parent`'s child at `position`, e.g. `.argument` or `[local 'a']`."""
    if isinstance(parent, Block):
        if position < len(parent.locals):
            return f"[local {parent.locals[position][0]!r}]"
        return ".result"
    if isinstance(parent, Struct):
        name = parent.elements[position][0]
        return f"[{position}]" if name is None else f"[{name!r}]"
    if isinstance(parent, Call):
        return (".function", ".argument")[position]
    if isinstance(parent, Lambda):
        return ".result"
    if isinstance(parent, Selection):
        return ".source"
    return f"[{position}]"


# A path longer than twice this shows its first and last segments only.
_PATH_SHOWN = 8


def _path(frames: list[tuple[Any, int, int]], frame: int) -> str:
    """The path from the root to `frames[frame]`, e.g. `lambda.result.call.argument`."""
    parts = []
    while frames[frame][1] >= 0:
        _, parent, position = frames[frame]
        parent_node = frames[parent][0]
        parts.append(f"{parent_node.kind}{_edge(parent_node, position)}")
        frame = parent
    parts.reverse()
    if len(parts) > _PATH_SHOWN * 2:
        hidden = len(parts) - _PATH_SHOWN * 2
        parts[_PATH_SHOWN:-_PATH_SHOWN] = [f"...({hidden} levels)..."]
    return ".".join(parts) or "root"


# ---------------------------------------------------------------------------
# The walker.

_VISIT, _BIND, _BIND_LOCAL, _UNBIND = range(4)


class _Verifier:
    """Walks one computation, keeping the names in scope (name -> stack of binder types)."""

    def __init__(self, name: str | None, allow_free: Mapping[str, Type | None], max_depth: int):
        self.name = name
        self.allow_free = dict(allow_free)
        self.max_depth = max_depth
        self.scope: dict[str, list[Type]] = {}
        # Block locals not bound yet, so a use before the binding gets a precise message.
        self.pending: dict[str, int] = {}
        self.frames: list[tuple[Any, int, int]] = []  # (node, parent frame, position in parent)
        self.types = _TypeChecker()
        self.graphs: dict[int, Graph] = {}  # verified graphs by id, kept alive

    def verify_graph_once(self, graph: Graph) -> None:
        if id(graph) in self.graphs:
            return
        try:
            verify_graph(graph)
        except FedccError as error:
            raise _Invalid(f"invalid local graph: {error}") from None
        self.graphs[id(graph)] = graph

    def fail(self, frame: int, problem: str) -> FederatedTypeError:
        where = _path(self.frames, frame)
        prefix = where if self.name is None else f"{self.name}: {where}"
        return FederatedTypeError(f"{prefix}: {problem}")

    def run(self, root: Any) -> None:
        stack: list[tuple] = [(_VISIT, root, -1, 0, 1)]
        while stack:
            task = stack.pop()
            if task[0] == _VISIT:
                self.visit(stack, *task[1:])
            elif task[0] == _UNBIND:
                self.scope[task[1]].pop()
            else:
                _, name, t = task
                self.scope.setdefault(name, []).append(t)
                if task[0] == _BIND_LOCAL:
                    self.pending[name] -= 1

    def visit(self, stack: list[tuple], node: Any, parent: int, position: int, depth: int) -> None:
        frame = len(self.frames)
        self.frames.append((node, parent, position))
        check = _NODE_CHECKS.get(type(node))
        if check is None:
            raise self.fail(frame, f"expected a building block, found {type(node).__name__}")
        if depth > self.max_depth:
            raise self.fail(frame, f"the program is nested deeper than {self.max_depth} levels")
        try:
            children = node.children()
            for child in children:
                if not isinstance(child, BuildingBlock):
                    raise _Invalid(
                        f"{node.kind} holds {type(child).__name__}, not a building block"
                    )
            self.types.check(node.type_signature)
            if isinstance(node, Lambda) and node.parameter_type is not None:
                self.types.check(node.parameter_type)
            check(node)
            if isinstance(node, LocalGraph):
                self.verify_graph_once(node.graph)
            if isinstance(node, Reference):
                self.resolve(node)
        except _Invalid as problem:
            raise self.fail(frame, str(problem)) from None
        except (AttributeError, TypeError, FedccError) as error:
            raise self.fail(frame, f"malformed {type(node).__name__}: {error}") from None
        if isinstance(node, Lambda):
            self.push_lambda(stack, node, frame, depth)
        elif isinstance(node, Block):
            self.push_block(stack, node, frame, depth)
        else:
            stack.extend(
                (_VISIT, child, frame, i, depth + 1)
                for i, child in reversed(list(enumerate(children)))
            )

    def push_lambda(self, stack: list[tuple], node: Lambda, frame: int, depth: int) -> None:
        if node.parameter_name is None:
            stack.append((_VISIT, node.result, frame, 0, depth + 1))
            return
        stack.append((_UNBIND, node.parameter_name))
        stack.append((_VISIT, node.result, frame, 0, depth + 1))
        stack.append((_BIND, node.parameter_name, node.parameter_type))

    def push_block(self, stack: list[tuple], node: Block, frame: int, depth: int) -> None:
        for name, _ in node.locals:
            self.pending[name] = self.pending.get(name, 0) + 1
            stack.append((_UNBIND, name))
        stack.append((_VISIT, node.result, frame, len(node.locals), depth + 1))
        for position in reversed(range(len(node.locals))):
            name, value = node.locals[position]
            stack.append((_BIND_LOCAL, name, value.type_signature))
            stack.append((_VISIT, value, frame, position, depth + 1))

    def resolve(self, node: Reference) -> None:
        bound = self.scope.get(node.name)
        if bound:
            if node.type_signature != bound[-1]:
                raise _Invalid(
                    f"reference {node.name!r} has type {node.type_signature}, "
                    f"but {node.name!r} is bound with type {bound[-1]}"
                )
            return
        if node.name in self.allow_free:
            expected = self.allow_free[node.name]
            if expected is None:  # any type, but the same at every use
                self.allow_free[node.name] = node.type_signature
            elif node.type_signature != expected:
                raise _Invalid(
                    f"free reference {node.name!r} has type {node.type_signature}, "
                    f"expected {expected}"
                )
            return
        if self.pending.get(node.name):
            raise _Invalid(
                f"reference {node.name!r} is used before its binding: block locals are "
                "visible only to later locals and the block's result"
            )
        raise _Invalid(
            f"reference {node.name!r} of type {node.type_signature} is not bound: no enclosing "
            f"lambda parameter or earlier block local is named {node.name!r}"
        )


def _free_names(allow_free: Mapping[str, Any] | Iterable[str]) -> dict[str, Type | None]:
    if isinstance(allow_free, Mapping):
        return {name: to_type(t) for name, t in allow_free.items()}
    if isinstance(allow_free, str):
        return {allow_free: None}
    return dict.fromkeys(allow_free)


def verify(
    comp: BuildingBlock | Program,
    *,
    allow_free: Mapping[str, Any] | Iterable[str] = (),
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> None:
    """Checks that `comp` (a building block, or every computation of a `Program`) is valid.

    Checks: every reference is bound by an enclosing lambda parameter or an
    earlier local of an enclosing block, at exactly the binder's type; the
    computation is closed, except for the names in `allow_free` (names, or
    name -> type); every node's declared type is what its parts give (intrinsic
    calls re-typed by the intrinsic table, so placements are checked); every
    type obeys the nesting rules; local graphs are valid; nesting is at most
    `max_depth` levels.

    Raises `FederatedTypeError` naming the problem and the path to the node,
    e.g. `next: lambda.result.block[local 'a'].call.argument: ...`.
    """
    if isinstance(comp, Program):
        for name, computation in comp.computations.items():
            _Verifier(name, _free_names(allow_free), max_depth).run(computation)
        return
    if not isinstance(comp, BuildingBlock):
        raise FederatedTypeError(
            f"verify expects a building block or a Program, found {type(comp).__name__}"
        )
    _Verifier(None, _free_names(allow_free), max_depth).run(comp)
