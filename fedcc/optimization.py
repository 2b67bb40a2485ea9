"""`fc.optimize`: a computation, bundle, building block or program, optimized at a level.

The work is the compiler's pass manager (`fedcc.compiler.pass_manager`);
this module keeps what the user handed in callable: an optimized
`Computation` keeps its name, parameter layout, result containers and
Python body, so it is called, and returns results, exactly like the original.
"""

from __future__ import annotations

from typing import Any

from fedcc.compiler import pass_manager
from fedcc.computation import Computation, ComputationBundle, PolymorphicComputation
from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import FederatedTypeError
from fedcc.ir.program import Program


def _with_block(computation: Computation, block: BuildingBlock) -> Computation:
    if block is computation.building_block:
        return computation
    return Computation(
        block,
        name=computation.name,
        layout=computation.layout if computation.names_parameters else None,
        result_skeleton=computation.result_skeleton,
        python_function=computation.python_function,
    )


def optimize(x: Any, level: int = 2) -> Any:
    """`x` optimized at `level` (0: nothing, 1: canonicalize, 2: federated and local rewrites).

    Takes a `Computation`, a `ComputationBundle` (each computation optimized;
    its metadata `passes` lists the passes applied), a building block or a
    `Program`, and returns the same kind of object, with the same type
    signature and bit-identical results.
    """
    if isinstance(x, Computation):
        return _with_block(x, pass_manager.optimize(x.building_block, level))
    if isinstance(x, ComputationBundle):
        program = pass_manager.optimize(x.program, level)
        entries = {
            name: _with_block(entry, program[name]) if isinstance(entry, Computation)
            else program[name]
            for name, entry in x.items()
        }  # fmt: skip
        return ComputationBundle(entries, program.metadata)
    if isinstance(x, (BuildingBlock, Program)):
        return pass_manager.optimize(x, level)
    if isinstance(x, PolymorphicComputation):
        raise FederatedTypeError(
            f"{x.name} is polymorphic and has no single IR to optimize: declare its types "
            "(@fc.federated_computation(types...)) or optimize one traced version"
        )
    raise FederatedTypeError(
        "fc.optimize expects a computation, a ComputationBundle, a building block or a Program, "
        f"found {type(x).__name__}"
    )
