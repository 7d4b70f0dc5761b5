"""The alerting edge: the scheduler that polls, the store that remembers, and the sinks that tell people.

`AlertService` feeds each snapshot to the pure engine (`bot.alerting.engine`) under a lock, saves the new state
together with the posts it calls for, and hands them to a sink: Slack (through the outbox, so a Slack
outage delays a post but never loses or doubles it) or the console (printed as they happen).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import markup
from bot.alerting import engine as alerts
from bot.alerting.engine import AlertState, Effect, Incident, Policy, Post, Refresh, Timeline
from bot.config import Settings
from bot.slack import blocks
from bot.status.assess import Finding, clock
from bot.status.views import incident_view
from bot.store import OutboxItem, StateConflict, Store

log = logging.getLogger(__name__)

CONFIRM_SECONDS = 1.0  # a pending failure (or recovery) is confirmed this soon, not a whole poll later
MIN_POLL_GAP = 0.5  # polls are spaced at least this much, so that two failures are two observations
FLUSH_SECONDS = 5.0  # how often the outbox is retried
MAX_BACKOFF = 300.0
CLAIM_SECONDS = 60.0  # a replica that claimed a post and died frees it after this (then it may go twice)
MORNING_HOUR = 9  # "snooze until tomorrow" ends at this hour
# Slack answers these for good: retrying cannot help, and a stuck item would hold back the incident's
# later posts. The item is dropped, logged, and the status says so until a post goes through.
PERMANENT_ERRORS = {"not_in_channel", "channel_not_found", "message_not_found", "is_archived",
                    "invalid_auth", "account_inactive", "missing_scope"}


def policy_from(settings: Settings) -> Policy:
    return Policy(alert_after=settings.alert_after, resolve_after=settings.resolve_after,
                  remind_seconds=settings.remind_minutes * 60, backlog_threshold=settings.backlog_threshold,
                  backlog_seconds=settings.backlog_minutes * 60,
                  pause_remind_seconds=settings.pause_remind_seconds)


class Sink(Protocol):
    def outbox_rows(self, effects: list[Effect], now: float) -> list[tuple[str, str, dict[str, Any]]]: ...

    def deliver(self, effects: list[Effect], now: float) -> None: ...


# --- Slack ------------------------------------------------------------------------------------


class SlackSink:
    """Posts through the store's outbox: rows are written with the engine's state, then sent in order."""

    def __init__(self, store: Store, client: WebClient, channel: str, replica: str = "",
                 clock_: Callable[[], float] = time.time,
                 attach: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.store = store
        self.attach = attach  # adds the chart of the series concerned (issue 19), drawn afresh on each send
        self.client = client
        self.channel = channel
        self.replica = replica
        self.clock = clock_
        self.problem = ""  # a post Slack refused for good, for the status footer
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """On the way out: stop sending, and free what we claimed and did not send for the others."""
        self._stopped.set()
        self._wake.set()
        self.release()

    def _run(self) -> None:
        """Deliveries happen here, never in the thread of a click or a command (Slack may be slow)."""
        while not self._stopped.is_set():
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.flush()
            except Exception:
                log.exception("outbox delivery failed")

    def enqueue(self, key: str, kind: str, payload: dict[str, Any]) -> None:
        """A post outside the alert engine (the daily digest), through the same outbox."""
        self.store.enqueue_outbox(key, kind, payload)
        self._wake.set()

    def outbox_rows(self, effects: list[Effect], now: float) -> list[tuple[str, str, dict[str, Any]]]:
        rows = []
        for effect in effects:
            incident = effect.incident
            if isinstance(effect, Timeline):
                rows.append((incident.id, "thread", {"text": markup.for_slack(effect.text, blocks.MAX_FALLBACK)}))
            else:
                kind = "post" if isinstance(effect, Post) else "refresh"
                view = incident_view(incident, now)
                rows.append((incident.id, kind, {**blocks.message(view), PLAIN: blocks.plain_message(view)["text"]}))
        return rows

    def deliver(self, effects: list[Effect], now: float) -> None:
        self._wake.set()  # the outbox thread sends them; the caller is answered at once

    def flush(self) -> None:
        """Send what is due, each incident's items strictly in order; a failure holds back the rest."""
        with self._lock:
            held: set[str] = set()
            for item in self.store.pending_outbox(self.clock()):
                if item.incident_id in held:
                    continue
                if not item.due:  # later items of this incident must wait too
                    held.add(item.incident_id)
                    continue
                if self.store.shared and not self.store.claim_outbox(item.id, self.replica, self.clock(),
                                                                     CLAIM_SECONDS):
                    held.add(item.incident_id)  # another replica is sending it
                    continue
                try:
                    self._send(item.id, item.incident_id, item.kind, item.payload)
                except SlackApiError as exc:
                    if slack_error(exc) in PERMANENT_ERRORS:
                        self._give_up(item.id, item.incident_id, slack_error(exc))
                    else:
                        self._retry(item, held, exc)
                except Exception as exc:
                    self._retry(item, held, exc)
                else:
                    self.problem = ""

    def _retry(self, item: OutboxItem, held: set[str], exc: Exception) -> None:
        held.add(item.incident_id)
        delay = min(MAX_BACKOFF, 2.0 ** min(item.attempts + 1, 9))
        log.warning("Slack post for incident %s failed (%s); retrying in %.0f s",
                    item.incident_id, slack_error(exc) or type(exc).__name__, delay)
        self.store.outbox_retry(item.id, item.attempts + 1, self.clock() + delay)

    def _give_up(self, item_id: int, incident_id: str, error: str) -> None:
        log.error("Slack refused a post for incident %s for good (%s): dropped it", incident_id, error)
        self.problem = f"Slack refused an alert post ({error}) at {clock(self.clock())}: check OPSBOT_ALERT_CHANNEL"
        self.store.outbox_done(item_id)

    def release(self) -> None:
        """What we claimed and did not send is free for the others at once."""
        self.store.release_claims(self.replica)

    def _send(self, item_id: int, incident_id: str, kind: str, payload: dict[str, Any]) -> None:
        message = self.store.incident_message(incident_id)
        if self.attach is not None and (kind == "post" or (kind == "refresh" and message is not None)):
            payload = self.attach(incident_id, payload)
        if kind == "post" and message is None:
            response = send_alert(self.client.chat_postMessage, payload, channel=self.channel, unfurl_links=False)
            self.store.outbox_done(item_id, (incident_id, response["channel"], response["ts"]))
            return
        if message is None:
            # Never posted (it fired and resolved during a mute): nothing to update.
            self.store.outbox_done(item_id)
            return
        channel, ts = message
        if kind == "thread":
            self.client.chat_postMessage(channel=channel, thread_ts=ts, text=payload["text"])
        else:  # a refresh, or a post whose message exists already (sent before a crash): update in place
            send_alert(self.client.chat_update, payload, channel=channel, ts=ts)
        self.store.outbox_done(item_id)


