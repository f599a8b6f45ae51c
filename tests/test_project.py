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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


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


def test_only_the_node_module_imports_rclpy():
    users = sorted(str(p.relative_to(ROOT)) for pkg in ("mfuser_model", "training", "mfuser_ros")
                   for p in (ROOT / pkg).rglob("*.py") if "rclpy" in _imports(p))
    assert users == ["mfuser_ros/node.py"]


def test_console_scripts_resolve_to_callables():
    import importlib

    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    entries = re.findall(r'"([\w-]+) = ([\w.]+):(\w+)"', text)
    assert entries, "setup.py declares console scripts"
    for name, module, func in entries:
        if module == "mfuser_ros.node":
            continue  # imports rclpy, absent here; its module is checked by the ROS tests
        assert callable(getattr(importlib.import_module(module), func)), name


def test_ament_package_files_exist():
    assert (ROOT / "resource" / "mfuser_ros").is_file()
    assert 'format="3"' in (ROOT / "package.xml").read_text(encoding="utf-8")
    assert "ament_python" in (ROOT / "package.xml").read_text(encoding="utf-8")
    cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "script_dir=$base/lib/mfuser_ros" in cfg
    assert "install_scripts=$base/lib/mfuser_ros" in cfg
