"""Project-wide rules: ruff-clean, the package boundaries of docs/design.md, and installable metadata."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules_imported(path: Path) -> set[str]:
    """Every absolute module path ``path`` imports, at any depth (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _modules_imported(path)}


def test_code_is_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    result = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("package", "forbidden"), [
    ("mfuser_model", {"training", "mfuser_ros", "rclpy", "rosbags", "cyclonedds"}),
    ("training", {"mfuser_ros", "rclpy"}),
    ("mfuser_ros", {"training"}),
])
def test_packages_respect_their_import_boundaries(package, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden)
                 for p in (ROOT / package).rglob("*.py") if _imports(p) & forbidden}
    assert offenders == {}


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("mfuser_model/network", ("mfuser_model.inference", "mfuser_model.deploy", "mfuser_model.synthetic")),
    ("mfuser_model/ops", ("mfuser_model.network", "mfuser_model.inference", "mfuser_model.deploy")),
    ("mfuser_model/inference.py", ("mfuser_model.deploy",)),
    ("mfuser_ros/node", ("mfuser_ros.replay",)),
])
def test_dependencies_run_one_way(folder, forbidden):
    path = ROOT / folder
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): sorted(m for m in _modules_imported(f) if m.startswith(forbidden))
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_no_source_file_is_over_600_lines():
    sources = [p for pkg in ("mfuser_model", "training", "mfuser_ros")
               for pattern in ("*.py", "*.cpp", "*.h") for p in (ROOT / pkg).rglob(pattern)]
    long = {str(p.relative_to(ROOT)): n for p in sources
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


def test_only_the_node_module_imports_rclpy():
    users = sorted(str(p.relative_to(ROOT)) for pkg in ("mfuser_model", "training", "mfuser_ros")
                   for p in (ROOT / pkg).rglob("*.py") if "rclpy" in _imports(p))
    assert users == ["mfuser_ros/node/lifecycle_node.py"]


def test_console_scripts_resolve_to_callables():
    import importlib

    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    entries = re.findall(r'"([\w-]+) = ([\w.]+):(\w+)"', text)
    assert entries, "setup.py declares console scripts"
    for name, module, func in entries:
        if module == "mfuser_ros.node.lifecycle_node":
            continue  # imports rclpy, absent here; its module is checked by the ROS tests
        assert callable(getattr(importlib.import_module(module), func)), name


def test_ament_package_files_exist():
    assert (ROOT / "resource" / "mfuser_ros").is_file()
    assert 'format="3"' in (ROOT / "package.xml").read_text(encoding="utf-8")
    assert "ament_python" in (ROOT / "package.xml").read_text(encoding="utf-8")
    cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "script_dir=$base/lib/mfuser_ros" in cfg
    assert "install_scripts=$base/lib/mfuser_ros" in cfg
