"""End-to-end tests of `fedcc compile` and `fedcc run`, run as real commands in subprocesses."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fedcc as fc
from fedcc.ir.serialization import deserialize_program

ROOT = Path(__file__).resolve().parent.parent


def fedcc_command(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedcc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_fedsgd_inputs(folder: Path, model: dict, data: list) -> tuple[Path, Path]:
    """The FedSGD example's --args file (the model) and --clients folder (one batch a client)."""
    args = folder / "args.npz"
    np.savez(args, **{"arg0.w": model["w"], "arg0.b": model["b"]})
    clients = folder / "clients"
    clients.mkdir()
    for index, batch in enumerate(data):
        np.savez(clients / f"client_{index:03d}.npz", **batch)
    return args, clients


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def sensor_pb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compile") / "mean.pb"
    result = fedcc_command(
        "compile", "examples.sensor_average:mean_temperature", "-o", str(path), "-O", "0"
    )
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def sensor_clients(tmp_path_factory) -> tuple[Path, list[np.float32]]:
    folder = tmp_path_factory.mktemp("sensor_clients")
    readings = [np.float32(x) for x in (18.5, 21.25, 19.0, 23.5)]
    for index, reading in enumerate(readings):
        np.savez(folder / f"client_{index:03d}.npz", value=reading)
    return folder, readings


def test_compile_by_module_and_by_file_gives_the_same_bytes(sensor_pb, tmp_path):
    by_file = tmp_path / "by_file.pb"
    result = fedcc_command(
        "compile", "examples/sensor_average.py:mean_temperature", "-o", str(by_file), "-O", "0"
    )
    assert result.returncode == 0, result.stderr
    assert by_file.read_bytes() == sensor_pb.read_bytes()
    module = load_example("sensor_average")
    assert fc.load(sensor_pb) == module.mean_temperature


def test_run_reads_one_npz_a_client_and_writes_the_result(sensor_pb, sensor_clients, tmp_path):
    folder, readings = sensor_clients
    out = tmp_path / "results.npz"
    result = fedcc_command(
        "run", str(sensor_pb), "--backend", "reference", "--clients", str(folder), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    with np.load(out) as results:
        assert results.files == ["result"]
        expected = fc.load(sensor_pb)(readings)
        assert results["result"].dtype == np.float32 and results["result"] == expected
    assert result.stdout.startswith("result: float32 = ")


@pytest.mark.parametrize(
    "backend",
    [
        ["--backend", "reference"],
        ["--backend", "processes", "--workers", "2"],
        pytest.param(
            ["--backend", "dask", "--workers", "2"],
            marks=pytest.mark.skipif(
                importlib.util.find_spec("distributed") is None, reason="the dask extra"
            ),
        ),
    ],
    ids=["reference", "processes", "dask"],
)
def test_fedsgd_compile_dump_run_matches_the_in_process_round_bit_for_bit(tmp_path, backend):
    example = load_example("fedsgd_linear_regression")
    pb = tmp_path / "round.pb"
    compiled = fedcc_command(
        "compile", "examples.fedsgd_linear_regression:fedsgd_round", "-o", str(pb), "-O", "0"
    )
    assert compiled.returncode == 0, compiled.stderr
    dumped = fedcc_command("dump", str(pb))
    assert dumped.returncode == 0, dumped.stderr
    assert "federated_weighted_mean(" in dumped.stdout and "federated_broadcast(" in dumped.stdout
    assert fc.parse_text(dumped.stdout) == deserialize_program(pb.read_bytes())

    model = {"w": np.array([0.25, -0.5, 1.0], np.float32), "b": np.float32(0.125)}
    data = example.client_data(5, seed=2)
    args, clients = write_fedsgd_inputs(tmp_path, model, data)
    out = tmp_path / "results.npz"
    ran = fedcc_command(
        "run", str(pb), *backend, "--args", str(args),
        "--clients", str(clients), "--out", str(out),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    expected = example.fedsgd_round(model, data)
    with np.load(out) as results:
        assert sorted(results.files) == ["loss", "model.b", "model.w"]
        for key, value in [
            ("model.w", expected["model"]["w"]),
            ("model.b", expected["model"]["b"]),
            ("loss", expected["loss"]),
        ]:
            assert results[key].dtype == np.float32
            assert results[key].tobytes() == np.asarray(value, np.float32).tobytes(), key
    assert "loss: float32 = " in ran.stdout and "model.w: float32[3] = " in ran.stdout


def test_client_placed_results_are_written_one_key_a_client(tmp_path, sensor_clients):
    folder, readings = sensor_clients
    module = tmp_path / "plus_one.py"
    module.write_text(
        textwrap.dedent(
            """
            import numpy as np
            import fedcc as fc

            @fc.numpy_computation("float32")
            def plus_one(x):
                return x + np.float32(1.0)

            @fc.federated_computation("{float32}@CLIENTS")
            def each_plus_one(values):
                return fc.federated_map(plus_one, values)
            """
        )
    )
    pb, out = tmp_path / "plus_one.pb", tmp_path / "out.npz"
    assert fedcc_command("compile", f"{module}:each_plus_one", "-o", str(pb)).returncode == 0
    result = fedcc_command(
        "run", str(pb), "--backend", "reference", "--clients", str(folder), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    with np.load(out) as results:
        assert results.files == [f"result.client_{i:03d}" for i in range(len(readings))]
        for index, reading in enumerate(readings):
            assert results[f"result.client_{index:03d}"] == reading + np.float32(1.0)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"reading": np.float32(1.0)}, "missing key 'value' (float32); the file has reading"),
        ({"value": np.float64(1.0)}, "key 'value': expected float32, found float64"),
        ({"value": np.ones(2, np.float32)}, "key 'value': expected float32, found float32[2]"),
        (
            {"value": np.float32(1.0), "extra": np.float32(2.0)},
            "unexpected key(s) 'extra'; expected 'value'",
        ),
    ],
)
def test_a_bad_client_file_is_one_line_naming_file_and_key(sensor_pb, tmp_path, arrays, message):
    folder = tmp_path / "clients"
    folder.mkdir()
    np.savez(folder / "client_000.npz", value=np.float32(2.0))
    np.savez(folder / "client_001.npz", **arrays)
    result = fedcc_command(
        "run", str(sensor_pb), "--backend", "reference", "--clients", str(folder)
    )
    line = one_error_line(result)
    assert line == f"fedcc run: error: {folder / 'client_001.npz'}: {message}"


