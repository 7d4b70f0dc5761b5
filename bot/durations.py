"""Durations as people write them in settings and commands: `30s`, `10m`, `1h`, `1d`. One parser for all."""

from __future__ import annotations

import re

DURATION = re.compile(r"^(?P<count>\d{1,6})(?P<unit>[smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in `30s`, `10m`, `1h` or `1d`; ValueError (with a message fit to show) otherwise."""
    match = DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"{text[:20]!r} is not a duration: use e.g. 30s, 10m, 1h or 1d")
    return int(match["count"]) * UNIT_SECONDS[match["unit"]]
