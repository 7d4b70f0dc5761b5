"""The task history as users ask for it: pages of finished tasks, one task's story, recent failures.

These are data; the caller draws them (`bot.history.views`), as with task control's outcomes. Before
any task event has reached opsbot, pages come from Flower's memory instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import requests

from bot.config import Settings, http_endpoint
from bot.history.record import FINAL_STATES, HistoryRecorder
from bot.history.store import HistoryStore, TaskRecord
from bot.history.views import HISTORY_PAGE


@dataclass(frozen=True)
class HistoryPage:
    """One page of finished tasks, newest first, and where it came from."""

    rows: list[TaskRecord]
    total: int
    page: int
    state: str | None
    name: str | None
    note: str = ""
    source: str = "opsbot's history"
    retryable: frozenset[str] = frozenset()  # ids of the rows that may show Retry


@dataclass(frozen=True)
class ShownTask:
    record: TaskRecord
    retryable: bool


EVENTS_OFF = ("No task events have reached opsbot: start workers with -E (or set worker_send_task_events = True), "
              "or leave OPSBOT_ENABLE_EVENTS on, so it can record their history. Meanwhile, this is what Flower "
              "remembers since its own start.")


def flower_rows(settings: Settings, session: requests.Session, limit: int) -> list[TaskRecord]:
    """Finished tasks as Flower's API lists them, shaped like our history rows."""
    base, auth = http_endpoint(settings.flower_url)
    response = session.get(f"{base}/api/tasks", params={"limit": 200}, timeout=settings.probe_timeout, auth=auth)
    response.raise_for_status()
    rows = []
    for task_id, info in response.json().items():
        finished = info.get("succeeded") or info.get("failed") or info.get("revoked") or info.get("rejected")
        if info.get("state") in FINAL_STATES:
            rows.append(TaskRecord(task_id, info["state"], name=info.get("name"), worker=info.get("worker"),
                                   runtime=info.get("runtime"), finished_at=finished or info.get("timestamp")))
    rows.sort(key=lambda r: r.finished_at or 0, reverse=True)
    return rows[:limit]


class History:
    """The history as users ask for it: pages of finished tasks, one task's story, recent failures."""

    def __init__(self, settings: Settings, store: HistoryStore, recorder: HistoryRecorder | None) -> None:
        self.settings = settings
        self.store = store
        self.recorder = recorder
        self.session = requests.Session()
        # Which failed or revoked tasks may show Retry (their exact arguments are known; bot.health.retry).
        self.retryable: Callable[[list[str]], set[str]] = lambda ids: set()

    def _retryable(self, rows: list[TaskRecord]) -> frozenset[str]:
        return frozenset(self.retryable([r.task_id for r in rows if r.state in ("FAILURE", "REVOKED")]))

    def page(self, state: str | None, name: str | None, page: int) -> HistoryPage:
        offset = (page - 1) * HISTORY_PAGE
        rows, total = self.store.finished_tasks(state, name, offset, HISTORY_PAGE)
        if total or (self.recorder is not None and self.recorder.last_event_at is not None):
            return HistoryPage(rows, total, page, state, name, retryable=self._retryable(rows))
        try:
            flower = [r for r in flower_rows(self.settings, self.session, 1000)
                      if (not state or r.state == state) and (not name or name in (r.name or ""))]
        except Exception as exc:
            return HistoryPage([], 0, 1, state, name, note=f"{EVENTS_OFF} (Flower: {type(exc).__name__})")
        return HistoryPage(flower[offset:offset + HISTORY_PAGE], len(flower), page, state, name,
                           note=EVENTS_OFF, source="Flower's memory")

    def task(self, task_id: str) -> ShownTask | None:
        row = self.store.task(task_id)
        return ShownTask(row, row.task_id in self._retryable([row])) if row else None

    def recent_failures(self, limit: int = 5) -> list[TaskRecord]:
        rows, _ = self.store.finished_tasks("FAILURE", None, 0, limit)
        return rows