def test_workers_on_the_reference_backend_is_one_line(sensor_pb, sensor_clients):
    folder, _ = sensor_clients
    result = fedcc_command(
        "run", str(sensor_pb), "--backend", "reference", "--workers", "2", "--clients", str(folder)
    )
    assert "reference backend takes no options" in one_error_line(result)


def test_run_errors_name_what_is_missing(sensor_pb, sensor_clients, tmp_path):
    folder, _ = sensor_clients
    line = one_error_line(fedcc_command("run", str(sensor_pb), "--backend", "reference"))
    assert "arg0 is {float32}@CLIENTS" in line and "--clients DIR" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(
        fedcc_command("run", str(sensor_pb), "--backend", "reference", "--clients", str(empty))
    )
    assert "no .npz files" in line
    np.savez(tmp_path / "args.npz", arg0=np.float32(1.0))
    line = one_error_line(
        fedcc_command(
            "run",
            str(sensor_pb),
            "--backend",
            "reference",
            "--clients",
            str(folder),
            "--args",
            str(tmp_path / "args.npz"),
        )
    )
    assert "unexpected key(s) 'arg0'" in line


def test_compile_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    out = str(tmp_path / "x.pb")
    cases = [
        (("examples.sensor_average:no_such", "-o", out), "has no attribute 'no_such'"),
        (("examples.no_such_module:f", "-o", out), "cannot import module 'examples.no_such"),
        (("examples/no_such.py:f", "-o", out), "no such Python file"),
        (("examples.sensor_average", "-o", out), "expected MODULE:ATTR"),
        (
            ("examples.sensor_average:mean_temperature", "-o", out, "-O", "3"),
            "-O 3: unknown optimization level; use one of 0, 1, 2",
        ),
        (("examples.sensor_average:sensor_readings", "-o", out), "found function"),
    ]
    for args, message in cases:
        line = one_error_line(fedcc_command("compile", *args))
        assert line.startswith("fedcc compile: error: ") and message in line, line
    assert not Path(out).exists()
    debug = fedcc_command("--debug", "compile", "examples.sensor_average:no_such", "-o", out)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_module_that_fails_to_import_is_one_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy as np\nraise RuntimeError('no sensors configured')\n")
    line = one_error_line(fedcc_command("compile", f"{broken}:f", "-o", str(tmp_path / "x.pb")))
    assert line.endswith("failed: RuntimeError: no sensors configured")


