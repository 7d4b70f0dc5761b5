"""Durations as people write them: `30s`, `10m`, `1h`, `1d`.

One small function on purpose: `/tasks mute` has its own parser in bot/commands.py that is being moved
to a shared place; when it lands, this module should call (or become) that one.
"""

from __future__ import annotations

import re

DURATION = re.compile(r"(?P<count>\d{1,6})(?P<unit>[smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError with a message fit to show when it is not a duration."""
    match = DURATION.fullmatch(text.strip().lower())
    if not match:
        raise ValueError(f"{text[:20]!r} is not a duration: write e.g. 30s, 10m, 1h or 1d")
    return float(int(match["count"]) * UNIT_SECONDS[match["unit"]])
