"""Muting alerts: which scopes there are, for how long one may mute, and the `/tasks mute` arguments."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple

from bot.durations import parse_duration
from bot.usage import UsageError, shown

MAX_MUTE = 7 * 86400


class MuteScope(StrEnum):
    """What a mute silences: everything, or the alerts about one service (`engine.service_of`)."""

    ALL = "all"
    BROKER = "broker"
    CELERY = "celery"
    FLOWER = "flower"
    BEAT = "beat"


MUTE_SCOPES = tuple(scope.value for scope in MuteScope if scope is not MuteScope.ALL)


class Mute(NamedTuple):
    seconds: float
    scope: MuteScope


def parse_mute(words: Sequence[str]) -> Mute:
    """`/tasks mute 2h [flower]`'s words after "mute"."""
    try:
        seconds = parse_duration(words[0])
    except ValueError:
        raise UsageError(f"'{shown(words[0])}' is not a duration: use e.g. 30m, 2h or 1d.") from None
    if not 0 < seconds <= MAX_MUTE:
        raise UsageError("Mute for between 1 second and 7 days.")
    scope = words[1].lower() if len(words) > 1 else MuteScope.ALL
    if scope not in MuteScope.__members__.values():
        raise UsageError(f"'{shown(scope)}' is not a service: use broker, celery, flower or beat "
                         "(or nothing for all).")
    return Mute(seconds, MuteScope(scope))