# --- rounds -------------------------------------------------------------------------------


def test_rounds_feed_the_state_back_and_print_each_rounds_metrics(tmp_path):
    example = load_example("fedsgd_linear_regression")
    pb = tmp_path / "round.pb"
    compiled = fedcc_command("compile", "examples.fedsgd_linear_regression:fedsgd_round",
                             "-o", str(pb))  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    model = {"w": np.array([0.25, -0.5, 1.0], np.float32), "b": np.float32(0.125)}
    data = example.client_data(4, seed=3)
    args, clients = write_fedsgd_inputs(tmp_path, model, data)
    out = tmp_path / "results.npz"
    ran = fedcc_command(
        "run", str(pb), "--backend", "processes", "--workers", "2", "--rounds", "3",
        "--args", str(args), "--clients", str(clients), "--out", str(out),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    losses = []
    for _ in range(3):
        result = example.fedsgd_round(model, data)
        model = result["model"]
        losses.append(result["loss"])
    round_lines = [line for line in ran.stdout.splitlines() if line.startswith("round ")]
    assert round_lines == [
        f"round {n}: loss={np.array2string(np.asarray(loss))}" for n, loss in enumerate(losses, 1)
    ]
    with np.load(out) as results:
        assert results["model.w"].tobytes() == np.asarray(model["w"]).tobytes()
        assert results["model.b"].tobytes() == np.asarray(model["b"]).tobytes()
        assert results["loss"].tobytes() == np.asarray(losses[-1]).tobytes()


def test_rounds_of_an_iterative_process_start_from_initialize(tmp_path):
    from fedcc.learning import models, optimizers

    process = fc.learning.build_fed_avg(
        models.logistic_regression(4, 3), client_optimizer=optimizers.sgd(0.1)
    )
    pb = tmp_path / "fedavg.pb"
    fc.save(process, pb)
    rng = np.random.default_rng(5)
    clients = tmp_path / "clients"
    clients.mkdir()
    batches = []
    for index in range(3):
        x = rng.normal(size=(7, 4)).astype(np.float32)
        y = rng.integers(0, 3, 7).astype(np.int32)
        np.savez(clients / f"client_{index:03d}.npz", x=x, y=y)
        batches.append([{"x": x[:4], "y": y[:4]}, {"x": x[4:], "y": y[4:]}])
    out = tmp_path / "results.npz"
    ran = fedcc_command("run", str(pb), "--backend", "reference", "--clients", str(clients),
                        "--batch-size", "4", "--rounds", "2", "--out", str(out))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    state = process.initialize()
    for _ in range(2):
        state, metrics = process.next(state, batches)
    lines = [line for line in ran.stdout.splitlines() if line.startswith("round ")]
    assert len(lines) == 2 and f"loss={np.array2string(metrics['loss'])}" in lines[1]
    weights = process.get_model_weights(state)
    with np.load(out) as results:
        assert results["0.model.kernel"].tobytes() == weights["kernel"].tobytes()
        assert results["0.model.bias"].tobytes() == weights["bias"].tobytes()
        assert results["1.accuracy"] == metrics["accuracy"]


def test_rounds_errors_are_one_line(sensor_pb, sensor_clients):
    folder, _ = sensor_clients
    line = one_error_line(fedcc_command(
        "run", str(sensor_pb), "--backend", "reference", "--clients", str(folder), "--rounds", "2"
    ))  # fmt: skip
    assert "--rounds feeds each round's result" in line
    assert "does not fit its first argument" in line
    line = one_error_line(fedcc_command(
        "run", str(sensor_pb), "--backend", "reference", "--clients", str(folder), "--rounds", "0"
    ))  # fmt: skip
    assert "--rounds must be a positive integer, found 0" in line


def test_backends_lists_every_installed_backend_with_its_entry_point():
    listed = fedcc_command("backends")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == fc.backends()
    reference = next(line for line in lines if line.startswith("reference "))
    assert "[fedcc.runtimes.reference:ReferenceBackend]" in reference
    assert any(line.startswith("threads ") and "(default)" in line for line in lines)
