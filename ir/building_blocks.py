"""The building blocks of federated programs (DESIGN §5): immutable, typed, structurally compared.

Every node checks its own local typing when it is built, so ill-typed IR cannot
exist; whole-program properties (scoping, reference types) are `verify`'s job.
Nodes cache their hash and depth at construction, and equality walks an
explicit worklist, so programs of any depth compare without recursion.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from fedcc.ir import intrinsics
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.local_graph import Graph
from fedcc.ir.tensors import frozen_array, tensor_key
from fedcc.ir.types import (
    FunctionType,
    PlacementLiteral,
    PlacementType,
    StructType,
    TensorType,
    Type,
    is_assignable_from,
    is_valid_field_name,
    is_valid_variable_name,
    to_placement,
    to_type,
)


class BuildingBlock:
    """Base of all IR nodes.

    Subclasses define `_fields` (their own data, compared by value) and
    `children()` (the nodes inside, compared structurally).
    """

    __slots__ = ("_depth", "_hash", "type_signature")
    kind = "building_block"

    def _finish(self, type_signature: Type, local: tuple) -> None:
        children = self.children()
        object.__setattr__(self, "type_signature", type_signature)
        object.__setattr__(self, "_depth", 1 + max((c._depth for c in children), default=0))
        child_hashes = tuple(c._hash for c in children)
        object.__setattr__(self, "_hash", hash((self.kind, local, type_signature, child_hashes)))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def children(self) -> tuple[BuildingBlock, ...]:
        """The nodes directly inside this one, in order."""
        return ()

    def local_key(self) -> tuple:
        """This node's own data, without its children; equal nodes have equal keys."""
        raise NotImplementedError

    @property
    def depth(self) -> int:
        """Nesting depth: 1 for a leaf."""
        return self._depth

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BuildingBlock):
            return NotImplemented
        work = [(self, other)]
        while work:
            a, b = work.pop()
            if a is b:
                continue
            if (
                a._hash != b._hash
                or type(a) is not type(b)
                or a.type_signature != b.type_signature
                or a.local_key() != b.local_key()
            ):
                return False
            ca, cb = a.children(), b.children()
            if len(ca) != len(cb):
                return False
            work.extend(zip(ca, cb))
        return True

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __repr__(self) -> str:
        from fedcc.ir.text import to_compact_text

        return f"<{type(self).__name__} {to_compact_text(self)}>"

    def __str__(self) -> str:
        from fedcc.ir.text import to_compact_text

        return to_compact_text(self)


class Reference(BuildingBlock):
    """A use of a name bound by an enclosing `Lambda` or `Block`."""

    __slots__ = ("name",)
    kind = "reference"

    def __init__(self, name: str, type_signature: Any) -> None:
        if not is_valid_variable_name(name):
            raise FederatedTypeError(f"{name!r} is not a valid variable name")
        object.__setattr__(self, "name", name)
        self._finish(to_type(type_signature), (name,))

    def local_key(self) -> tuple:
        return (self.name,)


class Lambda(BuildingBlock):
    """A function of one named parameter (or of none)."""

    __slots__ = ("parameter_name", "parameter_type", "result")
    kind = "lambda"

    def __init__(
        self, parameter_name: str | None, parameter_type: Any, result: BuildingBlock
    ) -> None:
        if (parameter_name is None) != (parameter_type is None):
            raise FederatedTypeError("a lambda has both a parameter name and type, or neither")
        if parameter_name is not None and not is_valid_variable_name(parameter_name):
            raise FederatedTypeError(f"{parameter_name!r} is not a valid variable name")
        _check_node(result, "lambda result")
        parameter_type = None if parameter_type is None else to_type(parameter_type)
        object.__setattr__(self, "parameter_name", parameter_name)
        object.__setattr__(self, "parameter_type", parameter_type)
        object.__setattr__(self, "result", result)
        self._finish(
            FunctionType(parameter_type, result.type_signature), (parameter_name, parameter_type)
        )

    def children(self) -> tuple[BuildingBlock, ...]:
        return (self.result,)

    def local_key(self) -> tuple:
        return (self.parameter_name, self.parameter_type)


