"""Console mode: the `/tasks` commands in a terminal, with no Slack at all.

Type what you would type in Slack (`/tasks active`, or just `active`); buttons are numbered choices,
picked by typing their number, and a button that asks for confirmation in Slack asks here too.
At a terminal the prompt is prompt_toolkit's: alerts and log lines from other threads are printed above
it, and it is drawn again below them with what the user had typed so far.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout
from rich.console import Console

from bot.commands.dispatch import Commands
from bot.commands.grammar import UsageError
from bot.commands.help import help_view
from bot.console import render as terminal
from bot.control.access import Actor
from bot.status.snapshot import Level
from bot.status.views import Action, View, message_view

PROMPT = "opsbot> "
QUIT = {"quit", "exit", "q", ":q"}
YES = {"y", "yes"}


def pick(line: str, offered: list[Action]) -> Action | None:
    """The numbered choice the user typed, if the line is a number."""
    if not (line.isascii() and line.isdigit()):
        return None
    number = int(line)
    if not 1 <= number <= len(offered):
        raise UsageError(f"There is no choice {number}; pick 1 to {len(offered)}." if offered
                         else "There is nothing to choose here.")
    return offered[number - 1]


Ask = Callable[[str], str]  # shows a prompt, returns the line typed; EOFError at the end of input


class Session:
    """One operator at one terminal: the last choices offered, and where answers come from."""

    def __init__(self, commands: Commands, operator: Actor, console: Console, ask: Ask) -> None:
        self.commands = commands
        self.operator = operator
        self.console = console
        self.ask = ask
        self.offered: list[Action] = []

    def confirmed(self, action: Action) -> bool:
        if action.confirm is None:
            return True
        try:
            answer = self.ask(f"{action.confirm.title} {action.confirm.text} [y/N] ")
        except EOFError:
            return False
        return answer.strip().lower() in YES

    def answer(self, line: str) -> View:
        try:
            action = pick(line, self.offered)
            if action is None:
                return self.commands.run_text(line, self.operator).view
            if not self.confirmed(action):
                return message_view("opsbot", "Cancelled; nothing was done.", Level.OK)
            return self.commands.run_button(action.action_id, action.value, self.operator).view
        except UsageError as problem:
            return message_view("opsbot", str(problem), Level.WARN)

    def loop(self) -> None:
        while True:
            try:
                line = self.ask(PROMPT).strip()
            except EOFError:
                return
            if not line:
                continue
            if line.lower() in QUIT:
                return
            view = self.answer(line)
            self.offered = terminal.choices(view)
            self.console.print(terminal.render(view))


def run(commands: Commands, operator: Actor, console: Console | None = None,
        lines: Iterable[str] | None = None) -> int:
    console = console or Console()
    console.print(terminal.render(help_view()))
    console.print("Type a command (e.g. [bold]/tasks[/bold]), a choice's number, or [bold]quit[/bold].")
    if lines is not None:
        Session(commands, operator, console, _from_lines(console, iter(lines))).loop()
    elif sys.stdin.isatty() and sys.stdout.isatty():
        _interactive(Session(commands, operator, console, PromptSession().prompt))
    else:
        Session(commands, operator, console, _from_lines(console, iter(sys.stdin.readline, ""))).loop()
    return 0


def _interactive(session: Session) -> None:
    """Whatever is printed while the user types (alerts, log lines from other threads) goes above the
    prompt, which is then drawn again with what was typed so far."""
    with patch_stdout(raw=True):  # raw: rich's colours pass through
        handlers = [h for h in logging.getLogger().handlers
                    if isinstance(h, logging.StreamHandler) and h.stream in (sys.__stderr__, sys.__stdout__)]
        originals = [h.setStream(sys.stderr) for h in handlers]
        try:
            session.loop()
        except KeyboardInterrupt:
            pass
        finally:
            for handler, original in zip(handlers, originals, strict=True):
                handler.setStream(original)


def _from_lines(console: Console, lines: Iterator[str]) -> Ask:
    """Answers read from a pipe or a script: the prompt is printed so the transcript reads like a session."""
    def ask(prompt: str) -> str:
        console.print(prompt, end="", markup=False, highlight=False)
        line = next(lines, None)
        if line is None:
            raise EOFError
        return line.rstrip("\n")
    return ask
