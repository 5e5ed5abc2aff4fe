"""The front door: every module the package imports is required by setup.py, or sits behind an extra that says so.

`.ci/run` proves the README's installs in fresh venvs; these tests name the missing requirement at once.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_lists() -> tuple[list[str], dict[str, list[str]]]:
    """INSTALL_REQUIRES and EXTRAS_REQUIRE as written in setup.py (read, not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found["INSTALL_REQUIRES"], found["EXTRAS_REQUIRE"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(path: Path) -> set[str]:
    """Top-level modules a file imports (absolute imports only; optional_import names are not imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_imported_distribution_is_required_by_setup_py_or_by_the_extra_of_its_subpackage():
    base, extras = _setup_lists()
    base_names = {_name(r) for r in base}
    distributions = packages_distributions()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    missing = []
    for path in sorted((ROOT / "monai_disc").rglob("*.py")):
        allowed = set(base_names)
        if "monailabel" in path.relative_to(ROOT).parts[1:2]:  # the MONAI Label app: its extra too
            allowed |= {_name(r) for r in extras["monailabel"]}
        for module in sorted(_imports(path) - stdlib - {"monai_disc"}):
            dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
            if not dists & allowed:
                missing.append(f"{path.relative_to(ROOT)} imports {module} (distribution {sorted(dists)})")
    assert not missing, "not required by setup.py:\n" + "\n".join(missing)


def test_monai_diffusion_networks_bring_their_optional_einops_with_the_base_install():
    # MONAI lists einops as optional, but its DiffusionModelUNet (our denoiser) imports it: a base install must
    # bring it, or `make demo` stops at the first tile (a fresh venv showed it; monailabel used to hide it)
    base, _ = _setup_lists()
    assert "einops" in {_name(r) for r in base}


def test_every_locked_install_reads_one_pin_per_package_and_covers_the_extras():
    lock = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lock if line and not line.startswith((" ", "#")))
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", v) for v in pins.values())  # exact versions, nothing else
    base, extras = _setup_lists()
    for requirement in [*base, *(r for reqs in extras.values() for r in reqs)]:
        assert _name(requirement) in pins, f"{requirement} is not in the lock: run `make lock`"
    assert pins["numpy"].startswith("1.26")  # monailabel 0.8.5's numpy: the whole project works on it


def test_label_server_without_the_monailabel_extra_fails_in_one_line_naming_it(tmp_path):
    # an environment without monailabel: the import is blocked the way a missing package fails
    code = (
        "import sys; sys.modules['monailabel'] = None\n"
        "from monai_disc.apps.cli import main\n"
        f"sys.exit(main(['label-server', '--studies', {str(tmp_path)!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "monailabel extra" in lines[0] and "pip install" in lines[0], run.stderr
