"""The `/tasks` command language, shared by Slack and the console.

`parse` turns what a user typed into a `Command`, `parse_button` a button's value; both raise a
`UsageError` whose message is safe to show. Each command names its `Kind`: which handler of the
dispatcher (bot.commands.dispatch) answers it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from bot.charts import service as chart_service
from bot.durations import parse_duration
from bot.slack import buttons
from bot.slack.buttons import HISTORY_STATES, MAX_FILTER, MAX_PAGE, SECTIONS, TARGETED, Forged
from bot.usage import UsageError, shown
from bot.workers import rules as worker_rules

ALIASES = {"": "overview", "status": "overview", "overview": "overview", "worker": "workers",
           "queue": "queues", "running": "active", "help": "help", "-h": "help", "--help": "help",
           "?": "help", "terminate": "terminate", "kill": "kill", "purge": "purge", "audit": "audit",
           "mute": "mute", "unmute": "unmute", "incidents": "incidents", "history": "history", "show": "show",
           "retry": "retry", "chart": "chart", "charts": "chart",
**{name: name for name in (*worker_rules.ACTIONS, *worker_rules.READS) if name != "detail"}}
# Worker control (bot.workers): actions change workers (admins), reads ask them.
WORKER_COMMANDS = (*worker_rules.ACTIONS, *worker_rules.READS)
# Answered through the response_url after a quick ack: acting, and asking workers one after another (a
# worker that went silent costs a whole reply timeout), can take longer than Slack's 3 s.
DEFERRED = (*TARGETED, *WORKER_COMMANDS)

ALERTING_COMMANDS = ("mute", "unmute", "incidents")
HISTORY_COMMANDS = ("history", "show")


class Kind(Enum):
    """Which handler answers a command: one per feature, whatever the subcommand's word."""

    HELP = "help"
    AUDIT = "audit"
    TASK_ACTION = "task action"  # terminate, kill, purge, retry
    RETRY_FAILED = "retry failed"
    WORKERS = "workers"  # worker control: actions and reads
    ALERTING = "alerting"  # mute, unmute, incidents
    HISTORY = "history"  # history, show
    CHART = "chart"
    STATUS = "status"  # a section of the status: overview, workers, queues, active


def kind_of(name: str) -> Kind:
    """The handler of a subcommand, in the order the checks were always made (a name in two sets goes to
    the first)."""
    if name in ("help", "audit"):
        return Kind(name)
    if name in TARGETED:
        return Kind.TASK_ACTION
    if name == buttons.RETRY_FAILED:
        return Kind.RETRY_FAILED
    if name in WORKER_COMMANDS:
        return Kind.WORKERS
    if name in ALERTING_COMMANDS:
        return Kind.ALERTING
    if name in HISTORY_COMMANDS:
        return Kind.HISTORY
    return Kind.CHART if name == "chart" else Kind.STATUS


@dataclass(frozen=True)
class Command:
    name: str  # a section of the status ("overview", "workers", ...), "help", or an action
    page: int = 1
    target: str = ""  # the task id or queue of an action; a final state for history
    section: str = ""  # for a button: the view it was clicked in, redrawn after the action
    name_filter: str = ""  # history: part of a task name
    since: float = 0.0  # retry_failed: failed since this moment
    worker: str = ""  # worker control: the worker named (maybe a button's key)
    args: tuple[str, ...] = ()  # mute: the duration and scope as typed (bot.alerting.mute)

    @property
    def kind(self) -> Kind:
        return kind_of(self.name)


def is_number(word: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' and '①', which int() refuses."""
    return word.isascii() and word.isdigit()


def parse_page(word: str) -> int:
    if not is_number(word) or not 1 <= int(word) <= MAX_PAGE:
        raise UsageError(f"'{shown(word)}' is not a page number.")
    return int(word)


def parse(text: str) -> Command:
    words = text.split()
    if words and words[0] == "/tasks":  # the console accepts the slash command as typed in Slack
        words = words[1:]
    head = words[0].lower() if words else ""
    name = ALIASES.get(head, head if head in SECTIONS else None)
    if name is None:
        raise UsageError(f"Unknown subcommand '{shown(words[0])}'.")
    rest = words[1:]
    if name == "retry" and rest and rest[0].lower() == "failed":
        return parse_retry_failed(rest[1:])
    if name in WORKER_COMMANDS:
        return parse_worker_command(name, rest)
    if name == "workers" and len(rest) == 1 and not rest[0].isdigit():  # digits of any script: a page number
        return Command("detail", worker=rest[0])  # one worker's detail: /tasks workers w1@host
    if name in TARGETED:
        if len(rest) != 1:
            raise UsageError(f"Usage: /tasks {name} <{TARGETED[name]}>")
        return Command(name, target=rest[0])
    if name == "history":
        return parse_history(rest)
    if name == "show":
        if len(rest) != 1:
            raise UsageError("Usage: /tasks show <task-id>")
        return Command(name, target=rest[0])
    if name == "chart":
        try:
            chart_service.parse(rest)
        except chart_service.ChartUsage as problem:
            raise UsageError(str(problem)) from None
        return Command(name, target=" ".join(rest))
    if name == "mute":
        if not 1 <= len(rest) <= 2:
            raise UsageError("Usage: /tasks mute <duration like 30m, 2h or 1d> [broker|celery|flower|beat]")
        return Command(name, args=tuple(rest))
    if name in ("help", "audit", "unmute", "incidents") or not rest:
        return Command(name)
    if len(rest) == 1:
        return Command(name, parse_page(rest[0]))
    raise UsageError(f"'/tasks {shown(' '.join(words))}' has too many words.")


RETRY_FAILED_USAGE = "Usage: /tasks retry failed <task-name> [since, like 30m, 6h or 1d; default 1d]"
DEFAULT_RETRY_SINCE = "1d"


def parse_retry_failed(words: list[str]) -> Command:
    if not 1 <= len(words) <= 2 or len(words[0]) > 255:
        raise UsageError(RETRY_FAILED_USAGE)
    try:
        seconds = parse_duration(words[1] if len(words) > 1 else DEFAULT_RETRY_SINCE)
    except ValueError:
        raise UsageError(f"'{shown(words[1])}' is not a duration. {RETRY_FAILED_USAGE}") from None
    return Command(buttons.RETRY_FAILED, target=words[0], since=time.time() - seconds)


FORGED = "That button is not one I made; nothing was done."


def parse_worker_command(name: str, words: list[str]) -> Command:
    """Worker control's arguments, checked for shape now so a typo is answered at once."""
    try:
        target, worker = worker_rules.words_to_args(name, words)
        if name in worker_rules.ACTIONS:
            worker_rules.parse_request(name, target, worker)
    except worker_rules.BadInput as problem:
        raise UsageError(str(problem)) from None
    return Command(name, target=target, worker=worker)


def parse_history(words: list[str]) -> Command:
    state = HISTORY_STATES.get(words[0].lower(), "") if words else ""
    name = " ".join(words[1:] if state else words)
    if len(name) > MAX_FILTER:
        raise UsageError(f"A name filter is at most {MAX_FILTER} characters.")
    return Command("history", target=state, name_filter=name)


def parse_button(action_id: str, value: str) -> Command:
    """A button's value is only a claim: bot.slack.buttons checks its shape here, its target is checked when acting."""
    try:
        click = buttons.decode(action_id, value)
    except Forged:
        raise UsageError(FORGED) from None
    return Command(click.name, click.page, click.target, click.section, click.name_filter, click.since,
                   click.worker)
