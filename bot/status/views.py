"""Views: what a reply says, independent of where it is shown.

A view is built from a snapshot by pure functions; `bot.slack.blocks` renders it as Slack Block Kit and
`bot.console.render` as rich text for the console. Paging and "and N more" are decided here once, so both
renderers stay inside Slack's limits the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bot.beat import health
from bot.links import Ref
from bot.markup import phrase
from bot.slack import buttons
from bot.slack.buttons import Action, Confirm
from bot.status import assess
from bot.status.snapshot import Level, QueueInfo, Snapshot, TaskInfo, WorkerInfo, short_id
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
    described = f"{task.name} ({short_id(task.id)}) on {task.worker}, {running}"
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
    if snapshot.celery.live is not None:
        text += f" · {assess.live_text(snapshot.celery.live)}"
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


def message_view(title: str, text: str, level: Level | None = None,
                 sections: tuple[Section, ...] = ()) -> View:
    return View(title, text, level, sections)
