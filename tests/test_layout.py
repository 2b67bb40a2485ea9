"""The repository layout matches DESIGN §2: every package folder is mapped and importable."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_PACKAGE_DIRS = {
    "fedcc": "fedcc",
    "fedcc.compiler": "compiler",
    "fedcc.ir": "ir",
    "fedcc.runtimes": "runtimes",
    "fedcc.proto": "proto",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_mapped_to_its_import_name():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    for name, folder in EXPECTED_PACKAGE_DIRS.items():
        assert mapping.get(name) == folder, f"{name} must map to {folder}/ in pyproject.toml"


def test_every_folder_with_python_code_is_a_mapped_package():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    mapped = set(mapping.values())
    skip = {"tests", "benchmarks", "examples", "docs", ".ci", "build", "dist"}
    for folder in ROOT.iterdir():
        if (
            folder.is_dir()
            and not folder.name.startswith(".")
            and folder.name not in skip
            and (folder / "__init__.py").exists()
        ):
            assert folder.name in mapped, f"package folder {folder.name}/ is not in package-dir"


def test_every_package_with_modules_is_listed_and_importable():
    packages = set(_pyproject()["tool"]["setuptools"]["packages"])
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder).parts
            dotted = ".".join((name, *relative))
            assert dotted in packages, f"{dotted} ({init.parent}) is missing from packages"
            importlib.import_module(dotted)


def _imported_modules(source: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_imports_only_go_downward():
    """ir never imports compiler or runtimes; compiler never imports runtimes (DESIGN §2)."""
    forbidden = {
        "ir": ("fedcc.compiler", "fedcc.runtimes", "fedcc.learning"),
        "compiler": ("fedcc.runtimes", "fedcc.learning"),
        "runtimes": ("fedcc.compiler", "fedcc.learning"),
        "proto": ("fedcc.ir", "fedcc.compiler", "fedcc.runtimes"),
    }
    for folder, prefixes in forbidden.items():
        for source in (ROOT / folder).rglob("*.py"):
            for module in _imported_modules(source):
                bad = [p for p in prefixes if module == p or module.startswith(p + ".")]
                assert not bad, f"{source.relative_to(ROOT)} imports {module}"
        for source in (ROOT / folder).rglob("*.py"):
            if folder == "ir":
                # `from fedcc import x` would import the whole public API, upward.
                assert "fedcc" not in {
                    node.module
                    for node in ast.walk(ast.parse(source.read_text()))
                    if isinstance(node, ast.ImportFrom)
                }, f"{source.relative_to(ROOT)} imports the top-level fedcc package"


def test_version_matches_pyproject():
    import fedcc

    assert fedcc.__version__ == _pyproject()["project"]["version"]
