"""The dispatcher of the `/tasks` commands: `Commands` answers a `Command` (bot.commands.grammar) with a
`Reply`, through one handler per `Kind`, taking a fresh snapshot when the answer shows the status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.alerting.mute import MuteScope, parse_mute
from bot.alerting.service import AlertService
from bot.alerting.views import incidents_view
from bot.charts import service as chart_service
from bot.charts.sparkline import chart_view
from bot.commands.grammar import FORGED, Command, Kind, UsageError, parse, parse_button, shown
from bot.commands.help import help_view
from bot.control.access import HOW_TO_CONFIGURE, MUTE, NOT_A_VIEWER, AccessUnknown, Actor
from bot.control.tasks import TASK_ID, Outcome, TaskControl
from bot.control.views import audit_view
from bot.health.retry import NO_BACKEND, Retrier
from bot.history.read import History
from bot.history.views import history_item, page_view, task_view
from bot.markup import phrase
from bot.slack import buttons
from bot.slack.buttons import PRIVATE_SECTIONS, TARGETED, Forged
from bot.status.assess import time_of_day
from bot.status.snapshot import Level, Snapshot
from bot.status.views import (
    Controls,
    Item,
    Notice,
    Section,
    View,
    message_view,
    status_view,
)
from bot.workers import rules as worker_rules
from bot.workers.actions import WorkerControl

# Task details (arguments, results, exceptions): only for viewers and admins when viewers are set.
FOR_VIEWERS = ("active", "history", "show", "scheduled", "reserved")
# The status section an action's answer redraws when typed: the list its target lives in.
REDRAWN_SECTION = {"terminate": "active", "kill": "active", "purge": "queues"}


def without_arguments(snapshot: Snapshot) -> Snapshot:
    """The snapshot with every running task's arguments left out."""
    workers = tuple(replace(w, active=tuple(replace(t, args_summary="") for t in w.active))
                    for w in snapshot.celery.workers)
    return replace(snapshot, celery=replace(snapshot.celery, workers=workers))


@dataclass(frozen=True)
class Reply:
    """A view, and how to deliver it after a click."""

    view: View
    replace_original: bool = True  # False: leave the clicked message alone, answer privately
    # A second look later, redrawn over the same message: did the signalled process really stop?
    follow_up: Callable[[], View] | None = None
    follow_up_after: float = 0.0




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
        self._handlers: dict[Kind, Callable[[Command, Actor], Reply]] = {
            Kind.HELP: self._help,
            Kind.AUDIT: self._audit,
            Kind.TASK_ACTION: self._act,
            Kind.RETRY_FAILED: self._privately(self._retry_failed),
            Kind.WORKERS: self._worker_command,
            Kind.ALERTING: self._privately(self._alerting),
            Kind.HISTORY: self._history_reply,
            Kind.CHART: self._privately(self._chart),
            Kind.STATUS: self._status,
        }

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
        if command.name in FOR_VIEWERS and (refusal := self.viewer_refusal(actor)):
            return Reply(refusal, replace_original=False)
        return self._handlers[command.kind](command, actor)

    def _help(self, command: Command, actor: Actor) -> Reply:
        return Reply(help_view())

    def _status(self, command: Command, actor: Actor) -> Reply:
        return Reply(self.status(command.name, command.page))

    def _privately(self, answer: Callable[[Command, Actor], View]) -> Callable[[Command, Actor], Reply]:
        """A handler whose view answers beside the message, leaving it as it was."""
        return lambda command, actor: Reply(answer(command, actor), replace_original=False)

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

    def _history_reply(self, command: Command, actor: Actor) -> Reply:
        # Show from an alert answers beside it: the alert message is the incident's, not ours.
        return Reply(self._history(command), replace_original=command.section not in PRIVATE_SECTIONS)

    def _history(self, command: Command) -> View:
        if self.history is None:
            return message_view("opsbot", "Task history is not available here.", Level.WARN)
        if command.name == "history":
            return page_view(self.history.page(command.target or None, command.name_filter or None, command.page))
        if not TASK_ID.match(command.target):
            return message_view("opsbot", "That is not a valid task id.", Level.WARN)
        found = self.history.task(command.target)
        if found is None:
            return message_view("opsbot", f"No task `{shown(command.target, 60)}` on record.", Level.WARN)
        return task_view(found.record, found.retryable)

    def _chart(self, command: Command, actor: Actor) -> View:
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
        refusal = self.control.refusal(actor, MUTE) if self.control else None
        if refusal:
            return message_view("opsbot", refusal.message, refusal.level)
        if command.name == "unmute":
            self.alerts.unmute()
            self._record(actor, "unmute", MuteScope.ALL, "done", "Alerts unmuted.")
            return message_view("opsbot", phrase("Alerts unmuted by {}.", actor.mention), Level.OK)
        mute = parse_mute(command.args)
        until = self.alerts.mute(mute)
        what = "All alerts" if mute.scope is MuteScope.ALL else f"Alerts about {mute.scope}"
        self._record(actor, "mute", mute.scope, "done", f"{what} muted until {time_of_day(until)}.")
        said = phrase("{} muted until {} by {}.", what, time_of_day(until), actor.mention)
        return message_view("opsbot", said, Level.OK)

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

    def _audit(self, command: Command, actor: Actor) -> Reply:
        if self.control is None:
            return Reply(message_view("opsbot", HOW_TO_CONFIGURE, Level.WARN))
        entries = self.control.audit(actor)
        if isinstance(entries, Outcome):
            return Reply(message_view("opsbot", entries.message, entries.level))
        return Reply(audit_view(entries))

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
        section = command.section or REDRAWN_SECTION[command.name]
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
        what = phrase("{} failed {} since {}.", count, command.target, time_of_day(command.since))
        if not count:
            return message_view("opsbot", phrase("No {} task failed since {}; nothing to retry.", command.target,
                                                 time_of_day(command.since)), Level.OK)
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
