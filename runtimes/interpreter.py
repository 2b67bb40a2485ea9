"""The one federated interpreter: runs a building block on the server, clients through a backend.

A program is compiled once into nested Python closures (cached by the root
node's identity), then run. Compiling resolves every reference to a slot of
a frame, so running does no name lookups:

- a frame is a list `[parent frame, context, slot, slot, ...]`; each lambda
  call makes one, holding its parameter and the names its blocks bind;
- a `FunctionValue` is what a lambda, a local graph or an intrinsic evaluates
  to: a plain Python `call(argument)` plus what is needed to send the function
  to a worker as a closed building block (`closed_block()`);
- intrinsic calls go to the table of runtimes/intrinsic_implementations.py:
  federated ones run on the server through the run's `ClientSession`
  (runtimes/backend.py); sequence intrinsics and local graphs (through
  runtimes/graph_evaluator.py) run wherever the code calling them runs, on
  the server or in client work;
- a `Data` node naming a client data set becomes the session's `load`: the
  clients read their own data where they live (runtimes/client_data.py).

Runtime values: NumPy arrays (or NumPy scalars) for tensors, tuples for
structs, lists for sequences, the member value for a value placed at SERVER,
a `ClientValue` for a value placed at CLIENTS, `PlacementLiteral`s and
`FunctionValue`s.

Deep programs: compiling walks the tree with an explicit worklist, but the
compiled closures call each other as deep as the program nests. A program
deeper than `SHALLOW_DEPTH` therefore runs in a helper thread with a large
stack and a recursion limit raised to match (`call_with_stack_for`), so
programs up to the serializer's 1000 nesting levels, and beyond, never hit
RecursionError.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

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
    walk,
)
from fedcc.ir.errors import BackendError, FederatedTypeError
from fedcc.ir.types import FunctionType, PlacementType, StructType, TensorType, Type
from fedcc.runtimes import structure
from fedcc.runtimes.backend import ClientSession
from fedcc.runtimes.client_data import client_data_element_type
from fedcc.runtimes.intrinsic_implementations import bind_intrinsic

Frame = list  # [parent frame, context, slot, ...]
Compiled = Callable[[Frame], Any]

_PARENT, _CONTEXT, _FIRST_SLOT = 0, 1, 2


class ExecutionContext:
    """Where compiled code runs: on the server of a run (with its session) or inside client work."""

    __slots__ = ("num_clients", "session")

    def __init__(self, session: ClientSession | None) -> None:
        self.session = session
        self.num_clients = None if session is None else session.num_clients


# Client work (the functions a backend maps over clients) runs without a session:
# a federated intrinsic there is an error, which IR type checking already rules out.
CLIENT_CONTEXT = ExecutionContext(None)


class FunctionValue:
    """A function at run time: `call(argument)` (None for a function of no parameter)."""

    __slots__ = ("_closed", "_frame", "_free", "call", "node", "structural_body")

    def __init__(
        self,
        call: Callable[[Any], Any],
        node: BuildingBlock,
        frame: Frame | None = None,
        free: tuple[tuple[str, int, int, Type], ...] = (),
        structural_body: BuildingBlock | None = None,
    ) -> None:
        self.call = call
        self.node = node
        self._frame = frame
        self._free = free
        self._closed: BuildingBlock | None = None
        # The lambda body, if it only selects from and restructures its parameter.
        self.structural_body = structural_body

    def closed_block(self) -> BuildingBlock:
        """This function as a building block without free names: what a worker receives.

        The values the function captured from enclosing scopes become `let`
        bindings of literals around it; a function that captures nothing is
        its own node, so caches keyed by node identity keep hitting.
        """
        if self._closed is None:
            if not self._free:
                self._closed = self.node
            else:
                bindings = [
                    (name, value_to_block(_lookup(self._frame, hops, slot), t, name))
                    for name, hops, slot, t in self._free
                ]
                self._closed = Block(bindings, self.node)
        return self._closed

    def __repr__(self) -> str:
        return f"<FunctionValue {self.node.type_signature}>"


def value_to_block(value: Any, t: Type, name: str = "value") -> BuildingBlock:
    """A closed building block that evaluates to the runtime `value` of type `t`."""
    if isinstance(t, TensorType):
        return Literal(np.asarray(value))
    if isinstance(t, StructType):
        return Struct(
            [
                (element_name, value_to_block(v, element_type, name))
                for (element_name, element_type), v in zip(t.elements, value)
            ]
        )
    if isinstance(t, FunctionType):
        return value.closed_block()
    if isinstance(t, PlacementType):
        return Placement(value)
    raise BackendError(
        f"a function sent to the clients captures {name!r} of type {t}, which cannot travel "
        "as IR; pass it to the function as an argument instead"
    )


# ---------------------------------------------------------------------------
# Compiling: an explicit worklist over the tree, building one closure a node.


class _FrameLayout:
    """The slots of the frames of one lambda (or of the program's top level)."""

    __slots__ = ("free", "level", "parent", "size")

    def __init__(self, parent: _FrameLayout | None) -> None:
        self.parent = parent
        self.level = 0 if parent is None else parent.level + 1
        self.size = 0
        # Names this lambda uses from enclosing frames: name -> (hops, slot, type)
        # counted from the frame the lambda is created in.
        self.free: dict[str, tuple[int, int, Type]] = {}

    def new_slot(self) -> int:
        self.size += 1
        return _FIRST_SLOT + self.size - 1


class _Scope:
    """One visible name binding; a linked list, innermost binding first."""

    __slots__ = ("layout", "name", "outer", "slot")

    def __init__(self, name: str, slot: int, layout: _FrameLayout, outer: _Scope | None) -> None:
        self.name = name
        self.slot = slot
        self.layout = layout
        self.outer = outer


def _resolve(reference: Reference, scope: _Scope | None, layout: _FrameLayout) -> Compiled:
    binding = scope
    while binding is not None and binding.name != reference.name:
        binding = binding.outer
    if binding is None:
        raise FederatedTypeError(
            f"the reference {reference.name!r} ({reference.type_signature}) is not bound "
            "by any enclosing lambda or block"
        )
    hops = layout.level - binding.layout.level
    slot = binding.slot
    crossed = layout
    while crossed is not binding.layout:
        hops_from_creation = crossed.level - 1 - binding.layout.level
        crossed.free.setdefault(
            reference.name, (hops_from_creation, slot, reference.type_signature)
        )
        crossed = crossed.parent
    if hops == 0:
        return lambda frame: frame[slot]
    if hops == 1:
        return lambda frame: frame[_PARENT][slot]

    def far(frame: Frame) -> Any:
        return _lookup(frame, hops, slot)

    return far


def _lookup(frame: Frame, hops: int, slot: int) -> Any:
    for _ in range(hops):
        frame = frame[_PARENT]
    return frame[slot]


class CompiledProgram:
    """A building block compiled to closures; `evaluate(context)` gives its value."""

    __slots__ = ("_code", "_size", "root")

    def __init__(self, root: BuildingBlock) -> None:
        self.root = root
        top = _FrameLayout(None)
        self._code = _compile(root, top)
        self._size = top.size

    def evaluate(self, context: ExecutionContext) -> Any:
        frame: Frame = [None, context]
        frame.extend([None] * self._size)
        return self._code(frame)


def _compile(root: BuildingBlock, top: _FrameLayout) -> Compiled:
    # Work items: ("enter", node, scope, layout) or ("exit", node, extra).
    # "exit" pops the node's children's closures from `done` and pushes its own.
    done: list[Compiled] = []
    work: list[tuple] = [("enter", root, None, top)]
    while work:
        item = work.pop()
        if item[0] == "exit":
            _, node, extra = item
            count = len(node.children())
            children = done[len(done) - count :] if count else []
            del done[len(done) - count :]
            done.append(_BUILDERS[type(node)](node, children, extra))
            continue
        _, node, scope, layout = item
        if isinstance(node, Reference):
            done.append(_resolve(node, scope, layout))
        elif isinstance(node, Lambda):
            inner = _FrameLayout(layout)
            inner_scope = scope
            if node.parameter_name is not None:
                inner_scope = _Scope(node.parameter_name, inner.new_slot(), inner, scope)
            work.append(("exit", node, inner))
            work.append(("enter", node.result, inner_scope, inner))
        elif isinstance(node, Block):
            slots = []
            scopes = [scope]
            for name, _ in node.locals:
                slots.append(layout.new_slot())
                scopes.append(_Scope(name, slots[-1], layout, scopes[-1]))
            work.append(("exit", node, tuple(slots)))
            work.append(("enter", node.result, scopes[-1], layout))
            for (_, value), value_scope in reversed(list(zip(node.locals, scopes))):
                work.append(("enter", value, value_scope, layout))
        else:
            work.append(("exit", node, None))
            for child in reversed(node.children()):
                work.append(("enter", child, scope, layout))
    (code,) = done
    return code


def _build_lambda(node: Lambda, children: list[Compiled], layout: _FrameLayout) -> Compiled:
    (body,) = children
    padding = [None] * (layout.size - (0 if node.parameter_name is None else 1))
    free = tuple((name, hops, slot, t) for name, (hops, slot, t) in layout.free.items())
    structural_body = node.result if _is_structural(node) else None
    takes_argument = node.parameter_name is not None

    def make(frame: Frame) -> FunctionValue:
        context = frame[_CONTEXT]
        if takes_argument:

            def call(argument: Any) -> Any:
                return body([frame, context, argument, *padding])

        else:

            def call(argument: Any = None) -> Any:
                return body([frame, context, *padding])

        return FunctionValue(call, node, frame, free, structural_body)

    return make


def _build_block(node: Block, children: list[Compiled], slots: tuple[int, ...]) -> Compiled:
    *values, result = children
    bindings = tuple(zip(slots, values))

    def block(frame: Frame) -> Any:
        for slot, value in bindings:
            frame[slot] = value(frame)
        return result(frame)

    return block


def _build_call(node: Call, children: list[Compiled], _: None) -> Compiled:
    if isinstance(node.function, Intrinsic):
        implementation = bind_intrinsic(node.function)
        if node.argument is None:
            return lambda frame: implementation(frame[_CONTEXT], None)
        argument = children[1]
        return lambda frame: implementation(frame[_CONTEXT], argument(frame))
    if node.argument is None:
        (function,) = children
        return lambda frame: function(frame).call(None)
    function, argument = children
    return lambda frame: function(frame).call(argument(frame))


def _build_struct(node: Struct, children: list[Compiled], _: None) -> Compiled:
    if len(children) == 2:
        first, second = children
        return lambda frame: (first(frame), second(frame))
    elements = tuple(children)
    return lambda frame: tuple([element(frame) for element in elements])


def _build_selection(node: Selection, children: list[Compiled], _: None) -> Compiled:
    (source,) = children
    index = node.index
    return lambda frame: source(frame)[index]


def _build_intrinsic(node: Intrinsic, children: list[Compiled], _: None) -> Compiled:
    implementation = bind_intrinsic(node)

    def make(frame: Frame) -> FunctionValue:
        context = frame[_CONTEXT]
        return FunctionValue(lambda argument: implementation(context, argument), node)

    return make


def _build_literal(node: Literal, children: list[Compiled], _: None) -> Compiled:
    value = node.value
    return lambda frame: value


def _build_placement(node: Placement, children: list[Compiled], _: None) -> Compiled:
    placement = node.placement
    return lambda frame: placement


def _build_local_graph(node: LocalGraph, children: list[Compiled], _: None) -> Compiled:
    function = FunctionValue(graph_function(node.graph), node)
    return lambda frame: function


def _build_data(node: Data, children: list[Compiled], _: None) -> Compiled:
    # A client data set is loaded where its clients live: the session asks each of them.
    uri = node.uri
    element_type = client_data_element_type(node.type_signature)
    if element_type is None:

        def refuse(frame: Frame) -> Any:
            raise BackendError(
                f"cannot load the data set {uri!r} ({node.type_signature}): only client data "
                "sets, of type {T*}@CLIENTS, are loaded (see runtimes/client_data.py)"
            )

        return refuse

    def data(frame: Frame) -> Any:
        session = frame[_CONTEXT].session
        if session is None:
            raise BackendError(f"the client data set {uri!r} cannot be loaded inside client work")
        return session.load(uri, element_type)

    return data


_BUILDERS: dict[type, Callable[[Any, list[Compiled], Any], Compiled]] = {
    Lambda: _build_lambda,
    Block: _build_block,
    Call: _build_call,
    Struct: _build_struct,
    Selection: _build_selection,
    Intrinsic: _build_intrinsic,
    Literal: _build_literal,
    Placement: _build_placement,
    LocalGraph: _build_local_graph,
    Data: _build_data,
}


def _is_structural(node: Lambda) -> bool:
    # A body of selections and structs over the parameter alone moves no data:
    # over client values it is applied to the ClientValue description instead.
    if node.parameter_name is None:
        return False
    for inner in walk(node.result):
        if isinstance(inner, Reference):
            if inner.name != node.parameter_name:
                return False
        elif not isinstance(inner, (Selection, Struct)):
            return False
    return True


@functools.lru_cache(maxsize=1024)
def graph_function(graph: Any) -> Callable[[Any], Any]:
    """A Python function running a local graph on a runtime value (None: no parameter)."""
    from fedcc.runtimes.graph_evaluator import evaluate_graph

    flatten = None if graph.parameter_type is None else structure.flattener(graph.parameter_type)
    unflatten = structure.unflattener(graph.result_type)
    if flatten is None:
        return lambda argument=None: unflatten(evaluate_graph(graph, []))
    return lambda argument: unflatten(evaluate_graph(graph, flatten(argument)))


# ---------------------------------------------------------------------------
# Caches and entry points.

_CACHE_SIZE = 256
_cache_lock = threading.Lock()
_programs: OrderedDict[int, CompiledProgram] = OrderedDict()
_client_functions: OrderedDict[int, tuple[BuildingBlock, FunctionValue]] = OrderedDict()


def compile_program(root: BuildingBlock) -> CompiledProgram:
    """`root` compiled to closures; cached by the identity of `root` (the last few hundred)."""
    with _cache_lock:
        compiled = _programs.get(id(root))
        if compiled is not None and compiled.root is root:
            _programs.move_to_end(id(root))
            return compiled
    compiled = CompiledProgram(root)
    with _cache_lock:
        _programs[id(root)] = compiled
        while len(_programs) > _CACHE_SIZE:
            _programs.popitem(last=False)
    return compiled


def client_function(block: BuildingBlock) -> FunctionValue:
    """The closed, non-federated function `block`, ready for client work; cached by identity."""
    with _cache_lock:
        cached = _client_functions.get(id(block))
        if cached is not None and cached[0] is block:
            _client_functions.move_to_end(id(block))
            return cached[1]
    function = compile_program(block).evaluate(CLIENT_CONTEXT)
    if not isinstance(function, FunctionValue):
        raise FederatedTypeError(f"client work must be a function, found {block.type_signature}")
    with _cache_lock:
        _client_functions[id(block)] = (block, function)
        while len(_client_functions) > _CACHE_SIZE:
            _client_functions.popitem(last=False)
    return function


def evaluate(root: BuildingBlock, context: ExecutionContext) -> Any:
    """The runtime value of the building block `root` (a function value for a computation)."""
    return call_with_stack_for(root.depth, compile_program(root).evaluate, context)


def call_function(
    root: BuildingBlock, argument: Any, context: ExecutionContext
) -> Any:
    """Runs the computation `root` (of function type) on the runtime value `argument`."""

    def run() -> Any:
        function = compile_program(root).evaluate(context)
        return function.call(argument)

    return call_with_stack_for(root.depth, run)


# Programs up to this depth run on the caller's stack; deeper ones on a big one.
SHALLOW_DEPTH = 200
# Python frames one level of IR nesting takes while running is about one (measured
# for nested blocks, calls, lambdas and selections); this leaves room to spare.
_FRAMES_PER_LEVEL = 4
_DEEP_STACK_BYTES = 512 * 1024 * 1024
_stack_lock = threading.Lock()


def call_with_stack_for(depth: int, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, run where a program of nesting `depth` cannot overflow the stack.

    Shallow programs run directly. Deeper ones run in a helper thread with a
    512 MiB stack (address space, touched only as used), after raising the
    recursion limit to fit; the result or the exception comes back here.
    Backends that run client work in their own threads should call it too.
    """
    if depth <= SHALLOW_DEPTH:
        return function(*args)
    needed = depth * _FRAMES_PER_LEVEL + 2000
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # handed back to the caller's thread
            outcome["error"] = error

    with _stack_lock:
        previous = threading.stack_size(_DEEP_STACK_BYTES)
        try:
            thread = threading.Thread(target=target, name="fedcc-deep-program")
            thread.start()
        finally:
            threading.stack_size(previous)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
