"""One declaration per setting: a dataclass field carries its flag, help, choices and bounds.

`setting(...)` declares a field; `section(...)` nests a section and may name the flags of a
shared section's fields for this place (the teacher's and the student's `train`). From these
declarations come the command-line options (edgekd.cli.options), the checks (`check`), the
YAML of config.yaml and the keys `--set` accepts: a new setting is one line in one place.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, dataclass, field
from typing import Any

from edgekd.errors import EdgeKDError


@dataclass(frozen=True)
class Setting:
    """What a field declares beyond its type and default."""

    flag: str | None = None  # the command-line flag; None: config file and --set only
    help: str = ""
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    ge: float | None = None  # bounds, checked when the value is not None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    check: Callable[[Any, str], Any] | None = None  # raises EdgeKDError naming the fix
    parse: Callable[[Any], Any] | None = None  # a flag's spelling -> the value (e.g. 'train' -> None)
    metavar: str | None = None

    def allowed(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def with_flag(self, flag: str, help: str | None = None) -> Setting:
        return dataclasses.replace(self, flag=flag, help=help or self.help)


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, **declared) -> Any:
    """A field with its declaration (`Setting`'s fields as keywords)."""
    meta = {"setting": Setting(**declared)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, **flags: str | tuple[str, str]) -> Any:
    """A nested section; `flags` names the flags of its fields here: field=FLAG or
    field=(FLAG, HELP). One flag named in two places sets both (e.g. --batch-size)."""
    return field(default_factory=cls, metadata={"flags": flags})


@dataclass(frozen=True)
class Entry:
    """One setting: its dotted key, type and declaration (flags of the place applied)."""

    key: str
    type: Any
    setting: Setting
    default: Any

    @property
    def name(self) -> str:
        """How messages name it: the flag a user types, else the config key."""
        return self.setting.flag or self.key


def entries(cls: type, prefix: str = "", flags: dict | None = None) -> Iterator[Entry]:
    """Every setting of a section class, depth first, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from entries(tp, f"{prefix}{f.name}.", f.metadata.get("flags", {}))
            continue
        s = f.metadata.get("setting", Setting())
        here = (flags or {}).get(f.name)
        if here is not None:
            s = s.with_flag(*((here,) if isinstance(here, str) else here))
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        yield Entry(prefix + f.name, tp, s, default)


def get_value(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _bounds(e: Entry, value: Any) -> str | None:
    """'--ig-p must be in [0, 1], got 1.5' or '--speedup must be >= 1, got 0.5', else None."""
    s = e.setting
    lo, lo_open = (s.gt, True) if s.gt is not None else (s.ge, False)
    hi, hi_open = (s.lt, True) if s.lt is not None else (s.le, False)
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if not (too_low or too_high):
        return None
    if lo is not None and hi is not None:
        span = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        span = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        span = f"{'<' if hi_open else '<='} {hi:g}"
    return f"{e.name} must be {span}, got {value:g}"


def check(obj: Any, cls: type | None = None) -> None:
    """Check every setting of `obj` against its declaration: choices, bounds, its own check.
    The first failure is one EdgeKDError naming the setting and what is allowed."""
    for e in entries(cls or type(obj)):
        value = get_value(obj, e.key)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        allowed = e.setting.allowed()
        for item in items:
            if allowed is not None and item not in allowed:
                raise EdgeKDError(f"{e.name} {item!r}: use one of {', '.join(map(str, allowed))}")
            if isinstance(item, int | float) and not isinstance(item, bool):
                problem = _bounds(e, item)
                if problem:
                    raise EdgeKDError(problem)
            if e.setting.check is not None:
                e.setting.check(item, e.name)


def convert(tp: Any, value: Any, key: str) -> Any:
    """A YAML or command-line value as the field's type, or a one-line error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return convert(args[0], value, key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise EdgeKDError(f"config {key}: expected a list, got {value!r}")
        return [convert(inner, v, key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            if isinstance(value, dict | list):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise EdgeKDError(f"config {key}: expected {name}, got {value!r}") from None
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """A section from a mapping (a YAML file), unknown keys named with the valid ones."""
    if not isinstance(data, dict):
        raise EdgeKDError(f"config {prefix or 'file'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise EdgeKDError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}: valid keys under "
            f"{prefix.rstrip('.') or 'the top level'} are {', '.join(sorted(names))}"
        )
    obj = cls()
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            setattr(obj, k, from_dict(tp, v, f"{prefix}{k}."))
        else:
            setattr(obj, k, convert(tp, v, prefix + k))
    return obj


def set_value(obj: Any, dotted: str, value: Any) -> None:
    """Set `a.b.c` on a section, converting the value to the field's type."""
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            raise EdgeKDError(f"unknown config key {dotted}")
        obj = getattr(obj, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise EdgeKDError(f"unknown config key {dotted}")
    value = convert(typing.get_type_hints(type(obj))[name], value, dotted)
    declared = next(f for f in dataclasses.fields(obj) if f.name == name).metadata.get("setting")
    if declared is not None and declared.parse is not None:
        value = declared.parse(value)
    setattr(obj, name, value)


def flatten(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
