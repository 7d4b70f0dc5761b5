"""Input we do not understand, answered in the user's words: the one error the command language raises,
and the one way user input is echoed back (short, single-line, nothing secret)."""

from __future__ import annotations

from bot.markup import cut
from bot.redact import defang, redact


class UsageError(ValueError):
    """Input we do not understand. The message is shown to the user as is."""


def shown(text: str, limit: int = 40) -> str:
    """User input echoed back: short, single-line and without anything secret."""
    text = defang(redact(" ".join(text.split())))
    return cut(text, limit)
