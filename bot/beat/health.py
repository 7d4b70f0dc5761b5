"""Judging the beat schedule: which periodic task is late, and in which words. Pure functions of a
`BeatReport` and the moment; the alert engine and the views take their findings and words from here.

A run is late once the moment it was expected plus the grace has passed without one. When every entry
of a schedule with several is late, the one cause worth an alert is celery beat itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.beat.model import BeatReport, EntryStatus
from bot.status.assess import Finding, plural, time_of_day
from bot.status.snapshot import Level

MIN_GRACE = 60.0
GRACE_SHARE = 0.1  # of the period
BEAT_KEY = "beat"


def default_grace(period: float) -> float:
    return max(MIN_GRACE, GRACE_SHARE * period)


def is_beat_key(key: str) -> bool:
    return key == BEAT_KEY or key.startswith(BEAT_KEY + ":")


def when(moment: float) -> str:
    """A time of day, to the minute when the schedule says so ('02:00'), else to the second."""
    at = datetime.fromtimestamp(moment)
    return at.strftime("%H:%M") if at.second == 0 and at.microsecond < 500_000 else time_of_day(moment)


def day_clock(moment: float, now: float) -> str:
    """'today 02:00:03', 'yesterday 02:00:03' or 'Nov 23 02:00:03', in the bot's local time."""
    day = datetime.fromtimestamp(moment).date()
    today = datetime.fromtimestamp(now).date()
    if day == today:
        return f"today {time_of_day(moment)}"
    if day == today - timedelta(days=1):
        return f"yesterday {time_of_day(moment)}"
    return f"{day.strftime('%b %d')} {time_of_day(moment)}"


def last_run_text(entry: EntryStatus, report: BeatReport, now: float, with_outcome: bool = True) -> str:
    if entry.last_run_at is None:
        return f"not seen since opsbot began watching {day_clock(report.watching_since, now)}"
    outcome = f" ({entry.last_outcome})" if entry.last_outcome and with_outcome else ""
    return f"last run {day_clock(entry.last_run_at, now)}{outcome}"


def missed_text(entry: EntryStatus, report: BeatReport, now: float) -> str:
    # The words must not change from poll to poll: no "N s ago", only fixed moments.
    last = last_run_text(entry, report, now, with_outcome=False)
    return f"Periodic task {entry.name} did not run at {when(entry.next_run_at)} ({entry.schedule}); {last}"


def late_entries(report: BeatReport, now: float) -> list[EntryStatus]:
    return [entry for entry in report.entries if entry.late(now)]


def beat_down(report: BeatReport, now: float) -> bool:
    late = late_entries(report, now)
    return len(report.entries) >= 2 and len(late) == len(report.entries)


def beat_down_text(report: BeatReport, now: float) -> str:
    runs = [e.last_run_at for e in report.entries if e.last_run_at is not None]
    last = (f"the last run seen was {day_clock(max(runs), now)}" if runs
            else f"none seen since opsbot began watching {day_clock(report.watching_since, now)}")
    return f"Celery beat is down: none of its {len(report.entries)} periodic tasks ran on time; {last}"


def findings(report: BeatReport | None, now: float) -> list[Finding]:
    """One finding per late entry, or one about beat when they all are; nothing while we cannot see."""
    if report is None or not report.watching:
        return []
    if beat_down(report, now):
        return [Finding(BEAT_KEY, Level.DOWN, beat_down_text(report, now), impact(BEAT_KEY))]
    return [Finding(f"{BEAT_KEY}:{e.name}", Level.WARN, missed_text(e, report, now), impact(f"{BEAT_KEY}:{e.name}"))
            for e in late_entries(report, now)]


def level(report: BeatReport, now: float) -> Level:
    if not report.watching:
        return Level.UNKNOWN
    return max((f.level for f in findings(report, now)), default=Level.OK)


def summary(report: BeatReport, now: float) -> str:
    if not report.entries:
        return f"No periodic task in the schedule ({report.source})"
    if not report.watching:
        return "Status unknown: opsbot cannot follow task events while the broker connection is down"
    if beat_down(report, now):
        return beat_down_text(report, now)
    late = late_entries(report, now)
    total = plural(len(report.entries), "periodic task")
    return f"{total}, all on time" if not late else f"{len(late)} of {total} late"


def entry_text(entry: EntryStatus, report: BeatReport, now: float) -> str:
    """One line of `/tasks beat`: schedule, last run and outcome, next run, late or on time."""
    state = f"LATE: expected at {when(entry.next_run_at)}" if entry.late(now) else "on time"
    next_run = f"next run {day_clock(entry.next_run_at, now)}" if not entry.late(now) else ""
    parts = [entry.schedule, last_run_text(entry, report, now), next_run, state]
    return " · ".join(part for part in parts if part)


def impact(key: str) -> str:
    if key == BEAT_KEY:
        return "No periodic task is being sent: scheduled jobs (reports, clean-ups, syncs) are not happening."
    return "This scheduled job is not happening; the other periodic tasks run."
