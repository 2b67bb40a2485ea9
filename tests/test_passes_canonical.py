"""Golden-text tests of the passes: input text → pass → expected text, one file a case.

Each file `tests/golden/passes/<pass-name>/<case>.txt` holds the input
program as text (`#` comment lines at the top say what the case shows), a
line `----`, and the expected text of the pass's result (`fc.to_text`). The
test parses the input, runs the pass, and compares texts; it also checks that
the result verifies, keeps the type signature, and is a fixed point of the
pass. `FEDCC_UPDATE_GOLDEN=1 pytest tests/test_passes_canonical.py` rewrites
the expected parts from the current output (review the diff before committing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedcc.compiler.passes import PASSES, get_pass
from fedcc.compiler.verify import verify
from fedcc.ir.text import parse_text, to_text

GOLDEN = Path(__file__).resolve().parent / "golden" / "passes"
SEPARATOR = "----"
UPDATE = os.environ.get("FEDCC_UPDATE_GOLDEN") == "1"


def load_golden(path: Path) -> tuple[str, str]:
    """The input text and the expected text of a golden file."""
    lines = path.read_text().splitlines()
    if lines.count(SEPARATOR) != 1:
        raise ValueError(f"{path}: expected exactly one separator line {SEPARATOR!r}")
    split = lines.index(SEPARATOR)
    return "\n".join(lines[:split]) + "\n", "\n".join(lines[split + 1 :]).strip() + "\n"


def write_golden(path: Path, input_text: str, expected: str) -> None:
    path.write_text(f"{input_text.rstrip()}\n{SEPARATOR}\n{expected.rstrip()}\n")


def golden_cases() -> list[tuple[str, Path]]:
    """(pass name, file) for every golden file, sorted."""
    return [
        (folder.name, path)
        for folder in sorted(GOLDEN.iterdir())
        if folder.is_dir()
        for path in sorted(folder.glob("*.txt"))
    ]


CASES = golden_cases()


@pytest.mark.parametrize(
    ("pass_name", "path"), CASES, ids=[f"{name}/{path.stem}" for name, path in CASES]
)
def test_golden(pass_name: str, path: Path) -> None:
    compiler_pass = get_pass(pass_name)
    input_text, expected = load_golden(path)
    comp = parse_text(input_text)
    verify(comp, allow_free=_free_names_of(comp))
    result = compiler_pass.apply(comp)
    actual = to_text(result).rstrip() + "\n"
    if UPDATE and actual != expected:
        write_golden(path, input_text, actual)
        expected = actual
    assert actual == expected, f"{path.relative_to(GOLDEN.parent.parent)}:\n{actual}"
    assert result.type_signature == comp.type_signature
    verify(result, allow_free=_free_names_of(comp))
    assert compiler_pass.apply(result) == result, f"{pass_name} is not idempotent on {path.name}"


def _free_names_of(comp) -> dict:
    from fedcc.ir.analysis import free_references

    return free_references(comp)


def test_the_golden_loader_splits_input_and_expected(tmp_path):
    path = tmp_path / "case.txt"
    write_golden(path, "# what it shows\n(x:int32 -> x)\n", "(x:int32 -> x)")
    assert load_golden(path) == ("# what it shows\n(x:int32 -> x)\n", "(x:int32 -> x)\n")
    path.write_text("(x:int32 -> x)\n")
    with pytest.raises(ValueError, match="exactly one separator"):
        load_golden(path)


def test_every_registered_pass_has_golden_cases():
    covered = {name for name, _ in CASES}
    missing = sorted(set(PASSES) - covered)
    assert not missing, f"passes without golden cases under {GOLDEN}: {missing}"


def test_every_golden_folder_names_a_registered_pass():
    unknown = sorted({name for name, _ in CASES} - set(PASSES))
    assert not unknown, f"golden folders for unregistered passes: {unknown}"


def test_every_pass_describes_itself_in_one_line():
    for name, compiler_pass in PASSES.items():
        assert compiler_pass.name == name
        assert compiler_pass.description and "\n" not in compiler_pass.description
