"""Task history recorded by the bot itself, from Celery's event stream, into its store (read back by
`bot.history.read`).

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

from bot.history.store import HistoryStore
from bot.redact import redact_details
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

    def __init__(self, store: HistoryStore, days: float, max_rows: int,
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
            self.store.prune(time.time() - self.days * 86400, self.max_rows)
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
