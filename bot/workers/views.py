"""What worker control shows: a worker's detail with its buttons, the outcome of an action per worker,
and the read views (scheduled, reserved, revoked, registered). Pure: plain data in, views out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.markup import join, phrase
from bot.slack import buttons
from bot.slack.buttons import Action, Confirm
from bot.status import assess
from bot.status.snapshot import Level, TaskInfo, WorkerInfo, short_id
from bot.status.views import Item, Section, View
from bot.workers import rules
from bot.workers.pauses import QueuePause, pause_text
from bot.workers.rules import Request, Result, WorkerResult

MAX_ROWS = 40  # rows of a read view before "and N more" (one section: a few text blocks)
RESULT_LEVELS = {Result.DONE: Level.OK, Result.UNCONFIRMED: Level.WARN, Result.SKIPPED: Level.WARN,
                 Result.ERROR: Level.DOWN, Result.NO_REPLY: Level.DOWN}


# --- After an action ---------------------------------------------------------------------------


def what(request: Request) -> str:
    """The change asked for, in a few words."""
    match request.action:
        case "pool":
            return f"Pool {'grown' if request.delta > 0 else 'shrunk'} by {abs(request.delta)}"
        case "autoscale":
            return f"Autoscale set to max {request.maximum}, min {request.minimum}"
        case "pause":
            return f"Paused {request.queue}"
        case "resume":
            return f"Resumed {request.queue}"
        case "ratelimit":
            return f"Rate limit of {request.task} set to {request.rate}" if request.rate \
                else f"Rate limit of {request.task} removed"
        case "timelimit":
            return (f"Time limits of {request.task} set to soft {rules.seconds_text(request.soft)}, "
                    f"hard {rules.seconds_text(request.hard)}")
        case "shutdown":
            return "Warm shutdown"
    return "Pool restart"


def tasks_text(tasks: tuple[TaskInfo, ...]) -> str:
    shown = ", ".join(f"{t.name} ({short_id(t.id)})" for t in tasks[:5])
    more = f" and {len(tasks) - 5} more" if len(tasks) > 5 else ""
    return f"{assess.plural(len(tasks), 'active task')}: {shown}{more}" if tasks else "no active task"


def headline(request: Request, results: list[WorkerResult], who: str, now: float,
             active: tuple[TaskInfo, ...] = ()) -> str:
    """"Paused other on 3 of 3 workers by @ana at 14:02:03": what changed, where, who, when."""
    done = sum(1 for r in results if r.result is Result.DONE)
    noun = "worker" if len(results) == 1 else "workers"
    at = assess.time_of_day(now)
    line = phrase("{} on {} of {} {} by {} at {}", what(request), done, len(results), noun, who, at)
    if request.action == "shutdown" and done:
        line = phrase("{}; it exits after its {}", line, tasks_text(active))
    if not done:
        line = phrase("{}. Nothing was changed.", line)
    return line


def audit_target(request: Request, workers: list[str]) -> str:
    subject = request.queue or request.task
    where = ", ".join(workers)
    return f"{subject} on {where}" if subject and where else subject or where or "(none)"


def result_view(headline_: str, level: Level, results: list[WorkerResult], request: Request) -> View:
    items = tuple(Item(RESULT_LEVELS[r.result], r.worker, f"{r.result.value}: {r.detail}") for r in results)
    actions: tuple[Action, ...] = ()
    if request.worker and request.action != "shutdown":
        actions = (buttons.worker("detail", request.worker, "Show worker"),)
    return View("Worker control", headline_, level, (Section("Per worker", items),), actions)


# --- A worker's detail -------------------------------------------------------------------------


def pool_text(worker: WorkerInfo) -> str:
    size = f"{worker.concurrency} {'process' if worker.concurrency == 1 else 'processes'}" \
        if worker.concurrency is not None else "size unknown"
    scale = f", autoscale {worker.autoscale[0]} to {worker.autoscale[1]}" if worker.autoscale else ""
    return f"{worker.pool or 'unknown'} pool, {size}{scale}"


def confirm(title: str, text: str, yes: str) -> Confirm:
    return Confirm(title, text, yes, "Cancel")


def worker_actions(worker: WorkerInfo, restarts: bool, enabled: bool) -> tuple[Action, ...]:
    name = worker.name
    actions = []
    if enabled and not rules.unsupported("pool", worker.pool, worker.autoscale, None):
        size = worker.concurrency or 0
        actions.append(buttons.worker("grow", name, "Pool +1", confirm=confirm(
            "Grow the pool?", f"Add one process to {name}'s pool (now {size}).", "Grow")))
        if size > 1:
            actions.append(buttons.worker("shrink", name, "Pool -1", confirm=confirm(
                "Shrink the pool?", f"Remove one idle process from {name}'s pool (now {size}).", "Shrink")))
    if enabled and not rules.unsupported("restart-pool", worker.pool, worker.autoscale, restarts):
        actions.append(buttons.worker("restart", name, "Restart pool", confirm=confirm(
            "Restart the pool?", f"{name} replaces its pool processes; running tasks finish first.", "Restart")))
    if enabled:
        actions.append(buttons.worker("shutdown", name, "Shut down", style="danger", confirm=confirm(
            "Shut this worker down?", f"Warm shutdown of {name}: it stops taking tasks and exits after its "
            f"{tasks_text(worker.active)}. It does not start again by itself.", "Shut down")))
    actions.append(buttons.worker("detail", name, "Refresh"))
    return tuple(actions)


def queue_rows(worker: WorkerInfo, pauses: dict[str, QueuePause], enabled: bool) -> tuple[Item, ...]:
    rows = []
    for queue in worker.queues or ():
        action = buttons.worker("pause", worker.name, "Pause", queue=queue, confirm=confirm(
            f"Pause {queue}?", f"{worker.name} stops taking tasks from {queue}; tasks already taken still run. "
            "Resume undoes it.", "Pause")) if enabled else None
        rows.append(Item(Level.OK, queue, "consumed", action=action))
    for queue, pause in sorted(pauses.items()):
        if worker.name in pause.workers:
            action = buttons.worker("resume", worker.name, "Resume", queue=queue, confirm=confirm(
                f"Resume {queue}?", f"{worker.name} takes tasks from {queue} again.", "Resume")) if enabled else None
            rows.append(Item(Level.WARN, queue, pause_text(pause), action=action))
    return tuple(rows)


def worker_view(worker: WorkerInfo, restarts: bool, pauses: dict[str, QueuePause], watched: tuple[str, ...],
                enabled: bool, now: float) -> View:
    restart_text = "allowed (worker_pool_restarts on)" if restarts else "not allowed (worker_pool_restarts off)"
    about = (Item(None, "Pool", pool_text(worker)), Item(None, "Pool restarts", restart_text),
             Item(None, "Tasks", f"{len(worker.active)} active, {worker.reserved} reserved"))
    queues = queue_rows(worker, pauses, enabled)
    running = tuple(Item(None, t.name, f"running {assess.duration(now - t.started_at)}" if t.started_at
                         else "starting", code=t.id[:8]) for t in worker.active[:MAX_ROWS])
    limits = tuple(Item(None, t.task, rules.limits_text(t)) for t in rules.limited(worker.limits or ()))
    unwatched = [q for q in worker.queues or () if q not in watched]
    sections = (
        Section("Worker", about),
        Section("Queues", queues, note="" if queues else "It consumes no queue: it takes no task."),
        Section("Active tasks", running, more=max(0, len(worker.active) - MAX_ROWS),
                note="" if running else "None."),
        Section("Limits in force", limits, note="" if limits else "No rate or time limit set."),
    )
    footer = f"Not watched by opsbot: {', '.join(unwatched)}" if unwatched else ""
    level = Level.WARN if any(i.level is Level.WARN for i in queues) else Level.OK
    return View(f"Worker {worker.name}", pool_text(worker), level, sections,
                worker_actions(worker, restarts, enabled), footer)


# --- Read views ----------------------------------------------------------------------------------

HELD = {
    "scheduled": ("Scheduled tasks", "ETA and countdown tasks held by workers until their time",
                  "No worker holds a scheduled task."),
    "reserved": ("Reserved tasks", "prefetched by workers, waiting for a free slot (neither queued nor active)",
                 "No worker holds a reserved task."),
    "revoked": ("Revoked task ids", "ids the workers remember as revoked: a message with one is dropped",
                "No worker remembers a revoked id."),
}


def eta_text(eta: Any, now: float) -> str:
    try:
        moment = datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return "ETA unknown"
    when = f"in {assess.duration(moment - now)}" if moment >= now else f"{assess.duration(now - moment)} overdue"
    return f"ETA {assess.time_of_day(moment)} ({when})"


def held_rows(action: str, replies: dict[str, Any], now: float) -> list[Item]:
    rows = []
    for worker, entries in sorted(replies.items()):
        for entry in entries if isinstance(entries, list) else []:
            if action == "revoked":
                rows.append(Item(None, "", f"on {worker}", code=str(entry)))
                continue
            request = entry.get("request", entry) if isinstance(entry, dict) else {}
            name = str(request.get("name") or request.get("type") or "?")
            text = f"on {worker}, {eta_text(entry.get('eta'), now)}" if action == "scheduled" \
                else f"held by {worker}"
            rows.append(Item(None, name, text, code=str(request.get("id") or "")[:8]))
    return rows


def held_view(action: str, replies: dict[str, Any], now: float) -> View:
    title, about, empty = HELD[action]
    rows = held_rows(action, replies, now)
    asked = assess.plural(len(replies), "worker")
    summary = f"{len(rows)} from {asked}: {about}." if replies else "No worker answered."
    section = Section(title, tuple(rows[:MAX_ROWS]), more=max(0, len(rows) - MAX_ROWS),
                      note="" if rows else empty)
    return View(title, summary, None if replies else Level.WARN, (section,))


def registered_view(replies: dict[str, list[str]]) -> View:
    """Each task type and where it is registered, with the limits in force (grouped when they agree)."""
    where: dict[tuple, list[str]] = {}
    for worker, lines in sorted(replies.items()):
        for line in lines if isinstance(lines, list) else []:
            limits = rules.task_limits(line)
            where.setdefault((limits.task, limits.rate, limits.soft, limits.hard), []).append(worker)
    rows = [Item(None, key[0], join(": ", [f"on {len(workers)} of {len(replies)} workers",
                                            rules.limits_text(rules.TaskLimits(*key))]))
            for key, workers in sorted(where.items(), key=lambda kv: str(kv[0]))]
    summary = f"{assess.plural(len({k[0] for k in where}), 'task type')} on {assess.plural(len(replies), 'worker')}." \
        if replies else "No worker answered."
    section = Section("Registered tasks", tuple(rows[:MAX_ROWS]), more=max(0, len(rows) - MAX_ROWS),
                      note="" if rows else "No task registered.")
    return View("Registered tasks", summary, None if replies else Level.WARN, (section,))
