"""Computations as Python callables: a closed function building block and how to call it.

A `Computation` holds a closed function building block (a `Lambda` for
federated code, a `LocalGraph` for NumPy code), the layout of its Python
parameters (several parameters are the elements of one struct parameter, as
in TFF), and the containers its Python code built its result from, so that a
call returns a namedtuple where the code returned one. Calling it:

- while a federated computation is being traced, inserts a call into the trace;
- inside `with fc.eager():`, runs its Python body on concrete values;
- otherwise runs it on a backend (`fedcc.runtimes.run`), checking the
  arguments first, by parameter name (and client index).

A `PolymorphicComputation` (declared without types) is traced on each call
with the argument's types, once per type. A computation read from a file has
no Python body and no containers: its results are plain dicts, tuples, lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from fedcc.compiler import federated_tracer as tracer
from fedcc.compiler import numpy_tracer
from fedcc.compiler.federated_tracer import FunctionLike, ParameterLayout
from fedcc.eager import call_computation, is_eager
from fedcc.ir.analysis import free_references
from fedcc.ir.building_blocks import BuildingBlock, Lambda, LocalGraph
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.program import Program
from fedcc.ir.types import (
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    Type,
)
from fedcc.runtimes import run as run_block
from fedcc.runtimes.values import ClientList, Container, client_lists, container_of, to_runtime


def _container_fits(container: Container | None, t: Type) -> bool:
    """Whether `container` describes the structs of `t` (None, no container, always fits)."""
    if container is None:
        return True
    while isinstance(t, (FederatedType, SequenceType)):
        t = t.member if isinstance(t, FederatedType) else t.element
    if not isinstance(t, StructType) or len(container.children) != len(t):
        return False
    cls = container.python_type
    if (issubclass(cls, Mapping) or dataclasses.is_dataclass(cls)) and None in t.names():
        return False
    return all(_container_fits(child, element) for child, element in zip(container.children, t))


def result_container(skeleton: Any, result_type: Type) -> Container | None:
    """The container a result of `result_type` is rebuilt with, from the tracer's skeleton."""
    container = container_of(skeleton)
    return container if _container_fits(container, result_type) else None


def _default_layout(block: BuildingBlock) -> ParameterLayout:
    fn_type = block.type_signature
    assert isinstance(fn_type, FunctionType)
    if fn_type.parameter is None:
        return ParameterLayout(None, (), False)
    name = block.parameter_name if isinstance(block, Lambda) else None
    return ParameterLayout(fn_type.parameter, (name or "arg",), False)


