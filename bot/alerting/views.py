"""What alerting shows: one incident's alert message, with its buttons, and the list of open incidents."""

from __future__ import annotations

from bot.alerting.engine import Incident, check_name
from bot.markup import phrase, stored_mention
from bot.slack import buttons
from bot.slack.buttons import Action, Confirm
from bot.status import assess
from bot.status.snapshot import Level
from bot.status.views import Item, Section, View


def incident_view(incident: Incident, now: float) -> View:
    """The alert message of one incident: what is down, since when, what it means, who is on it."""
    level = incident.level if incident.open else Level.OK
    since = f"{assess.time_of_day(incident.started_at)} ({assess.duration(now - incident.started_at)} ago)"
    items = [Item(None, "Since", since), Item(None, "Impact", incident.impact)]
    if incident.acked_by:
        items.append(Item(None, "Acknowledged", phrase("by {} at {}", stored_mention(incident.acked_by),
                                                       assess.time_of_day(incident.acked_at or now))))
    if incident.snoozed_until and incident.snoozed_until > now and incident.open:
        items.append(Item(None, "Snoozed", phrase("until {} by {}", assess.time_of_day(incident.snoozed_until),
                                                  stored_mention(incident.snoozed_by or ""))))
    items += [Item(None, "", line) for line in incident.details]
    if incident.open:
        title = "Alert"
        items += task_items(incident)
        actions = (*buttons.incident(incident.id), *task_actions(incident),
                   buttons.runbook(incident.id, check_name(incident.key)))
    else:
        resolved_at = incident.resolved_at or now
        title = "Resolved"
        items.append(Item(Level.OK, "Resolved", f"after {assess.duration(resolved_at - incident.started_at)}, "
                                                f"at {assess.time_of_day(resolved_at)}"))
        actions = ()
    return View(title, incident.text, level, (Section("Incident", tuple(items)),), actions,
                footer=f"Incident {incident.id}")


FAILING, STUCK = "task:failing:", "task:stuck:"  # keys of task-level incidents (bot.health.rules)


def task_items(incident: Incident) -> list[Item]:
    """A failure alert's last failed tasks, each with Retry when its exact arguments are known."""
    if not incident.key.startswith(FAILING):
        return []
    name = incident.key.removeprefix(FAILING)
    return [Item(Level.DOWN, "Failed", "", code=task_id,
                 action=buttons.retry("alert", task_id, f"{name} ({task_id[:8]})")
                 if task_id in incident.retryable else None)
            for task_id in incident.targets]


def task_actions(incident: Incident) -> tuple[Action, ...]:
    """Show for each failed task; Terminate and Kill for a stuck one (admins, checked when clicked)."""
    if incident.key.startswith(FAILING):
        return tuple(buttons.show(n, task_id) for n, task_id in enumerate(incident.targets[:buttons.SHOWN_IDS], 1))
    if not incident.key.startswith(STUCK) or not incident.targets:
        return ()
    task_id = incident.targets[0]
    return (buttons.targeted("terminate", "alert", task_id, "Terminate", Confirm(
                "Terminate this task?", f"{incident.text}. Its worker sends it SIGTERM.", "Terminate", "Cancel")),
            buttons.targeted("kill", "alert", task_id, "Kill", Confirm(
                "Kill this task?", f"{incident.text}. Its worker sends it SIGKILL.", "Kill", "Cancel")))


def incidents_view(incidents: list[Incident], now: float, muted_note: str) -> View:
    items = tuple(Item(i.level, assess.time_of_day(i.started_at),
                       phrase("{} ({}){}", i.text, assess.duration(now - i.started_at),
                              phrase(", acknowledged by {}", stored_mention(i.acked_by)) if i.acked_by else ""))
                  for i in sorted(incidents, key=lambda i: i.started_at))
    summary = f"{assess.plural(len(items), 'open incident')}." if items else "No open incident."
    return View("Incidents", summary, max((i.level for i in incidents), default=Level.OK),
                (Section("Open incidents", items, note=muted_note),))
