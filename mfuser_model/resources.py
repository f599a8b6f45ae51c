"""Where the package's data files are: model presets, node parameters, launch files, the bundled model.

The repository is one ament package, ``mfuser_ros``. Its data folders (``config/``, ``launch/``, ``models/``) sit at
the repository root in a source checkout and under ``<prefix>/share/mfuser_ros`` once installed: by ``colcon
build`` (with or without ``--symlink-install``) into ``install/mfuser_ros``, or by pip into ``sys.prefix``. This
module finds them without importing ROS: the ament resource index is plain files
(``<prefix>/share/ament_index/resource_index/packages/<package>``) under the prefixes listed in
``AMENT_PREFIX_PATH``, which is what ``ament_index_python`` reads too.

Files can be named by ROS 2 package URI, ``package://mfuser_ros/models/tiny-eva02-synthetic.safetensors``, as in
camera_info_url or resource_retriever; any path that is not such a URI is used as given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mfuser_model.errors import ConfigError

__all__ = ["PACKAGE", "PACKAGE_URI", "ament_prefixes", "package_share_dirs", "require_file", "resolve_path"]

PACKAGE = "mfuser_ros"
PACKAGE_URI = "package://"
_INDEX = Path("share") / "ament_index" / "resource_index" / "packages"


def ament_prefixes(package: str) -> list[Path]:
    """Prefixes in ``AMENT_PREFIX_PATH`` whose ament index registers ``package``, in search order."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [p for p in prefixes if (p / _INDEX / package).is_file()]


def _source_root() -> Path | None:
    """The repository root when this module runs from a checkout (or through a symlink install into one)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "package.xml").is_file() and (root / "config").is_dir() else None


def _own_prefix() -> Path | None:
    """The install prefix this module was installed into (``<prefix>/lib/pythonX.Y/site-packages/...``)."""
    for parent in list(Path(__file__).absolute().parents)[1:6]:
        if (parent / "share" / PACKAGE / "package.xml").is_file():
            return parent
    return None


def package_share_dirs(package: str = PACKAGE) -> list[Path]:
    """Folders that hold ``package``'s data, most specific first, each existing and listed once.

    For ``mfuser_ros``: the source checkout this code runs from, then the prefix it was installed into, then every
    prefix of ``AMENT_PREFIX_PATH`` that registers the package, then ``sys.prefix``. Code and data of one install
    therefore go together even when an older install is also on the ament path. Other packages: the ament index.
    """
    candidates: list[Path] = []
    if package == PACKAGE:
        root, prefix = _source_root(), _own_prefix()
        candidates += [root] if root is not None else []
        candidates += [prefix / "share" / package] if prefix is not None else []
    candidates += [p / "share" / package for p in ament_prefixes(package)]
    if package == PACKAGE:
        candidates.append(Path(sys.prefix) / "share" / package)
    found: list[Path] = []
    seen: set[Path] = set()
    for candidate in candidates:
        key = candidate.resolve()
        if candidate.is_dir() and key not in seen:
            seen.add(key)
            found.append(candidate)
    return found


def resolve_path(path: str | Path) -> Path:
    """``package://<package>/<relative path>`` -> the file in that package's share folder; other paths unchanged.

    Raises:
        ConfigError: the URI is malformed, or no share folder of the package holds the file (the folders searched
            are named).
    """
    text = str(path)
    if not text.startswith(PACKAGE_URI):
        return Path(path)
    package, _, relative = text[len(PACKAGE_URI):].partition("/")
    if not package or not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        msg = f"{text}: expected package://<package>/<relative path inside its share folder>"
        raise ConfigError(msg)
    dirs = package_share_dirs(package)
    for directory in dirs:
        candidate = directory / relative
        if candidate.exists():
            return candidate
    where = ", ".join(str(d) for d in dirs) or f"no share folder of {package!r} found (AMENT_PREFIX_PATH)"
    msg = f"{text}: not found (searched {where})"
    raise ConfigError(msg)


def require_file(path: str | Path, what: str) -> Path:
    """:func:`resolve_path`, checked to be an existing file: commands check their inputs with this before they load
    torch and the model, so a mistyped path fails in a fraction of a second, naming ``what`` (e.g. ``--checkpoint``).

    Raises:
        ConfigError: no such file (or a ``package://`` URI that resolves to none).
    """
    resolved = resolve_path(path)
    if not resolved.is_file():
        msg = f"{what} {path}: " + ("is not a file" if resolved.exists() else "no such file")
        raise ConfigError(msg)
    return resolved
