"""The pass manager: runs named passes or an optimization level, and reports what each did.

- `run_passes(x, names)` runs the named passes once each, in order, on a
  computation or on every computation of a `Program`.
- `optimize(x, level)` runs an optimization level (DESIGN §7): 0 runs
  nothing; 1 canonicalizes (`LEVEL_1_PASSES`: unique names, called lambdas
  to blocks, one let instead of nested ones, selections from structs,
  inlining of trivial locals, dead locals, common subexpressions, repeated
  to a fixed point);
  2 adds the federated and local rewrites (`LEVEL_2_PASSES`, to a fixed
  point). Passes are looked up by name when the pipeline runs, and a level
  uses those of its passes that are registered. A round skips a pass when
  the program is the very one that pass last ran on and left unchanged (a
  pass is a deterministic function of the program, so it would change
  nothing again); the run is reported as skipped.

Each run records, per pass and computation, the time it took and the node
counts before and after (`PassReport`); `verify_each` checks the result of
every pass with `verify` and that the type signature is kept; a
`Program`'s metadata `passes` gets the names of the passes applied appended,
comma-separated, in order.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from fedcc.compiler.passes import PatternPass, get_pass, registered
from fedcc.compiler.rewriting import sharing_analyses
from fedcc.compiler.verify import verify
from fedcc.ir.analysis import count_nodes, free_references
from fedcc.ir.building_blocks import BuildingBlock
from fedcc.ir.errors import FedccError, FederatedTypeError
from fedcc.ir.program import Program
from fedcc.ir.text import to_text

LEVEL_1_PASSES: tuple[str, ...] = (
    "uniquify-names",
    "beta-reduce",
    "flatten-blocks",
    "simplify-selections",
    "inline-trivial",
    "dce",
    "cse",
)

# The federated rewrites, then the rewrites of local graphs. `desugar-intrinsics` is a
# lowering, not an optimization, and stays out of the levels: backends sum, average and
# take extremes with one NumPy call a leaf, where a desugared federated_aggregate runs
# local graphs per client and per merge (11-19x slower for a mean in
# benchmarks/backends.py), and over zero clients it returns a value where the runtime
# raises. It is available by name, e.g. for MapReduceForm.
FEDERATED_PASSES: tuple[str, ...] = (
    "simplify-federated-projections",
    "merge-chained-maps",
    "merge-parallel-maps",
    "dedupe-broadcasts",
    "merge-aggregations",
)
LOCAL_PASSES: tuple[str, ...] = (
    "fuse-local",
    "fold-constants",
    "simplify-algebra",
    "local-cse",
    "local-dce",
)
LEVEL_2_PASSES: tuple[str, ...] = LEVEL_1_PASSES + FEDERATED_PASSES + LOCAL_PASSES

LEVELS: dict[int, tuple[str, ...]] = {0: (), 1: LEVEL_1_PASSES, 2: LEVEL_2_PASSES}

# A level repeats its passes until a round changes nothing; real programs settle in a few
# rounds, and a pipeline that has not settled after this many stops where it is.
MAX_ROUNDS = 16

METADATA_KEY = "passes"


def level_passes(level: int) -> list[str]:
    """The registered passes of optimization `level`, in the order they run."""
    if level not in LEVELS:
        raise FedccError(
            f"unknown optimization level {level!r}; the levels are {', '.join(map(str, LEVELS))}"
        )
    return registered(LEVELS[level])


@dataclass(frozen=True)
class PassRun:
    """One pass run on one computation."""

    computation: str | None
    pass_name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool
    rewrites: dict[str, int] = field(default_factory=dict)  # pattern -> times applied
    # Not run: a fixed-point round skips a pass on the program it last left unchanged.
    skipped: bool = False


@dataclass
class PassReport:
    """Every pass run of a pipeline, in order, and how many rounds a level took."""

    runs: list[PassRun] = field(default_factory=list)
    rounds: dict[str | None, int] = field(default_factory=dict)
    converged: dict[str | None, bool] = field(default_factory=dict)

    def passes_applied(self) -> list[str]:
        """The distinct pass names run, in the order first run."""
        return list(dict.fromkeys(run.pass_name for run in self.runs))

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per pass: runs, runs that changed something, runs skipped (as sure to change
        nothing), seconds, and the nodes it removed."""
        totals: dict[str, dict[str, Any]] = {}
        for run in self.runs:
            entry = totals.setdefault(
                run.pass_name,
                {"runs": 0, "changed": 0, "skipped": 0, "seconds": 0.0, "nodes_removed": 0},
            )
            entry["runs"] += 1
            entry["changed"] += run.changed
            entry["skipped"] += run.skipped
            entry["seconds"] += run.seconds
            entry["nodes_removed"] += run.nodes_before - run.nodes_after
        return totals

    def format_table(self) -> str:
        """A table of the runs: computation, pass, milliseconds, nodes before and after, whether
        it changed anything (or was skipped), and how often each rewrite pattern applied."""
        rows = [("computation", "pass", "ms", "nodes before", "nodes after", "changed", "rewrites")]
        for run in self.runs:
            rows.append(
                (
                    run.computation or "-",
                    run.pass_name,
                    f"{run.seconds * 1000:.2f}",
                    str(run.nodes_before),
                    str(run.nodes_after),
                    "yes" if run.changed else "skipped" if run.skipped else "no",
                    " ".join(f"{pattern}:{count}" for pattern, count in run.rewrites.items()),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = []
        for row in rows:
            cells = [
                cell.ljust(width) if i < 2 or i == len(row) - 1 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


Printer = Callable[[str], Any] | TextIO | None


def _printer(print_after_all: Printer) -> Callable[[str], Any] | None:
    if print_after_all is None:
        return None
    if callable(print_after_all):
        return print_after_all
    return print_after_all.write


class _Pipeline:
    """Runs passes on one computation, recording each run."""

    def __init__(
        self,
        report: PassReport,
        computation: str | None,
        verify_each: bool,
        print_after_all: Callable[[str], Any] | None,
    ) -> None:
        self.report = report
        self.computation = computation
        self.verify_each = verify_each
        self.print_after_all = print_after_all
        # pass name -> the program it last ran on and left unchanged. A pass is a
        # deterministic function of the program, so on that same (immutable) program it
        # would make no change again: a fixed-point round skips it.
        self._left_unchanged: dict[str, BuildingBlock] = {}
        # The node count of the last program counted: passes mostly hand on what they got.
        self._counted: tuple[BuildingBlock | None, int] = (None, 0)

    def _count_nodes(self, comp: BuildingBlock) -> int:
        if self._counted[0] is not comp:
            self._counted = (comp, count_nodes(comp))
        return self._counted[1]

    def run(self, comp: BuildingBlock, name: str, skip_unchanged: bool = False) -> BuildingBlock:
        compiler_pass = get_pass(name)
        before = self._count_nodes(comp)
        if skip_unchanged and self._left_unchanged.get(name) is comp:
            self.report.runs.append(
                PassRun(self.computation, name, 0.0, before, before, False, skipped=True)
            )
            self._print_after(name, comp)
            return comp
        start = time.perf_counter()
        rewrites: dict[str, int] = {}
        if isinstance(compiler_pass, PatternPass):
            result, log = compiler_pass.apply_logged(comp)
            rewrites = log.counts()
        else:
            result = compiler_pass.apply(comp)
        seconds = time.perf_counter() - start
        changed = result is not comp and result != comp
        if not changed:
            result = comp
            self._left_unchanged[name] = comp
        self.report.runs.append(
            PassRun(
                self.computation, name, seconds, before, self._count_nodes(result), changed,
                rewrites,
            )
        )  # fmt: skip
        if self.verify_each:
            self._verify(comp, result, name)
        self._print_after(name, result)
        return result

    def _print_after(self, name: str, result: BuildingBlock) -> None:
        if self.print_after_all is not None:
            where = "" if self.computation is None else f" on {self.computation}"
            self.print_after_all(f"# after {name}{where}\n{to_text(result)}\n")

    def _verify(self, before: BuildingBlock, after: BuildingBlock, name: str) -> None:
        where = "" if self.computation is None else f" on {self.computation}"
        if after.type_signature != before.type_signature:
            raise FederatedTypeError(
                f"pass {name}{where} changed the type signature from {before.type_signature} "
                f"to {after.type_signature}"
            )
        try:
            # An open computation (a fragment with free names) may keep its free names.
            verify(after, allow_free=free_references(before))
        except FederatedTypeError as error:
            raise FederatedTypeError(f"after pass {name}{where}: {error}") from None

    def run_once(
        self, comp: BuildingBlock, names: Sequence[str], skip_unchanged: bool = False
    ) -> BuildingBlock:
        for name in names:
            comp = self.run(comp, name, skip_unchanged)
        return comp

    def run_to_fixed_point(self, comp: BuildingBlock, names: Sequence[str]) -> BuildingBlock:
        rounds = 0
        converged = not names
        while names and rounds < MAX_ROUNDS:
            rounds += 1
            start = len(self.report.runs)
            comp = self.run_once(comp, names, skip_unchanged=True)
            if not any(run.changed for run in self.report.runs[start:]):
                converged = True
                break
        self.report.rounds[self.computation] = rounds
        self.report.converged[self.computation] = converged
        return comp


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pauses Python's cycle collector while passes run, then restores it.

    Passes make and drop many short-lived nodes, which keeps triggering
    collections that each walk every live object: a 10⁵-op graph spent a
    quarter of its -O2 time there, and the share grows with the program.
    IR nodes are trees (no cycles), so reference counting frees them anyway.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _each_computation(
    x: BuildingBlock | Program,
    step: Callable[[_Pipeline, BuildingBlock], BuildingBlock],
    report: PassReport,
    verify_each: bool,
    print_after_all: Printer,
) -> BuildingBlock | Program:
    printer = _printer(print_after_all)

    def run_pipeline(name: str | None, comp: BuildingBlock) -> BuildingBlock:
        # The passes on one computation share analyses (use counts by node identity).
        with sharing_analyses(), _cyclic_gc_paused():
            return step(_Pipeline(report, name, verify_each, printer), comp)

    if isinstance(x, BuildingBlock):
        return run_pipeline(None, x)
    if not isinstance(x, Program):
        raise FederatedTypeError(
            f"expected a building block or a Program to optimize, found {type(x).__name__}"
        )
    computations = {name: run_pipeline(name, comp) for name, comp in x.computations.items()}
    return Program(computations, record_passes(x.metadata, report.passes_applied()))


def record_passes(metadata: Mapping[str, str], applied: Sequence[str]) -> dict[str, str]:
    """`metadata` with the pass names `applied` appended to its `passes` entry (comma-separated)."""
    recorded = dict(metadata)
    if applied:
        previous = recorded.get(METADATA_KEY)
        recorded[METADATA_KEY] = ",".join(([previous] if previous else []) + list(applied))
    return recorded


def run_passes(
    x: BuildingBlock | Program,
    names: Sequence[str],
    verify_each: bool = False,
    print_after_all: Printer = None,
) -> tuple[BuildingBlock | Program, PassReport]:
    """Runs the passes `names` once each, in order, on `x` (each computation of a `Program`).

    Returns the result and a `PassReport`. `verify_each` verifies the result
    of every pass (and that it kept the type signature), raising
    `FederatedTypeError` that names the pass; `print_after_all` (a function
    of one string, or a text stream) receives the text of the computation
    after every pass. Unknown names raise `UnknownPassError` before anything runs.
    """
    names = list(names)
    for name in names:
        get_pass(name)
    report = PassReport()
    result = _each_computation(
        x, lambda pipeline, comp: pipeline.run_once(comp, names), report, verify_each,
        print_after_all,
    )  # fmt: skip
    return result, report


def optimize_with_report(
    x: BuildingBlock | Program,
    level: int = 2,
    verify_each: bool = False,
    print_after_all: Printer = None,
) -> tuple[BuildingBlock | Program, PassReport]:
    """`optimize`, also returning the `PassReport` (see `run_passes` for the options)."""
    names = level_passes(level)
    report = PassReport()
    if not names:
        return x, report
    result = _each_computation(
        x, lambda pipeline, comp: pipeline.run_to_fixed_point(comp, names), report, verify_each,
        print_after_all,
    )  # fmt: skip
    return result, report


def optimize(x: BuildingBlock | Program, level: int = 2) -> BuildingBlock | Program:
    """`x` optimized at `level` (0, 1 or 2; DESIGN §7), each computation of a Program alike.

    The result has the same type signature and computes the same values, bit
    for bit. Level 0 returns `x` itself.
    """
    return optimize_with_report(x, level)[0]
