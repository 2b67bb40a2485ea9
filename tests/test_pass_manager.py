"""The pass manager and `fc.optimize`: pipelines, levels, reports, metadata, checks."""

from __future__ import annotations

import io

import numpy as np
import pytest

import fedcc as fc
from fedcc.compiler import pass_manager
from fedcc.compiler.pass_manager import (
    LEVEL_1_PASSES,
    level_passes,
    optimize,
    optimize_with_report,
    record_passes,
    run_passes,
)
from fedcc.compiler.passes import PASSES, FunctionPass, UnknownPassError, parse_pipeline
from fedcc.compiler.passes._block_dataflow import RegionPattern
from fedcc.compiler.passes.dce import RemoveDeadLocals
from fedcc.compiler.passes.federated_maps import ZipOfMaps
from fedcc.compiler.passes.inline_trivial import InlineLocals
from fedcc.compiler.verify import verify
from fedcc.ir.building_blocks import Block, Lambda, Literal, Reference, Struct, call_intrinsic
from fedcc.ir.errors import FedccError, FederatedTypeError
from fedcc.ir.program import Program
from fedcc.ir.text import parse_text, to_compact_text

ROUND = parse_text(
    "(v:{float32}@CLIENTS -> (let dead=federated_sum(v), m=federated_mean(v) "
    "in <(x:{float32}@CLIENTS -> federated_mean(x))(v), m>))"
)


def test_run_passes_runs_each_once_in_order_and_reports_node_counts():
    result, report = run_passes(ROUND, ["dce", "beta-reduce", "inline-trivial", "cse"])
    assert [run.pass_name for run in report.runs] == ["dce", "beta-reduce", "inline-trivial", "cse"]
    assert to_compact_text(result) == (
        "(v:{float32}@CLIENTS -> (let shared_1=federated_mean(v) in <shared_1,shared_1>))"
    )
    first = report.runs[0]
    assert first.computation is None and first.changed and first.nodes_before > first.nodes_after
    for before, after in zip(report.runs, report.runs[1:]):
        assert before.nodes_after == after.nodes_before
    assert all(run.seconds >= 0 for run in report.runs)
    assert report.passes_applied() == ["dce", "beta-reduce", "inline-trivial", "cse"]
    table = report.format_table().splitlines()
    assert table[0].split()[:3] == ["computation", "pass", "ms"] and len(table) == 5


def test_an_unchanged_computation_is_reported_unchanged_and_kept():
    comp = parse_text("(x:int32 -> x)")
    result, report = run_passes(comp, ["dce", "cse"])
    assert result is comp
    assert [run.changed for run in report.runs] == [False, False]


def test_unknown_pass_names_fail_before_anything_runs():
    with pytest.raises(UnknownPassError, match="unknown pass 'nope'; the passes are: "):
        run_passes(ROUND, ["dce", "nope"])
    with pytest.raises(UnknownPassError, match="separated by commas"):
        parse_pipeline("dce,")
    assert parse_pipeline(" dce , cse ") == ["dce", "cse"]


def test_level_0_is_the_identity_and_levels_1_and_2_reach_a_fixed_point():
    assert optimize(ROUND, 0) is ROUND
    once = optimize(ROUND, 1)
    assert optimize(once, 1) == once
    _, report = optimize_with_report(ROUND, 1)
    assert report.converged[None] and report.rounds[None] >= 2
    last_round = report.runs[-len(LEVEL_1_PASSES) :]
    assert not any(run.changed for run in last_round)
    assert level_passes(1) == list(LEVEL_1_PASSES)
    assert set(level_passes(2)) >= set(LEVEL_1_PASSES)
    with pytest.raises(FedccError, match="unknown optimization level 3"):
        optimize(ROUND, 3)


def test_a_program_is_optimized_computation_by_computation_and_records_the_passes():
    program = Program(
        {"initialize": parse_text("( -> <int32(1),int32(2)>[0])"), "next": ROUND},
        {"passes": "earlier", "source_module": "m"},
    )
    result, report = run_passes(program, ["simplify-selections", "dce"])
    assert isinstance(result, Program)
    assert to_compact_text(result["initialize"]) == "( -> int32(1))"
    assert result.metadata == {"passes": "earlier,simplify-selections,dce", "source_module": "m"}
    assert {run.computation for run in report.runs} == {"initialize", "next"}
    leveled = optimize(program, 1)
    assert leveled.metadata["passes"] == "earlier," + ",".join(LEVEL_1_PASSES)
    assert record_passes({}, []) == {}


def test_print_after_all_shows_the_program_after_each_pass():
    stream = io.StringIO()
    run_passes(ROUND, ["dce", "cse"], print_after_all=stream)
    text = stream.getvalue()
    assert text.index("# after dce\n") < text.index("# after cse\n")
    assert "dead=" not in text
    seen = []
    run_passes(ROUND, ["dce"], print_after_all=seen.append)
    assert len(seen) == 1 and seen[0].startswith("# after dce\n(v:")


@pytest.fixture
def broken_pass():
    def widen(comp):
        return Struct([comp])

    def unbind(comp):
        signature = comp.type_signature
        return parse_text(f"(v:{signature.parameter} -> (ghost:{signature.result}))")

    passes = {
        "test-widen": FunctionPass("test-widen", "changes the type", widen),
        "test-unbind": FunctionPass("test-unbind", "leaves a reference unbound", unbind),
    }
    PASSES.update(passes)
    yield
    for name in passes:
        del PASSES[name]


