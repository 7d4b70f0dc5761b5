"""The alerting edge: the scheduler that polls and the store that remembers.

`AlertService` feeds each snapshot to the pure engine (`bot.alerting.engine`) under a lock, saves the new state
together with the posts it calls for (`bot.alerting.state`), and hands them to a sink (`bot.alerting.sinks`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from bot.alerting import engine as alerts
from bot.alerting.engine import AlertState, Effect, Incident, Policy
from bot.alerting.mute import Mute
from bot.alerting.sinks import Sink, SlackSink
from bot.alerting.state import AlertStateStore
from bot.config import Settings
from bot.db import StateConflict
from bot.status.assess import Finding, time_of_day
from bot.status.snapshot import Snapshot

log = logging.getLogger(__name__)

CONFIRM_SECONDS = 1.0  # a pending failure (or recovery) is confirmed this soon, not a whole poll later
MIN_POLL_GAP = 0.5  # polls are spaced at least this much, so that two failures are two observations
MORNING_HOUR = 9  # "snooze until tomorrow" ends at this hour


def policy_from(settings: Settings) -> Policy:
    return Policy(alert_after=settings.alert_after, resolve_after=settings.resolve_after,
                  remind_seconds=settings.remind_minutes * 60, backlog_threshold=settings.backlog_threshold,
                  backlog_seconds=settings.backlog_minutes * 60,
                  pause_remind_seconds=settings.pause_remind_seconds)


# --- The service ------------------------------------------------------------------------------


def tomorrow_morning(now: float) -> float:
    moment = datetime.fromtimestamp(now) + timedelta(days=1)
    return moment.replace(hour=MORNING_HOUR, minute=0, second=0, microsecond=0).timestamp()


class AlertService:
    def __init__(self, settings: Settings, store: AlertStateStore, take_snapshot: Callable[[], Snapshot], sink: Sink,
                 clock: Callable[[], float] = time.time, is_leader: Callable[[], bool] = lambda: True,
                 extra_findings: Callable[[Snapshot, AlertState, float], list[Finding]] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.take_snapshot = take_snapshot
        self.sink = sink
        self.clock = clock
        # With several replicas only the leader polls; any replica may record an acknowledgement.
        self.is_leader = is_leader
        # Findings from outside the snapshot: task-level rules over the history (bot.health).
        self.extra_findings = extra_findings or (lambda snapshot, state, now: [])
        self.policy = policy_from(settings)
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._last_poll = float("-inf")
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": 30})

    # The engine's state lives in the store: a restart (or another replica) carries on with it.
    def _load(self) -> AlertState:
        return self.store.load()[0]

    def _apply(self, change: Callable[[AlertState, float], tuple[AlertState, list[Effect]]],
               attempts: int = 3) -> list[Effect]:
        for _ in range(attempts):
            with self._lock:
                now = self.clock()
                state, version = self.store.load()
                state, effects = change(state, now)
                try:
                    self.store.save(state, version, self.sink.outbox_rows(effects, now))
                except StateConflict:
                    continue  # another replica stepped first: start again from its state
            self.sink.deliver(effects, now)
            return effects
        log.warning("alert state kept changing under us; gave up after %d attempts", attempts)
        return []

    def poll(self) -> None:
        if not self.is_leader():
            return
        # One poll at a time, each on a fresh snapshot: a slow scheduled poll must not land after a
        # newer out-of-turn one, and two polls a moment apart are not two independent observations.
        with self._poll_lock:
            time.sleep(max(0.0, self._last_poll + MIN_POLL_GAP - time.monotonic()))
            try:
                snapshot = self.take_snapshot()
                self._apply(lambda state, now: alerts.step(state, snapshot, now, self.policy,
                                                           self.extra_findings(snapshot, state, now)))
            except Exception:
                log.exception("alert poll failed")
                return
            finally:
                self._last_poll = time.monotonic()
        if alerts.unsettled(self._load()):
            self.poll_soon(CONFIRM_SECONDS)

    def poll_soon(self, delay: float = 0.0) -> None:
        """Poll out of turn: a worker went quiet, the broker connection dropped, or to confirm a change."""
        if not self.scheduler.running:
            return
        run_at = datetime.now() + timedelta(seconds=delay)
        self.scheduler.add_job(self.poll, "date", run_date=run_at, id="poll-soon", replace_existing=True)

    def start(self) -> None:
        self.scheduler.add_job(self.poll, "interval", seconds=self.settings.poll_seconds, id="poll",
                               next_run_time=datetime.now())
        if isinstance(self.sink, SlackSink):
            self.sink.start()
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if isinstance(self.sink, SlackSink):
            self.sink.stop()

    # --- What people do ---

    def acknowledge(self, incident_id: str, user: str) -> bool:
        return bool(self._apply(lambda state, now: alerts.acknowledge(state, incident_id, user, now)))

    def snooze(self, incident_id: str, how_long: str, user: str) -> bool:
        def change(state: AlertState, now: float) -> tuple[AlertState, list[Effect]]:
            until = tomorrow_morning(now) if how_long == "tomorrow" else now + float(how_long)
            return alerts.snooze(state, incident_id, until, user, now)

        return bool(self._apply(change))

    def mute(self, mute: Mute) -> float:
        until = self.clock() + mute.seconds
        self._apply(lambda state, now: (alerts.mute(state, mute.scope, until), []))
        return until

    def unmute(self) -> None:
        self._apply(lambda state, now: (alerts.unmute(state), []))

    def open_incidents(self) -> list[Incident]:
        return list(self._load().incidents.values())

    def muted_note(self) -> str:
        now = self.clock()
        mutes = {scope: until for scope, until in self._load().mutes.items() if until > now}
        if not mutes:
            return ""
        return "Alerts muted: " + ", ".join(f"{scope} until {time_of_day(until)}"
                                            for scope, until in sorted(mutes.items()))
