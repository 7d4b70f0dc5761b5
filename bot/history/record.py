"""Task history recorded by the bot itself, from Celery's event stream, into its store.

Flower keeps only what it saw since its own start; this history survives both Flower's and the bot's
restarts. Events are folded into one row per task (`fold` is pure), written in batches by a writer
thread, and the table is kept within `OPSBOT_HISTORY_DAYS` and `OPSBOT_HISTORY_MAX_ROWS`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from bot.config import http_endpoint
from bot.redact import redact_details
from bot.status.views import HISTORY_PAGE, View, history_view, task_view
from bot.task_args import summarize_repr

log = logging.getLogger(__name__)

# Event type -> the state it means. Later states never give way to earlier ones (events can cross).
EVENT_STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-retried": "RETRY",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
RANK = {"PENDING": 0, "RECEIVED": 1, "STARTED": 2, "RETRY": 3, "SUCCESS": 4, "FAILURE": 4, "REVOKED": 5,
        "REJECTED": 4}
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED", "REJECTED")
MAX_RESULT = 300
TRACEBACK_LINES = 12
FLUSH_SECONDS = 0.5
MAX_TASK_ID = 255  # the history's key column
MAX_QUEUED = 100_000
MAX_BATCH = 500  # events per transaction: a big backlog is written in several
MAX_RETRY_DELAY = 10.0
PRUNE_SECONDS = 600.0


def traceback_head(text: str) -> str:
    """The exception's last lines are the useful ones; keep those, redacted."""
    lines = redact_details(text or "", from_end=True).strip().splitlines()
    return "\n".join(lines[-TRACEBACK_LINES:])


def fold(row: dict[str, Any] | None, event: dict[str, Any]) -> dict[str, Any]:
    """One task's row after one more event. Pure."""
    kind = event.get("type", "")
    state = EVENT_STATES[kind]
    at = float(event.get("timestamp") or time.time())
    row = dict(row or {"task_id": event["uuid"], "state": state, "retries": 0})
    if RANK[state] >= RANK.get(row.get("state", "PENDING"), 0):
        row["state"] = state
    if event.get("name"):
        row["name"] = str(event["name"])[:255]
    if event.get("hostname"):
        row["worker"] = str(event["hostname"])[:255]
    if kind in ("task-sent", "task-received") and ("args" in event or "kwargs" in event):
        row["args"] = summarize_repr(event.get("args"), event.get("kwargs"))
    if kind == "task-sent":
        # Routing names, not reprs: exact, so a retry can go the same way; the send time dates the wait.
        for key in ("queue", "exchange", "routing_key"):
            if event.get(key):
                row[key] = str(event[key])[:255]
        row["sent_at"] = at
    if kind == "task-received":
        row["received_at"] = at
    if kind == "task-started":
        row["started_at"] = at
    if kind in ("task-sent", "task-received") and event.get("retries"):
        row["retries"] = max(int(row.get("retries") or 0), int(event["retries"]))
    if kind == "task-retried":  # the count comes from the retried task's own task-received: idempotent
        row["retries"] = max(int(row.get("retries") or 0), int(event.get("retries") or 0) + 1)
        row["exception"] = redact_details(str(event.get("exception") or ""))[:MAX_RESULT]
    if kind == "task-succeeded":
        row["result"] = redact_details(str(event.get("result") or ""))[:MAX_RESULT]
        row["runtime"] = event.get("runtime")
    if kind == "task-failed":
        row["exception"] = redact_details(str(event.get("exception") or ""))[:MAX_RESULT]
        row["traceback"] = traceback_head(str(event.get("traceback") or ""))
    if kind == "task-revoked":
        row["exception"] = "terminated" if event.get("terminated") else ("expired" if event.get("expired") else "")
    if state in FINAL_STATES:
        row["finished_at"] = at
    row["updated_at"] = at
    return row


