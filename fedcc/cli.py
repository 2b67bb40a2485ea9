"""The `fedcc` command line (DESIGN §10): one subcommand a job, one-line errors unless --debug."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from fedcc.ir.errors import FedccError


class UsageError(FedccError):
    """A command line that names something that does not exist or cannot be used."""


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


# 0: no passes; 1: canonicalize; 2: also the federated and local rewrites (DESIGN §7).
AVAILABLE_OPTIMIZATION_LEVELS = (0, 1, 2)
DEFAULT_OPTIMIZATION_LEVEL = 2


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"{path}: no such Python file")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_dotted(name: str) -> ModuleType:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise UsageError(f"cannot import module {name!r}: {error}") from error


def load_attribute(target: str) -> Any:
    """The object `MODULE:ATTR` names; MODULE is a dotted module path or a `.py` file path.

    A dotted module is imported with the current folder first on the import
    path, so `fedcc compile examples.sensor_average:mean_temperature` works from
    the repository root.
    """
    module_text, separator, attribute = target.rpartition(":")
    if not separator or not module_text or not attribute:
        raise UsageError(
            "expected MODULE:ATTR (e.g. examples.sensor_average:mean_temperature), "
            f"found {target!r}"
        )
    is_file = module_text.endswith(".py") or "/" in module_text or os.sep in module_text
    try:
        module = _import_file(Path(module_text)) if is_file else _import_dotted(module_text)
    except FedccError:
        raise  # ours (or a tracing error, which names the line of the module)
    except Exception as error:
        # The user's module failed while running: one line, the traceback under --debug.
        raise UsageError(
            f"importing {module_text} failed: {type(error).__name__}: {error}"
        ) from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"module {module_text!r} has no attribute {attribute!r}") from None


def _ir_of(target: Any):
    """The building block or program a compiled object stands for."""
    import fedcc as fc
    from fedcc.ir import serialization
    from fedcc.ir.building_blocks import BuildingBlock

    if isinstance(target, fc.Computation):
        return target.building_block
    if isinstance(target, fc.ComputationBundle):
        return target.program
    if isinstance(target, (BuildingBlock, fc.Program)):
        return target
    # Anything else: serializing it says what can be compiled (or reads it, if it can be).
    return serialization.deserialize(fc.serialize(target))


def _write_optimized(path: str, x, report, metadata: dict[str, str]) -> bytes:
    """Writes `x` with the passes of `report` recorded in its metadata; returns the bytes."""
    from fedcc.compiler.pass_manager import record_passes
    from fedcc.ir import serialization
    from fedcc.ir.building_blocks import BuildingBlock

    if isinstance(x, BuildingBlock):
        data = serialization.serialize(x, record_passes(metadata, report.passes_applied()))
    else:
        data = serialization.serialize(x)  # the pass manager recorded them in the program
    Path(path).write_bytes(data)
    return data


def _compile(args: argparse.Namespace) -> int:
    from fedcc.compiler.pass_manager import optimize_with_report

    level = args.optimization_level
    if level not in AVAILABLE_OPTIMIZATION_LEVELS:
        raise UsageError(
            f"-O {level}: unknown optimization level; use one of "
            f"{', '.join(map(str, AVAILABLE_OPTIMIZATION_LEVELS))}"
        )
    target = load_attribute(args.target)
    if args.form is not None:
        return _compile_form(args, target, level)
    optimized, report = optimize_with_report(_ir_of(target), level)
    data = _write_optimized(args.output, optimized, report, {})
    print(f"{args.output}: {len(data)} bytes from {args.target} (-O {level})")
    return 0


# The forms `--form` can write (DESIGN §7).
FORMS = ("mapreduce",)


def _compile_form(args: argparse.Namespace, target: Any, level: int) -> int:
    from fedcc.forms import map_reduce_form_program
    from fedcc.ir import serialization

    program = map_reduce_form_program(_ir_of(target), optimization_level=level)
    data = serialization.serialize(program)
    Path(args.output).write_bytes(data)
    names = ", ".join(program.computations)
    print(f"{args.output}: {len(data)} bytes, the MapReduceForm of {args.target} ({names})")
    return 0


def _opt(args: argparse.Namespace) -> int:
    from fedcc.compiler.pass_manager import run_passes
    from fedcc.compiler.passes import parse_pipeline
    from fedcc.compiler.verify import verify
    from fedcc.ir import serialization

    names = parse_pipeline(args.passes)
    data = Path(args.file).read_bytes()
    x = serialization.deserialize(data)
    metadata = serialization.deserialize_program(data).metadata
    if args.verify_each:
        verify(x)  # so that a problem is blamed on the input, not on the first pass
    printer = (lambda text: print(text, end="")) if args.print_after_all else None
    result, report = run_passes(x, names, verify_each=args.verify_each, print_after_all=printer)
    written = _write_optimized(args.output, result, report, metadata)
    if args.stats:
        print(report.format_table())
    print(f"{args.output}: {len(written)} bytes after {', '.join(names)}")
    return 0


def _single_computation(loaded: Any, name: str | None, path: str):
    from fedcc.computation import Computation, ComputationBundle

    if isinstance(loaded, ComputationBundle):
        names = list(loaded)
        if name is None and len(names) == 1:
            name = names[0]
        if name is None or name not in names:
            raise UsageError(
                f"{path} holds the computations {', '.join(names)}: "
                + ("choose one with --computation NAME" if name is None else f"not {name!r}")
            )
        loaded = loaded[name]
    elif name is not None:
        raise UsageError(f"{path} holds a single computation: drop --computation {name}")
    if not isinstance(loaded, Computation):
        raise UsageError(f"{path} holds no closed function to run")
    return loaded


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    import fedcc as fc
    from fedcc.npz_values import (
        bind_client_folders,
        flatten_result,
        read_arguments,
        summary_lines,
    )

    loaded = fc.load(args.file)
    options = {} if args.workers is None else {"workers": args.workers}
    if args.rounds is not None and args.rounds < 1:
        raise UsageError(f"--rounds must be a positive integer, found {args.rounds}")
    with fc.use_backend(args.backend, **options):
        given = {}
        if args.rounds is not None and _is_iterative_process(loaded, args.computation):
            computation = loaded["next"]
            given[0] = loaded["initialize"]()
        else:
            computation = _single_computation(loaded, args.computation, args.file)
        signature = computation.type_signature
        if args.rounds is not None:
            _check_round_shape(signature, args.file)
        arguments = read_arguments(
            signature, args.args, args.clients, args.batch_size, given=given
        )
        # Client data that is a sequence is read by the workers that hold the clients.
        block, arguments = bind_client_folders(computation.building_block, arguments)
        if args.rounds is None:
            result = fc.run(block, *arguments)
        else:
            result = _run_rounds(block, signature, arguments, args.rounds)
    flat = flatten_result(result, signature.result)
    if args.out is not None:
        np.savez(args.out, **flat)
    for line in summary_lines(flat):
        print(line)
    return 0


def _is_iterative_process(loaded: Any, name: str | None) -> bool:
    """Whether `loaded` holds `initialize` and `next` and the run is of `next`."""
    from fedcc.computation import ComputationBundle

    return (
        isinstance(loaded, ComputationBundle)
        and {"initialize", "next"} <= set(loaded)
        and name in (None, "next")
    )


def _check_round_shape(signature: Any, path: str) -> None:
    """Raises UsageError unless the result (or its first element) can be the first argument."""
    from fedcc.ir.types import StructType, is_assignable_from
    from fedcc.npz_values import argument_types

    state = argument_types(signature)[0] if argument_types(signature) else None
    result = signature.result
    candidates = [result] + ([result[0]] if isinstance(result, StructType) and result else [])
    if state is None or not any(is_assignable_from(state, c) for c in candidates):
        raise UsageError(
            f"--rounds feeds each round's result (or its first element) back as the first "
            f"argument; {path} runs {signature}, whose result does not fit its first argument"
        )


def _run_rounds(block: Any, signature: Any, arguments: list[Any], rounds: int) -> Any:
    """The result of the last of `rounds` runs of `block`, each on the state the last gave.

    With a `<state, metrics...>` result, prints the metrics of each round on one line.
    """
    import numpy as np

    import fedcc as fc
    from fedcc.ir.types import is_assignable_from
    from fedcc.npz_values import argument_types, flatten_result

    result_type = signature.result
    # The whole result is the next state, unless only its first element fits (<state, metrics>).
    whole = is_assignable_from(argument_types(signature)[0], result_type)
    state_key = None if whole else (result_type.names()[0] or "0")
    result = None
    for number in range(1, rounds + 1):
        result = fc.run(block, *arguments)
        if whole:
            arguments[0] = result
            continue
        arguments[0] = next(iter(result.values())) if isinstance(result, dict) else result[0]
        metrics = [
            f"{key}={np.array2string(array)}" if array.ndim == 0 else
            f"{key}={array.dtype}{list(array.shape)}"
            for key, array in flatten_result(result, result_type).items()
            if key != state_key and not key.startswith(f"{state_key}.")
        ]
        print(f"round {number}: " + (" ".join(metrics) or "done"))
    return result


def _backends(args: argparse.Namespace) -> int:
    from fedcc.runtimes.registry import DEFAULT_BACKEND, describe_backends

    described = describe_backends()
    width = max((len(name) for name, _, _ in described), default=0)
    for name, target, summary in described:
        default = " (default)" if name == DEFAULT_BACKEND else ""
        print(f"{name:<{width}}  {summary}{default}  [{target}]")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fedcc import demo

    return demo.run(args)


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "compile": ("save a Python computation (MODULE:ATTR) as a .pb file", _compile),
    "opt": ("run named optimization passes on a .pb file", _opt),
    "dump": ("print a .pb file as text, compact text, JSON or Graphviz dot", _dump),
    "check": ("validate a .pb file: format, types, scoping", _check),
    "run": ("run a .pb file on a backend with .npz arguments and client data", _run),
    "backends": ("list the installed backends (entry-point group fedcc.backends)", _backends),
    "demo": ("compile FedAvg, then train it on synthetic federated data", _demo),
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

    compile_ = commands.add_parser("compile", help=COMMANDS["compile"][0])
    compile_.add_argument(
        "target", metavar="MODULE:ATTR", help="a dotted module or a .py file, and an attribute"
    )
    compile_.add_argument("-o", "--output", required=True, metavar="OUT.pb")
    compile_.add_argument(
        "-O",
        dest="optimization_level",
        type=int,
        default=DEFAULT_OPTIMIZATION_LEVEL,
        metavar="LEVEL",
        help="optimization level: 0 no passes, 1 canonicalize, 2 (default) also federated "
        "and local rewrites",
    )
    compile_.add_argument(
        "--form",
        choices=FORMS,
        help="write the round (a process's next) split into MapReduceForm's computations",
    )

    opt = commands.add_parser("opt", help=COMMANDS["opt"][0])
    opt.add_argument("file", metavar="IN.pb")
    opt.add_argument("-o", "--output", required=True, metavar="OUT.pb")
    opt.add_argument(
        "--passes", required=True, metavar="a,b,c", help="pass names, run in this order"
    )
    opt.add_argument(
        "--verify-each", action="store_true", help="verify the program after every pass"
    )
    opt.add_argument(
        "--print-after-all", action="store_true", help="print the program after every pass"
    )
    opt.add_argument(
        "--stats", action="store_true", help="print each pass's time and node counts"
    )

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

    run = commands.add_parser("run", help=COMMANDS["run"][0])
    run.add_argument("file", metavar="FILE.pb")
    run.add_argument("--backend", required=True, metavar="NAME", help="e.g. reference")
    run.add_argument(
        "--workers", type=int, metavar="N", help="worker count (every backend but reference)"
    )
    run.add_argument(
        "--args", metavar="FILE.npz", help="arguments not placed at CLIENTS: arg0, arg1.field, ..."
    )
    run.add_argument("--clients", metavar="DIR", help="one .npz a client, in file-name order")
    run.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="cut client data that is a sequence into batches of N examples",
    )
    run.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="run N rounds, each result (or its first element) the next first argument; "
        "a file of initialize and next starts from initialize",
    )
    run.add_argument("--out", metavar="results.npz", help="write the flattened results here")
    run.add_argument(
        "--computation", metavar="NAME", help="which computation of a file that holds several"
    )

    commands.add_parser("backends", help=COMMANDS["backends"][0])

    from fedcc import demo

    demo.add_arguments(commands.add_parser("demo", help=COMMANDS["demo"][0]))
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
