"""The help: every command by topic, and the view that lists them."""

from __future__ import annotations

from bot.status.snapshot import Level
from bot.status.views import Item, Section, View

# The help, by topic (a longer list stays easy to read).
HELP_TOPICS = (
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
                     for topic, commands in HELP_TOPICS)
    summary = f"{problem} Here is what I understand." if problem else "Here is what I understand."
    return View("opsbot help", summary, Level.WARN if problem else None, sections)
