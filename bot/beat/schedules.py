"""Celery's schedule objects, asked the two questions opsbot has: when is the next run after a moment,
and how would a person say the schedule. Celery computes the times (interval, crontab, solar alike)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from celery.schedules import crontab, schedule, solar

DAYS = {"0": "Sunday", "1": "Monday", "2": "Tuesday", "3": "Wednesday", "4": "Thursday", "5": "Friday",
        "6": "Saturday", "7": "Sunday", "1-5": "weekday", "mon-fri": "weekday", "sun": "Sunday",
        "mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
        "sat": "Saturday"}


def next_run(sched: Any, after: float) -> float:
    """Epoch seconds of the first run the schedule calls for after `after` (a run, or when watching began)."""
    moment = datetime.fromtimestamp(after, tz=UTC)
    frozen = copy.copy(sched)
    frozen.nowfun = lambda: moment  # celery measures "remaining" from now: make now that moment
    return after + max(frozen.remaining_estimate(moment).total_seconds(), 0.0)


def period(sched: Any, around: float) -> float:
    """Seconds between two runs near `around` (for a crontab: the gap after its next run)."""
    if isinstance(sched, schedule) and not isinstance(sched, (crontab, solar)):
        return sched.run_every.total_seconds()
    first = next_run(sched, around)
    return max(next_run(sched, first + 1) - first, 1.0)


def every(seconds: float) -> str:
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return f"every {seconds:g} seconds" if seconds != 1 else "every second"


def describe(sched: Any) -> str:
    """The schedule in words: 'every 5 minutes', 'every day at 02:00', 'at sunset (51.5, -0.1)', or the cron line."""
    if isinstance(sched, crontab):
        return describe_cron(*(str(getattr(sched, f"_orig_{part}")) for part in
                               ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")))
    if isinstance(sched, solar):
        return f"at {sched.event.replace('_', ' ')} ({sched.lat}, {sched.lon})"
    if isinstance(sched, schedule):
        return every(sched.run_every.total_seconds())
    return str(sched)[:80]


def describe_cron(minute: str, hour: str, dom: str, month: str, dow: str) -> str:
    line = f"cron {minute} {hour} {dom} {month} {dow}"
    if (dom, month) != ("*", "*"):
        return line
    if minute.isdigit() and hour.isdigit():
        at = f"at {int(hour):02d}:{int(minute):02d}"
        if dow == "*":
            return f"every day {at}"
        return f"every {DAYS[dow.lower()]} {at}" if dow.lower() in DAYS else line
    if dow != "*":
        return line
    if minute.isdigit() and hour == "*":
        return f"every hour at minute {int(minute)}"
    if hour == "*" and (minute == "*" or minute.startswith("*/")):
        step = minute[2:] if minute != "*" else "1"
        return every(int(step) * 60) if step.isdigit() else line
    return line
