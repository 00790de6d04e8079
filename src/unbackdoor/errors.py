"""Errors that unbackdoor raises on bad input.

Every error names the thing that was wrong and what was expected, so the CLI can print it as one
line. They all derive from :class:`UnbackdoorError` so callers can catch the family at once.
"""

from __future__ import annotations


class UnbackdoorError(Exception):
    """Base class of every error unbackdoor raises on purpose."""


class ConfigError(UnbackdoorError, ValueError):
    """A configuration key is unknown or a value is out of range."""


class DataError(UnbackdoorError, ValueError):
    """A data set is missing, empty, unreadable or of the wrong shape."""


class ArtifactError(UnbackdoorError, ValueError):
    """A model artifact is missing, corrupt, unsafe or does not match its manifest."""


class UnsafeFileError(ArtifactError):
    """A file would run code when loaded (a malicious or non-tensor pickle)."""


class RegistryError(UnbackdoorError, KeyError):
    """A name is not in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""
