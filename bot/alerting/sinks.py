"""Where alerts go: Slack (through the store's outbox, so a Slack outage delays a post but never loses
or doubles it) or the console (printed as they happen)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import markup
from bot.alerting.engine import Effect, Post, Refresh, Timeline
from bot.alerting.state import AlertStore, IncidentMessage, OutboxItem, OutboxRow
from bot.alerting.views import incident_view
from bot.slack import blocks
from bot.status.assess import time_of_day

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0  # how often the outbox is retried
MAX_BACKOFF = 300.0
CLAIM_SECONDS = 60.0  # a replica that claimed a post and died frees it after this (then it may go twice)
# Slack answers these for good: retrying cannot help, and a stuck item would hold back the incident's
# later posts. The item is dropped, logged, and the status says so until a post goes through.
PERMANENT_ERRORS = {"not_in_channel", "channel_not_found", "message_not_found", "is_archived",
                    "invalid_auth", "account_inactive", "missing_scope"}


class Sink(Protocol):
    def outbox_rows(self, effects: list[Effect], now: float) -> list[OutboxRow]: ...

    def deliver(self, effects: list[Effect], now: float) -> None: ...


# --- Slack ------------------------------------------------------------------------------------


class SlackSink:
    """Posts through the store's outbox: rows are written with the engine's state, then sent in order."""

    def __init__(self, store: AlertStore, client: WebClient, channel: str, replica: str = "",
                 clock: Callable[[], float] = time.time,
                 attach: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.store = store
        self.attach = attach  # adds the chart of the series concerned (issue 19), drawn afresh on each send
        self.client = client
        self.channel = channel
        self.replica = replica
        self.clock = clock
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
        self.store.enqueue(OutboxRow(key, kind, payload))
        self._wake.set()

    def outbox_rows(self, effects: list[Effect], now: float) -> list[OutboxRow]:
        rows = []
        for effect in effects:
            incident = effect.incident
            if isinstance(effect, Timeline):
                text = markup.for_slack(effect.text, blocks.MAX_FALLBACK)
                rows.append(OutboxRow(incident.id, "thread", {"text": text}))
            else:
                kind = "post" if isinstance(effect, Post) else "refresh"
                view = incident_view(incident, now)
                payload = {**blocks.message(view), PLAIN: blocks.plain_message(view)["text"]}
                rows.append(OutboxRow(incident.id, kind, payload))
        return rows

    def deliver(self, effects: list[Effect], now: float) -> None:
        self._wake.set()  # the outbox thread sends them; the caller is answered at once

    def flush(self) -> None:
        """Send what is due, each incident's items strictly in order; a failure holds back the rest."""
        with self._lock:
            held: set[str] = set()
            for item in self.store.pending(self.clock()):
                if item.incident_id in held:
                    continue
                if not item.due:  # later items of this incident must wait too
                    held.add(item.incident_id)
                    continue
                if self.store.shared and not self.store.claim(item.id, self.replica, self.clock(), CLAIM_SECONDS):
                    held.add(item.incident_id)  # another replica is sending it
                    continue
                try:
                    self._send(item.id, item.row)
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
        self.store.retry(item.id, item.attempts + 1, self.clock() + delay)

    def _give_up(self, item_id: int, incident_id: str, error: str) -> None:
        log.error("Slack refused a post for incident %s for good (%s): dropped it", incident_id, error)
        self.problem = (f"Slack refused an alert post ({error}) at {time_of_day(self.clock())}: "
                        "check OPSBOT_ALERT_CHANNEL")
        self.store.done(item_id)

    def release(self) -> None:
        """What we claimed and did not send is free for the others at once."""
        self.store.release_claims(self.replica)

    def _send(self, item_id: int, row: OutboxRow) -> None:
        incident_id, kind, payload = row.incident_id, row.kind, row.payload
        message = self.store.incident_message(incident_id)
        if self.attach is not None and (kind == "post" or (kind == "refresh" and message is not None)):
            payload = self.attach(incident_id, payload)
        if kind == "post" and message is None:
            response = send_alert(self.client.chat_postMessage, payload, channel=self.channel, unfurl_links=False)
            self.store.done(item_id, (incident_id, IncidentMessage(response["channel"], response["ts"])))
            return
        if message is None:
            # Never posted (it fired and resolved during a mute): nothing to update.
            self.store.done(item_id)
            return
        channel, ts = message.channel, message.ts
        if kind == "thread":
            self.client.chat_postMessage(channel=channel, thread_ts=ts, text=payload["text"])
        else:  # a refresh, or a post whose message exists already (sent before a crash): update in place
            send_alert(self.client.chat_update, payload, channel=channel, ts=ts)
        self.store.done(item_id)


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


class ConsoleSink:
    """Console mode: alerts are printed as they fire and resolve."""

    def __init__(self, print_line: Callable[[str], None]) -> None:
        self.print_line = print_line

    def outbox_rows(self, effects: list[Effect], now: float) -> list[OutboxRow]:
        return []

    def deliver(self, effects: list[Effect], now: float) -> None:
        for effect in effects:
            incident = effect.incident
            if isinstance(effect, Post):
                self.print_line(f"ALERT   {time_of_day(now)}  {incident.text} — {incident.impact}")
            elif isinstance(effect, Timeline):
                self.print_line(f"        {time_of_day(now)}  {incident.text}: {effect.text}")
            elif isinstance(effect, Refresh) and not incident.open:
                self.print_line(f"RESOLVED {time_of_day(now)}  {incident.text}")