class Block(BuildingBlock):
    """`let a=..., b=... in result`: bindings in order, each visible to the later ones."""

    __slots__ = ("locals", "result")
    kind = "block"

    def __init__(
        self, local_bindings: Iterable[tuple[str, BuildingBlock]], result: BuildingBlock
    ) -> None:
        bindings = tuple((name, value) for name, value in local_bindings)
        for name, value in bindings:
            if not is_valid_variable_name(name):
                raise FederatedTypeError(f"{name!r} is not a valid variable name")
            _check_node(value, f"the value bound to {name!r}")
        _check_node(result, "block result")
        object.__setattr__(self, "locals", bindings)
        object.__setattr__(self, "result", result)
        self._finish(result.type_signature, tuple(name for name, _ in bindings))

    def children(self) -> tuple[BuildingBlock, ...]:
        return (*(value for _, value in self.locals), self.result)

    def local_key(self) -> tuple:
        return tuple(name for name, _ in self.locals)


class Call(BuildingBlock):
    """Calls a function value with an argument (or with none)."""

    __slots__ = ("argument", "function")
    kind = "call"

    def __init__(self, function: BuildingBlock, argument: BuildingBlock | None = None) -> None:
        _check_node(function, "called function")
        fn_type = function.type_signature
        if not isinstance(fn_type, FunctionType):
            raise FederatedTypeError(f"cannot call a value of non-function type {fn_type}")
        if argument is None:
            if fn_type.parameter is not None:
                raise FederatedTypeError(
                    f"a function of type {fn_type} needs an argument of type {fn_type.parameter}"
                )
        else:
            _check_node(argument, "call argument")
            if fn_type.parameter is None:
                raise FederatedTypeError(f"a function of type {fn_type} takes no argument")
            if not is_assignable_from(fn_type.parameter, argument.type_signature):
                raise FederatedTypeError(
                    f"a function of type {fn_type} expects an argument of type "
                    f"{fn_type.parameter}, found {argument.type_signature}"
                )
        object.__setattr__(self, "function", function)
        object.__setattr__(self, "argument", argument)
        self._finish(fn_type.result, ())

    def children(self) -> tuple[BuildingBlock, ...]:
        return (self.function,) if self.argument is None else (self.function, self.argument)

    def local_key(self) -> tuple:
        return (self.argument is None,)


class Struct(BuildingBlock):
    """`<a=x,y>`: an ordered struct of optionally named values."""

    __slots__ = ("elements",)
    kind = "struct"

    def __init__(self, elements: Iterable[Any]) -> None:
        items: list[tuple[str | None, BuildingBlock]] = []
        for element in elements:
            name, value = element if isinstance(element, tuple) else (None, element)
            if name is not None and not is_valid_field_name(name):
                raise FederatedTypeError(f"struct field name {name!r} is not an identifier")
            _check_node(value, "struct element")
            items.append((name, value))
        object.__setattr__(self, "elements", tuple(items))
        type_signature = StructType([(n, v.type_signature) for n, v in items])
        self._finish(type_signature, tuple(n for n, _ in items))

    def children(self) -> tuple[BuildingBlock, ...]:
        return tuple(v for _, v in self.elements)

    def local_key(self) -> tuple:
        return tuple(n for n, _ in self.elements)


class Selection(BuildingBlock):
    """`s[i]`: the i-th element of a struct value; `Selection(s, name="w")` finds i by name."""

    __slots__ = ("index", "source")
    kind = "selection"

    def __init__(
        self, source: BuildingBlock, index: int | None = None, *, name: str | None = None
    ) -> None:
        _check_node(source, "selection source")
        struct = source.type_signature
        if not isinstance(struct, StructType):
            raise FederatedTypeError(f"cannot select from a value of non-struct type {struct}")
        if name is not None:
            index = struct.index_of(name)
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(struct):
            raise FederatedTypeError(
                f"selection index {index!r} is out of range for {struct} ({len(struct)} elements)"
            )
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "index", int(index))
        self._finish(struct[int(index)], (int(index),))

    def children(self) -> tuple[BuildingBlock, ...]:
        return (self.source,)

    def local_key(self) -> tuple:
        return (self.index,)