class Computation(FunctionLike):
    """A closed function building block, callable from Python (see the module docstring).

    `type_signature` is its function type; `building_block` the IR, which is
    what `fc.serialize`, `fc.to_text` and the backends see.
    """

    def __init__(
        self,
        building_block: BuildingBlock,
        *,
        name: str | None = None,
        layout: ParameterLayout | None = None,
        result_skeleton: Any = None,
        python_function: Callable[..., Any] | None = None,
    ) -> None:
        if not isinstance(building_block, BuildingBlock) or not isinstance(
            building_block.type_signature, FunctionType
        ):
            raise FederatedTypeError(
                f"a computation is a function building block, found {building_block!r}"
            )
        self.building_block = building_block
        self.type_signature: FunctionType = building_block.type_signature
        self.name = name or (python_function.__name__ if python_function else "computation")
        # A computation read from a file names no Python parameters: `run` checks its arguments.
        self.names_parameters = layout is not None
        self.layout = layout if layout is not None else _default_layout(building_block)
        self.result_skeleton = result_skeleton
        self.result_container = result_container(result_skeleton, self.type_signature.result)
        self.python_function = python_function

    # -- FunctionLike

    def function_block(self, parameter_type: Type | None) -> BuildingBlock:
        return self.building_block

    def result_skeleton_for(self, parameter_type: Type | None) -> Any:
        return self.result_skeleton

    # -- calling

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        parts = self.bind_arguments(args, kwargs)
        if tracer.is_tracing():
            return tracer.call_function(
                self.building_block, parts, self.layout, self.name, self.result_skeleton
            )
        if _holds_numpy_tracers(parts):
            if not isinstance(self.building_block, LocalGraph):
                raise tracer.located_error(
                    f"calling {self.name}",
                    "a federated computation cannot be called inside a numpy_computation",
                )
            return self._inline_in_numpy_trace(parts)
        if is_eager():
            return call_computation(self, parts)
        return self.run(*parts)

    def _inline_in_numpy_trace(self, parts: Sequence[Any]) -> Any:
        """Called from a NumPy function being traced: the graph's ops join that trace."""
        layout = self.layout
        if len(parts) != layout.count:
            raise FederatedTypeError(
                f"{self.name} takes {layout.count} argument(s), found {len(parts)}"
            )
        leaves: list[Any] = []
        for name, part_type, value in zip(layout.names, layout.part_types(), parts):
            leaves.extend(_tensor_leaves_of(value, part_type, f"{self.name}: parameter {name!r}"))
        outputs = iter(numpy_tracer.inline_graph(self.building_block.graph, leaves))
        return _rebuild_result(self.type_signature.result, self.result_skeleton, outputs)

    def run(self, *args: Any, backend: Any = None, **options: Any) -> Any:
        """Runs on a backend (`backend` or the current one) with `options` such as `num_clients`.

        Raises `FederatedTypeError` naming the parameter (and client index) for
        a wrong number, type or shape of arguments, before anything runs.
        """
        try:
            return run_block(
                self.building_block,
                *args,
                backend=backend,
                result_container=self.result_container,
                **options,
            )
        except FederatedTypeError:
            # The run checks the arguments before anything runs, naming them by position;
            # checking them again here (only then: the data can be large) names them by name.
            if self.names_parameters:
                self.check_arguments(args)
            raise

    def bind_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        """The positional arguments, with keyword arguments put in their parameters' places."""
        if self.names_parameters:
            return bind_arguments(self.name, self.layout.names, args, kwargs)
        if kwargs:
            raise FederatedTypeError(
                f"{self.name} was read from a file and has no parameter names; "
                "pass its arguments by position"
            )
        parameter = self.type_signature.parameter
        if isinstance(parameter, StructType) and len(args) == len(parameter) > 1:
            return [tuple(args)]  # the parts of its one struct parameter
        return list(args)

    def check_arguments(self, args: Sequence[Any]) -> None:
        """Checks the number, types and shapes of `args` and the clients' counts, by name."""
        layout = self.layout
        if len(args) == 1 and layout.packed:
            # One argument for several parameters may be the whole struct, as `run` takes it.
            try:
                to_runtime(args[0], layout.parameter_type, f"{self.name}: the parameters")
                return
            except FederatedTypeError as error:
                whole = str(error)
        else:
            whole = ""
        if len(args) != layout.count:
            names = ", ".join(layout.names) or "none"
            raise FederatedTypeError(
                f"{self.name} takes {layout.count} argument(s) ({names}), found {len(args)}"
                + (f" (and as all of them at once: {whole})" if whole else "")
            )
        lists: list[ClientList] = []
        for name, part_type, value in zip(layout.names, layout.part_types(), args):
            converted = to_runtime(value, part_type, f"{self.name}: parameter {name!r}")
            lists.extend(client_lists(converted, part_type))
        for other in lists[1:]:
            if len(other.values) != len(lists[0].values):
                raise FederatedTypeError(
                    f"{lists[0].where} has {len(lists[0].values)} clients but {other.where} has "
                    f"{len(other.values)}: every argument placed at CLIENTS has one value a client"
                )

    # -- identity

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Computation):
            return self.building_block == other.building_block
        if isinstance(other, BuildingBlock):
            return self.building_block == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.building_block)

    def __repr__(self) -> str:
        return f"<Computation {self.name}: {self.type_signature}>"


_MISSING = object()