class HistoryRecorder:
    """Receives task events from the event monitor's thread; a writer thread stores them in batches.

    Every replica records every event: a fold is idempotent, so the same event written twice gives the
    same row, and a failover leaves no gap. A batch that cannot be written (database locked, down) is
    kept and tried again, in order, with the events that came after it.
    """

    def __init__(self, store: Any, days: float, max_rows: int,
                 on_recorded: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.store = store
        self.on_recorded = on_recorded  # another reader of the same events (the charts' task counts)
        self.days = days
        self.max_rows = max_rows
        self.events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=MAX_QUEUED)
        self.last_event_at: float | None = None
        self._unwritten: list[dict[str, Any]] = []  # taken from the queue, not stored yet
        self._retry_at = 0.0
        self._failures = 0
        self._flush_lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)

    def start(self) -> HistoryRecorder:
        self._thread.start()
        return self

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") not in EVENT_STATES or not event.get("uuid"):
            return
        if not valid_task_id(event["uuid"]):  # one bad id must not poison a batch of good ones
            log.warning("ignored a task event with an unusable task id (%d characters)", len(str(event["uuid"])))
            return
        if self.on_recorded is not None:
            self.on_recorded(event)
        self.last_event_at = time.time()
        try:
            self.events.put_nowait(event)
        except queue.Full:
            log.warning("task history is falling behind; an event was dropped")

    def _run(self) -> None:
        last_prune = 0.0
        while not self._stopped.wait(FLUSH_SECONDS):
            if time.monotonic() < self._retry_at:
                continue
            self.flush()
            if time.monotonic() - last_prune >= PRUNE_SECONDS:  # age limits apply without new events too
                last_prune = time.monotonic()
                self._prune()

    def _prune(self) -> None:
        try:
            self.store.prune_history(time.time() - self.days * 86400, self.max_rows)
        except Exception:
            log.exception("could not prune the task history")

    def flush(self) -> bool:
        """Write what is queued; False when the store refused (the events are kept for the next try)."""
        with self._flush_lock:
            while len(self._unwritten) < MAX_QUEUED:
                try:
                    self._unwritten.append(self.events.get_nowait())
                except queue.Empty:
                    break
            if not self._unwritten:
                return True
            try:
                for start in range(0, len(self._unwritten), MAX_BATCH):
                    self.store.record_task_events(self._unwritten[start:start + MAX_BATCH], fold)
            except Exception as exc:
                self._failures += 1
                delay = min(MAX_RETRY_DELAY, FLUSH_SECONDS * 2 ** min(self._failures, 6))
                self._retry_at = time.monotonic() + delay
                log.warning("could not store %d task events (%s); trying again in %.0f s",
                            len(self._unwritten), type(exc).__name__, delay)
                return False
            self._unwritten, self._failures, self._retry_at = [], 0, 0.0
        self._prune()
        return True

    def stop(self) -> None:
        """Write what is queued before the process goes (one last try, bounded by the store's timeouts)."""
        self._stopped.set()
        self._thread.join(timeout=3)
        self.flush()


def valid_task_id(task_id: object) -> bool:
    return isinstance(task_id, str) and 0 < len(task_id) <= MAX_TASK_ID


# --- Reading it -------------------------------------------------------------------------------

EVENTS_OFF = ("No task events have reached opsbot: start workers with -E (or set worker_send_task_events = True), "
              "or leave OPSBOT_ENABLE_EVENTS on, so it can record their history. Meanwhile, this is what Flower "
              "remembers since its own start.")


def flower_rows(settings: Any, session: requests.Session, limit: int) -> list[dict[str, Any]]:
    """Finished tasks as Flower's API lists them, shaped like our history rows."""
    base, auth = http_endpoint(settings.flower_url)
    response = session.get(f"{base}/api/tasks", params={"limit": 200}, timeout=settings.probe_timeout, auth=auth)
    response.raise_for_status()
    rows = []
    for task_id, info in response.json().items():
        finished = info.get("succeeded") or info.get("failed") or info.get("revoked") or info.get("rejected")
        if info.get("state") in FINAL_STATES:
            rows.append({"task_id": task_id, "name": info.get("name"), "state": info["state"],
                         "worker": info.get("worker"), "runtime": info.get("runtime"),
                         "finished_at": finished or info.get("timestamp")})
    rows.sort(key=lambda r: r["finished_at"] or 0, reverse=True)
    return rows[:limit]


class History:
    """The history as users ask for it: pages of finished tasks, one task's story, recent failures."""

    def __init__(self, settings: Any, store: Any, recorder: HistoryRecorder | None) -> None:
        self.settings = settings
        self.store = store
        self.recorder = recorder
        self.session = requests.Session()
        # Which failed or revoked tasks may show Retry (their exact arguments are known; bot.health.retry).
        self.retryable: Callable[[list[str]], set[str]] = lambda ids: set()

    def _retryable(self, rows: list[dict[str, Any]]) -> frozenset[str]:
        return frozenset(self.retryable([r["task_id"] for r in rows if r.get("state") in ("FAILURE", "REVOKED")]))

    def page(self, state: str | None, name: str | None, page: int) -> View:
        offset = (page - 1) * HISTORY_PAGE
        rows, total = self.store.finished_tasks(state, name, offset, HISTORY_PAGE)
        if total or (self.recorder is not None and self.recorder.last_event_at is not None):
            return history_view(rows, total, page, state, name, retryable=self._retryable(rows))
        try:
            flower = [r for r in flower_rows(self.settings, self.session, 1000)
                      if (not state or r["state"] == state) and (not name or name in (r["name"] or ""))]
        except Exception as exc:
            return history_view([], 0, 1, state, name, note=f"{EVENTS_OFF} (Flower: {type(exc).__name__})")
        return history_view(flower[offset:offset + HISTORY_PAGE], len(flower), page, state, name,
                            note=EVENTS_OFF, source="Flower's memory")

    def task(self, task_id: str) -> View | None:
        row = self.store.task(task_id)
        return task_view(row, row["task_id"] in self._retryable([row])) if row else None

    def recent_failures(self, limit: int = 5) -> list[dict[str, Any]]:
        rows, _ = self.store.finished_tasks("FAILURE", None, 0, limit)
        return rows


def digest_text(store: Any, now: float) -> str:
    """The daily digest: tasks by final state over the last 24 h, and the names that failed most."""
    by_state, failing = store.failure_counts(now - 86400)
    if not by_state:
        return "Daily digest: no task finished in the last 24 h."
    states = ", ".join(f"{count} {state}" for state, count in sorted(by_state.items(), key=lambda kv: -kv[1]))
    text = f"Daily digest, last 24 h: {states}."
    if failing:
        text += " Failed most: " + ", ".join(f"{name} ({count})" for name, count in failing) + "."
    return text
