"""`uniquify-names`: gives every binder of a computation its own name.

Afterwards no two binders (lambda parameters, block locals) share a name and
none shadows a free name, so passes can move code between scopes without
capture. The first binder of a name, in pre-order, keeps it; later ones get
fresh names (`x_1`, `x_2`, ...) that nothing in the program uses, and their
references follow. A computation whose names are already unique is returned
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedcc.compiler.passes import FunctionPass, register_pass
from fedcc.compiler.rewriting import Analyses, NameSupply, ScopedRebuilder, pipeline_analyses
from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.types import Type


class _Uniquifier(ScopedRebuilder):
    skip_unaffected = False  # every binder must be seen

    def __init__(self, analyses: Analyses, names: NameSupply, claimed: set[str]) -> None:
        super().__init__(analyses, names)
        self.claimed = claimed

    def rename_binder(
        self, name: str, binder_type: Type, env: Mapping[str, BuildingBlock]
    ) -> str | None:
        if name in self.claimed:
            return self.names.fresh(name)
        self.claimed.add(name)
        return None


def uniquify_names(
    comp: BuildingBlock, analyses: Analyses | None = None, names: NameSupply | None = None
) -> BuildingBlock:
    """`comp` with every binder named uniquely (see the module docstring)."""
    analyses = analyses or pipeline_analyses()
    names = names or NameSupply(comp)
    claimed = set(analyses.free_names(comp))
    return _Uniquifier(analyses, names, claimed).rebuild(comp, {})


UNIQUIFY_NAMES = register_pass(
    FunctionPass(
        "uniquify-names",
        "renames binders so that no two share a name and none shadows a free name",
        uniquify_names,
    )
)
