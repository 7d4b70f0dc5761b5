"""`/tasks` with several stacks: `/tasks` shows them all, `/tasks <stack> [subcommand]` one of them.

Each stack has its own single-stack `Commands`; this routes to it by the stack's name (typed first, or
stamped in front of a button's value by `bot.stacks.view.stamped`) and names the stack in every answer.
A click naming no stack, or a stack opsbot does not watch, is refused: nothing is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bot.commands.dispatch import Commands, Reply
from bot.commands.grammar import ALIASES, Command, UsageError, parse, shown
from bot.commands.help import help_view
from bot.control.access import Actor
from bot.history.store import TaskRecord
from bot.history.views import history_item
from bot.slack import buttons
from bot.slack.buttons import TARGETED
from bot.stacks.runner import StackSnapshot, StacksProber
from bot.stacks.view import named, stacks_view
from bot.status.snapshot import Level
from bot.status.views import Item, Section, View, message_view

ACROSS = ("overview", "help", "incidents")  # what `/tasks <subcommand>` answers for every stack at once
NO_STACK = "That button names no stack I watch; nothing was done."
RECENT_FAILURES = 5  # on the Home tab, newest first, whatever their stack


def failure_item(stack: str, row: TaskRecord) -> Item:
    item = history_item(row)
    return replace(item, title=f"{stack} · {item.title}")


class StackCommands:
    """The command set of several stacks, with the same entry points as `Commands` for the edges."""

    def __init__(self, members: dict[str, Commands], prober: StacksProber,
                 notes: Callable[[], list[str]] = list) -> None:
        self.members = members
        self.prober = prober
        self.notes = notes  # the footer's lines that are no stack's: the store, the replica, Slack

    @property
    def names(self) -> str:
        return ", ".join(self.members)

    def parse(self, text: str) -> Command:
        words = text.split()
        if words and words[0] == "/tasks":
            words = words[1:]
        head = words[0].lower() if words else ""
        if head in self.members:
            return replace(parse(" ".join(words[1:])), stack=head)
        if head and head not in ALIASES and head not in buttons.SECTIONS:
            raise UsageError(f"'{shown(words[0])}' is neither a subcommand nor a stack (stacks: {self.names}).")
        command = parse(" ".join(words))
        if command.name not in ACROSS:
            raise UsageError(f"Name the stack: /tasks <stack> {command.name} (stacks: {self.names}).")
        return command

    def run(self, command: Command, actor: Actor) -> Reply:
        if command.stack:
            return self._in_stack(command.stack, lambda member: member.run(replace(command, stack=""), actor))
        if command.name == "help":
            return Reply(self.help())
        if command.name == "incidents":
            return Reply(self.incidents(actor), replace_original=False)
        return Reply(self.overview())

    def _in_stack(self, stack: str, answer: Callable[[Commands], Reply]) -> Reply:
        member = self.members[stack]
        reply = answer(member)
        later = reply.follow_up
        return replace(reply, view=named(reply.view, stack),
                       follow_up=(lambda: named(later(), stack)) if later is not None else None)

    def snapshots(self) -> tuple[StackSnapshot, ...]:
        return self.prober.snapshots()

    def overview(self) -> View:
        stacks = self.snapshots()
        return stacks_view(stacks, lambda s: self.members[s.name].view_of(s.snapshot, "overview"),
                           tuple(n for n in self.notes() if n))

    def help(self, problem: str = "") -> View:
        view = help_view(problem)
        items = (Item(None, "/tasks", "every stack: one line each, then the details of those not green"),
                 Item(None, "/tasks <stack> [subcommand]", f"any command above, for one stack: {self.names}"))
        return replace(view, sections=(Section("Stacks", items), *view.sections))

    def incidents(self, actor: Actor) -> View:
        """Each stack's open incidents, under its name (or what it says instead: none, alerting off)."""
        views = {name: named(member.run(Command("incidents"), actor).view, name)
                 for name, member in self.members.items()}
        sections = [replace(s, title=f"{name} · {s.title}", note=s.note or ("" if s.items else view.summary))
                    for name, view in views.items() for s in view.sections]
        sections += [Section(name, note=view.summary) for name, view in views.items() if not view.sections]
        level = max((v.level for v in views.values() if v.level is not None), default=None)
        return View("Incidents", f"Across {len(self.members)} stacks.", level, tuple(sections))

    def run_text(self, text: str, actor: Actor) -> Reply:
        try:
            return self.run(self.parse(text), actor)
        except UsageError as problem:
            return Reply(self.help(str(problem)), replace_original=False)

    def _refuse(self, action_id: str, value: str, actor: Actor) -> Reply:
        control = next(iter(self.members.values())).control
        if control is not None and action_id in TARGETED:
            control.reject(actor, action_id, value[:255], NO_STACK)  # audited like any forged click
        return Reply(message_view("opsbot", NO_STACK, Level.WARN), replace_original=False)

    def run_button(self, action_id: str, value: str, actor: Actor) -> Reply:
        stack, inner = buttons.unstamp(value)
        if not stack and action_id in ("page_refresh", buttons.SHARE) and inner == "overview:1":
            # The buttons of the stacks' own overview; sharing shows the channel what the viewer sees.
            refusal = next(iter(self.members.values())).viewer_refusal(actor) if action_id == buttons.SHARE else None
            return Reply(refusal, replace_original=False) if refusal else Reply(self.overview())
        if stack not in self.members:
            return self._refuse(action_id, value, actor)
        return self._in_stack(stack, lambda member: member.run_button(action_id, inner, actor))

    def run_alert_button(self, action_id: str, value: str, actor: Actor) -> Reply | None:
        stack, inner = buttons.unstamp(value)
        if stack not in self.members:
            return self._refuse(action_id, value, actor)
        reply = self.members[stack].run_alert_button(action_id, inner, actor)
        return None if reply is None else replace(reply, view=named(reply.view, stack))

    def home(self) -> View:
        """The App Home: every stack's line (and the details of those not green), then the latest failures."""
        view = self.overview()
        rows = [(name, row) for name, member in self.members.items() if member.history is not None
                for row in member.history.recent_failures()]
        rows.sort(key=lambda pair: pair[1].finished_at or 0, reverse=True)
        failures = tuple(failure_item(name, row) for name, row in rows[:RECENT_FAILURES])
        note = "" if failures else "No failure on record."
        return replace(view, sections=(*view.sections, Section("Recent failures", failures, note=note)))
