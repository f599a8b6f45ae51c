"""Package data found without ROS: the checkout, an install prefix's share folder, the ament index, package URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfuser_model.config import preset_dirs, resolve_preset
from mfuser_model.errors import ConfigError
from mfuser_model.resources import PACKAGE, ament_prefixes, package_share_dirs, resolve_path

ROOT = Path(__file__).resolve().parents[2]


def make_prefix(prefix: Path, package: str, files: dict[str, str]) -> Path:
    """An install prefix as colcon or ament write it: the index marker and share/<package>/..."""
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / package).write_text("", encoding="utf-8")
    for name, text in files.items():
        path = prefix / "share" / package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return prefix


def test_the_checkout_comes_first():
    dirs = package_share_dirs()
    assert dirs[0] == ROOT
    assert preset_dirs()[0] == ROOT / "config" / "presets"
    assert resolve_path("package://mfuser_ros/models/tiny-eva02-synthetic.safetensors") == \
        ROOT / "models" / "tiny-eva02-synthetic.safetensors"


def test_ament_prefix_path_registers_packages(tmp_path, monkeypatch):
    first = make_prefix(tmp_path / "a", "camera_pkg", {"calib/front.yaml": "a"})
    second = make_prefix(tmp_path / "b", "camera_pkg", {"calib/front.yaml": "b", "calib/rear.yaml": "b"})
    unregistered = tmp_path / "c"
    (unregistered / "share" / "camera_pkg").mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{first}:{unregistered}:{second}")
    assert ament_prefixes("camera_pkg") == [first, second]
    assert resolve_path("package://camera_pkg/calib/front.yaml").read_text() == "a"  # first prefix wins
    assert resolve_path("package://camera_pkg/calib/rear.yaml").read_text() == "b"


def test_an_installed_share_folder_is_searched_after_the_checkout(tmp_path, monkeypatch):
    prefix = make_prefix(tmp_path / "install", PACKAGE, {"config/presets/site-preset.yaml": "name: x\n"})
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert package_share_dirs()[:2] == [ROOT, prefix / "share" / PACKAGE]
    assert resolve_preset("site-preset") == prefix / "share" / PACKAGE / "config" / "presets" / "site-preset.yaml"


@pytest.mark.parametrize("uri", ["package://", "package://mfuser_ros", "package://mfuser_ros/../setup.py",
                                 "package:///etc/passwd"])
def test_malformed_package_uris_are_rejected(uri):
    with pytest.raises(ConfigError, match="expected package://<package>/"):
        resolve_path(uri)


def test_a_missing_package_file_names_where_it_looked(monkeypatch):
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    with pytest.raises(ConfigError, match=r"nope.safetensors: not found \(searched "):
        resolve_path("package://mfuser_ros/models/nope.safetensors")
    with pytest.raises(ConfigError, match="no share folder of 'no_such_pkg'"):
        resolve_path("package://no_such_pkg/x.yaml")


def test_plain_paths_are_unchanged(tmp_path):
    assert resolve_path(tmp_path / "m.safetensors") == tmp_path / "m.safetensors"
    assert resolve_path("relative/m.safetensors") == Path("relative/m.safetensors")
