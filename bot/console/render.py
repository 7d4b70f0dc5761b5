"""Rendering a view for a terminal with rich. Pure: a view in, a renderable and its choices out.

Buttons become numbered choices; the console loop (`bot.console.loop`) reads the number and acts.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from bot.status.snapshot import Level
from bot.status.views import Action, Section, View

STYLES = {Level.OK: "green", Level.UNKNOWN: "white", Level.WARN: "yellow", Level.DOWN: "bold red", None: "cyan"}
ICONS = {Level.OK: "●", Level.UNKNOWN: "○", Level.WARN: "▲", Level.DOWN: "✖", None: "•"}


def choices(view: View) -> list[Action]:
    """The actions a terminal can take, in the order they are numbered (1, 2, ...)."""
    row_actions = [item.action for section in view.sections for item in section.items if item.action]
    return [a for a in [*row_actions, *view.actions] if not a.slack_only]


def section_table(section: Section, numbers: dict[int, int]) -> Table:
    # Titles, names and notes are data (task names, audit targets): escaped, never read as rich markup.
    title = escape(section.title + (f"  ({section.note})" if section.note else ""))
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(width=1)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for item in section.items:
        text = Text(f"{item.code}  " if item.code else "", style="dim")
        text.append(item.text)
        if item.action is not None and id(item.action) in numbers:
            text.append(f"  [{numbers[id(item.action)]}] {item.action.label}", style="bold magenta")
        table.add_row(Text(ICONS[item.level], style=STYLES[item.level]), Text(item.title), text)
    if section.more:
        table.add_row("", "", Text(f"… and {section.more} more", style="italic"))
    return table


def render(view: View) -> RenderableType:
    numbered = choices(view)
    numbers = {id(action): n for n, action in enumerate(numbered, start=1)}
    parts: list[RenderableType] = [
        Rule(escape(view.title), align="left"),
    ]
    if view.notice:
        parts.append(Text(f"{ICONS[view.notice.level]} {view.notice.text}", style=f"{STYLES[view.notice.level]} bold"))
    parts.append(Text(f"{ICONS[view.level]} {view.summary}", style=STYLES[view.level]))
    for section in view.sections:
        parts.append(Text(""))
        parts.append(section_table(section, numbers))
    view_actions = [a for a in numbered if all(a is not item.action for s in view.sections for item in s.items)]
    if view_actions:
        line = "   ".join(f"[{numbers[id(a)]}] {a.label}" for a in view_actions)
        parts.append(Text(""))
        parts.append(Text(line, style="bold magenta"))
    if view.footer:
        parts.append(Text(view.footer, style="dim"))
    return Group(*parts)
