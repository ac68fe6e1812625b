"""Clean a raw caption: drop the boilerplate opening a VLM starts with, as upstream does."""

from __future__ import annotations

import re

# "The video shows ...", "This image depicts ...", "In this video, ..." (LTX-Video-Trainer
# strips the same openings; the captions go to a text encoder that never sees "video").
_OPENING = re.compile(
    r"^\s*(?:(?:the|this)\s+(?:video|image|clip|scene|animated\s+sequence|footage|picture)"
    r"\s+(?:shows|displays|features|depicts|presents|showcases|captures|begins\s+with)"
    r"|in\s+(?:the|this)\s+(?:video|image|clip|scene)\s*,?)\s+",
    re.IGNORECASE)


def clean_caption(raw: str) -> str:
    """Return RAW as one line without a boilerplate opening, its first letter upper-case."""
    text = " ".join(raw.split())
    stripped = _OPENING.sub("", text, count=1)
    if stripped and stripped != text:
        text = stripped[0].upper() + stripped[1:]
    return text
