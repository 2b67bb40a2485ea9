"""The committed generated modules match `proto/fedcc/v1/ir.proto`, and the schema covers the IR."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedcc.ir.building_blocks import NODE_CLASSES
from fedcc.ir.types import DTYPES
from fedcc.proto.fedcc.v1 import ir_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GENERATED = ("fedcc/v1/ir_pb2.py", "fedcc/v1/ir_pb2.pyi")
STALE = "is stale: run `python proto/regenerate.py` and commit the result"


def generator_version(source: str) -> str | None:
    """The protobuf version protoc wrote into a generated module's header."""
    match = re.search(r"^# Protobuf Python Version: (\S+)$", source, re.MULTILINE)
    return match and match.group(1)


def serialized_descriptor(source: str) -> bytes:
    """The schema itself, as the generated module registers it (AddSerializedFile's argument)."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            return ast.literal_eval(node.args[0])
    raise AssertionError("the generated module registers no serialized file descriptor")


def required_runtime(source: str) -> tuple[int, int, int]:
    """The oldest protobuf runtime the generated module accepts (its version check's arguments)."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "ValidateProtobufRuntimeVersion"
        ):
            major, minor, patch = (ast.literal_eval(arg) for arg in node.args[1:4])
            return major, minor, patch
    return (0, 0, 0)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a test dependency) regenerates")
    out = tmp_path_factory.mktemp("generated")
    completed = subprocess.run(
        [sys.executable, str(PROTO_ROOT / "regenerate.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return out


def test_the_committed_modules_are_what_protoc_generates_from_the_schema(regenerated):
    committed = {name: (PROTO_ROOT / name).read_text() for name in GENERATED}
    fresh = {name: (regenerated / name).read_text() for name in GENERATED}
    module = GENERATED[0]
    assert serialized_descriptor(fresh[module]) == serialized_descriptor(committed[module]), (
        f"proto/{module} {STALE}"
    )
    if generator_version(fresh[module]) != generator_version(committed[module]):
        # Another grpcio-tools than the one that wrote the committed files: the schema agrees
        # (checked above), while headers and formatting may legitimately differ.
        return
    for name in GENERATED:
        assert fresh[name] == committed[name], f"proto/{name} {STALE}"


def test_the_generated_module_runs_on_every_protobuf_the_project_allows():
    source = (PROTO_ROOT / GENERATED[0]).read_text()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (bound,) = [d for d in dependencies if re.match(r"protobuf\s*>=", d)]
    parts = [int(part) for part in bound.split(">=")[1].strip().split(".")]
    lowest = tuple([*parts, 0, 0][:3])
    assert required_runtime(source) <= lowest, (
        f"proto/{GENERATED[0]} needs protobuf>={'.'.join(map(str, required_runtime(source)))}, "
        f"but pyproject.toml allows {bound}: raise the bound or generate with an older grpcio-tools"
    )


def test_the_module_is_importable_under_its_package_name():
    assert ir_pb2.__name__ == "fedcc.proto.fedcc.v1.ir_pb2"
    assert ir_pb2.DESCRIPTOR.package == "fedcc.v1"
    assert ir_pb2.DESCRIPTOR.name == "fedcc/v1/ir.proto"
    assert not ir_pb2.DESCRIPTOR.dependencies, "one self-contained .proto file, no imports"


def test_the_schema_has_a_field_for_every_building_block_and_dtype():
    node_kinds = {field.name for field in ir_pb2.Node.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert node_kinds == {cls.kind for cls in NODE_CLASSES}
    dtype_names = {v.name for v in ir_pb2.DType.DESCRIPTOR.values} - {"DTYPE_UNSPECIFIED"}
    assert dtype_names == {f"DTYPE_{name.upper()}" for name in DTYPES}


def test_no_message_of_the_schema_nests_itself():
    # Flat tables keep every file within protobuf's nesting limit, however deep the program.
    for message in ir_pb2.DESCRIPTOR.message_types_by_name.values():
        seen, stack = set(), [message]
        while stack:
            current = stack.pop()
            for field in current.fields:
                inner = field.message_type
                if inner is None:
                    continue
                assert inner is not message, f"{message.name} nests itself through {field.name}"
                if inner.full_name not in seen:
                    seen.add(inner.full_name)
                    stack.append(inner)
