"""Client data sets by URI (runtimes/client_data.py): loaded where the clients live, once.

A folder of per-client `.npz` files, bound to a computation's client data
argument, must give exactly the bits the same data gives as an in-memory
list; each process reads each client's file once across rounds; files that
do not fit the element type raise errors naming the file, client and worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedcc as fc
from fedcc.ir.building_blocks import Data, walk
from fedcc.ir.type_text import parse_type
from fedcc.ir.types import CLIENTS, FederatedType, SequenceType, StructType, TensorType
from fedcc.runtimes import client_data
from fedcc.runtimes.client_data import (
    bind_client_data,
    load_statistics,
    npz_folder_uri,
    parse_uri,
)

# Backends that run shards in this process, so that this process's load counts see every load.
IN_PROCESS_BACKENDS = [("reference", {})] + (
    [("threads", {"workers": 3})] if "threads" in fc.backends() else []
)

BATCH = parse_type("<x=float32[?,4],y=int32[?]>")


@fc.numpy_computation("<total=float32,count=int32>", BATCH)
def accumulate(state, batch):
    return {
        "total": state["total"] + np.sum(batch["x"] * np.float32(1.5)) - np.float32(0.25),
        "count": state["count"] + np.sum(batch["y"]).astype(np.int32) + np.int32(1),
    }


@fc.federated_computation("float32", SequenceType(BATCH))
def client_total(offset, batches):
    zero = {"total": offset, "count": np.int32(0)}
    return fc.sequence_reduce(batches, zero, accumulate)


@fc.federated_computation(
    FederatedType(parse_type("float32"), fc.SERVER), FederatedType(SequenceType(BATCH), CLIENTS)
)
def totals(offset, data):
    """Per-client totals (so every client's data shows) and their sum."""
    per_client = fc.federated_map(client_total, [fc.federated_broadcast(offset), data])
    return per_client, fc.federated_sum(per_client)


def write_clients(folder: Path, examples: list[int], seed: int = 0) -> list[dict]:
    """One `.npz` a client with `x: float32[n,4]`, `y: int32[n]`; the arrays, by client."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for index, count in enumerate(examples):
        x = rng.standard_normal((count, 4)).astype(np.float32)
        y = rng.integers(0, 10, count).astype(np.int32)
        np.savez(folder / f"client_{index:03d}.npz", x=x, y=y)
        arrays.append({"x": x, "y": y})
    return arrays


def in_batches(arrays: list[dict], batch_size: int) -> list[list[dict]]:
    return [
        [
            {"x": a["x"][k : k + batch_size], "y": a["y"][k : k + batch_size]}
            for k in range(0, len(a["y"]), batch_size)
        ]
        for a in arrays
    ]


def same_bits(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_bits(a[k], b[k]) for k in a
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_bits, a, b))
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(autouse=True)
def fresh_cache_on_the_reference_backend():
    client_data.clear_cache()
    with fc.use_backend("reference"):  # unless a test chooses another
        yield
    client_data.clear_cache()


# --- the same bits as in memory, read once -----------------------------------------------------


@pytest.mark.parametrize(("backend", "options"), IN_PROCESS_BACKENDS)
def test_a_folder_gives_the_bits_of_the_in_memory_batches_and_is_read_once(
    tmp_path, backend, options
):
    arrays = write_clients(tmp_path / "clients", [7, 0, 3, 12, 5, 1, 9])
    from_folder = bind_client_data(
        totals.building_block, npz_folder_uri(tmp_path / "clients", batch_size=3), 1
    )
    assert str(from_folder.type_signature) == (
        "(float32@SERVER -> <{<total=float32,count=int32>}@CLIENTS,"
        "<total=float32,count=int32>@SERVER>)"
    )
    expected = fc.run(totals, np.float32(0.5), in_batches(arrays, 3), backend="reference")
    shards = options.get("workers", 1)
    with fc.use_backend(backend, **options):
        for round_number in range(3):
            found = fc.run(from_folder, np.float32(0.5))
            assert same_bits(expected, found)
            statistics = load_statistics()
            assert statistics.files_read == 7  # every client's file, once
            assert statistics.cache_hits == round_number * shards


@pytest.mark.skipif("processes" not in fc.backends(), reason="no processes backend")
def test_worker_processes_read_the_files_and_the_server_reads_none(tmp_path):
    arrays = write_clients(tmp_path / "clients", [3, 6, 1, 4, 2])
    from_folder = bind_client_data(
        totals.building_block, npz_folder_uri(tmp_path / "clients", batch_size=2), 1
    )
    expected = fc.run(totals, np.float32(2), in_batches(arrays, 2), backend="reference")
    with fc.use_backend("processes", workers=2):
        for _ in range(2):
            assert same_bits(expected, fc.run(from_folder, np.float32(2)))
    assert load_statistics().files_read == 0


def test_without_a_batch_size_each_element_is_one_example(tmp_path):
    @fc.numpy_computation("float32", "<x=float32[4],y=int32>")
    def add_example(total, example):
        return total * np.float32(0.5) + np.sum(example["x"]) + example["y"].astype(np.float32)

    @fc.federated_computation(SequenceType("<x=float32[4],y=int32>"))
    def fold(examples):
        return fc.sequence_reduce(examples, np.float32(0), add_example)

    @fc.federated_computation(FederatedType(SequenceType("<x=float32[4],y=int32>"), CLIENTS))
    def folded(data):
        return fc.federated_map(fold, data)

    arrays = write_clients(tmp_path / "c", [2, 0, 5])
    examples = [
        [{"x": a["x"][i], "y": a["y"][i]} for i in range(len(a["y"]))] for a in arrays
    ]
    expected = fc.run(folded, examples, backend="reference")
    found = fc.run(bind_client_data(folded.building_block, str(tmp_path / "c")))
    assert same_bits(expected, found)


@fc.numpy_computation("int32", BATCH)
def add_one(count, batch):
    return count + np.int32(1)


@fc.federated_computation(SequenceType(BATCH))
def count_batches(batches):
    return fc.sequence_reduce(batches, np.int32(0), add_one)


def test_the_number_of_clients_comes_from_the_data_set(tmp_path):
    write_clients(tmp_path / "c", [1, 2, 3, 4])

    @fc.federated_computation(FederatedType(SequenceType(BATCH), CLIENTS))
    def count(data):
        return fc.federated_sum(fc.federated_map(count_batches, data))

    comp = bind_client_data(count.building_block, npz_folder_uri(tmp_path / "c", 2))
    total = fc.run(comp)
    assert total == 1 + 1 + 2 + 2  # batches of 2
    with pytest.raises(fc.BackendError, match=r"has 4 clients .*, but the run has 3"):
        fc.run(comp, num_clients=3)


def test_a_rewritten_file_is_read_again(tmp_path):
    arrays = write_clients(tmp_path / "c", [3, 4])
    comp = bind_client_data(totals.building_block, npz_folder_uri(tmp_path / "c", 2), 1)
    first = fc.run(comp, np.float32(0))
    assert same_bits(first, fc.run(totals, np.float32(0), in_batches(arrays, 2)))
    arrays[1]["x"] = arrays[1]["x"] + np.float32(1)
    np.savez(tmp_path / "c" / "client_001.npz", **arrays[1])
    os.utime(tmp_path / "c" / "client_001.npz", ns=(1, 1))  # a changed time, however fast
    second = fc.run(comp, np.float32(0))
    assert same_bits(second, fc.run(totals, np.float32(0), in_batches(arrays, 2)))
    assert not same_bits(first, second)
    assert load_statistics().files_read == 4  # the shard's two files, twice


# --- generated programs: folders and lists agree ------------------------------------------------


def element_values(t, rng, count: int, dims: dict) -> dict:
    """`count` examples of the tensor or struct `t`, as stacked arrays by `.npz` key."""
    stacked = {}
    for key, leaf in client_data.leaf_keys(t):
        shape = tuple(dims.setdefault((key, axis), int(rng.integers(0, 3))) if d is None else d
                      for axis, d in enumerate(leaf.shape))
        if leaf.dtype.kind == "f":
            array = rng.standard_normal((count, *shape)).astype(leaf.dtype)
        elif leaf.dtype.kind == "b":
            array = rng.integers(0, 2, (count, *shape)).astype(bool)
        else:
            array = rng.integers(0, 4, (count, *shape)).astype(leaf.dtype)
        stacked[key] = array
    return stacked


def python_value(t, rng, clients: int):
    if isinstance(t, TensorType):
        shape = tuple(int(rng.integers(0, 3)) if d is None else d for d in t.shape)
        if t.dtype.kind == "f":
            return rng.standard_normal(shape).astype(t.dtype)
        if t.dtype.kind == "b":
            return rng.integers(0, 2, shape).astype(bool)
        return rng.integers(0, 4, shape).astype(t.dtype)
    if isinstance(t, StructType):
        return tuple(python_value(element, rng, clients) for element in t)
    if isinstance(t, SequenceType):
        return [python_value(t.element, rng, clients) for _ in range(int(rng.integers(0, 3)))]
    if isinstance(t, FederatedType):
        return python_value(t.member, rng, clients)
    raise AssertionError(f"no value of {t}")


def as_elements(element_type, stacked: dict, count: int) -> list:
    """The in-memory sequence the stacked arrays stand for, one element an example."""
    keys = client_data.leaf_keys(element_type)
    elements = []
    for i in range(count):
        leaves = iter([stacked[key][i] for key, _ in keys])
        elements.append(_rebuild(element_type, leaves))
    return elements


def _rebuild(t, leaves):
    if isinstance(t, TensorType):
        return next(leaves)
    return tuple(_rebuild(element, leaves) for element in t)


def data_programs(count: int):
    strategies = pytest.importorskip("strategies")
    found, seed = [], 0
    while len(found) < count and seed < 2000:
        comp = strategies.build_federated_program(strategies.RandomChooser(5000 + seed))
        parameter = comp.type_signature.parameter
        data_index = None
        if client_data.client_data_element_type(parameter) is not None:
            data_index = 0
        elif isinstance(parameter, StructType) and client_data.client_data_element_type(
            parameter[len(parameter) - 1]
        ) is not None:
            data_index = len(parameter) - 1
        if data_index is not None and not any(isinstance(n, Data) for n in walk(comp)):
            found.append((seed, comp, data_index))
        seed += 1
    return found


@pytest.mark.parametrize(("backend", "options"), IN_PROCESS_BACKENDS)
def test_generated_programs_read_folders_as_they_read_lists(tmp_path, backend, options):
    ran = 0
    for seed, comp, data_index in data_programs(15):
        rng = np.random.default_rng(seed)
        parameter = comp.type_signature.parameter
        data_type = parameter if data_index == 0 and not isinstance(parameter, StructType) \
            else parameter[data_index]
        element_type = client_data.client_data_element_type(data_type)
        folder = tmp_path / f"program_{seed}"
        folder.mkdir()
        clients, dims = [], {}
        for index in range(4):
            count = int(rng.integers(0, 3))
            stacked = element_values(element_type, rng, count, dims)
            np.savez(folder / f"{index}.npz", **stacked)
            clients.append(as_elements(element_type, stacked, count))
        if isinstance(parameter, StructType):
            others = [python_value(t, rng, 4) for t in list(parameter)[:-1]]
            arguments = (*others, clients)
        else:
            others, arguments = [], (clients,)
        expected = _outcome(comp, *arguments, backend="reference")
        bound = bind_client_data(comp, str(folder), data_index)
        found = _outcome(bound, *others, backend=backend, **options)
        assert expected[0] == found[0], (seed, expected, found)
        if expected[0] == "result":
            assert same_bits(expected[1], found[1]), seed
            ran += 1
    assert ran >= 5


def _outcome(comp, *arguments, **options):
    try:
        return ("result", fc.run(comp, *arguments, **options))
    except fc.FedccError as error:
        return ("error", type(error).__name__)


# --- files that do not fit ----------------------------------------------------------------------


def bad_folder(tmp_path: Path, bad_client: int, **bad_arrays) -> Path:
    folder = tmp_path / "bad"
    write_clients(folder, [4, 4, 4, 4])
    np.savez(folder / f"client_{bad_client:03d}.npz", **bad_arrays)
    return folder


def run_on(folder: Path, batch_size: int = 2):
    comp = bind_client_data(totals.building_block, npz_folder_uri(folder, batch_size), 1)
    return fc.run(comp, np.float32(0))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": np.zeros((4, 4), np.float64), "y": np.zeros(4, np.int32)},
            r"key 'x': expected float32\[\?,4\] .*, found float64\[4,4\]",
        ),
        (
            {"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.int32)},
            r"key 'x': expected float32\[\?,4\] .*, found float32\[4,3\]",
        ),
        ({"x": np.zeros((4, 4), np.float32)}, r"missing key 'y'"),
        (
            {"x": np.zeros((4, 4), np.float32), "y": np.zeros(4, np.int32), "z": np.zeros(1)},
            r"unexpected key\(s\) 'z'",
        ),
        (
            {"x": np.zeros((4, 4), np.float32), "y": np.zeros(3, np.int32)},
            r"key 'y' has 3 examples but 'x' has 4",
        ),
    ],
)
def test_a_file_that_does_not_fit_names_the_file_the_client_and_the_worker(
    tmp_path, arrays, message
):
    folder = bad_folder(tmp_path, 2, **arrays)
    with pytest.raises(fc.FederatedTypeError, match=message) as caught:
        run_on(folder)
    text = str(caught.value)
    assert f"{folder / 'client_002.npz'}: client 2 (worker " in text
    assert f"pid {os.getpid()}" in text


def test_unreadable_files_and_missing_folders_are_backend_errors(tmp_path):
    folder = tmp_path / "c"
    write_clients(folder, [1, 1])
    (folder / "client_001.npz").write_bytes(b"not an npz file")
    with pytest.raises(fc.BackendError, match=r"client_001\.npz: client 1 .*not a readable"):
        run_on(folder)
    comp = bind_client_data(totals.building_block, str(tmp_path / "nowhere"), 1)
    with pytest.raises(fc.BackendError, match=r"'.*nowhere' does not exist"):
        fc.run(comp, np.float32(0))


def test_a_fixed_batch_dim_needs_whole_batches(tmp_path):
    fixed = parse_type("<x=float32[2,4],y=int32[2]>")

    @fc.federated_computation(FederatedType(SequenceType(fixed), CLIENTS))
    def identity(data):
        return data

    write_clients(tmp_path / "c", [4, 3])
    with pytest.raises(fc.FederatedTypeError, match=r"client 1 .*: 3 examples do not split"):
        fc.run(bind_client_data(identity.building_block, npz_folder_uri(tmp_path / "c", 2)))
    with pytest.raises(fc.FederatedTypeError, match=r"first dim of \? or 3; 'x' is float32\[2,4\]"):
        bind_client_data(identity.building_block, npz_folder_uri(tmp_path / "c", 3))


# --- URIs and binding ---------------------------------------------------------------------------


def test_uris_name_a_loader_a_path_and_a_batch_size():
    assert parse_uri("data/clients") == client_data.DataLocation("npz-folder", "data/clients")
    assert parse_uri("npz-folder:/d?batch_size=20") == client_data.DataLocation(
        "npz-folder", "/d", 20
    )
    assert parse_uri("file:///d/e?batch_size=3").path == "/d/e"
    for bad, message in [
        ("gs://bucket/shard", r"no client data loader .*\(scheme 'gs'\)"),
        ("/d?batch_size=0", "must be a positive integer"),
        ("/d?shuffle=1", "unknown option"),
        ("npz-folder:", "names no path"),
    ]:
        with pytest.raises(fc.BackendError, match=message):
            parse_uri(bad)


def test_binding_keeps_the_other_arguments_and_makes_the_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bound = bind_client_data(totals.building_block, "relative?batch_size=2", 1)
    (data,) = [node for node in walk(bound) if isinstance(node, Data)]
    assert data.uri == f"npz-folder:{tmp_path / 'relative'}?batch_size=2"
    assert data.type_signature == FederatedType(SequenceType(BATCH), CLIENTS)
    with pytest.raises(fc.FederatedTypeError, match=r"argument 0 has type float32@SERVER"):
        bind_client_data(totals.building_block, "relative", 0)
    with pytest.raises(fc.FederatedTypeError, match=r"not one of the 2 arguments"):
        bind_client_data(totals.building_block, "relative", 2)


def test_data_sets_of_other_types_are_still_refused():
    comp = Data("data/clients.npz", parse_type("float32*"))
    with pytest.raises(fc.BackendError, match=r"cannot load the data set 'data/clients\.npz'"):
        fc.run(comp)


# --- the command line ---------------------------------------------------------------------------


def fedcc_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedcc", *args], capture_output=True, text=True, timeout=120
    )


def test_fedcc_run_reads_sequences_of_batches_from_a_clients_folder(tmp_path):
    arrays = write_clients(tmp_path / "clients", [5, 2, 0, 8])
    fc.save(totals, tmp_path / "totals.pb")
    np.savez(tmp_path / "args.npz", arg0=np.float32(0.25))
    command = [
        "run", str(tmp_path / "totals.pb"), "--backend", "reference",
        "--args", str(tmp_path / "args.npz"), "--clients", str(tmp_path / "clients"),
    ]  # fmt: skip
    ran = fedcc_command(*command, "--batch-size", "3", "--out", str(tmp_path / "out.npz"))
    assert ran.returncode == 0, ran.stderr
    per_client, total = fc.run(totals, np.float32(0.25), in_batches(arrays, 3))
    with np.load(tmp_path / "out.npz") as results:
        assert results["1.total"].tobytes() == total["total"].tobytes()
        assert results["1.count"] == total["count"]
        for index, client in enumerate(per_client):
            assert results[f"0.client_{index:03d}.total"].tobytes() == client["total"].tobytes()

    # Without a batch size a sequence's elements are single examples, which these files are not.
    unbatched = fedcc_command(*command)
    assert unbatched.returncode == 1 and "Traceback" not in unbatched.stderr
    assert "client_000.npz: client 0" in unbatched.stderr
    assert "expected float32[?,?,4]" in unbatched.stderr and "--batch-size" in unbatched.stderr
