"""Strict YAML to dataclass loading, shared by the model, training and node configs.

Configs are plain dataclasses. Loading rejects unknown keys and mistyped values with a
:class:`ConfigError` that names the file and the key, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from mfuser_model.errors import ConfigError

__all__ = ["dataclass_from_dict", "dataclass_to_dict", "load_dataclass", "load_yaml", "parse_override"]

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising ConfigError naming the file when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: config file not found"
        raise ConfigError(msg)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        msg = f"{path}: invalid YAML: {err}"
        raise ConfigError(msg) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        msg = f"{path}: expected a mapping at the top level, found {type(data).__name__}"
        raise ConfigError(msg)
    return data


def load_dataclass(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Load ``cls`` from a YAML file, then apply dotted ``overrides`` (``{"optim.lr": 1e-4}``)."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return dataclass_from_dict(cls, data, where=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line override ``a.b=value``; the value is read as YAML (``1e-4``, ``[1, 2]``, ``true``)."""
    if "=" not in text:
        msg = f"override {text!r}: expected KEY=VALUE"
        raise ConfigError(msg)
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        msg = f"override {text!r}: value is not valid YAML: {err}"
        raise ConfigError(msg) from None
    return key.strip(), value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            msg = f"override {dotted!r}: {part!r} is not a section"
            raise ConfigError(msg)
        node = child
    node[parts[-1]] = value


def dataclass_to_dict(obj: Any) -> Any:
    """Plain-data form of a (nested) dataclass, for YAML dumps and checkpoint metadata."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dataclass_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [dataclass_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dataclass_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dataclass_from_dict(cls: type[T], data: Any, where: str = "<config>") -> T:
    """Build ``cls`` from a mapping, checking keys and types recursively.

    Raises:
        ConfigError: an unknown key, a missing required key, or a value of the wrong type; the message
            names ``where`` and the dotted key.
    """
    return _convert(cls, data, where, "")


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:  # noqa: PLR0911, PLR0912
    label = key or "<top>"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            msg = f"{where}: {label}: expected a mapping, found {type(value).__name__}"
            raise ConfigError(msg)
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            prefix = f"{key}." if key else ""
            msg = f"{where}: unknown key {prefix + unknown[0]!r}; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(msg)
        kwargs = {}
        for name, field in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in value:
                kwargs[name] = _convert(hints[name], value[name], where, sub)
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                msg = f"{where}: missing required key {sub!r}"
                raise ConfigError(msg)
        try:
            return tp(**kwargs)
        except (ValueError, TypeError) as err:
            if isinstance(err, ConfigError):
                raise
            msg = f"{where}: {label}: {err}"
            raise ConfigError(msg) from None
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, key)
            except ConfigError as err:
                errors.append(str(err))
        msg = errors[0] if errors else f"{where}: {label}: value {value!r} does not match {tp}"
        raise ConfigError(msg)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            msg = f"{where}: {label}: {value!r} is not one of {list(choices)}"
            raise ConfigError(msg)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            msg = f"{where}: {label}: expected a list, found {type(value).__name__}"
            raise ConfigError(msg)
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                msg = f"{where}: {label}: expected {len(args)} items, found {len(value)}"
                raise ConfigError(msg)
            return tuple(_convert(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        items = [_convert(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            msg = f"{where}: {label}: expected a mapping, found {type(value).__name__}"
            raise ConfigError(msg)
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(kt, k, where, key): _convert(vt, v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            msg = f"{where}: {label}: expected a number, found {value!r}"
            raise ConfigError(msg)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"{where}: {label}: expected an integer, found {value!r}"
            raise ConfigError(msg)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            msg = f"{where}: {label}: expected true or false, found {value!r}"
            raise ConfigError(msg)
        return value
    if tp is str:
        if not isinstance(value, str):
            msg = f"{where}: {label}: expected a string, found {value!r}"
            raise ConfigError(msg)
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            msg = f"{where}: {label}: expected a path, found {value!r}"
            raise ConfigError(msg)
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        msg = f"{where}: {label}: expected {tp.__name__}, found {value!r}"
        raise ConfigError(msg)
    return value
