"""Attacks on CLIP models: BadCLIP's optimised patch and the backdoored-model pipeline."""

from unbackdoor.clip.attacks.badclip import BadClipPatch
from unbackdoor.clip.attacks.pipeline import ClipBackdoor, backdoor_clip

__all__ = ["BadClipPatch", "ClipBackdoor", "backdoor_clip"]
