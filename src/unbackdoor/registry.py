"""A tiny name -> factory registry shared by models, data sets, attacks and defenses.

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``: one decorator per
entry, no ``if/elif`` chains over names anywhere else.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from unbackdoor.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories, with a one-line description for each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        """Decorator that adds ``obj`` under ``name``; the description defaults to its docstring."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            doc = description or (getattr(obj, "__doc__", None) or "").strip()
            self._descriptions[name] = doc.splitlines()[0] if doc else ""
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises an error listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        return {n: self._descriptions[n] for n in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries
