"""Periodic-task health, pure parts: schedules in words and next runs (Celery's own schedule objects),
which entry a task event belongs to, lateness and its wording, and the alert engine's incidents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from celery.schedules import crontab, schedule

from bot.alerting import engine as alerts
from bot.alerting.engine import AlertState, Policy, Post, Refresh
from bot.beat import health, schedules
from bot.beat.model import BeatReport, EntryStatus
from bot.beat.watch import BeatWatch
from bot.celeryapp import BeatEntry
from bot.durations import parse_duration
from bot.status.snapshot import BrokerStatus, CeleryState, CeleryStatus, FlowerStatus, Level, Snapshot, WorkerInfo

# A fixed local moment: Wednesday 25 Nov 2026, 10:00:00 in the bot's time zone.
NOW = datetime(2026, 11, 25, 10, 0, 0).timestamp()
NIGHTLY = crontab(minute=0, hour=2)


def at(day_offset: int, hour: int, minute: int = 0, second: int = 0) -> float:
    return (datetime(2026, 11, 25, hour, minute, second) + timedelta(days=day_offset)).timestamp()


def test_schedules_in_words() -> None:
    assert schedules.describe(schedule(timedelta(seconds=5))) == "every 5 seconds"
    assert schedules.describe(schedule(timedelta(minutes=10))) == "every 10 minutes"
    assert schedules.describe(schedule(timedelta(hours=1))) == "every hour"
    assert schedules.describe(NIGHTLY) == "every day at 02:00"
    assert schedules.describe(crontab(minute=30, hour=7, day_of_week="1-5")) == "every weekday at 07:30"
    assert schedules.describe(crontab(minute="*/15")) == "every 15 minutes"
    assert schedules.describe(crontab(minute=0, hour=3, day_of_month=1)) == "cron 0 3 1 * *"


def test_next_run_after_a_run() -> None:
    assert schedules.next_run(schedule(timedelta(seconds=5)), NOW) == NOW + 5
    app = Celery("t", set_as_current=False)
    app.conf.timezone = "UTC"
    nightly = crontab(minute=0, hour=2, app=app)
    last = datetime(2026, 11, 24, 2, 0, 3, tzinfo=UTC).timestamp()
    assert schedules.next_run(nightly, last) == datetime(2026, 11, 25, 2, 0, tzinfo=UTC).timestamp()
    assert schedules.next_run(nightly, last - 86400 * 2) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC).timestamp()
    assert schedules.period(nightly, last) == 86400


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30s", "10m", "1h", "1d")] == [30, 600, 3600, 86400]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("ten minutes")


def entry(name: str = "reports.nightly", next_run_at: float = at(0, 2), last: float | None = at(-1, 2, 0, 3),
          period: float = 86400, grace: float | None = None) -> EntryStatus:
    return EntryStatus(name=name, task="reports.build", schedule="every day", period=period, next_run_at=next_run_at,
                       grace=health.default_grace(period) if grace is None else grace, last_run_at=last,
                       last_outcome="SUCCESS")


def report(*entries: EntryStatus, watching: bool = True) -> BeatReport:
    return BeatReport(entries=entries, watching_since=at(-2, 9), watching=watching)


def test_a_missed_nightly_run_is_named_with_its_last_run() -> None:
    late = entry()
    on_time = entry("cleanup", next_run_at=NOW + 60, last=NOW - 240, period=300)
    (finding,) = health.findings(report(late, on_time), NOW)
    assert finding.key == "beat:reports.nightly" and finding.level is Level.WARN
    assert finding.text == ("Periodic task reports.nightly did not run at 02:00 (every day); "
                            "last run yesterday 02:00:03")
    assert health.summary(report(late, on_time), NOW) == "1 of 2 periodic tasks late"


def test_grace_is_ten_percent_of_the_period_at_least_a_minute() -> None:
    assert health.default_grace(86400) == 8640 and health.default_grace(30) == 60
    nightly = entry()  # due at 02:00, grace 2 h 24 min
    assert not nightly.late(at(0, 4, 23)) and nightly.late(at(0, 4, 25))


def test_every_entry_late_means_beat_is_down() -> None:
    both = report(entry(), entry("cleanup", next_run_at=NOW - 600, last=NOW - 900, period=300))
    (finding,) = health.findings(both, NOW)
    assert finding.key == "beat" and finding.level is Level.DOWN
    assert finding.text == ("Celery beat is down: none of its 2 periodic tasks ran on time; "
                            "the last run seen was today 09:45:00")
    assert health.findings(report(entry()), NOW)[0].key == "beat:reports.nightly"  # one entry: cannot tell


def test_nothing_is_judged_while_the_event_stream_is_down() -> None:
    assert health.findings(report(entry(), watching=False), NOW) == []


def sent(task_id: str, name: str, args: str, at_: float, kind: str = "task-sent") -> dict:
    return {"type": kind, "uuid": task_id, "name": name, "args": args, "kwargs": "{}", "timestamp": at_}


def test_runs_are_matched_by_arguments_where_entries_share_a_task() -> None:
    every5 = schedule(timedelta(seconds=5))
    entries = (BeatEntry("small", "stackapp.add", every5, (1, 2)), BeatEntry("big", "stackapp.add", every5, (100, 200)),
               BeatEntry("other", "stackapp.sleep", every5, (0,)))
    clock = [NOW]
    watch = BeatWatch(lambda: entries, grace=2.0, connected_since=lambda: NOW, clock=lambda: clock[0])
    watch.on_event(sent("t1", "stackapp.add", "(100, 200)", NOW + 1))
    watch.on_event(sent("t1", "stackapp.add", "(100, 200)", NOW + 1.2, "task-received"))  # the same run
    watch.on_event({"type": "task-succeeded", "uuid": "t1", "timestamp": NOW + 1.3})
    watch.on_event(sent("t2", "stackapp.add", "[1, 2]", NOW + 2))
    watch.on_event(sent("t3", "stackapp.add", "(7, 7)", NOW + 3))  # nobody's arguments: not a beat run
    watch.on_event(sent("t4", "stackapp.sleep", "(datetime.datetime(2026, 1, 1),)", NOW + 3))  # only one candidate
    by_name = {e.name: e for e in watch.report().entries}
    assert by_name["big"].last_run_at == NOW + 1 and by_name["big"].last_outcome == "SUCCESS"
    assert by_name["big"].next_run_at == NOW + 6
    assert by_name["small"].last_run_at == NOW + 2 and by_name["small"].last_outcome == "PENDING"
    assert by_name["other"].last_run_at == NOW + 3
    assert by_name["small"].schedule == "every 5 seconds" and by_name["small"].grace == 2.0


def test_before_any_run_the_next_one_is_expected_after_watching_began() -> None:
    entries = (BeatEntry("tick", "t.tick", schedule(timedelta(minutes=10))),)
    watch = BeatWatch(lambda: entries, connected_since=lambda: NOW + 3, clock=lambda: NOW)
    (status,) = watch.report().entries
    assert status.last_run_at is None and status.next_run_at == NOW + 3 + 600 and status.grace == 60
    blind = BeatWatch(lambda: entries, connected_since=lambda: None, clock=lambda: NOW).report()
    assert not blind.watching


def stack(beat: BeatReport, now: float, celery: CeleryState = CeleryState.RUNNING) -> Snapshot:
    workers = (WorkerInfo("w1@h"),) if celery is CeleryState.RUNNING else ()
    return Snapshot(now, BrokerStatus("rabbitmq", "h:5672"), CeleryStatus(celery, workers), FlowerStatus("f"),
                    beat=beat)


def test_the_engine_opens_and_resolves_a_beat_incident() -> None:
    policy = Policy(alert_after=2, resolve_after=2)
    down = report(entry(), entry("cleanup", next_run_at=NOW - 600, last=NOW - 900, period=300))
    state, effects = alerts.step(AlertState(), stack(down, NOW), NOW, policy)
    assert effects == []  # one bad poll wakes nobody
    state, effects = alerts.step(state, stack(down, NOW + 10), NOW + 10, policy)
    (post,) = effects
    assert isinstance(post, Post) and post.incident.key == "beat"
    assert post.incident.text.startswith("Celery beat is down")
    assert "No periodic task is being sent" in post.incident.impact
    # Workers gone: the runs cannot happen and the celery incident says why; the beat one waits.
    state, effects = alerts.step(state, stack(down, NOW + 20, CeleryState.NOT_RUNNING), NOW + 20, policy)
    assert "beat" in state.incidents and not any(e.incident.key == "beat" for e in effects)
    ran = report(entry(next_run_at=NOW + 86400, last=NOW + 25),
                 entry("cleanup", next_run_at=NOW + 320, last=NOW + 25, period=300))
    state, _ = alerts.step(state, stack(ran, NOW + 30), NOW + 30, policy)
    state, effects = alerts.step(state, stack(ran, NOW + 40), NOW + 40, policy)
    assert any(isinstance(e, Refresh) and e.incident.key == "beat" and not e.incident.open for e in effects)
    assert "beat" not in state.incidents


def test_mute_beat_is_a_scope() -> None:
    from bot.alerting.mute import parse_mute

    assert parse_mute(["1h", "beat"]) == (3600, "beat")
    assert alerts.service_of("beat:reports.nightly") == "beat"
