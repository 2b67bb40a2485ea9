"""The `fedcc` command line (DESIGN §10): one subcommand a job, one-line errors unless --debug."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from fedcc.ir.errors import FedccError


def _read_program(path: str):
    from fedcc.ir.serialization import deserialize_program

    data = Path(path).read_bytes()
    return deserialize_program(data), data


def _dump_json(data: bytes) -> str:
    """The file's protobuf message as JSON: its flat type and node tables, as stored."""
    from google.protobuf import json_format

    from fedcc.proto.fedcc.v1 import ir_pb2

    message = ir_pb2.Program.FromString(data)
    return json_format.MessageToJson(message, indent=2, sort_keys=True)


def _print_stats(program, data: bytes) -> None:
    from fedcc.ir.analysis import program_stats

    stats = program_stats(program)
    stats["bytes"] = len(data)
    print(json.dumps(stats, indent=2, sort_keys=True))


def _dump(args: argparse.Namespace) -> int:
    from fedcc.ir.dot import to_dot
    from fedcc.ir.text import to_compact_text, to_text

    program, data = _read_program(args.file)
    if args.format == "text":
        print(to_text(program), end="")
    elif args.format == "compact":
        for name, comp in program.computations.items():
            print(f"{name} = {to_compact_text(comp)}")
    elif args.format == "json":
        print(_dump_json(data))
    else:
        print(to_dot(program), end="")
    if args.stats:
        _print_stats(program, data)
    return 0


def _check(args: argparse.Namespace) -> int:
    from fedcc.compiler.verify import verify

    program, data = _read_program(args.file)
    verify(program)
    names = ", ".join(
        f"{name}: {comp.type_signature}" for name, comp in program.computations.items()
    )
    print(f"{args.file}: OK ({len(data)} bytes; {names})")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "dump": ("print a .pb file as text, compact text, JSON or Graphviz dot", _dump),
    "check": ("validate a .pb file: format, types, scoping", _check),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcc",
        description="Compile, inspect and run federated computations.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks on errors"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dump = commands.add_parser("dump", help=COMMANDS["dump"][0])
    dump.add_argument("file", metavar="FILE.pb")
    dump.add_argument(
        "--format", choices=("text", "compact", "json", "dot"), default="text"
    )
    dump.add_argument(
        "--stats",
        action="store_true",
        help="also print node counts per kind, intrinsic calls, local ops and bytes",
    )

    check = commands.add_parser("check", help=COMMANDS["check"][0])
    check.add_argument("file", metavar="FILE.pb")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, handler = COMMANDS[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error of ours.
        sys.stderr.close()
        return 0
    except (FedccError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        else:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"fedcc {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
