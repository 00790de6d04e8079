"""Typed configs checked up front: an unknown key or a bad value is an error that names it."""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

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


_SIMPLE = (bool, int, float, str, type(None))


def _matches(value: Any, tp: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``tp``; None when ``tp`` is not a simple type."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in typing.get_args(tp)]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if tp is torch.device:
        return isinstance(value, torch.device)
    if tp is typing.Any or tp not in _SIMPLE:
        return None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def check_types(obj: Any, owner: str) -> None:
    """Refuse a dataclass field whose value does not fit its annotation (``rounds=2.5``,
    ``target="zero"``, ``steps=True``), naming it, before it fails somewhere deep inside.

    Only plain annotations are checked (bool, int, float, str, None, Literal and unions of
    them; an int passes for a float; a device, whose name must be one torch knows); containers
    and other types are left to ``validate``."""
    try:
        hints = typing.get_type_hints(type(obj))
    except (NameError, TypeError):  # an annotation that cannot be resolved at run time
        return
    for f in dataclasses.fields(obj):
        if not f.init or f.name not in hints:
            continue
        value = getattr(obj, f.name)
        if _matches(value, hints[f.name]) is False:
            expected = _type_name(hints[f.name])
            raise ConfigError(f"{owner}: {f.name}={value!r} is invalid; expected {expected}")
        if isinstance(value, str) and value != "auto" and _admits_device(hints[f.name]):
            try:
                torch.device(value)
            except (RuntimeError, TypeError):
                raise ConfigError(
                    f"{owner}: {f.name}={value!r} is not a device torch knows; "
                    "expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
                ) from None


def _admits_device(tp: Any) -> bool:
    return tp is torch.device or torch.device in typing.get_args(tp)
