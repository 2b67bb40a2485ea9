"""`run`: a computation on Python arguments, from argument checking to Python results.

The steps, in order: convert the arguments by the computation's parameter
type (every type, shape and client-count error is raised here, before
anything runs); choose the backend; open a session over the clients; hand
the client lists to it; interpret; convert the result back to Python values,
bringing client values to the server only when the result holds them.
"""

from __future__ import annotations

from typing import Any

from fedcc.ir.building_blocks import BuildingBlock, Intrinsic, Lambda, walk
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    StructType,
    Type,
    walk_types,
)
from fedcc.runtimes.backend import Backend
from fedcc.runtimes.client_data import count_clients_of
from fedcc.runtimes.interpreter import ExecutionContext, call_function, evaluate
from fedcc.runtimes.registry import resolve_backend
from fedcc.runtimes.values import (
    ClientList,
    Container,
    client_lists,
    from_runtime,
    replace_client_lists,
    to_runtime,
)


def run(
    comp: BuildingBlock,
    *args: Any,
    backend: str | Backend | None = None,
    num_clients: int | None = None,
    result_container: Container | None = None,
    **options: Any,
) -> Any:
    """Runs `comp` on the Python arguments `args` and returns its result as Python values.

    - A computation of several parameters (one struct parameter) takes the
      parts as positional arguments; a single argument is the whole parameter.
    - The number of clients is the length of the client lists among the
      arguments (they must agree), else the number of clients of the client
      data sets the computation reads (runtimes/client_data.py), else
      `num_clients`.
    - `backend`: a registered name or a `Backend`; default: the innermost
      `use_backend(...)`, else the default backend. `options` (e.g.
      `workers=4`) go to the named backend.
    - `result_container`: how to rebuild structs in the result, as the tracer
      saw them (see `values.Container`).

    Raises `FederatedTypeError` naming the parameter (and client index) for a
    wrong number, type or shape of arguments, ragged client lists or client
    lists of different lengths, before anything runs.
    """
    if not isinstance(comp, BuildingBlock):
        raise FederatedTypeError(f"expected a computation (a BuildingBlock), found {comp!r}")
    comp_type = comp.type_signature
    is_function = isinstance(comp_type, FunctionType)
    if is_function:
        parameter_type = comp_type.parameter
        argument = _convert_arguments(comp, parameter_type, args)
        result_type = comp_type.result
    else:
        if args:
            raise FederatedTypeError(
                f"a computation of type {comp_type} is not a function; it takes no arguments, "
                f"found {len(args)}"
            )
        parameter_type, argument, result_type = None, None, comp_type
    lists = [] if parameter_type is None else client_lists(argument, parameter_type)
    clients = _number_of_clients(comp, lists, num_clients)
    chosen = resolve_backend(backend, **options)
    with chosen.open_session(clients) as session:
        if lists:
            argument = replace_client_lists(
                argument, parameter_type, lambda client_list: session.place(client_list.values)
            )
        context = ExecutionContext(session)
        # A computation that is not a function is a value, e.g. federated_value_at_server(...).
        result = call_function(comp, argument, context) if is_function else evaluate(comp, context)
        return from_runtime(result, result_type, result_container, session.materialize)


def _convert_arguments(comp: BuildingBlock, parameter: Type | None, args: tuple) -> Any:
    name = comp.parameter_name if isinstance(comp, Lambda) and comp.parameter_name else "arg"
    if parameter is None:
        if args:
            raise FederatedTypeError(
                f"the computation {comp.type_signature} takes no arguments, found {len(args)}"
            )
        return None
    if len(args) == 1:
        return to_runtime(args[0], parameter, f"parameter {name!r}")
    if isinstance(parameter, StructType) and len(args) == len(parameter) and args:
        return tuple(
            to_runtime(value, element_type, _part_name(name, element_name, index))
            for index, (value, (element_name, element_type)) in enumerate(
                zip(args, parameter.elements)
            )
        )
    if isinstance(parameter, StructType) and len(parameter) > 1:
        expected = f"{len(parameter)} arguments (the parts of {parameter}) or 1 (all of it)"
    else:
        expected = f"1 argument of type {parameter}"
    raise FederatedTypeError(
        f"the computation {comp.type_signature} expects {expected}, found {len(args)}"
    )


def _part_name(parameter_name: str, element_name: str | None, index: int) -> str:
    if element_name is not None:
        return f"parameter {element_name!r}"
    return f"argument {index} ({parameter_name}[{index}])"


def _number_of_clients(
    comp: BuildingBlock, lists: list[ClientList], num_clients: int | None
) -> int:
    first = lists[0] if lists else None
    for other in lists[1:]:
        if len(other.values) != len(first.values):
            raise FederatedTypeError(
                f"{first.where} has {len(first.values)} clients but {other.where} has "
                f"{len(other.values)}: every argument placed at CLIENTS has one value a client"
            )
    if num_clients is not None:
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0:
            raise FederatedTypeError(
                f"num_clients must be a non-negative int, found {num_clients!r}"
            )
        if first is not None and len(first.values) != num_clients:
            raise FederatedTypeError(
                f"num_clients={num_clients}, but {first.where} has {len(first.values)} clients"
            )
        return num_clients
    if first is not None:
        return len(first.values)
    from_data_sets = count_clients_of(comp)
    if from_data_sets is not None:
        return from_data_sets
    if _involves_clients(comp):
        raise FederatedTypeError(
            "cannot tell the number of clients: no argument is a list of client values; "
            "pass num_clients="
        )
    return 0


def _involves_clients(comp: BuildingBlock) -> bool:
    # Client values come from the parameter or from intrinsics; look at their types.
    typed = [comp.type_signature] + [
        node.type_signature for node in walk(comp) if isinstance(node, Intrinsic)
    ]
    return any(
        isinstance(t, FederatedType) and t.placement is CLIENTS
        for signature in typed
        for t in walk_types(signature)
    )
