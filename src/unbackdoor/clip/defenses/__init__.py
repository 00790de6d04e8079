"""Defenses for CLIP models, registered with the others: ``clip-bibau``, ``clip-tbar``,
``cleanclip``."""

from unbackdoor.clip.defenses import bibau as _bibau  # noqa: F401  (registration)
from unbackdoor.clip.defenses import cleanclip as _cleanclip  # noqa: F401
from unbackdoor.clip.defenses import tbar as _tbar  # noqa: F401
from unbackdoor.clip.defenses.bibau import ClipBIBAU
from unbackdoor.clip.defenses.cleanclip import CleanCLIP
from unbackdoor.clip.defenses.tbar import ClipTBAR

#: the defenses that take CLIP models
CLIP_DEFENSES = (ClipBIBAU.name, ClipTBAR.name, CleanCLIP.name)

__all__ = ["CLIP_DEFENSES", "ClipBIBAU", "CleanCLIP", "ClipTBAR"]
