"""Console mode: the `/tasks` commands in a terminal, with no Slack at all.

Type what you would type in Slack (`/tasks active`, or just `active`); buttons are numbered choices,
picked by typing their number, and a button that asks for confirmation in Slack asks here too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from rich.console import Console
from rich.markup import escape

from bot import terminal
from bot.access import Actor
from bot.commands import Commands, UsageError
from bot.snapshot import Level
from bot.views import Action, View, help_view, message_view

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


class Session:
    """One operator at one terminal: the last choices offered, and where answers come from."""

    def __init__(self, commands: Commands, operator: Actor, console: Console, lines: Iterator[str]) -> None:
        self.commands = commands
        self.operator = operator
        self.console = console
        self.lines = lines
        self.offered: list[Action] = []

    def confirmed(self, action: Action) -> bool:
        if action.confirm is None:
            return True
        # Names in a confirmation are data: rich must not read "[...]" in them as its markup.
        self.console.print(f"[bold]{escape(action.confirm.title)}[/bold] {escape(action.confirm.text)} [y/N] ", end="")
        answer = next(self.lines, "").strip().lower()
        return answer in YES

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
        for raw in self.lines:
            line = raw.strip()
            if not line:
                continue
            if line.lower() in QUIT:
                break
            view = self.answer(line)
            self.offered = terminal.choices(view)
            self.console.print(terminal.render(view))


def run(commands: Commands, operator: Actor, console: Console | None = None,
        lines: Iterable[str] | None = None) -> int:
    console = console or Console()
    interactive = lines is None and sys.stdin.isatty()
    console.print(terminal.render(help_view()))
    console.print("Type a command (e.g. [bold]/tasks[/bold]), a choice's number, or [bold]quit[/bold].")
    source = iter(lines) if lines is not None else _stdin_lines(console, interactive)
    Session(commands, operator, console, source).loop()
    return 0


def _stdin_lines(console: Console, interactive: bool) -> Iterator[str]:
    while True:
        try:
            yield console.input(PROMPT) if interactive else _read_piped(console)
        except EOFError:
            return


def _read_piped(console: Console) -> str:
    console.print(PROMPT, end="")
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line
