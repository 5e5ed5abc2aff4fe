"""The house rule: the library (everything but `monai_disc.apps`) never imports the jobs in `monai_disc.apps`."""

from __future__ import annotations

import ast
from pathlib import Path

import monai_disc

PACKAGE = Path(monai_disc.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module name a file imports, relative imports resolved (``from a.b import c`` -> a.b, a.b.c)."""
    package = ["monai_disc", *path.parent.relative_to(PACKAGE).parts] if path.is_relative_to(PACKAGE) else []
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _library_files() -> list[Path]:
    # monai_disc/__main__.py is a door like the console script (`python -m monai_disc`), not library code
    return [
        p for p in PACKAGE.rglob("*.py") if "apps" not in p.relative_to(PACKAGE).parts and p != PACKAGE / "__main__.py"
    ]


def test_the_library_never_imports_the_apps():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imported_modules(path) if n.startswith("monai_disc.apps"))
        for path in _library_files()
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(_library_files()) > 40  # the walk really saw the library


def test_the_rule_catches_an_import_of_the_apps(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom monai_disc.apps.compare import run_comparison\n")
    assert "monai_disc.apps.compare" in _imported_modules(bad)
    bad.write_text("def f():\n    import monai_disc.apps.cli as cli\n    return cli\n")
    assert "monai_disc.apps.cli" in _imported_modules(bad)
    inside = PACKAGE / "inferers" / "__init__.py"  # relative imports resolve to the package's modules
    assert "monai_disc.inferers.generators.load_generator" in _imported_modules(inside)


def test_the_jobs_live_in_apps_and_the_old_top_level_modules_are_gone():
    for job in ("cli", "demo", "compare", "sweep", "generate_slides"):
        assert (PACKAGE / "apps" / f"{job}.py").is_file()
        assert not (PACKAGE / f"{job}.py").exists()
    assert not (PACKAGE / "sampling.py").exists() and not (PACKAGE / "generators.py").exists()
