"""Views: what a reply says, independent of where it is shown.

A view is built from a snapshot by pure functions; `bot.slack.blocks` renders it as Slack Block Kit and
`bot.console.render` as rich text for the console. Paging and "and N more" are decided here once, so both
renderers stay inside Slack's limits the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bot.alerting.engine import Incident, check_name
from bot.beat import health
from bot.links import Ref
from bot.markup import phrase, stored_mention
from bot.redact import defang, redact
from bot.slack import buttons
from bot.slack.buttons import Action, Confirm
from bot.status import assess
from bot.status.snapshot import Level, QueueInfo, Snapshot, TaskInfo, WorkerInfo
from bot.workers.pauses import QueuePause, pause_text, queue_pauses
from bot.workers.rules import worker_extras

OVERVIEW_TASKS = 5  # active tasks shown in the overview before "and N more"
PAGE_SIZE = 20  # rows per page in the workers and active lists (1 block each, well under 50)


@dataclass(frozen=True)
class Item:
    level: Level | None
    title: str
    text: str
    code: str = ""  # an identifier shown in monospace (a task id)
    action: Action | None = None
    ref: Ref | None = None  # what it names (("task", id), ("worker", name)): Slack links it when configured


@dataclass(frozen=True)
class Section:
    title: str
    items: tuple[Item, ...] = ()
    more: int = 0  # items left out: "and N more"
    note: str = ""


@dataclass(frozen=True)
class Notice:
    """The outcome of something the user just did, shown above the status."""

    level: Level | None
    text: str


@dataclass(frozen=True)
class Controls:
    """What task control may offer. Without it (or disabled) a view has no Terminate or Purge button."""

    enabled: bool
    disabled_note: str = ""


@dataclass(frozen=True)
class View:
    title: str
    summary: str
    level: Level | None = None
    sections: tuple[Section, ...] = ()
    actions: tuple[Action, ...] = ()
    footer: str = ""
    notice: Notice | None = None

    @property
    def text(self) -> str:
        """The plain fallback for notifications and screen readers."""
        if self.notice:
            return phrase("{} {}: {}", self.notice.text, self.title, self.summary)
        return phrase("{}: {}", self.title, self.summary)

    def with_notice(self, notice: Notice | None) -> View:
        return replace(self, notice=notice)


# --- Pieces -----------------------------------------------------------------------------------


def services_section(snapshot: Snapshot) -> Section:
    broker, celery, flower = snapshot.broker, snapshot.celery, snapshot.flower
    return Section("Services", (
        Item(assess.broker_level(broker), assess.broker_name(broker), assess.broker_text(broker)),
        Item(assess.celery_level(celery), "Celery", assess.celery_text(celery)),
        Item(assess.flower_level(flower), "Flower", assess.flower_text(flower)),
        *beat_items(snapshot),
    ))


def beat_items(snapshot: Snapshot) -> tuple[Item, ...]:
    """One line for celery beat when its schedule is known (issue 14)."""
    if snapshot.beat is None or not snapshot.beat.entries:
        return ()
    return (Item(health.level(snapshot.beat, snapshot.taken_at), "Celery beat",
                 health.summary(snapshot.beat, snapshot.taken_at)),)


def purge_action(queue: QueueInfo, section: str) -> Action:
    tasks = assess.plural(queue.ready, "waiting task")
    return buttons.targeted("purge", section, queue.name, "Purge queue",
                            Confirm(f"Purge {queue.name}?", f"This deletes the {tasks} in queue {queue.name}, "
                                    "and only that queue. It cannot be undone.", "Purge", "Cancel"))


def task_action(task: TaskInfo, section: str, now: float) -> Action:
    running = f"running {assess.duration(now - task.started_at)}" if task.started_at else "starting"
    described = f"{task.name} ({task.id[:8]}) on {task.worker}, {running}"
    return buttons.targeted("terminate", section, task.id, "Terminate",
                            Confirm("Terminate this task?", f"{described}. Its worker sends it SIGTERM.",
                                    "Terminate", "Cancel"))


def queue_item(queue: QueueInfo, pause: QueuePause | None, action: Action | None) -> Item:
    """A queue's line; a queue an admin paused is amber and says by whom and since when."""
    if pause is None:
        return Item(assess.queue_level(queue), queue.name, assess.queue_text(queue), action=action)
    return Item(max(assess.queue_level(queue), Level.WARN), queue.name,
                phrase("{}; {}", assess.queue_text(queue), pause_text(pause)), action=action)


def queue_items(snapshot: Snapshot, section: str = "queues", controls: Controls | None = None) -> tuple[Item, ...]:
    if not snapshot.broker.up:
        return ()
    can_purge = controls is not None and controls.enabled
    pauses = queue_pauses(snapshot.pauses, snapshot.celery.workers)
    return tuple(queue_item(q, pauses.get(q.name), purge_action(q, section) if can_purge and q.ready else None)
                 for q in snapshot.broker.queues)


