"""End-to-end tests of `fedcc dump` and `fedcc check`, run as real commands in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fedcc as fc
from fedcc.ir.serialization import deserialize_program

ROOT = Path(__file__).resolve().parent.parent


def fedcc_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedcc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture(scope="module")
def round_pb(tmp_path_factory) -> Path:
    """The README's example: a FedAvg-shaped round built as IR and saved by its script."""
    path = tmp_path_factory.mktemp("cli") / "fedavg_round.pb"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fedavg_round_ir.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return path


def test_check_accepts_a_valid_file(round_pb):
    result = fedcc_command("check", str(round_pb))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "next:" in result.stdout
    assert "{<x=float32[?,60],y=int32[?]>*}@CLIENTS" in result.stdout


def test_dump_text_parses_back_to_the_same_program(round_pb):
    result = fedcc_command("dump", str(round_pb))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("program v1")
    assert "federated_broadcast(" in result.stdout and "= matmul(" in result.stdout
    assert fc.parse_text(result.stdout) == deserialize_program(round_pb.read_bytes())


def test_dump_compact_prints_one_line_a_computation(round_pb):
    result = fedcc_command("dump", str(round_pb), "--format", "compact")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("next = (round_input:")
    program = deserialize_program(round_pb.read_bytes())
    assert fc.parse_text(lines[0].removeprefix("next = ")) == program["next"]


def test_dump_json_is_the_stored_message(round_pb):
    result = fedcc_command("dump", str(round_pb), "--format", "json")
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert message["formatVersion"] == 1
    assert [c["name"] for c in message["computations"]] == ["next"]
    kinds = {next(k for k in node if k != "type") for node in message["nodes"]}
    assert {"lambda", "block", "call", "intrinsic", "localGraph"} <= kinds


def test_dump_dot_is_a_graphviz_digraph(round_pb):
    result = fedcc_command("dump", str(round_pb), "--format", "dot")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("digraph fedcc {") and text.rstrip().endswith("}")
    assert 'label="next"' in text and "federated_broadcast" in text and " -> " in text
    assert text.count("{") == text.count("}")


def test_dump_stats_counts_what_the_program_holds(round_pb):
    result = fedcc_command("dump", str(round_pb), "--format", "compact", "--stats")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.split("\n", 1)[1])
    total = stats["total"]
    assert stats["bytes"] == round_pb.stat().st_size
    assert total["intrinsic_calls"]["federated_broadcast"] == 1
    assert total["intrinsic_calls"]["sequence_reduce"] == 1
    assert total["local_ops"]["matmul"] == 2
    assert total["nodes_by_kind"]["local_graph"] == 2
    assert sum(total["nodes_by_kind"].values()) == total["nodes"]


@pytest.mark.parametrize("command", ["dump", "check"])
def test_a_missing_file_is_one_line_and_a_nonzero_exit(tmp_path, command):
    result = fedcc_command(command, str(tmp_path / "missing.pb"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "missing.pb" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["dump", "check"])
def test_a_corrupt_file_is_one_line_without_a_traceback(round_pb, tmp_path, command):
    corrupt = tmp_path / "corrupt.pb"
    corrupt.write_bytes(round_pb.read_bytes()[:-7])
    result = fedcc_command(command, str(corrupt))
    assert result.returncode == 1
    assert result.stderr.startswith(f"fedcc {command}: error: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(round_pb, tmp_path):
    corrupt = tmp_path / "corrupt.pb"
    corrupt.write_bytes(b"\xff" * 10)
    result = fedcc_command("--debug", "check", str(corrupt))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "IRFormatError" in result.stderr


def test_check_rejects_a_file_that_loads_but_does_not_verify(tmp_path):
    from fedcc.ir import building_blocks as bb

    # Loading checks each node's own typing; an unbound reference is verify's to catch.
    open_program = bb.Lambda("x", "int32", bb.Reference("y", "int32"))
    path = tmp_path / "open.pb"
    fc.save(fc.Program({"main": open_program}), path)
    result = fedcc_command("check", str(path))
    assert result.returncode == 1
    assert "'y'" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_exit_with_status_2():
    result = fedcc_command("dump")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "fedcc"
    assert script.exists(), "pip install should put the `fedcc` console script beside python"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "dump" in result.stdout and "check" in result.stdout
