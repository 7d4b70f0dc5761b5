"""What several stacks look like: one line per stack, then the details of every stack that is not green.

Pure: snapshots in, a view out. A stack's own views come from the single-stack builders; here they are
only named (their sections carry the stack's name) and their buttons stamped with it (`stamped`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bot.slack import buttons
from bot.stacks.runner import StackSnapshot
from bot.status import assess
from bot.status.snapshot import Level
from bot.status.views import Item, Section, View

DETAILED = 3  # stacks whose details follow the lines; more would not fit Slack's 50 blocks


def stamped_action(action: buttons.Action | None, stack: str) -> buttons.Action | None:
    if action is None or (action.slack_only and action.ref is not None):  # a link: its value is never read back
        return action
    return replace(action, value=buttons.stamp(stack, action.value))


def stamped(view: View, stack: str) -> View:
    """The view with every button naming `stack`, so that a click goes back to the stack it was drawn for."""
    sections = tuple(replace(s, items=tuple(replace(i, action=stamped_action(i.action, stack)) for i in s.items))
                     for s in view.sections)
    actions = tuple(a for a in (stamped_action(a, stack) for a in view.actions) if a is not None)
    return replace(view, sections=sections, actions=actions)


def named(view: View, stack: str) -> View:
    """A stack's own view (`/tasks prod workers`): its title and buttons name the stack."""
    return replace(stamped(view, stack), title=f"{view.title} · {stack}")


def stack_line(stack: StackSnapshot) -> Item:
    return Item(assess.overall_level(stack.snapshot), stack.name, assess.summary(stack.snapshot))


def overall(stacks: tuple[StackSnapshot, ...]) -> Level:
    return max(assess.overall_level(s.snapshot) for s in stacks)


def summary(stacks: tuple[StackSnapshot, ...]) -> str:
    troubled = [s for s in stacks if assess.overall_level(s.snapshot) is not Level.OK]
    if not troubled:
        return f"All {assess.plural(len(stacks), 'stack')} go"
    first = f"{troubled[0].name}: {assess.summary(troubled[0].snapshot)}"
    rest = len(troubled) - 1
    return first if not rest else f"{first} (and {assess.plural(rest, 'more stack')})"


def details(stack: StackSnapshot, view: View) -> tuple[Section, ...]:
    """A troubled stack's overview sections, titled with its name; its buttons stamped."""
    body = stamped(view, stack.name)
    return tuple(replace(s, title=f"{stack.name} · {s.title}") for s in body.sections)


def stacks_view(stacks: tuple[StackSnapshot, ...], overview: Callable[[StackSnapshot], View],
                notes: tuple[str, ...] = ()) -> View:
    """`/tasks` with several stacks. `overview` draws one stack's own overview (with its controls)."""
    troubled = [s for s in stacks if assess.overall_level(s.snapshot) is not Level.OK]
    sections = [Section("Stacks", tuple(stack_line(s) for s in stacks))]
    for stack in troubled[:DETAILED]:
        sections += details(stack, overview(stack))
    if len(troubled) > DETAILED:
        left = ", ".join(s.name for s in troubled[DETAILED:])
        sections.append(Section("More stacks", note=f"Not green either: {left}; type /tasks <stack> for one."))
    elapsed = max(s.snapshot.elapsed for s in stacks)
    footer = " · ".join([f"Probed {assess.plural(len(stacks), 'stack')} in {elapsed * 1000:.0f} ms", *notes])
    actions = (buttons.page("refresh", "overview", 1, "Refresh"), buttons.share("overview", 1))
    return View("Task status", summary(stacks), overall(stacks), tuple(sections), actions, footer)
