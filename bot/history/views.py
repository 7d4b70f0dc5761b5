"""What the task history shows: pages of finished tasks and one task's full story."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.history.store import TaskRecord
from bot.redact import defang, redact
from bot.slack import buttons
from bot.status import assess
from bot.status.snapshot import Level
from bot.status.views import Item, Section, View

if TYPE_CHECKING:  # the page comes from bot.history.read, which uses HISTORY_PAGE from here
    from bot.history.read import HistoryPage

STATE_LEVELS = {"SUCCESS": Level.OK, "FAILURE": Level.DOWN, "REVOKED": Level.WARN, "REJECTED": Level.WARN,
                "RETRY": Level.WARN}
HISTORY_PAGE = 20
MAX_ECHO = 60


def retry_links(row: TaskRecord) -> str:
    """", retry of 6f1c…" and ", retried as 8a2b…": the two tasks of a retry name each other."""
    links = [f"retry of {row.retry_of[:4]}…" if row.retry_of else "",
             f"retried as {row.retried_as[:4]}…" if row.retried_as else ""]
    return "".join(f", {link}" for link in links if link)


def history_item(row: TaskRecord, retryable: bool = False) -> Item:
    runtime = f", ran {assess.duration(row.runtime)}" if row.runtime is not None else ""
    finished = f", finished {assess.time_of_day(row.finished_at)}" if row.finished_at else ""
    worker = f" on {row.worker}" if row.worker else ""
    action = buttons.retry("history", row.task_id, f"{row.name or '?'} ({row.task_id[:8]})") \
        if retryable and not row.retried_as else None
    return Item(STATE_LEVELS.get(row.state), row.name or "?",
                f"{row.state}{worker}{runtime}{finished}{retry_links(row)}", code=row.task_id[:8], action=action,
                ref=("task", row.task_id))


def history_view(rows: list[TaskRecord], total: int, page: int, state: str | None, name: str | None,
                 note: str = "", source: str = "opsbot's history", retryable: frozenset[str] = frozenset()) -> View:
    pages = max(1, -(-total // HISTORY_PAGE))
    actions = []
    if page > 1:
        actions.append(buttons.history("newer", page - 1, state, name))
    if page < pages:
        actions.append(buttons.history("older", page + 1, state, name))
    shown_name = defang(redact(name))[:MAX_ECHO] if name else ""
    what = " ".join(filter(None, [state.lower() if state else "finished", "tasks",
                                  f"named like '{shown_name}'" if name else ""]))
    summary = f"{total} {what}, newest first ({source})." if total else f"No {what} on record."
    left = max(0, total - (page - 1) * HISTORY_PAGE - len(rows))
    section = Section("History", tuple(history_item(r, r.task_id in retryable) for r in rows), more=left,
                      note=" ".join(filter(None, [f"page {page} of {pages}" if pages > 1 else "", note])))
    return View("Task history", summary, None, (section,), tuple(actions))


def task_view(row: TaskRecord, retryable: bool = False) -> View:
    """The full story of one task."""
    def when(key: str) -> str:
        value = getattr(row, key)
        return assess.time_of_day(value) if value else "—"

    items = [
        Item(STATE_LEVELS.get(row.state), "State", row.state),
        Item(None, "Name", row.name or "?"),
        Item(None, "Worker", row.worker or "—"),
        Item(None, "Timeline", f"received {when('received_at')}, started {when('started_at')}, "
                               f"finished {when('finished_at')}"),
    ]
    if row.runtime is not None:
        items.append(Item(None, "Runtime", assess.duration(row.runtime)))
    if row.retries:
        items.append(Item(None, "Retries", str(row.retries)))
    if row.retry_of or row.retried_as:
        items.append(Item(None, "Retry", retry_links(row).removeprefix(", ")))
    if row.args:
        items.append(Item(None, "Arguments", row.args))
    if row.result:
        items.append(Item(None, "Result", row.result))
    if row.exception:
        items.append(Item(Level.DOWN if row.state == "FAILURE" else None, "Exception", row.exception))
    sections = [Section("Task", tuple(items))]
    if row.traceback:
        sections.append(Section("Traceback (last lines)", (Item(None, "", "\n" + row.traceback),)))
    actions = (buttons.retry("show", row.task_id, f"{row.name or '?'} ({row.task_id[:8]})"),) \
        if retryable and not row.retried_as else ()
    return View(f"Task {row.task_id[:8]}", f"{row.name or '?'}: {row.state}",
                STATE_LEVELS.get(row.state), tuple(sections), actions, footer=f"Task id {row.task_id}")


def page_view(page: HistoryPage) -> View:
    return history_view(page.rows, page.total, page.page, page.state, page.name, note=page.note,
                        source=page.source, retryable=page.retryable)
