"""Console mode: the `/tasks` commands in a terminal, with no Slack at all.

Type what you would type in Slack (`/tasks active`, or just `active`); buttons are numbered choices,
picked by typing their number.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from rich.console import Console

from bot import terminal
from bot.commands import Commands, UsageError
from bot.snapshot import Level
from bot.views import Action, View, help_view, message_view

PROMPT = "opsbot> "
QUIT = {"quit", "exit", "q", ":q"}


def pick(line: str, offered: list[Action]) -> Action | None:
    """The numbered choice the user typed, if the line is a number."""
    if not line.isdigit():
        return None
    number = int(line)
    if not 1 <= number <= len(offered):
        raise UsageError(f"There is no choice {number}; pick 1 to {len(offered)}." if offered
                         else "There is nothing to choose here.")
    return offered[number - 1]


def answer(line: str, commands: Commands, offered: list[Action]) -> View:
    try:
        action = pick(line, offered)
        if action is not None:
            return commands.run_action(action.action_id, action.value)
        return commands.run_text(line)
    except UsageError as problem:
        return message_view("opsbot", str(problem), Level.WARN)


def run(commands: Commands, console: Console | None = None, lines: Iterable[str] | None = None) -> int:
    console = console or Console()
    interactive = lines is None and sys.stdin.isatty()
    console.print(terminal.render(help_view()))
    console.print("Type a command (e.g. [bold]/tasks[/bold]), a choice's number, or [bold]quit[/bold].")
    offered: list[Action] = []
    source = lines if lines is not None else _stdin_lines(console, interactive)
    for raw in source:
        line = raw.strip()
        if not line:
            continue
        if line.lower() in QUIT:
            break
        view = answer(line, commands, offered)
        offered = terminal.choices(view)
        console.print(terminal.render(view))
    return 0


def _stdin_lines(console: Console, interactive: bool) -> Iterable[str]:
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
