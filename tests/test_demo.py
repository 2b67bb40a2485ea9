"""`fedcc demo` (DESIGN §10) through the real command line, in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

import fedcc as fc

BACKEND = next(name for name in ("threads", "reference") if name in fc.backends())


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedcc", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_demo_compiles_trains_and_reports(tmp_path):
    result = run_cli(
        "demo",
        "--rounds",
        "3",
        "--clients",
        "8",
        "--backend",
        BACKEND,
        "--output",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Synthetic(1, 1), 8 clients" in out
    assert re.search(r"compiled FedAvg to out/fedavg\.pb \(\d+ bytes, -O \d: \d+ passes\)", out)
    assert re.search(r"next: \d+ nodes, \d+ local graphs .*federated_broadcast", out)
    assert f"training 3 rounds on the {BACKEND} backend" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d", line)]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    losses = [float(row[1]) for row in rows]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    final = re.search(r"final test accuracy: ([0-9.]+)", out)
    assert final and 0.0 <= float(final.group(1)) <= 1.0
    assert "out/fedavg.pb" in out and "out/state.npz" in out

    process = fc.learning.IterativeProcess.from_bundle(fc.load(tmp_path / "out" / "fedavg.pb"))
    state = process.load_state(tmp_path / "out" / "state.npz")
    assert state["round"] == 3
    assert process.get_model_weights(state)["kernel"].shape == (60, 10)


def test_demo_errors_are_one_line(tmp_path):
    result = run_cli("demo", "--backend", "no-such-backend", "--rounds", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"fedcc demo: error: no backend 'no-such-backend'; installed: {', '.join(fc.backends())}"
    ]
    result = run_cli("demo", "--rounds", "0", cwd=tmp_path)
    assert result.returncode == 2 and "expected a positive integer, found '0'" in result.stderr
