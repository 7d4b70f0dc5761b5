"""What task control shows beyond an action's answer: the audit of the latest attempts."""

from __future__ import annotations

from bot.control.audit import AuditEntry
from bot.status.assess import time_of_day
from bot.status.snapshot import Level
from bot.status.views import Item, Section, View

# An attempt's audit word (`Outcome.label`) -> how the audit shows it; any other word is a warning.
OUTCOME_LEVELS = {"done": Level.OK, "signalled": Level.WARN, "denied": Level.WARN, "already": None}


def audit_view(entries: list[AuditEntry]) -> View:
    items = tuple(
        Item(OUTCOME_LEVELS.get(e.outcome, Level.WARN), f"{time_of_day(e.at)} {e.action} {e.target}",
             f"{e.outcome}, by {e.user_id}: {e.detail}")
        for e in entries)
    note = "" if entries else "No task-control attempt yet."
    return View("Task-control audit", f"The latest {len(entries)} attempts, newest first.", None,
                (Section("Audit", items, note=note),))
