"""Defenses: one module per method behind one interface and one registry."""

from unbackdoor.defenses import anp as _anp  # noqa: F401  (registration)
from unbackdoor.defenses import bibau as _bibau  # noqa: F401
from unbackdoor.defenses import ft as _ft  # noqa: F401
from unbackdoor.defenses import ibau as _ibau  # noqa: F401
from unbackdoor.defenses import nc as _nc  # noqa: F401
from unbackdoor.defenses import sau as _sau  # noqa: F401
from unbackdoor.defenses import tbar as _tbar  # noqa: F401
from unbackdoor.defenses.base import Defense, DefenseOutput
from unbackdoor.defenses.registry import (
    DEFENSES,
    create_defense,
    list_defenses,
    register_defense,
)

__all__ = [
    "Defense",
    "DefenseOutput",
    "DEFENSES",
    "create_defense",
    "list_defenses",
    "register_defense",
]

# CLIP defenses (clip-bibau, clip-tbar, cleanclip) register themselves in the same registry
from unbackdoor.clip import defenses as _clip_defenses  # noqa: E402,F401  isort: skip
