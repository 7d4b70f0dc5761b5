"""`/tasks beat`: every entry of the beat schedule with its schedule in words, last run and outcome, next
run, and whether it is late. Built from the snapshot like every other status view."""

from __future__ import annotations

from dataclasses import replace

from bot.beat import health
from bot.status import assess
from bot.status.snapshot import Level, Snapshot
from bot.status.views import Controls, Item, View, paged_view

NO_SCHEDULE = ("No beat schedule known: set OPSBOT_CELERY_APP (or run `opsbot -A proj`) to the app "
               "whose beat_schedule opsbot should watch.")


def entry_level(late: bool, watching: bool) -> Level:
    if not watching:
        return Level.UNKNOWN
    return Level.WARN if late else Level.OK


def beat_view(snapshot: Snapshot, page: int = 1, controls: Controls | None = None) -> View:
    report, now = snapshot.beat, snapshot.taken_at
    if report is None:
        return paged_view(snapshot, "beat", "Periodic tasks", [], page, NO_SCHEDULE, controls)
    late_first = sorted(report.entries, key=lambda e: (not e.late(now), e.name))
    items = [Item(entry_level(e.late(now), report.watching), e.name, health.entry_text(e, report, now), code=e.task)
             for e in late_first]
    view = paged_view(snapshot, "beat", "Periodic tasks", items, page, health.summary(report, now), controls)
    # The summary speaks of beat; the services above it, of the rest of the stack.
    return replace(view, summary=f"{health.summary(report, now)} ({report.source})",
                   level=max(health.level(report, now), assess.overall_level(snapshot)))