def worker_item(worker: WorkerInfo) -> Item:
    return Item(assess.worker_level(worker), worker.name, assess.worker_text(worker), ref=("worker", worker.name))


def task_item(task: TaskInfo, now: float, section: str = "active", controls: Controls | None = None) -> Item:
    running = f"running {assess.duration(now - task.started_at)}" if task.started_at else "starting"
    action = task_action(task, section, now) if controls is not None and controls.enabled else None
    text = f"on {task.worker}, {running} {task.args_summary}".rstrip()
    return Item(None, task.name, text, code=task.id, action=action, ref=("task", task.id))


def oldest_first(tasks: tuple[TaskInfo, ...]) -> list[TaskInfo]:
    return sorted(tasks, key=lambda t: t.started_at or float("inf"))


def worst_first(workers: tuple[WorkerInfo, ...]) -> list[WorkerInfo]:
    return sorted(workers, key=lambda w: (-assess.worker_level(w), -len(w.active), w.name))


def page_of(items: list, page: int, size: int) -> tuple[list, int, int]:
    """The items of one page (1-based, clamped), the page number used, and the number of pages."""
    pages = max(1, -(-len(items) // size))
    page = min(max(1, page), pages)
    return items[(page - 1) * size: page * size], page, pages


def footer(snapshot: Snapshot, controls: Controls | None = None) -> str:
    text = f"Probed in {snapshot.elapsed * 1000:.0f} ms"
    has_targets = snapshot.celery.active_tasks or snapshot.broker.waiting
    if controls is not None and not controls.enabled and controls.disabled_note and has_targets:
        text += f" · {controls.disabled_note}"
    return text


# --- Views ------------------------------------------------------------------------------------


def status_view(snapshot: Snapshot, section: str = "overview", page: int = 1,
                controls: Controls | None = None) -> View:
    from bot.beat.view import beat_view  # the feature's own package builds on this module

    builders = {"overview": overview, "workers": workers_view, "queues": queues_view, "active": active_view,
                "beat": beat_view}
    return builders[section](snapshot, page, controls)


def overview(snapshot: Snapshot, page: int = 1, controls: Controls | None = None) -> View:
    now = snapshot.taken_at
    sections = [services_section(snapshot)]
    queues = queue_items(snapshot, "overview", controls)
    if queues:
        sections.append(Section("Queues", queues))
    workers = worst_first(snapshot.celery.workers)
    if workers:
        shown = workers[:OVERVIEW_TASKS]
        sections.append(Section("Workers", tuple(worker_item(w) for w in shown), more=len(workers) - len(shown)))
    tasks = oldest_first(snapshot.celery.active_tasks)
    if tasks:
        shown_tasks = tasks[:OVERVIEW_TASKS]
        sections.append(Section("Active tasks", tuple(task_item(t, now, "overview", controls) for t in shown_tasks),
                                more=len(tasks) - len(shown_tasks)))
    actions = [buttons.page("refresh", "overview", 1, "Refresh")]
    if len(tasks) > OVERVIEW_TASKS:
        actions.append(buttons.page("active", "active", 1, "All active tasks"))
    if len(workers) > OVERVIEW_TASKS:
        actions.append(buttons.page("workers", "workers", 1, "All workers"))
    actions.append(buttons.share("overview", 1))
    return View("Task status", assess.summary(snapshot), assess.overall_level(snapshot),
                tuple(sections), tuple(actions), footer(snapshot, controls))


def paged_view(snapshot: Snapshot, section: str, title: str, items: list[Item], page: int,
               empty_note: str, controls: Controls | None = None) -> View:
    shown, page, pages = page_of(items, page, PAGE_SIZE)
    left_out = len(items) - (page - 1) * PAGE_SIZE - len(shown)
    actions = []
    if page > 1:
        actions.append(buttons.page("prev", section, page - 1, "Previous page"))
    if page < pages:
        actions.append(buttons.page("next", section, page + 1, "Next page"))
    actions += [buttons.page("refresh", section, page, "Refresh"), buttons.share(section, page)]
    page_note = f"page {page} of {pages}" if pages > 1 else ""
    body = Section(title, tuple(shown), more=max(0, left_out), note=page_note if items else empty_note)
    return View(title, assess.summary(snapshot), assess.overall_level(snapshot),
                (services_section(snapshot), body), tuple(actions), footer(snapshot, controls))


def workers_view(snapshot: Snapshot, page: int = 1, controls: Controls | None = None) -> View:
    workers = worst_first(snapshot.celery.workers) + list(snapshot.celery.lost)
    items = [Item(Level.WARN if w in snapshot.celery.lost else assess.worker_level(w), w.name,
                  ", ".join(filter(None, [assess.worker_details_text(w), worker_extras(w)])), ref=("worker", w.name),
                  action=buttons.worker("detail", w.name, "Details") if w.answered else None) for w in workers]
    return paged_view(snapshot, "workers", "Workers", items, page, assess.celery_text(snapshot.celery), controls)


def active_view(snapshot: Snapshot, page: int = 1, controls: Controls | None = None) -> View:
    now = snapshot.taken_at
    items = [task_item(t, now, "active", controls) for t in oldest_first(snapshot.celery.active_tasks)]
    return paged_view(snapshot, "active", "Active tasks", items, page, "No task is running.", controls)


def queues_view(snapshot: Snapshot, page: int = 1, controls: Controls | None = None) -> View:
    items = list(queue_items(snapshot, "queues", controls))
    empty = "" if items else assess.broker_text(snapshot.broker)
    return paged_view(snapshot, "queues", "Queues", items, page, empty, controls)


# The help, by topic (a longer list stays easy to read).
COMMANDS = (
    ("Status", (
        ("/tasks", "overview: broker, workers, Flower, waiting and active tasks"),
        ("/tasks workers [worker]", "every worker: pool, queues, limits; or one worker's detail and controls"),
        ("/tasks queues", "every watched queue: tasks waiting, consumers, pauses"),
        ("/tasks active", "every running task: id, name, worker, how long"),
        ("/tasks scheduled", "ETA and countdown tasks the workers hold until their time"),
        ("/tasks reserved", "tasks prefetched by workers, waiting for a free slot"),
        ("/tasks revoked", "task ids the workers remember as revoked"),
        ("/tasks registered [worker]", "task types the workers know, with rate and time limits in force"),
        ("/tasks beat", "every periodic task of the beat schedule: when, last run, next run, late or on time"),
    )),
    ("Task control (admins)", (
        ("/tasks terminate <task-id>", "stop a running task with SIGTERM"),
        ("/tasks kill <task-id>", "stop a running task with SIGKILL, for tasks that ignore SIGTERM"),
        ("/tasks purge <queue>", "delete the waiting tasks of one watched queue"),
        ("/tasks audit", "the latest 20 control attempts"),
    )),
    ("Worker control (admins)", (
        ("/tasks pool <worker> +N|-N", "grow or shrink a worker's pool (prefork, eventlet)"),
        ("/tasks autoscale <worker> <max> <min>", "change the bounds of a worker started with --autoscale"),
        ("/tasks pause <queue> [worker]", "stop taking tasks from a queue, on one worker or every worker"),
        ("/tasks resume <queue> [worker]", "take tasks from a paused queue again"),
        ("/tasks ratelimit <task-name> <10/m|off>", "set or remove a task type's rate limit on every worker"),
        ("/tasks timelimit <task-name> <soft> <hard>", "set a task type's time limits on every worker"),
        ("/tasks shutdown <worker>", "warm shutdown: the worker exits after its active tasks"),
        ("/tasks restart-pool <worker>", "replace a worker's pool processes (needs worker_pool_restarts)"),
    )),
    ("History and alerts", (
        ("/tasks history [failed|succeeded|revoked] [name]", "the latest finished tasks, newest first"),
        ("/tasks show <task-id>", "one task's story: state, timeline, arguments, result or exception"),
        ("/tasks retry <task-id>", "send a failed or revoked task again, exact arguments (admins)"),
        ("/tasks retry failed <task-name> [since]", "retry every failed task of that name, after a confirmation "
         "(admins)"),
        ("/tasks chart [queues|tasks|workers|<queue>|<task-name>] [1h|6h|24h|7d]",
         "a chart over time: tasks waiting, failures per minute, workers (posted in the channel)"),
        ("/tasks incidents", "open incidents: what is down, since when, who acknowledged it"),
        ("/tasks mute <30m|2h|1d> [broker|celery|flower|beat]", "silence alerts for planned maintenance (admins)"),
        ("/tasks unmute", "end every mute (admins)"),
        ("/tasks help", "this help"),
    )),
)


def help_view(problem: str = "") -> View:
    sections = tuple(Section(topic, tuple(Item(None, command, text) for command, text in commands))
                     for topic, commands in COMMANDS)
    summary = f"{problem} Here is what I understand." if problem else "Here is what I understand."
    return View("opsbot help", summary, Level.WARN if problem else None, sections)


def message_view(title: str, text: str, level: Level | None = None,
                 sections: tuple[Section, ...] = ()) -> View:
    return View(title, text, level, sections)


# --- Alerts -----------------------------------------------------------------------------------

def incident_view(incident: Incident, now: float) -> View:
    """The alert message of one incident: what is down, since when, what it means, who is on it."""
    level = Level(incident.level) if incident.open else Level.OK
    since = f"{assess.clock(incident.started_at)} ({assess.duration(now - incident.started_at)} ago)"
    items = [Item(None, "Since", since), Item(None, "Impact", incident.impact)]
    if incident.acked_by:
        items.append(Item(None, "Acknowledged", phrase("by {} at {}", stored_mention(incident.acked_by),
                                                       assess.clock(incident.acked_at or now))))
    if incident.snoozed_until and incident.snoozed_until > now and incident.open:
        items.append(Item(None, "Snoozed", phrase("until {} by {}", assess.clock(incident.snoozed_until),
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
                                                f"at {assess.clock(resolved_at)}"))
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
    items = tuple(Item(Level(i.level), assess.clock(i.started_at),
                       phrase("{} ({}){}", i.text, assess.duration(now - i.started_at),
                              phrase(", acknowledged by {}", stored_mention(i.acked_by)) if i.acked_by else ""))
                  for i in sorted(incidents, key=lambda i: i.started_at))
    summary = f"{assess.plural(len(items), 'open incident')}." if items else "No open incident."
    return View("Incidents", summary, max((Level(i.level) for i in incidents), default=Level.OK),
                (Section("Open incidents", items, note=muted_note),))


# --- Task history -----------------------------------------------------------------------------

STATE_LEVELS = {"SUCCESS": Level.OK, "FAILURE": Level.DOWN, "REVOKED": Level.WARN, "REJECTED": Level.WARN,
                "RETRY": Level.WARN}
HISTORY_PAGE = 20
MAX_ECHO = 60


def retry_links(row: dict) -> str:
    """", retry of 6f1c…" and ", retried as 8a2b…": the two tasks of a retry name each other."""
    links = [f"retry of {row['retry_of'][:4]}…" if row.get("retry_of") else "",
             f"retried as {row['retried_as'][:4]}…" if row.get("retried_as") else ""]
    return "".join(f", {link}" for link in links if link)


def history_item(row: dict, retryable: bool = False) -> Item:
    runtime = f", ran {assess.duration(row['runtime'])}" if row.get("runtime") is not None else ""
    finished = f", finished {assess.clock(row['finished_at'])}" if row.get("finished_at") else ""
    worker = f" on {row['worker']}" if row.get("worker") else ""
    action = buttons.retry("history", row["task_id"], f"{row.get('name') or '?'} ({row['task_id'][:8]})") \
        if retryable and not row.get("retried_as") else None
    return Item(STATE_LEVELS.get(row["state"]), row.get("name") or "?",
                f"{row['state']}{worker}{runtime}{finished}{retry_links(row)}", code=row["task_id"][:8], action=action,
                ref=("task", row["task_id"]))


def history_view(rows: list[dict], total: int, page: int, state: str | None, name: str | None,
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
    section = Section("History", tuple(history_item(r, r["task_id"] in retryable) for r in rows), more=left,
                      note=" ".join(filter(None, [f"page {page} of {pages}" if pages > 1 else "", note])))
    return View("Task history", summary, None, (section,), tuple(actions))


def task_view(row: dict, retryable: bool = False) -> View:
    """The full story of one task."""
    def when(key: str) -> str:
        return assess.clock(row[key]) if row.get(key) else "—"

    items = [
        Item(STATE_LEVELS.get(row["state"]), "State", row["state"]),
        Item(None, "Name", row.get("name") or "?"),
        Item(None, "Worker", row.get("worker") or "—"),
        Item(None, "Timeline", f"received {when('received_at')}, started {when('started_at')}, "
                               f"finished {when('finished_at')}"),
    ]
    if row.get("runtime") is not None:
        items.append(Item(None, "Runtime", assess.duration(row["runtime"])))
    if row.get("retries"):
        items.append(Item(None, "Retries", str(row["retries"])))
    if row.get("retry_of") or row.get("retried_as"):
        items.append(Item(None, "Retry", retry_links(row).removeprefix(", ")))
    if row.get("args"):
        items.append(Item(None, "Arguments", row["args"]))
    if row.get("result"):
        items.append(Item(None, "Result", row["result"]))
    if row.get("exception"):
        items.append(Item(Level.DOWN if row["state"] == "FAILURE" else None, "Exception", row["exception"]))
    sections = [Section("Task", tuple(items))]
    if row.get("traceback"):
        sections.append(Section("Traceback (last lines)", (Item(None, "", "\n" + row["traceback"]),)))
    actions = (buttons.retry("show", row["task_id"], f"{row.get('name') or '?'} ({row['task_id'][:8]})"),) \
        if retryable and not row.get("retried_as") else ()
    return View(f"Task {row['task_id'][:8]}", f"{row.get('name') or '?'}: {row['state']}",
                STATE_LEVELS.get(row["state"]), tuple(sections), actions, footer=f"Task id {row['task_id']}")