def test_verify_each_names_the_pass_that_broke_the_program(broken_pass):
    with pytest.raises(FederatedTypeError, match="pass test-widen changed the type signature"):
        run_passes(ROUND, ["dce", "test-widen"], verify_each=True)
    with pytest.raises(FederatedTypeError, match=r"after pass test-unbind: .*'ghost'.*not bound"):
        run_passes(ROUND, ["test-unbind"], verify_each=True)
    # Without the check, the pass manager trusts the pass.
    result, _ = run_passes(ROUND, ["test-unbind"])
    assert "ghost" in to_compact_text(result)


def test_a_fixed_point_not_reached_stops_after_max_rounds(monkeypatch):
    counter = iter(range(1, 10**6))

    def grow(comp):
        literal = to_compact_text(Literal(np.int32(next(counter))))
        return parse_text(f"(v:int32 -> {literal})")

    PASSES["test-grow"] = FunctionPass("test-grow", "changes every time", grow)
    monkeypatch.setitem(pass_manager.LEVELS, 9, ("test-grow",))
    try:
        _, report = optimize_with_report(parse_text("(v:int32 -> int32(0))"), 9)
    finally:
        del PASSES["test-grow"]
    assert report.rounds[None] == pass_manager.MAX_ROUNDS and not report.converged[None]


def test_fc_optimize_keeps_a_computation_callable_with_the_same_results():
    @fc.federated_computation("{float32}@CLIENTS", "float32@SERVER")
    def round_(values, scale):
        mean = fc.federated_mean(values)
        return {"mean": mean, "again": fc.federated_mean(values), "scale": scale}

    optimized = fc.optimize(round_, level=1)
    assert isinstance(optimized, fc.Computation)
    assert optimized.type_signature == round_.type_signature
    assert optimized.name == round_.name
    assert fc.optimize(round_, level=0) is round_
    values = [np.float32(0.1), np.float32(1e-8), np.float32(-3.5)]
    expected, actual = round_(values, np.float32(2)), optimized(values=values, scale=2.0)
    assert list(actual) == ["mean", "again", "scale"]
    for key in expected:
        assert np.asarray(actual[key]).tobytes() == np.asarray(expected[key]).tobytes()
    assert to_compact_text(optimized.building_block).count("federated_mean") <= 1


def test_fc_optimize_takes_bundles_blocks_and_programs_and_refuses_the_rest():
    bundle = fc.ComputationBundle({"next": ROUND})
    optimized = fc.optimize(bundle, level=1)
    assert isinstance(optimized, fc.ComputationBundle)
    assert optimized.metadata["passes"].startswith("uniquify-names,")
    assert isinstance(optimized["next"], fc.Computation)
    assert fc.optimize(ROUND, 1) == optimize(ROUND, 1)

    @fc.federated_computation
    def polymorphic(x):
        return x

    with pytest.raises(FederatedTypeError, match="polymorphic"):
        fc.optimize(polymorphic)
    with pytest.raises(FederatedTypeError, match="found int"):
        fc.optimize(3)


def _chain_of_maps(maps: int) -> Lambda:
    """`(x -> let v1=federated_map(<f,x>), v2=federated_map(<f,v1>), ... in federated_sum(vn))`:
    what tracing a loop of maps gives."""
    f = parse_text("(y:float32 -> y)")
    value = Reference("x", "{float32}@CLIENTS")
    bindings = []
    for i in range(1, maps + 1):
        bindings.append((f"v{i}", call_intrinsic("federated_map", Struct([f, value]))))
        value = Reference(f"v{i}", value.type_signature)
    return Lambda("x", "{float32}@CLIENTS", Block(bindings, call_intrinsic("federated_sum", value)))


def test_level_1_of_a_chain_of_ten_thousand_maps_saves_loads_and_verifies():
    # inline-trivial nested each single-use map into the next: 20,000 levels, more than
    # verify and the file format (1000 levels) accept. Now chains nest 100 levels at most.
    comp = _chain_of_maps(10_000)
    optimized = optimize(comp, 1)
    assert optimized.type_signature == comp.type_signature
    assert optimized.depth < 200
    verify(optimized)
    loaded = fc.deserialize(fc.serialize(optimized)).building_block
    assert loaded == optimized
    verify(loaded)


def test_a_round_skips_a_pass_on_the_program_it_left_unchanged_with_the_same_result(
    monkeypatch,
):
    comp = _chain_of_maps(30)
    result, report = optimize_with_report(comp, 2)
    skipped = [run for run in report.runs if run.skipped]
    assert skipped and all(not run.changed and run.seconds == 0 for run in skipped)
    assert "skipped" in report.format_table()
    assert sum(entry["skipped"] for entry in report.totals().values()) == len(skipped)
    # Without skipping (and without the walker's settled subtrees) the result is the same.
    monkeypatch.setattr(
        pass_manager._Pipeline, "run_once",
        lambda self, comp, names, skip_unchanged=False: [
            comp := self.run(comp, name) for name in names
        ][-1] if names else comp,
    )  # fmt: skip
    for pattern_class in (InlineLocals, RemoveDeadLocals, RegionPattern, ZipOfMaps):
        monkeypatch.setattr(pattern_class, "context_free", False)
    assert optimize(comp, 2) == result
    assert optimize(ROUND, 2) == optimize_with_report(ROUND, 2)[0]


def test_the_cycle_collector_is_paused_while_passes_run_and_restored_after(monkeypatch):
    import gc

    seen = []
    original = pass_manager._Pipeline.run_once

    def spy(self, comp, names, **options):
        seen.append(gc.isenabled())
        return original(self, comp, names, **options)

    monkeypatch.setattr(pass_manager._Pipeline, "run_once", spy)
    comp = fc.parse_text("(x:{float32}@CLIENTS -> federated_sum(x))").building_block
    try:
        assert gc.isenabled()
        optimize(comp, 2)
        assert gc.isenabled()
        gc.disable()
        optimize(comp, 1)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
    assert seen and not any(seen)
