"""Regenerates the Python modules of the file format from `proto/fedcc/v1/ir.proto`.

Run it after editing the schema:

    python proto/regenerate.py            # rewrites proto/fedcc/v1/ir_pb2.py and ir_pb2.pyi
    python proto/regenerate.py --out DIR  # writes DIR/fedcc/v1/... instead (used by the tests)

It runs the `protoc` bundled with grpcio-tools (`python -m grpc_tools.protoc`), so the
generated code depends only on the installed grpcio-tools version. Generated code refuses
protobuf runtimes older than its generator: the committed modules come from
grpcio-tools 1.68.1 and so run on protobuf>=5.28.1, the bound in pyproject.toml. A newer
grpcio-tools raises that floor; tests/test_proto_generated.py then says to raise the bound
(or to regenerate with `pip install grpcio-tools==1.68.1`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
SCHEMA = "fedcc/v1/ir.proto"  # relative to PROTO_ROOT: it is also the name protoc records
GENERATED = ("fedcc/v1/ir_pb2.py", "fedcc/v1/ir_pb2.pyi")
COMMITTED_GENERATOR = "1.68.1"  # the grpcio-tools version that made the committed modules


def regenerate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc on the schema, writing into `out_dir`; returns the generated files' paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        SCHEMA,
    ]
    completed = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"protoc failed on {SCHEMA}:\n{completed.stderr}")
    return [out_dir / name for name in GENERATED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root directory")
    for path in regenerate(parser.parse_args().out):
        print(f"wrote {path}")
    installed = importlib.metadata.version("grpcio-tools")
    if installed != COMMITTED_GENERATOR:
        print(
            f"note: generated with grpcio-tools {installed}, not {COMMITTED_GENERATOR}: the "
            f"code may need a newer protobuf runtime than pyproject.toml allows"
        )


if __name__ == "__main__":
    main()
