"""How compile time grows with program size: trace, verify, optimize, serialize, text.

Four families of programs, each built at sizes close to 10², 10³, 10⁴ and
10⁵ nodes (building blocks, as `fedcc dump --stats` counts them, plus the
ops of local graphs for the `graph` family, whose size is in its ops):

- `chain`: a `federated_computation` that applies one `numpy_computation`
  `federated_map` after another, n times, then sums; a long let-chain.
- `wide`: a computation over a client struct of k fields that maps each
  field and sums it, returning a struct of k results: wide structs, many
  selections, many independent maps and aggregations.
- `deep`: computations that call computations, each level adding a map
  and a nested lambda, block and call. The file format refuses programs
  nested deeper than 1000 levels (ir/serialization.py), so a tower stops at
  300 levels (about 930 deep, deeper than Python's recursion limit) and
  larger sizes put several towers side by side.
- `graph`: one `numpy_computation` of n ops (multiply, add, tanh, with
  distinct constants) mapped over the clients and summed.

Every program is traced through the public API (`@fc.federated_computation`,
`@fc.numpy_computation`), so `trace` times real tracing. For each family and
size the script times: trace, verify, optimize -O1 and -O2 (each from the
traced program), serialize (to .pb bytes), deserialize, to_text and
parse_text, as the median of `--repeats` runs (one run from 10⁵ nodes up,
`--max-repeats-nodes`). It checks what it measured: the optimized programs
verify and keep the type signature, and both round trips give the program back.

It prints a table of medians and one of the growth per 10x nodes of each
phase, `(t2/t1) ** (1 / log10(n2/n1))`, marking with `!` a growth over the
target (12x) and an -O2 time over 2 s at 10⁴ nodes.

    python benchmarks/compile_scaling.py                       # the table in benchmarks/README.md
    python benchmarks/compile_scaling.py --sizes 100,1000 --families chain,graph --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import fedcc as fc
from fedcc.compiler.pass_manager import optimize
from fedcc.compiler.verify import verify
from fedcc.ir.analysis import count_local_ops, count_nodes
from fedcc.ir.building_blocks import BuildingBlock

PHASES = ("trace", "verify", "O1", "O2", "serialize", "deserialize", "to_text", "parse_text")
FAMILIES = ("chain", "wide", "deep", "graph")
SIZES = (100, 1_000, 10_000, 100_000)
# The targets: at most 12x time per 10x nodes; 10^4 nodes at -O2 in under 2 s.
GROWTH_TARGET = 12.0
O2_TARGET_SECONDS = 2.0
O2_TARGET_NODES = 10_000

# Nodes each unit of a family adds, measured once, so a size asks for about the right n.
NODES_PER_MAP = 9  # chain: a block local, the call, intrinsic, struct, graph, references
NODES_PER_FIELD = 20  # wide: a selection map, a map and a sum, each a block local
NODES_PER_LEVEL = 13  # deep: a map, a lambda, a block and a call per level
LEVELS_PER_TOWER = 300  # deep: about 930 levels deep, under the format's 1000
OPS_PER_STEP = 5  # graph: a multiply, an add, a tanh and two constants


# ---------------------------------------------------------------------------
# The families: each builds a fresh computation (so tracing happens every time).


def _step(scale: float) -> fc.Computation:
    @fc.numpy_computation("float32[4]")
    def step(x):
        return x * scale + 1.0

    return step


def build_chain(size: int) -> fc.Computation:
    maps = max(1, round(size / NODES_PER_MAP))
    step = _step(2.0)

    @fc.federated_computation("{float32[4]}@CLIENTS")
    def chain(values):
        for _ in range(maps):
            values = fc.federated_map(step, values)
        return fc.federated_sum(values)

    return chain


def build_wide(size: int) -> fc.Computation:
    fields = max(1, round(size / NODES_PER_FIELD))
    member = "<" + ",".join(f"f{i}=float32[4]" for i in range(fields)) + ">"
    step = _step(2.0)

    @fc.federated_computation("{" + member + "}@CLIENTS")
    def wide(values):
        return {f"r{i}": fc.federated_sum(fc.federated_map(step, values[f"f{i}"]))
                for i in range(fields)}  # fmt: skip

    return wide


def _tower(levels: int, step: fc.Computation) -> fc.Computation:
    # Level k calls level k-1 from inside its tracing: the callee's lambda is nested in
    # the caller's, so depth grows with the levels, without Python recursion.
    @fc.federated_computation("{float32[4]}@CLIENTS")
    def level(values):
        return fc.federated_map(step, values)

    for _ in range(levels - 1):
        inner = level

        @fc.federated_computation("{float32[4]}@CLIENTS")
        def level(values, inner=inner):
            return inner(fc.federated_map(step, values))

    return level


def build_deep(size: int) -> fc.Computation:
    levels = max(1, round(size / NODES_PER_LEVEL))
    towers = math.ceil(levels / LEVELS_PER_TOWER)
    # Each tower maps with its own function, so CSE cannot merge the towers into one.
    built = [
        _tower(min(LEVELS_PER_TOWER, levels - t * LEVELS_PER_TOWER), _step(2.0 + t))
        for t in range(towers)
    ]

    @fc.federated_computation("{float32[4]}@CLIENTS")
    def deep(values):
        return [fc.federated_sum(tower(values)) for tower in built]

    return deep


def build_graph(size: int) -> fc.Computation:
    steps = max(1, round(size / OPS_PER_STEP))

    @fc.numpy_computation("float32[8]")
    def body(x):
        for i in range(steps):
            x = np.tanh(x * (1.0 + i / steps) + i / steps)
        return x

    @fc.federated_computation("{float32[8]}@CLIENTS")
    def graph(values):
        return fc.federated_sum(fc.federated_map(body, values))

    return graph


BUILDERS: dict[str, Callable[[int], fc.Computation]] = {
    "chain": build_chain,
    "wide": build_wide,
    "deep": build_deep,
    "graph": build_graph,
}


def program_size(block: BuildingBlock) -> int:
    """Building blocks plus local ops: the size a compiler phase walks."""
    return count_nodes(block) + sum(count_local_ops(block).values())


# ---------------------------------------------------------------------------
# Measuring.


def _timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# Checks of the optimized programs walk them: the walkers of verify are iterative, but an
# optimized program may legitimately be deeper than verify's default bound.
CHECK_MAX_DEPTH = 10**9


def _check(name: str, condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"{name}: {what}")


def measure(family: str, size: int, repeats: int) -> dict[str, Any]:
    """Times every phase on one program of `family` near `size` nodes; checks the results."""
    build = BUILDERS[family]
    record: dict[str, Any] = {"family": family, "requested": size}
    record["trace"], computation = _timed(lambda: build(size).building_block, repeats)
    block: BuildingBlock = computation
    record["nodes"] = program_size(block)
    record["depth"] = block.depth
    name = f"{family} {size}"
    record["verify"], _ = _timed(lambda: verify(block), repeats)
    for level in (1, 2):
        seconds, optimized = _timed(lambda level=level: optimize(block, level), repeats)
        record[f"O{level}"] = seconds
        record[f"O{level}_nodes"] = program_size(optimized)
        record[f"O{level}_depth"] = optimized.depth
        _check(name, optimized.type_signature == block.type_signature,
               f"-O{level} changed the type signature")  # fmt: skip
        verify(optimized, max_depth=CHECK_MAX_DEPTH)
    record["serialize"], data = _timed(lambda: fc.serialize(block), repeats)
    record["bytes"] = len(data)
    try:
        record["deserialize"], loaded = _timed(lambda: fc.deserialize(data), repeats)
        _check(name, loaded == block, "deserialize(serialize(x)) differs from x")
    except fc.IRFormatError as error:
        # The reader's limits on hostile input can refuse a big legitimate program: a
        # finding to report, not a time to measure.
        record["deserialize"] = None
        record["deserialize_refused"] = str(error)
    record["to_text"], text = _timed(lambda: fc.to_text(block), repeats)
    record["parse_text"], parsed = _timed(lambda: fc.parse_text(text), repeats)
    _check(name, parsed == block, "parse_text(to_text(x)) differs from x")
    return record


# ---------------------------------------------------------------------------
# Tables.


def growth(small: dict[str, Any], large: dict[str, Any], phase: str) -> float:
    """Time growth per 10x nodes between two sizes of a family."""
    decades = math.log10(large["nodes"] / small["nodes"])
    return (large[phase] / small[phase]) ** (1 / decades)


def times_table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| family | nodes | depth | " + " | ".join(f"{p} s" for p in PHASES) + " | -O2 nodes |",
        "|---|---:|---:|" + "---:|" * len(PHASES) + "---:|",
    ]
    for r in records:
        cells = []
        for phase in PHASES:
            if r[phase] is None:
                cells.append("refused")
                continue
            cell = f"{r[phase]:.3g}"
            over = phase == "O2" and r["nodes"] >= O2_TARGET_NODES / 2
            over = over and r["nodes"] <= O2_TARGET_NODES * 2 and r[phase] > O2_TARGET_SECONDS
            cells.append(cell + (" !" if over else ""))
        lines.append(f"| {r['family']} | {r['nodes']} | {r['depth']} | " + " | ".join(cells)
                     + f" | {r['O2_nodes']} |")  # fmt: skip
    return "\n".join(lines)


def growth_table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| family | nodes | " + " | ".join(PHASES) + " |",
        "|---|---|" + "---:|" * len(PHASES),
    ]
    for small, large in itertools.pairwise(records):
        if small["family"] != large["family"]:
            continue
        cells = []
        for phase in PHASES:
            if small[phase] is None or large[phase] is None:
                cells.append("")
                continue
            factor = growth(small, large, phase)
            cells.append(f"{factor:.1f}" + (" !" if factor > GROWTH_TARGET else ""))
        lines.append(f"| {small['family']} | {small['nodes']} → {large['nodes']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _names(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown families {unknown}; known: {FAMILIES}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=list(SIZES), help="node counts")
    parser.add_argument("--families", type=_names, default=list(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3, help="runs a phase, median kept")
    parser.add_argument("--max-repeats-nodes", type=int, default=50_000,
                        help="programs at least this big run each phase once")  # fmt: skip
    parser.add_argument("--json", help="also write every record to this file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    records = []
    for family in args.families:
        for size in args.sizes:
            repeats = 1 if size >= args.max_repeats_nodes else args.repeats
            started = time.perf_counter()
            record = measure(family, size, repeats)
            records.append(record)
            elapsed = time.perf_counter() - started
            print(f"  {family} {record['nodes']} nodes: -O2 {record['O2']:.3g} s ({elapsed:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    print(f"\nfedcc compile scaling: median of {args.repeats} runs "
          f"(1 from {args.max_repeats_nodes} nodes), {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}\n")  # fmt: skip
    print(times_table(records))
    print(f"\nGrowth per 10x nodes (target: at most {GROWTH_TARGET:g}x; ! marks a miss):\n")
    print(growth_table(records))
    for r in records:
        if r.get("deserialize_refused"):
            print(f"\n{r['family']} {r['nodes']}: deserialize refused: {r['deserialize_refused']}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
