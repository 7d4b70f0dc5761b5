"""The `/tasks` command language, shared by Slack and the console.

`parse` turns what a user typed (or a button's value) into a `Command`, or a `UsageError` whose
message is safe to show. `Commands` answers a command with a view, taking a fresh snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from bot.redact import redact
from bot.snapshot import Snapshot
from bot.views import SECTIONS, View, help_view, status_view

ALIASES = {"": "overview", "status": "overview", "overview": "overview", "worker": "workers",
           "queue": "queues", "running": "active", "help": "help", "-h": "help", "--help": "help",
           "?": "help"}
MAX_PAGE = 10_000
SECTION_VALUE = re.compile(r"^(?P<section>[a-z]+):(?P<page>\d{1,5})$")


class UsageError(ValueError):
    """Input we do not understand. The message is shown to the user as is."""


@dataclass(frozen=True)
class Command:
    name: str  # a section of the status ("overview", "workers", ...) or "help"
    page: int = 1


def shown(text: str, limit: int = 40) -> str:
    """User input echoed back: short, single-line and without anything secret."""
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_page(word: str) -> int:
    if not word.isdigit() or not 1 <= int(word) <= MAX_PAGE:
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
    if name == "help" or not rest:
        return Command(name)
    if len(rest) == 1:
        return Command(name, parse_page(rest[0]))
    raise UsageError(f"'/tasks {shown(' '.join(words))}' has too many words.")


def parse_section_value(value: str) -> Command:
    """A paging or share button's value, "active:2". A button's value is only a claim: check it."""
    match = SECTION_VALUE.match(value or "")
    if not match or match["section"] not in SECTIONS or not 1 <= int(match["page"]) <= MAX_PAGE:
        raise UsageError("That button is not one I made; nothing was done.")
    return Command(match["section"], int(match["page"]))


class Commands:
    """Answers commands with views; the only state it needs is a way to take a snapshot."""

    def __init__(self, take_snapshot: Callable[[], Snapshot]) -> None:
        self.take_snapshot = take_snapshot

    def run(self, command: Command) -> View:
        if command.name == "help":
            return help_view()
        return status_view(self.take_snapshot(), command.name, command.page)

    def run_action(self, action_id: str, value: str) -> View:
        """A button pressed, in Slack or as a numbered choice in the console."""
        if action_id in ("page", "share"):
            return self.run(parse_section_value(value))
        raise UsageError("That button is not one I know; nothing was done.")

    def run_text(self, text: str) -> View:
        try:
            return self.run(parse(text))
        except UsageError as problem:
            return help_view(str(problem))