class Intrinsic(BuildingBlock):
    """An intrinsic (`federated_map`, ...) at a concrete function type."""

    __slots__ = ("uri",)
    kind = "intrinsic"

    def __init__(self, uri: str, type_signature: Any) -> None:
        definition = intrinsics.lookup(uri)
        fn_type = to_type(type_signature)
        if not isinstance(fn_type, FunctionType):
            raise FederatedTypeError(f"intrinsic {uri} needs a function type, found {fn_type}")
        expected = definition.result_type(fn_type.parameter)
        if expected != fn_type.result:
            raise FederatedTypeError(
                f"intrinsic {uri} called with {fn_type.parameter} returns {expected}, "
                f"not {fn_type.result}"
            )
        object.__setattr__(self, "uri", uri)
        self._finish(fn_type, (uri,))

    def local_key(self) -> tuple:
        return (self.uri,)


class Placement(BuildingBlock):
    """A placement literal, `CLIENTS` or `SERVER`."""

    __slots__ = ("placement",)
    kind = "placement"

    def __init__(self, placement: Any) -> None:
        literal: PlacementLiteral = to_placement(placement)
        object.__setattr__(self, "placement", literal)
        self._finish(PlacementType(), (literal.name,))

    def local_key(self) -> tuple:
        return (self.placement.name,)


class Literal(BuildingBlock):
    """A constant tensor; its data is a read-only NumPy array."""

    __slots__ = ("_key", "value")
    kind = "literal"

    def __init__(self, value: Any, dtype: Any = None) -> None:
        array = frozen_array(value, dtype)
        object.__setattr__(self, "value", array)
        object.__setattr__(self, "_key", tensor_key(array))
        self._finish(TensorType(array.dtype, array.shape), self._key)

    def local_key(self) -> tuple:
        return self._key


class Data(BuildingBlock):
    """An external data set named by URI (a path or a scheme-qualified location)."""

    __slots__ = ("uri",)
    kind = "data"

    def __init__(self, uri: str, type_signature: Any) -> None:
        if not isinstance(uri, str) or not uri:
            raise FederatedTypeError(f"a data URI must be a non-empty string, found {uri!r}")
        object.__setattr__(self, "uri", uri)
        self._finish(to_type(type_signature), (uri,))

    def local_key(self) -> tuple:
        return (self.uri,)


class LocalGraph(BuildingBlock):
    """A function given as a local op graph (NumPy primitives)."""

    __slots__ = ("graph",)
    kind = "local_graph"

    def __init__(self, graph: Graph) -> None:
        if not isinstance(graph, Graph):
            raise FederatedTypeError(f"expected a local Graph, found {type(graph).__name__}")
        object.__setattr__(self, "graph", graph)
        self._finish(graph.function_type, (graph,))

    def local_key(self) -> tuple:
        return (self.graph,)


NODE_CLASSES: tuple[type[BuildingBlock], ...] = (
    Reference,
    Lambda,
    Block,
    Call,
    Struct,
    Selection,
    Intrinsic,
    Placement,
    Literal,
    Data,
    LocalGraph,
)


def _check_node(value: Any, what: str) -> None:
    if not isinstance(value, BuildingBlock):
        raise FederatedTypeError(f"{what} must be a building block, found {type(value).__name__}")


def walk(root: BuildingBlock) -> Iterator[BuildingBlock]:
    """Every node of `root`, `root` first, in depth-first pre-order; no recursion."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children()))


def post_order(root: BuildingBlock) -> Iterator[BuildingBlock]:
    """Every node of `root`, children before parents, left to right; no recursion."""
    stack: list[tuple[BuildingBlock, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(node.children()))


def call_intrinsic(uri: str, argument: BuildingBlock | None) -> Call:
    """Builds `uri(argument)` with the intrinsic's type instantiated for the argument."""
    parameter = None if argument is None else argument.type_signature
    return Call(Intrinsic(uri, intrinsics.intrinsic_type(uri, parameter)), argument)

