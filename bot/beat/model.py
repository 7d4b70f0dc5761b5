"""What opsbot knows about the beat schedule at one moment: plain data, judged by bot.beat.health."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EntryStatus:
    name: str
    task: str
    schedule: str  # in words: "every 5 minutes", "every day at 02:00"
    period: float  # seconds between two runs
    next_run_at: float  # the run expected next: after the last run seen, or after watching began
    grace: float  # how late a run may be before it counts as missed
    last_run_at: float | None = None  # the last run seen (task-sent or task-received), epoch seconds
    last_outcome: str | None = None  # the state of that run's task: SUCCESS, FAILURE, ...

    def late(self, now: float) -> bool:
        return now > self.next_run_at + self.grace


@dataclass(frozen=True)
class BeatReport:
    entries: tuple[EntryStatus, ...]
    watching_since: float  # runs before this moment could not be seen (bot start, event stream reconnect)
    watching: bool = True  # False while the event stream is down: lateness cannot be judged
    source: str = "beat_schedule"  # or "django-celery-beat database"