PLAIN = "plain_text"  # in an outbox payload: the alert as text alone, not sent unless the blocks are refused
REFUSED = ("invalid_blocks", "msg_too_long")


def send_alert(call: Callable[..., Any], payload: dict[str, Any], **where: Any) -> Any:
    """Post or update an alert; if Slack refuses its blocks, the same alert as plain text: never lost."""
    payload = dict(payload)
    plain = payload.pop(PLAIN, payload.get("text", ""))
    try:
        return call(**where, **payload)
    except SlackApiError as problem:
        error = problem.response.get("error")
        if error not in REFUSED:
            raise
        blocks = payload.get("blocks") or []
        if any(b.get("type") == "image" for b in blocks):  # the chart was refused: the alert goes without it
            log.warning("Slack refused an alert's chart (%s); sending the alert without it", error)
            return send_alert(call, {**payload, "blocks": [b for b in blocks if b.get("type") != "image"],
                                     PLAIN: plain}, **where)
        log.error("Slack refused an alert's blocks (%s: %s); sending it as plain text", error,
                  problem.response.get("errors"))
        # chat.update keeps the old blocks unless told to drop them; chat.postMessage needs none.
        return call(**where, text=plain, **({"blocks": []} if "ts" in where else {}))


def slack_error(exc: Exception) -> str:
    """Slack's error code ("not_in_channel", ...) of a failed Web API call, else ""."""
    response = getattr(exc, "response", None)
    try:
        return str(response.get("error") or "") if response is not None else ""
    except Exception:
        return ""


# --- Console ----------------------------------------------------------------------------------


class MemoryAlertState:
    """The alert state in memory, for the console: its alerts are its own, the store's stay untouched."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._version = 0

    def load_alert_state(self) -> tuple[dict[str, Any], int]:
        return self._data, self._version

    def save_alert_state(self, data: dict[str, Any], version: int, outbox: list[Any]) -> None:
        self._data, self._version = data, version + 1


class ConsoleSink:
    """Console mode: alerts are printed as they fire and resolve."""

    def __init__(self, print_line: Callable[[str], None]) -> None:
        self.print_line = print_line

    def outbox_rows(self, effects: list[Effect], now: float) -> list[tuple[str, str, dict[str, Any]]]:
        return []

    def deliver(self, effects: list[Effect], now: float) -> None:
        for effect in effects:
            incident = effect.incident
            if isinstance(effect, Post):
                self.print_line(f"ALERT   {clock(now)}  {incident.text} — {incident.impact}")
            elif isinstance(effect, Timeline):
                self.print_line(f"        {clock(now)}  {incident.text}: {effect.text}")
            elif isinstance(effect, Refresh) and not incident.open:
                self.print_line(f"RESOLVED {clock(now)}  {incident.text}")


# --- The service ------------------------------------------------------------------------------


def tomorrow_morning(now: float) -> float:
    moment = datetime.fromtimestamp(now) + timedelta(days=1)
    return moment.replace(hour=MORNING_HOUR, minute=0, second=0, microsecond=0).timestamp()


class AlertService:
    def __init__(self, settings: Settings, store: Store, take_snapshot: Callable[[], Any], sink: Sink,
                 clock_: Callable[[], float] = time.time, is_leader: Callable[[], bool] = lambda: True,
                 extra_findings: Callable[[Any, AlertState, float], list[Finding]] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.take_snapshot = take_snapshot
        self.sink = sink
        self.clock = clock_
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
        return AlertState.from_json(self.store.load_alert_state()[0])

    def _apply(self, change: Callable[[AlertState, float], tuple[AlertState, list[Effect]]],
               attempts: int = 3) -> list[Effect]:
        for _ in range(attempts):
            with self._lock:
                now = self.clock()
                data, version = self.store.load_alert_state()
                state, effects = change(AlertState.from_json(data), now)
                try:
                    self.store.save_alert_state(state.to_json(), version, self.sink.outbox_rows(effects, now))
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

    def daily(self, at: str, job: Callable[[], Any]) -> None:
        """Run `job` every day at `at` ("09:00", the bot's local time)."""
        hour, minute = (int(part) for part in at.split(":"))
        self.scheduler.add_job(job, "cron", hour=hour, minute=minute, id="daily-digest", replace_existing=True)

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

    def mute(self, scope: str, seconds: float) -> float:
        until = self.clock() + seconds
        self._apply(lambda state, now: (alerts.mute(state, scope, until), []))
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
        return "Alerts muted: " + ", ".join(f"{scope} until {clock(until)}" for scope, until in sorted(mutes.items()))