def bind_arguments(
    name: str, names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> list[Any]:
    """Positional `args` with `kwargs` put in the places of the parameters `names`."""
    parts = list(args)
    if not kwargs:
        return parts
    parts += [_MISSING] * (len(names) - len(parts))
    for key, value in kwargs.items():
        if key not in names:
            raise FederatedTypeError(
                f"{name} has no parameter {key!r}; its parameters: {', '.join(names) or 'none'}"
            )
        index = names.index(key)
        if parts[index] is not _MISSING:
            raise FederatedTypeError(f"{name} got parameter {key!r} twice")
        parts[index] = value
    missing = [n for n, p in zip(names, parts) if p is _MISSING]
    if missing:
        raise FederatedTypeError(f"{name} is missing parameter(s) {', '.join(missing)}")
    return parts


def _holds_numpy_tracers(values: Sequence[Any]) -> bool:
    stack = list(values)
    while stack:
        value = stack.pop()
        if type(value) is np.ndarray:
            continue  # the common leaf, checked first: client data holds thousands
        if isinstance(value, numpy_tracer.Tracer):
            return True
        items = tracer.container_items(value)
        if items is not None:
            stack.extend(v for _, v in items)
    return False


def _tensor_leaves_of(value: Any, t: Type, where: str) -> list[Any]:
    """The tensors of a Python value of a struct-of-tensors type, in the type's leaf order."""
    if not isinstance(t, StructType):
        return [value]
    items = tracer.container_items(value)
    if items is None or len(items) != len(t):
        raise FederatedTypeError(f"{where}: expected {t}, found {type(value).__name__}")
    by_name = dict(items)
    leaves = []
    for index, (name, element) in enumerate(t.elements):
        part = by_name[name] if name is not None and name in by_name else items[index][1]
        leaves.extend(_tensor_leaves_of(part, element, f"{where}[{name or index}]"))
    return leaves


def _rebuild_result(t: Type, skeleton: Any, outputs: Iterator[Any]) -> Any:
    """The Python result of type `t` from its tensors in order, in the skeleton's containers."""
    if not isinstance(t, StructType):
        return next(outputs)
    items = tracer.container_items(skeleton)
    children = [v for _, v in items] if items is not None and len(items) == len(t) else None
    parts = [
        _rebuild_result(element, children[i] if children else None, outputs)
        for i, element in enumerate(t)
    ]
    if children is not None:
        return tracer.rebuild_container(skeleton, parts)
    names = t.names()
    return dict(zip(names, parts)) if names and None not in names else tuple(parts)


class PolymorphicComputation(FunctionLike):
    """A computation declared without types: traced on each call for the arguments' types.

    The traced computations are cached by parameter type. Argument types are
    inferred as `fc.to_type` would read them from values: arrays and NumPy
    scalars keep their dtype and shape, Python floats are float32 and ints
    int32, tuples and lists are unnamed structs, dicts named ones.
    """

    def __init__(
        self,
        python_function: Callable[..., Any],
        concretize: Callable[[Callable[..., Any], ParameterLayout], Computation],
    ) -> None:
        self.python_function = python_function
        self.name = python_function.__name__
        self._concretize = concretize
        self._cache: dict[Type | None, Computation] = {}
        self._names, _ = tracer.positional_parameters(python_function)

    def concrete(self, parameter_type: Type | None) -> Computation:
        """The computation traced for one parameter of `parameter_type` (cached)."""
        computation = self._cache.get(parameter_type)
        if computation is None:
            layout = tracer.layout_for_parameter(self.python_function, parameter_type)
            computation = self._concretize(self.python_function, layout)
            self._cache[parameter_type] = computation
        return computation

    def concrete_for_arguments(self, args: Sequence[Any]) -> Computation:
        """The computation traced for these positional arguments' types."""
        types = [
            tracer.infer_type(value, f"{self.name}: parameter {name!r}")
            for name, value in zip(self._names, args)
        ]
        if len(args) > len(self._names):
            raise FederatedTypeError(
                f"{self.name} takes {len(self._names)} argument(s), found {len(args)}"
            )
        if len(types) > 1:
            key: Type | None = StructType(types)
        else:
            key = types[0] if types else None
        computation = self._cache.get(key)
        if computation is None:
            layout = tracer.layout_parameters(self.python_function, types)
            computation = self._concretize(self.python_function, layout)
            self._cache[key] = computation
        return computation

    def function_block(self, parameter_type: Type | None) -> BuildingBlock:
        return self.concrete(parameter_type).building_block

    def result_skeleton_for(self, parameter_type: Type | None) -> Any:
        return self.concrete(parameter_type).result_skeleton

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        parts = bind_arguments(self.name, self._names, args, kwargs)
        return self.concrete_for_arguments(parts)(*parts)

    def run(self, *args: Any, backend: Any = None, **options: Any) -> Any:
        """Runs the computation traced for `args`' types on a backend (see `Computation.run`)."""
        return self.concrete_for_arguments(args).run(*args, backend=backend, **options)

    @property
    def traced(self) -> dict[Type | None, Computation]:
        """The computations traced so far, by parameter type."""
        return dict(self._cache)

    def __repr__(self) -> str:
        return f"<PolymorphicComputation {self.name}, traced for {len(self._cache)} type(s)>"


class ComputationBundle(Mapping):
    """Named computations saved together, like an iterative process's `initialize` and `next`.

    A mapping from name to `Computation` (a non-function entry stays a
    building block); names are attributes too (`bundle.next(...)`).
    `metadata` maps strings to strings (fedcc version, passes, source module).
    """

    def __init__(
        self,
        computations: Mapping[str, Computation | BuildingBlock],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        entries: dict[str, Computation | BuildingBlock] = {}
        for name, value in computations.items():
            if isinstance(value, PolymorphicComputation):
                raise FederatedTypeError(
                    f"computation {name!r} is polymorphic: give it types before saving it"
                )
            if not isinstance(value, (Computation, BuildingBlock)):
                raise FederatedTypeError(
                    f"computation {name!r} must be a computation or a building block, "
                    f"found {type(value).__name__}"
                )
            if isinstance(value, BuildingBlock):
                value = as_computation(value, name)
            entries[name] = value
        # Program checks the names and the metadata.
        self.program = Program(
            {name: _block(value) for name, value in entries.items()}, metadata
        )
        self._entries = entries

    @property
    def metadata(self) -> dict[str, str]:
        """The bundle's metadata."""
        return dict(self.program.metadata)

    def __getitem__(self, name: str) -> Computation | BuildingBlock:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._entries[name]
        except KeyError:
            raise AttributeError(
                f"the bundle has no computation {name!r}; it has {', '.join(self._entries)}"
            ) from None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ComputationBundle):
            return self.program == other.program
        if isinstance(other, Program):
            return self.program == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.program)

    def __repr__(self) -> str:
        return f"<ComputationBundle {', '.join(self._entries)}>"


def _block(value: Computation | BuildingBlock) -> BuildingBlock:
    return value.building_block if isinstance(value, Computation) else value


def as_computation(block: BuildingBlock, name: str = "computation") -> Computation | BuildingBlock:
    """A closed function block as a callable `Computation`; anything else as it is."""
    if isinstance(block.type_signature, FunctionType) and not free_references(block):
        return Computation(block, name=name)
    return block


def run(comp: Any, *args: Any, backend: Any = None, **options: Any) -> Any:
    """Runs a computation (or a function building block) on Python arguments (DESIGN §8).

    `backend` is a backend name or instance (default: the innermost
    `fc.use_backend`, else the reference backend); `options` go to the
    backend (e.g. `workers=4`) or to the run (`num_clients=` for a
    computation without client arguments).
    """
    if isinstance(comp, (Computation, PolymorphicComputation)):
        return comp.run(*args, backend=backend, **options)
    return run_block(comp, *args, backend=backend, **options)
