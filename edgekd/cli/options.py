"""Command-line options made from the settings' declarations (edgekd.config.settings).

An `OptionGroup` is the flags of a set of settings: a command subscribes to it with
`@group`, and `group.given(kwargs)` hands back the values the user typed as dotted config
keys. Flag, help, choices and bounds are written once, on the field; `compress` and
`select` share the budget's group, so they cannot drift apart.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

from edgekd.config.settings import Entry, entries

_TYPES = {int: int, float: float, str: str}


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return str  # comma-separated
    return _base_type(args[0]) if args else tp


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _shown(value: Any) -> str | None:
    if value is None or value == [] or isinstance(value, bool):
        return None
    if isinstance(value, list):
        return ",".join(map(str, value)) if len(value) <= 3 else f"{len(value)} names (--print-config)"
    return f"{value:g}" if isinstance(value, float) else str(value)


class OptionGroup:
    """The flags of the settings `entries` selects, as click options.

    `defaults(key)` gives the default to show in --help for a key (None: none shown), so a
    command whose defaults depend on the data set can say so.
    """

    def __init__(self, selected: Iterable[Entry], defaults: Callable[[str], str | None] | None = None):
        self.flags: dict[str, list[Entry]] = {}
        for e in selected:
            if e.setting.flag:
                self.flags.setdefault(e.setting.flag, []).append(e)
        self.defaults = defaults or (lambda key: None)

    @classmethod
    def of(cls, section: type, prefix: str = "", keys: Iterable[str] | None = None,
           exclude: Iterable[str] = (), defaults: Callable[[str], str | None] | None = None) -> OptionGroup:
        """The flagged settings of `section` (keys under `prefix`), all or those in `keys`."""
        wanted = set(keys) if keys is not None else None
        skip = set(exclude)
        chosen = [e for e in entries(section, prefix)
                  if (wanted is None or e.key in wanted) and e.key not in skip]
        return cls(chosen, defaults)

    def _option(self, flag: str, group: list[Entry]) -> Callable:
        first = group[0]
        s = first.setting
        help_text = s.help
        shown = self.defaults(first.key)
        if shown:
            help_text = f"{help_text}  [default: {shown}]".strip()
        if _base_type(first.type) is bool:
            # --no-x turns a default-on setting off; --x turns a default-off one on.
            return click.option(flag, dest(flag), is_flag=True, default=None, help=help_text)
        allowed = s.allowed()
        # A setting with its own parser takes the text as typed (e.g. 'none' for a number).
        kind = click.Choice(allowed) if allowed is not None else \
            str if s.parse is not None else _TYPES.get(_base_type(first.type), str)
        return click.option(flag, dest(flag), type=kind, default=None, metavar=s.metavar, help=help_text)

    def __call__(self, f: Callable) -> Callable:
        for flag, group in reversed(list(self.flags.items())):
            f = self._option(flag, group)(f)
        return f

    def given(self, kwargs: dict) -> dict[str, Any]:
        """Remove this group's flags from `kwargs`; return {dotted key: value} of those given."""
        values: dict[str, Any] = {}
        for flag, group in self.flags.items():
            value = kwargs.pop(dest(flag), None)
            if value is None or value is False:
                continue
            if _base_type(group[0].type) is bool:
                value = not flag.startswith("--no-")
            for e in group:
                values[e.key] = value
        return values


def section_defaults(*configs: tuple[str, Any]) -> Callable[[str], str | None]:
    """Help defaults from one or more (label, config) pairs: 'x' when all agree, else
    'x; digits: y' (the first pair is the general one)."""
    from edgekd.config.settings import get_value

    def shown(key: str) -> str | None:
        values = [_shown(get_value(cfg, key)) for _, cfg in configs]
        if all(v is None for v in values):
            return None
        first = values[0] or "none"
        others = [f"{label}: {v or 'none'}" for (label, _), v in zip(configs[1:], values[1:], strict=True)
                  if v != values[0]]
        return "; ".join([first, *others])
    return shown
