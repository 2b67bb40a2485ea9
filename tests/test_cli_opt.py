"""`fedcc opt` and `fedcc compile -O`, run as real commands in subprocesses."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedcc as fc
from fedcc.ir import serialization
from fedcc.ir.text import parse_text

ROOT = Path(__file__).resolve().parent.parent

# Two equal means (cse), a single-use local (inline-trivial) and a dead one (dce).
ROUND_TEXT = """
(v:{float32}@CLIENTS -> (let
  dead=federated_sum(v),
  once=federated_broadcast(federated_mean(v))
in <federated_mean(v), federated_mean(v), once>))
"""


def fedcc_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedcc", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"opt_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def round_pb(tmp_path) -> Path:
    path = tmp_path / "round.pb"
    fc.save(parse_text(ROUND_TEXT), path)
    return path


def test_opt_runs_the_named_passes_in_order_and_records_them(round_pb, tmp_path):
    out = tmp_path / "out.pb"
    result = fedcc_command(
        "opt", str(round_pb), "-o", str(out), "--passes", "cse,inline-trivial,dce"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("after cse, inline-trivial, dce")
    program = serialization.deserialize_program(out.read_bytes())
    assert program.metadata == {"passes": "cse,inline-trivial,dce"}
    optimized = fc.load(out)
    expected = (
        "(v:{float32}@CLIENTS -> (let\n"
        "  shared_1=federated_mean(v)\n"
        "in <shared_1,shared_1,federated_broadcast(shared_1)>))"
    )
    assert fc.to_text(optimized) == expected
    original = fc.load(round_pb)
    values = [np.float32(0.1), np.float32(-2.5), np.float32(7.0)]
    assert optimized(values)[0] == original(values)[0]


def test_opt_appends_to_the_passes_already_recorded(round_pb, tmp_path):
    first, second = tmp_path / "first.pb", tmp_path / "second.pb"
    assert fedcc_command("opt", str(round_pb), "-o", str(first), "--passes", "dce").returncode == 0
    assert fedcc_command("opt", str(first), "-o", str(second), "--passes", "cse").returncode == 0
    metadata = serialization.deserialize_program(second.read_bytes()).metadata
    assert metadata["passes"] == "dce,cse"


def test_opt_stats_print_a_row_a_pass_with_node_counts(round_pb, tmp_path):
    result = fedcc_command(
        "opt", str(round_pb), "-o", str(tmp_path / "o.pb"), "--passes", "dce,cse", "--stats"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["computation", "pass", "ms", "nodes", "before", "nodes", "after",
                                "changed", "rewrites"]  # fmt: skip
    dce_row, cse_row = lines[1].split(), lines[2].split()
    assert dce_row[1] == "dce" and cse_row[1] == "cse"
    assert dce_row[5] == "yes" and dce_row[6] == "RemoveDeadLocals:1"  # a pattern pass's rewrites
    assert int(dce_row[3]) > int(dce_row[4]) == int(cse_row[3]) > int(cse_row[4])


def test_opt_print_after_all_prints_the_program_after_each_pass(round_pb, tmp_path):
    result = fedcc_command(
        "opt", str(round_pb), "-o", str(tmp_path / "o.pb"), "--passes", "dce,cse",
        "--print-after-all", "--verify-each",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    after_dce = result.stdout.index("# after dce")
    after_cse = result.stdout.index("# after cse")
    assert after_dce < after_cse
    dumped = result.stdout[after_dce:after_cse].split("\n", 1)[1]
    assert (
        "dead=" not in dumped
        and parse_text(dumped).type_signature == parse_text(ROUND_TEXT).type_signature
    )


def test_opt_keeps_a_program_of_several_computations(tmp_path):
    program = fc.Program(
        {
            "initialize": parse_text("( -> federated_value_at_server(float32(0.0)))"),
            "next": parse_text(ROUND_TEXT),
        },
        {"source_module": "tests"},
    )
    source, out = tmp_path / "in.pb", tmp_path / "out.pb"
    source.write_bytes(serialization.serialize(program))
    result = fedcc_command("opt", str(source), "-o", str(out), "--passes", "dce", "--stats")
    assert result.returncode == 0, result.stderr
    optimized = serialization.deserialize_program(out.read_bytes())
    assert list(optimized.computations) == ["initialize", "next"]
    assert optimized.metadata == {"passes": "dce", "source_module": "tests"}
    assert "initialize" in result.stdout and "next" in result.stdout


def test_opt_errors_are_one_line(round_pb, tmp_path):
    out = str(tmp_path / "o.pb")
    line = one_error_line(fedcc_command("opt", str(round_pb), "-o", out, "--passes", "cse,nope"))
    assert line.startswith("fedcc opt: error: unknown pass 'nope'; the passes are: ")
    assert "beta-reduce" in line and "to-call-dominant" in line
    line = one_error_line(fedcc_command("opt", str(round_pb), "-o", out, "--passes", "cse,,dce"))
    assert "expected pass names separated by commas" in line
    line = one_error_line(fedcc_command("opt", str(tmp_path / "missing.pb"), "-o", out,
                                        "--passes", "dce"))  # fmt: skip
    assert "missing.pb" in line
    assert not Path(out).exists()


@pytest.mark.parametrize("level", ["0", "1", "2"])
def test_compile_at_each_level_keeps_the_results(level, tmp_path):
    out = tmp_path / f"round_O{level}.pb"
    result = fedcc_command(
        "compile", "examples.fedsgd_linear_regression:fedsgd_round", "-o", str(out), "-O", level
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"(-O {level})")
    metadata = serialization.deserialize_program(out.read_bytes()).metadata
    if level == "0":
        assert "passes" not in metadata
    else:
        assert metadata["passes"].split(",")[:2] == ["uniquify-names", "beta-reduce"]
    model = {"w": np.array([0.5, -1.0, 0.25], np.float32), "b": np.float32(0.5)}
    rng = np.random.default_rng(3)
    data = [
        {"x": rng.normal(size=(4, 3)).astype(np.float32), "y": rng.normal(size=4).astype("f4")}
        for _ in range(3)
    ]
    expected = fc.load(out)(model, data)
    direct = load_example("fedsgd_linear_regression").fedsgd_round(model, data)
    for key in ("w", "b"):
        assert (
            np.asarray(expected["model"][key]).tobytes()
            == np.asarray(direct["model"][key]).tobytes()
        )
    assert np.asarray(expected["loss"]).tobytes() == np.asarray(direct["loss"]).tobytes()


def test_compile_refuses_an_unknown_level(tmp_path):
    out = str(tmp_path / "x.pb")
    line = one_error_line(
        fedcc_command("compile", "examples.sensor_average:mean_temperature", "-o", out, "-O", "3")
    )
    assert line == "fedcc compile: error: -O 3: unknown optimization level; use one of 0, 1, 2"
