"""Strict YAML to dataclass loading, shared by the model, training and node configs.

Configs are plain dataclasses. Loading rejects unknown keys and mistyped values with a
:class:`ConfigError` that names the file and the key, so a typo never silently becomes a default.

Ranges are part of a field's type: ``depth: PosInt = 24`` (``Annotated[int, Range(ge=1)]``). The loader checks them
as it converts each value, so the error names the file and the dotted key; a config class also calls
:func:`check_fields` in ``__post_init__``, so one built in code is held to the same ranges. Checks that involve
several fields stay in ``__post_init__``; the loader prefixes their errors with the file and the section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import yaml

from mfuser_model.errors import ConfigError

__all__ = [
    "NonEmpty",
    "NonNegFloat",
    "NonNegInt",
    "PosFloat",
    "PosInt",
    "Range",
    "UnitFloat",
    "check_fields",
    "dataclass_from_dict",
    "dataclass_to_dict",
    "load_dataclass",
    "load_yaml",
    "parse_override",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Bounds a config value must meet, attached to its type: ``Annotated[int, Range(ge=1)]``.

    ``ge``/``gt``/``le``/``lt`` bound a number; ``min_len`` the length of a sequence or string.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_len: int | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range (``"must be >= 1"``), or None when it is in range."""
        if self.min_len is not None and len(value) < self.min_len:
            return "must not be empty" if self.min_len == 1 else f"must have at least {self.min_len} items"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if ok:
            return None
        if low and high:
            return f"must be in {low}, {high}"
        if low:
            return f"must be {'>=' if self.ge is not None else '>'} {low[1:]}"
        return f"must be {'<=' if self.le is not None else '<'} {high[:-1]}"  # type: ignore[index]


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


# The ranges most fields need.
PosInt = Annotated[int, Range(ge=1)]
NonNegInt = Annotated[int, Range(ge=0)]
PosFloat = Annotated[float, Range(gt=0)]
NonNegFloat = Annotated[float, Range(ge=0)]
UnitFloat = Annotated[float, Range(ge=0, le=1)]
NonEmpty = Range(min_len=1)


def _range_problem(tp: Any, value: Any, key: str) -> str | None:  # noqa: PLR0911
    """First range violation of ``value`` against the ``Range`` marks in ``tp`` (recursing into optionals, tuples
    and lists), as ``"key: value 0 must be >= 1"``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        for mark in marks:
            if isinstance(mark, Range) and (why := mark.problem(value)):
                shown = "" if mark.min_len is not None else f"value {value!r} "
                return f"{key}: {shown}{why}"
        return _range_problem(base, value, key)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        # The first arm the value's type fits decides (PosInt | None, tuple[PosInt, PosInt] | Literal[...]).
        for arm in typing.get_args(tp):
            if _fits(arm, value):
                return _range_problem(arm, value, key)
        return None
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = zip(args, value, strict=False)
        else:
            pairs = ((args[0] if args else Any, v) for v in value)
        for i, (arm, item) in enumerate(pairs):
            if why := _range_problem(arm, item, f"{key}[{i}]"):
                return why
    return None


def _fits(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _fits(typing.get_args(tp)[0], value)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else False


def check_fields(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against the ``Range`` marks in its type.

    Call it first in a config's ``__post_init__``; the loader checks the same marks while converting.

    Raises:
        ConfigError: the first field out of range, ``"<field>: value <v> must be ..."``.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if why := _range_problem(hints[f.name], getattr(obj, f.name), f.name):
            raise ConfigError(why)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


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
        hints = _hints(tp)
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
            # __post_init__'s checks name the field; the file and the section are added here.
            msg = f"{where}: {key + ': ' if key else ''}{err}"
            raise ConfigError(msg) from None
    if origin is Annotated:
        converted = _convert(typing.get_args(tp)[0], value, where, key)
        if why := _range_problem(tp, converted, label):
            msg = f"{where}: {why}"
            raise ConfigError(msg)
        return converted
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
