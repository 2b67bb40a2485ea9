"""`fc.forms`: MapReduceForm (DESIGN §7) and a plain map/fold driver that runs one.

`to_map_reduce_form(process_or_next)` splits a round into `prepare`, `work`,
`zero`, `accumulate`, `merge`, `report` and `update` (see compiler/forms.py
for the types and how the round is cut). `run_map_reduce_form(form, state,
client_data)` runs one round of a form without the federated interpreter:

    broadcast = prepare(state)
    outputs   = [work(<data, broadcast>) for each client's data, in client order]
    aggregate = report(the canonical tree over the clients of accumulate(<zero, update>),
                       merged with merge)                 (report(zero) without clients)
    secure    = each secure-sum field of the outputs, summed by its intrinsic
    new_state, metrics = update(<state, aggregate, secure sums...>)

Why the same bits as running `next`: the runtime computes a
`federated_aggregate` exactly so, a leaf `accumulate(<zero, v>)` a client (a
fresh zero each time) and merges along the canonical tree of
runtimes/reduction.py, which this driver uses as it is (`tree_reduce`) rather
than folding in client order. Secure sums are the one step the driver does not
spell out: their semantics (each client's value in range, no overflow, the
bound per leaf) belong to the runtime's secure-sum intrinsic, so the driver
asks the reference backend to run exactly that intrinsic over the clients'
values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcc.compiler.forms import (
    FORM_COMPUTATIONS,
    SECURE_BOUND_COMPUTATIONS,
    MapReduceForm,
    MapReduceFormError,
    build_map_reduce_form,
)
from fedcc.computation import Computation, ComputationBundle
from fedcc.ir.building_blocks import (
    BuildingBlock,
    Lambda,
    Reference,
    Selection,
    Struct,
    call_intrinsic,
)
from fedcc.ir.program import Program
from fedcc.ir.types import CLIENTS, FederatedType, StructType, Type
from fedcc.runtimes import reduction
from fedcc.runtimes import run as run_on_backend
from fedcc.runtimes.interpreter import call_with_stack_for, client_function
from fedcc.runtimes.values import from_runtime, to_runtime

NEXT = "next"

__all__ = [
    "FORM_COMPUTATIONS",
    "SECURE_BOUND_COMPUTATIONS",
    "MapReduceForm",
    "MapReduceFormError",
    "as_map_reduce_form",
    "map_reduce_form_program",
    "run_map_reduce_form",
    "to_map_reduce_form",
]


def _round_block(process_or_next: Any) -> BuildingBlock:
    """The building block of the round: a process's or bundle's `next`, or the computation."""
    x = process_or_next
    if isinstance(x, ComputationBundle):
        x = x.program
    if isinstance(x, Program):
        if NEXT in x.computations:
            return x.computations[NEXT]
        if len(x.computations) == 1:
            return next(iter(x.computations.values()))
        raise MapReduceFormError(
            f"expected a process with a {NEXT!r} computation, found {', '.join(x.computations)}"
        )
    if isinstance(x, Computation):
        return x.building_block
    if isinstance(x, BuildingBlock):
        return x
    raise MapReduceFormError(
        "expected an iterative process, a ComputationBundle holding 'next', a computation or a "
        f"building block, found {type(x).__name__}"
    )


def to_map_reduce_form(process_or_next: Any, optimization_level: int = 2) -> MapReduceForm:
    """The MapReduceForm of a round: an `IterativeProcess` or a bundle (its `next`), or a
    computation `(<S@SERVER, {D}@CLIENTS> -> <S@SERVER, M@SERVER>)`.

    Raises `MapReduceFormError` (a `fc.FedccError`) naming the calls that keep the round
    from the shape broadcast -> client work -> aggregation -> server update.
    """
    return build_map_reduce_form(_round_block(process_or_next), optimization_level).form


def map_reduce_form_program(process_or_next: Any, optimization_level: int = 2) -> Program:
    """The form of a round as a `Program` (what `fedcc compile --form mapreduce` writes), its
    metadata recording the passes that normalized the round."""
    built = build_map_reduce_form(_round_block(process_or_next), optimization_level)
    return built.form.to_program({"passes": ",".join(built.passes)})


def as_map_reduce_form(x: Any) -> MapReduceForm:
    """`x` as a form: a form itself, or a loaded program or bundle holding one's computations."""
    if isinstance(x, MapReduceForm):
        return x
    if isinstance(x, ComputationBundle):
        x = x.program
    if isinstance(x, Program):
        return MapReduceForm.from_program(x)
    raise MapReduceFormError(
        f"expected a MapReduceForm, or a program or bundle holding one, found {type(x).__name__}"
    )


def _secure_sum(uri: str, values: list[Any], bound: Any, member: Type, bound_type: Type) -> Any:
    """The runtime's secure sum `uri` of the clients' `values` with `bound`, as a runtime value."""
    parameter = StructType([FederatedType(member, CLIENTS), bound_type])
    x = Reference("secure_sum_argument", parameter)
    summing = Lambda(
        "secure_sum_argument",
        parameter,
        call_intrinsic(uri, Struct([Selection(x, 0), Selection(x, 1)])),
    )
    total = run_on_backend(summing, values, bound, backend="reference")
    return to_runtime(total, member, uri)


def run_map_reduce_form(form: Any, state: Any, client_data: Sequence[Any]) -> Any:
    """One round of `form` (a MapReduceForm, or a loaded program or bundle holding one) on
    `state` and one `client_data` entry a client; returns `(new_state, metrics)` as `next`
    would (named structs as dicts), bit for bit (see the module docstring)."""
    form = as_map_reduce_form(form)
    state_value = to_runtime(state, form.state_type, "state")
    clients = to_runtime(
        client_data, FederatedType(form.client_data_type, CLIENTS), "client_data"
    ).values

    def function(block: BuildingBlock):
        call = client_function(block).call
        # Deep parts run where their nesting cannot overflow the stack, as client work does.
        return lambda argument: call_with_stack_for(block.depth, call, argument)

    broadcast = function(form.prepare)(state_value)
    work = function(form.work)
    outputs = [work((data, broadcast)) for data in clients]

    accumulate, merge = function(form.accumulate), function(form.merge)
    zero = function(form.zero)(None)
    # IEEE results (inf, nan) without warnings, as the runtime's reductions compute them.
    with np.errstate(all="ignore"):
        leaves = (accumulate((zero, output[0])) for output in outputs)
        root = reduction.tree_reduce(leaves, lambda a, b: merge((a, b))) if outputs else zero
    aggregate = function(form.report)(root)

    work_result = form.work.type_signature.result
    sums = []
    # work's result and update's parameter hold the secure sums at these positions.
    for position, uri, bounds_of in (
        (1, "federated_secure_sum_bitwidth", form.secure_sum_bitwidth),
        (2, "federated_secure_sum", form.secure_sum_max_input),
    ):
        bounds = function(bounds_of)(None)
        bound_types = bounds_of.type_signature.result
        members = work_result[position]
        sums.append(
            tuple(
                _secure_sum(
                    uri,
                    [output[position][index] for output in outputs],
                    bounds[index],
                    members[index],
                    bound_types[index],
                )
                for index in range(len(members))
            )
        )
    result = function(form.update)((state_value, aggregate, *sums))
    return from_runtime(result, form.update.type_signature.result)
