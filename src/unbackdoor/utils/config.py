"""Typed configs checked up front: an unknown key or a bad value is an error that names it."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from unbackdoor.errors import ConfigError

C = TypeVar("C")


def from_dict(cls: type[C], values: Mapping[str, Any] | None = None, **overrides: Any) -> C:
    """Build the dataclass ``cls`` from ``values``, refusing unknown keys by name."""
    merged = {**(values or {}), **overrides}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in merged:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{cls.__name__}: unknown key {key!r}{hint}; known keys: {', '.join(fields)}"
            )
    return cls(**merged)


def without_added_later(cfg: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` without the options added after results were stored while they hold the value
    that reproduces those results, so that stored configs still compare equal. Values compare
    as JSON stores them (a tuple equals the list it is read back as)."""
    return {k: v for k, v in cfg.items() if not (k in later and _as_json(v) == _as_json(later[k]))}


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check(cond: bool, owner: str, key: str, value: Any, expected: str) -> None:
    """Raise a :class:`ConfigError` saying ``owner.key=value`` is not ``expected``."""
    if not cond:
        raise ConfigError(f"{owner}: {key}={value!r} is invalid; expected {expected}")


def check_choice(owner: str, key: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    check(value in choices, owner, key, value, f"one of {choices}")
