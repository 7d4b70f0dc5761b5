"""The `/tasks` command language, shared by Slack and the console.

`parse` turns what a user typed into a `Command`, `parse_button` a button's value; both raise a
`UsageError` whose message is safe to show. `Commands` answers with a `Reply`, taking a fresh
snapshot when the answer shows the status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.alerting.engine import ALL
from bot.alerting.service import AlertService
from bot.charts import service as chart_service
from bot.charts.sparkline import chart_view
from bot.control.access import HOW_TO_CONFIGURE, NOT_A_VIEWER, AccessUnknown, Actor
from bot.control.tasks import TASK_ID, Outcome, TaskControl
from bot.durations import parse_duration
from bot.health.retry import NO_BACKEND, Retrier
from bot.history.record import History
from bot.markup import phrase
from bot.redact import defang, redact
from bot.slack import buttons
from bot.slack.buttons import HISTORY_STATES, MAX_FILTER, MAX_PAGE, PRIVATE_SECTIONS, SECTIONS, TARGETED, Forged
from bot.status.assess import clock
from bot.status.snapshot import Level, Snapshot
from bot.status.views import (
    Controls,
    Item,
    Notice,
    Section,
    View,
    help_view,
    history_item,
    incidents_view,
    message_view,
    status_view,
)
from bot.store import AuditEntry
from bot.workers import rules as worker_rules
from bot.workers.actions import WorkerControl

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
# Task details (arguments, results, exceptions): only for viewers and admins when viewers are set.
FOR_VIEWERS = ("active", "history", "show", "scheduled", "reserved")
# Where the answer to an action is drawn: the list the target lives in.
HOME_SECTION = {"terminate": "active", "kill": "active", "purge": "queues"}
OUTCOME_LEVELS = {"done": Level.OK, "signalled": Level.WARN, "denied": Level.WARN, "already": None}


def without_arguments(snapshot: Snapshot) -> Snapshot:
    """The snapshot with every running task's arguments left out."""
    workers = tuple(replace(w, active=tuple(replace(t, args_summary="") for t in w.active))
                    for w in snapshot.celery.workers)
    return replace(snapshot, celery=replace(snapshot.celery, workers=workers))


class UsageError(ValueError):
    """Input we do not understand. The message is shown to the user as is."""


@dataclass(frozen=True)
class Command:
    name: str  # a section of the status ("overview", "workers", ...), "help", or an action
    page: int = 1
    target: str = ""  # the task id or queue of an action; a final state for history
    section: str = ""  # for a button: the view it was clicked in, redrawn after the action
    name_filter: str = ""  # history: part of a task name
    since: float = 0.0  # retry_failed: failed since this moment
    worker: str = ""  # worker control: the worker named (maybe a button's key)


@dataclass(frozen=True)
class Reply:
    """A view, and how to deliver it after a click."""

    view: View
    replace_original: bool = True  # False: leave the clicked message alone, answer privately
    # A second look later, redrawn over the same message: did the signalled process really stop?
    follow_up: Callable[[], View] | None = None
    follow_up_after: float = 0.0


def shown(text: str, limit: int = 40) -> str:
    """User input echoed back: short, single-line and without anything secret."""
    text = defang(redact(" ".join(text.split())))
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        return Command(name, target=" ".join(rest))
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


def audit_view(entries: list[AuditEntry]) -> View:
    items = tuple(
        Item(OUTCOME_LEVELS.get(e.outcome, Level.WARN), f"{clock(e.at)} {e.action} {e.target}",
             f"{e.outcome}, by {e.user_id}: {e.detail}")
        for e in entries)
    note = "" if entries else "No task-control attempt yet."
    return View("Task-control audit", f"The latest {len(entries)} attempts, newest first.", None,
                (Section("Audit", items, note=note),))


MAX_MUTE = 7 * 86400
MUTE_SCOPES = ("broker", "celery", "flower", "beat")


def parse_mute(target: str) -> tuple[float, str]:
    words = target.split()
    try:
        seconds = parse_duration(words[0])
    except ValueError:
        raise UsageError(f"'{shown(words[0])}' is not a duration: use e.g. 30m, 2h or 1d.") from None
    if not 0 < seconds <= MAX_MUTE:
        raise UsageError("Mute for between 1 second and 7 days.")
    scope = words[1].lower() if len(words) > 1 else ALL
    if scope not in (*MUTE_SCOPES, ALL):
        raise UsageError(f"'{shown(scope)}' is not a service: use broker, celery, flower or beat "
                         "(or nothing for all).")
    return seconds, scope


class Commands:
    """Answers commands; needs a way to take a snapshot and, for actions, task control and alerting."""

    def __init__(self, take_snapshot: Callable[[], Snapshot], control: TaskControl | None = None,
                 alerts: AlertService | None = None, history: History | None = None,
                 notes: Callable[[], list[str]] = list, retrier: Retrier | None = None,
                 charts: chart_service.Charts | None = None, workers: WorkerControl | None = None) -> None:
        self.take_snapshot = take_snapshot
        self.charts = charts
        self.workers = workers
        self.control = control
        self.alerts = alerts
        self.history = history
        self.notes = notes  # lines for the status footer: mutes, which replica answered
        self.retrier = retrier  # Retry (bot.health.retry): None when the bot cannot act

    def controls(self) -> Controls | None:
        if self.control is None:
            return None
        if not self.control.access.configured:
            return Controls(enabled=False, disabled_note=HOW_TO_CONFIGURE)
        return Controls(enabled=True)

    def viewer_refusal(self, actor: Actor) -> View | None:
        """None when the actor may read task details; otherwise the refusal to show."""
        access = self.control.access if self.control else None
        try:
            if access is None or access.may_view(actor):
                return None
        except AccessUnknown as problem:
            return message_view("opsbot", f"Could not check your permissions ({problem}).", Level.WARN)
        return message_view("opsbot", NOT_A_VIEWER, Level.WARN)

    def status(self, section: str, page: int = 1) -> View:
        snapshot = self.take_snapshot()
        if section != "active" and self.control and self.control.access.viewers_configured:
            snapshot = without_arguments(snapshot)  # seen by anyone: no task details
        if section == "workers" and self.workers is not None:
            snapshot = self.workers.with_limits(snapshot)  # the rate and time limits in force
        view = status_view(snapshot, section, page, self.controls())
        extra = [note for note in self.notes() if note]
        return replace(view, footer=" · ".join([view.footer, *extra])) if extra else view

    def run(self, command: Command, actor: Actor) -> Reply:
        if command.name == "help":
            return Reply(help_view())
        if command.name == "audit":
            return Reply(self._audit(actor))
        if command.name in FOR_VIEWERS and (refusal := self.viewer_refusal(actor)):
            return Reply(refusal, replace_original=False)
        if command.name in TARGETED:
            return self._act(command, actor)
        if command.name == buttons.RETRY_FAILED:
            return Reply(self._retry_failed(command, actor), replace_original=False)
        if command.name in WORKER_COMMANDS:
            return self._worker_command(command, actor)
        if command.name in ("mute", "unmute", "incidents"):
            return Reply(self._alerting(command, actor), replace_original=False)
        if command.name in ("history", "show"):
            # Show from an alert answers beside it: the alert message is the incident's, not ours.
            return Reply(self._history(command), replace_original=command.section not in PRIVATE_SECTIONS)
        if command.name == "chart":
            return Reply(self._chart(command), replace_original=False)
        return Reply(self.status(command.name, command.page))

    def _worker_command(self, command: Command, actor: Actor) -> Reply:
        if self.workers is None:
            return Reply(message_view("opsbot", "Worker control is not available here.", Level.WARN),
                         replace_original=False)
        if command.name in worker_rules.ACTIONS:
            answer = self.workers.act(command.name, command.target, command.worker, actor)
            # A click that changed something redraws its message; anything else answers privately beside it.
            return Reply(answer.view, replace_original=bool(command.section) and answer.changed)
        controls = self.controls()
        return Reply(self.workers.read(command.name, command.worker, controls is not None and controls.enabled))

    def _history(self, command: Command) -> View:
        if self.history is None:
            return message_view("opsbot", "Task history is not available here.", Level.WARN)
        if command.name == "history":
            return self.history.page(command.target or None, command.name_filter or None, command.page)
        if not TASK_ID.match(command.target):
            return message_view("opsbot", "That is not a valid task id.", Level.WARN)
        found = self.history.task(command.target)
        if found is None:
            return message_view("opsbot", f"No task `{shown(command.target, 60)}` on record.", Level.WARN)
        return found

    def _chart(self, command: Command) -> View:
        """The series as sparklines (the console; Slack posts a PNG instead, see bot.charts.slack)."""
        if self.charts is None:
            return message_view("opsbot", "Charts are not available here.", Level.WARN)
        chart = self.charts.data(chart_service.parse(command.target.split()))
        return message_view("opsbot", chart, Level.WARN) if isinstance(chart, str) else chart_view(chart)

    def home(self) -> View:
        """The App Home dashboard: the overview, plus the latest failures from the history."""
        view = self.status("overview")
        if self.history is None:
            return view
        failures = tuple(history_item(row) for row in self.history.recent_failures())
        note = "" if failures else "No failure on record."
        return replace(view, sections=(*view.sections, Section("Recent failures", failures, note=note)))

    def _alerting(self, command: Command, actor: Actor) -> View:
        if self.alerts is None:
            return message_view("opsbot", "Alerting is off: set OPSBOT_ALERT_CHANNEL to the channel for alerts.",
                                Level.WARN)
        if command.name == "incidents":
            return incidents_view(self.alerts.open_incidents(), self.alerts.clock(), self.alerts.muted_note())
        refusal = self.control.refusal(actor) if self.control else None
        if refusal:
            return message_view("opsbot", refusal.message, refusal.level)
        if command.name == "unmute":
            self.alerts.unmute()
            self._record(actor, "unmute", ALL, "done", "Alerts unmuted.")
            return message_view("opsbot", phrase("Alerts unmuted by {}.", actor.mention), Level.OK)
        seconds, scope = parse_mute(command.target)
        until = self.alerts.mute(scope, seconds)
        what = "All alerts" if scope == ALL else f"Alerts about {scope}"
        self._record(actor, "mute", scope, "done", f"{what} muted until {clock(until)}.")
        return message_view("opsbot", phrase("{} muted until {} by {}.", what, clock(until), actor.mention), Level.OK)

    def _record(self, actor: Actor, action: str, target: str, outcome: str, message: str) -> None:
        if self.control is not None:
            self.control.record(actor, action, target, outcome, message)

    def run_alert_button(self, action_id: str, value: str, actor: Actor) -> Reply | None:
        """Acknowledge, snooze or show status from an alert. None: the alert message itself is redrawn."""
        if self.alerts is None:
            return Reply(message_view("opsbot", "Alerting is off.", Level.WARN), replace_original=False)
        try:
            claimed, how_long = buttons.decode_alert(action_id, value)
        except Forged:
            return Reply(message_view("opsbot", FORGED, Level.WARN), replace_original=False)
        if action_id == "alert_status":
            return Reply(self.status("overview"), replace_original=False)
        incident_id = buttons.resolve(claimed, (i.id for i in self.alerts.open_incidents()))
        if how_long:
            action, done = f"snooze {how_long}", self.alerts.snooze(incident_id, how_long, actor.mention)
        else:
            action, done = "acknowledge", self.alerts.acknowledge(incident_id, actor.mention)
        self._record(actor, action, incident_id, "done" if done else "nothing",
                     "" if done else "Resolved or already acknowledged.")
        if done:
            return None
        return Reply(message_view("opsbot", "That incident is resolved or already acknowledged; nothing was done.",
                                  Level.OK), replace_original=False)

    def _audit(self, actor: Actor) -> View:
        if self.control is None:
            return message_view("opsbot", HOW_TO_CONFIGURE, Level.WARN)
        entries = self.control.audit(actor)
        if isinstance(entries, Outcome):
            return message_view("opsbot", entries.message, entries.level)
        return audit_view(entries)

    def _act(self, command: Command, actor: Actor) -> Reply:
        if self.control is None:
            return Reply(message_view("opsbot", HOW_TO_CONFIGURE, Level.WARN), replace_original=False)
        command = replace(command, target=self._resolve(command))
        if command.name == "retry":
            outcome = self.retrier.retry(actor, command.target) if self.retrier else Outcome(Level.WARN, NO_BACKEND)
        elif command.name == "purge":
            outcome = self.control.purge(actor, command.target)
        else:
            signal = "SIGKILL" if command.name == "kill" else "SIGTERM"
            outcome = self.control.terminate(actor, command.target, signal)
        notice = Notice(outcome.level, outcome.message)
        if not outcome.changed or command.name == "retry" or command.section in PRIVATE_SECTIONS:
            # Nothing happened, or it was clicked in an alert or a task's story (the alert is redrawn by the
            # engine): say so privately and leave the clicked message as it was.
            return Reply(message_view("opsbot", outcome.message, outcome.level), replace_original=False)
        section = command.section or HOME_SECTION[command.name]
        view = self.status(section).with_notice(notice)
        if outcome.level is not Level.WARN or command.name == "purge":
            return Reply(view)
        # The signal went out but the process lives on: look again after OPSBOT_KILL_AFTER.
        control, task_id = self.control, command.target

        def follow_up() -> View:
            later = control.follow_up(task_id)
            return self.status(section).with_notice(Notice(later.level, later.message))

        return Reply(view, follow_up=follow_up, follow_up_after=control.follow_up_delay)

    def _retry_failed(self, command: Command, actor: Actor) -> View:
        """Typed: say how many and ask to confirm. Clicked (the confirmation's button): retry them."""
        if self.control is None or self.retrier is None:
            return message_view("opsbot", HOW_TO_CONFIGURE, Level.WARN)
        refusal = self.control.refusal(actor)
        if refusal:
            return message_view("opsbot", refusal.message, refusal.level)
        if not self.retrier.enabled:
            return message_view("opsbot", NO_BACKEND, Level.WARN)
        if command.section:  # the confirmation's button
            outcome = self.retrier.retry_failed(actor, command.target, command.since)
            return message_view("opsbot", outcome.message, outcome.level)
        count = len(self.retrier.failed_since(command.target, command.since))
        what = phrase("{} failed {} since {}.", count, command.target, clock(command.since))
        if not count:
            return message_view("opsbot", phrase("No {} task failed since {}; nothing to retry.", command.target,
                                                 clock(command.since)), Level.OK)
        item = Item(Level.DOWN, command.target, what, action=buttons.retry_failed(command.target, command.since, count))
        return message_view("Retry failed tasks", phrase("Retry {} failed {} tasks?", count, command.target),
                            Level.WARN, (Section("To retry", (item,)),))

    def _resolve(self, command: Command) -> str:
        """A button's target, when it came as a key (too long for a value): what it names now, or ""."""
        if not command.target.startswith(buttons.KEY_PREFIX) or not command.section:
            return command.target
        if command.name == "purge":
            assert self.control is not None
            return buttons.resolve(command.target, self.control.settings.queues)
        return buttons.resolve(command.target, (t.id for t in self.take_snapshot().celery.active_tasks))

    def run_text(self, text: str, actor: Actor) -> Reply:
        try:
            return self.run(parse(text), actor)
        except UsageError as problem:
            return Reply(help_view(str(problem)), replace_original=False)

    def run_button(self, action_id: str, value: str, actor: Actor) -> Reply:
        """A button pressed, in Slack or as a numbered choice in the console."""
        if action_id == buttons.SHARE and (refusal := self.viewer_refusal(actor)):
            return Reply(refusal, replace_original=False)  # sharing shows the channel what the viewer sees
        try:
            return self.run(parse_button(action_id, value), actor)
        except UsageError as problem:
            if self.control is not None and action_id in TARGETED:
                self.control.reject(actor, action_id, str(value)[:255], str(problem))
            return Reply(message_view("opsbot", str(problem), Level.WARN), replace_original=False)
