"""Every button opsbot draws, in one place: its action_id, how its value is written and read back.

Slack rejects a whole message when two elements of one block share an action_id
(https://api.slack.com/reference/block-kit/block-elements#button), so each button of a block has its
own id (`page_prev`, `page_next`, `page_refresh`, ...) and the Slack edge routes them by pattern.
A value is at most 2000 characters: a longer target (a worker's incident id, say) travels as a short
key, the hash of the target, that the bot resolves against what exists now. A value is never cut.

A value coming back is only a claim (anyone can forge a click): `decode` checks its shape and raises
`Forged`; what it names is checked when acting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from bot.links import Ref
from bot.status.snapshot import short_id

MAX_VALUE = 2000  # button value; https://api.slack.com/reference/block-kit/block-elements#button
MAX_PAGE = 10_000
MAX_FILTER = 100  # a history name filter, typed by a user
KEY_PREFIX = "~"  # no section, page or incident id starts with it
KEY_LENGTH = 24  # hex digits of sha256: 96 bits, no accidental collision among a stack's targets

# Subcommands a status view can show: paging and refresh buttons name one.
SECTIONS = ("overview", "workers", "queues", "active", "beat")
# Paging buttons: their role in a view is their action_id's suffix.
PAGE_ROLES = ("prev", "next", "refresh", "active", "workers")
HISTORY_ROLES = ("newer", "older")
HISTORY_STATES = {"failed": "FAILURE", "succeeded": "SUCCESS", "revoked": "REVOKED", "rejected": "REJECTED"}
TARGETED = {"terminate": "task id", "kill": "task id", "purge": "queue", "retry": "task id"}
# Where an action may also be clicked: its answer comes privately, the clicked message stays as it is.
PRIVATE_SECTIONS = ("alert", "history", "show")
SHOWN_IDS = 3  # "Show" buttons of one alert: task_show_1 .. task_show_3 (unique within its block)
RETRY_FAILED = "retry_failed"
SNOOZES = (("1 h", "3600"), ("4 h", "14400"), ("until tomorrow", "tomorrow"))
SNOOZE_VALUES = frozenset(value for _, value in SNOOZES)

# Worker control (issue 15): a worker's detail and what it offers. Role -> (command, fixed argument).
WORKER_ROLES = {"detail": ("detail", ""), "grow": ("pool", "+1"), "shrink": ("pool", "-1"), "pause": ("pause", ""),
                "resume": ("resume", ""), "restart": ("restart-pool", ""), "shutdown": ("shutdown", "")}
QUEUE_ROLES = ("pause", "resume")  # their value also names a queue: "queue|worker"
WORKER_PART = 900  # each part of a worker button's value: a longer name travels as its key

# What the Slack edge routes, by action_id.
VIEW_BUTTONS = re.compile(rf"^(page_({'|'.join(PAGE_ROLES)})|history_({'|'.join(HISTORY_ROLES)})"
                          rf"|{'|'.join(TARGETED)}|task_show_[1-{SHOWN_IDS}]|{RETRY_FAILED}"
                          rf"|worker_({'|'.join(WORKER_ROLES)}))$")
SHARE = "share"
RUNBOOK = "runbook"
ALERT_BUTTONS = re.compile(r"^alert_(ack|status|snooze_\w+)$")

SECTION_VALUE = re.compile(r"^(?P<section>[a-z]+):(?P<page>[0-9]{1,5})$")
TARGET_VALUE = re.compile(r"^(?P<section>[a-z]+)\|(?P<target>.{1,255})$", re.DOTALL)


class Forged(ValueError):
    """A click whose action_id or value is not one the bot makes."""


@dataclass(frozen=True)
class Confirm:
    title: str
    text: str
    confirm: str = "Yes"
    deny: str = "Cancel"


@dataclass(frozen=True)
class Action:
    """A button in Slack, a numbered choice in the console."""

    action_id: str
    label: str
    value: str = ""
    style: str | None = None  # "primary" or "danger"
    confirm: Confirm | None = None
    slack_only: bool = False  # e.g. "Share in channel": meaningless in a terminal
    ref: Ref | None = None  # a link button to this (("runbook", check)); dropped where no URL is configured


@dataclass(frozen=True)
class Click:
    """What a decoded click asks for: a view, a history page, or an action on a target."""

    name: str  # a section, "history", or an action ("terminate", "kill", "purge")
    page: int = 1
    target: str = ""  # task id or queue (maybe a key, see `resolve`); a final state for history
    section: str = ""  # where an action was clicked, redrawn after it
    name_filter: str = ""
    since: float = 0.0  # retry_failed: failed since this moment
    worker: str = ""  # worker control: the worker (maybe a key)


# --- Keys for long values --------------------------------------------------------------------


def key_of(target: str) -> str:
    return KEY_PREFIX + hashlib.sha256(target.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_LENGTH]


def ref(target: str, room: int = MAX_VALUE) -> str:
    """The target itself when it fits `room`, else its key."""
    return target if len(target) <= room else key_of(target)


def resolve(claimed: str, candidates: Iterable[str]) -> str:
    """The target a value names: itself, or the candidate whose key it is ("" when none is)."""
    if not claimed.startswith(KEY_PREFIX):
        return claimed
    return next((c for c in candidates if key_of(c) == claimed), "")


# --- Building ----------------------------------------------------------------------------------


def page(role: str, section: str, number: int, label: str) -> Action:
    assert role in PAGE_ROLES and section in SECTIONS
    return Action(f"page_{role}", label, f"{section}:{number}")


def share(section: str, number: int) -> Action:
    return Action(SHARE, "Share in channel", f"{section}:{number}", slack_only=True)


def history(role: str, number: int, state: str | None, name: str | None) -> Action:
    assert role in HISTORY_ROLES and len(name or "") <= MAX_FILTER  # the parser refuses longer filters
    return Action(f"history_{role}", role.capitalize(), f"{number}|{state or ''}|{name or ''}")


def targeted(action: str, section: str, target: str, label: str, confirm: Confirm) -> Action:
    """Terminate or Purge: where it was clicked (to redraw that view) and what it acts on."""
    value = f"{section}|{ref(target, MAX_VALUE - len(section) - 1)}"
    return Action(action, label, value, style="danger", confirm=confirm)


def runbook(incident_id: str, check: str) -> Action:
    """A link button to the team's runbook for this check (OPSBOT_RUNBOOK_URL); Slack opens it, we only ack."""
    return Action(RUNBOOK, "Runbook", ref(incident_id, MAX_VALUE), slack_only=True, ref=("runbook", check))


def retry(section: str, task_id: str, described: str) -> Action:
    """Retry a failed or revoked task (admins; the bot checks the exact arguments when clicked)."""
    return Action("retry", "Retry", f"{section}|{ref(task_id, MAX_VALUE - len(section) - 1)}", style="primary",
                  confirm=Confirm("Retry this task?", f"{described}. It is sent again as a new task with the same "
                                  "arguments, queue and routing key (at the queue's default priority).",
                                  "Retry", "Cancel"))


def show(number: int, task_id: str) -> Action:
    assert 1 <= number <= SHOWN_IDS
    return Action(f"task_show_{number}", f"Show {short_id(task_id)}", ref(task_id))


def retry_failed(name: str, since: float, count: int) -> Action:
    return Action(RETRY_FAILED, f"Retry {count}", f"{int(since)}|{name}", style="primary",
                  confirm=Confirm(f"Retry {count} tasks?", f"Every failed {name} task since then is sent again "
                                  "with its exact arguments.", "Retry", "Cancel"))
def _part(text: str) -> str:
    """One part of a worker button's value: itself, or its key when it could be misread or is long."""
    fits = text and "|" not in text and not text.startswith(KEY_PREFIX) and len(text) <= WORKER_PART
    return text if fits else key_of(text)


def worker(role: str, worker_name: str, label: str, queue: str = "", style: str | None = None,
           confirm: Confirm | None = None) -> Action:
    """A worker-control button: "worker_<role>", valued with the worker (and for pause/resume the queue)."""
    assert role in WORKER_ROLES and bool(queue) == (role in QUEUE_ROLES)
    value = f"{_part(queue)}|{_part(worker_name)}" if queue else _part(worker_name)
    return Action(f"worker_{role}", label, value, style=style, confirm=confirm)


def _decode_worker(role: str, value: str) -> Click:
    parts = value.split("|")
    if len(parts) != (2 if role in QUEUE_ROLES else 1) or not all(0 < len(p) <= WORKER_PART for p in parts):
        raise Forged(value)
    name, fixed = WORKER_ROLES[role]
    target = parts[0] if role in QUEUE_ROLES else fixed
    return Click(name, target=target, section="detail", worker=parts[-1])


def incident(incident_id: str) -> tuple[Action, ...]:
    """An open incident's buttons: Acknowledge, the snoozes, Show status."""
    longest = max(len(value) for value in SNOOZE_VALUES) + 1
    short = ref(incident_id, MAX_VALUE - longest)
    return (
        Action("alert_ack", "Acknowledge", short, style="primary"),
        *(Action(f"alert_snooze_{value}", f"Snooze {label}", f"{short}|{value}") for label, value in SNOOZES),
        Action("alert_status", "Show status", short),
    )


# --- Reading back ------------------------------------------------------------------------------


def decode(action_id: str, value: str) -> Click:
    """A view button's click; raises Forged for anything the bot does not make."""
    value = value or ""
    if action_id == SHARE or (action_id.startswith("page_") and action_id.removeprefix("page_") in PAGE_ROLES):
        match = SECTION_VALUE.match(value)
        if not match or match["section"] not in SECTIONS or not 1 <= int(match["page"]) <= MAX_PAGE:
            raise Forged(value)
        return Click(match["section"], int(match["page"]))
    if action_id in (f"history_{role}" for role in HISTORY_ROLES):
        number, _, rest = value.partition("|")
        state, _, name = rest.partition("|")
        if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= MAX_PAGE \
                or state not in ("", *HISTORY_STATES.values()) or len(name) > MAX_FILTER:
            raise Forged(value)
        return Click("history", int(number), target=state, name_filter=name)
    if action_id.startswith("worker_") and action_id.removeprefix("worker_") in WORKER_ROLES:
        return _decode_worker(action_id.removeprefix("worker_"), value)
    if action_id in TARGETED:
        match = TARGET_VALUE.match(value)
        if not match or match["section"] not in (*SECTIONS, *PRIVATE_SECTIONS):
            raise Forged(value)
        return Click(action_id, target=match["target"], section=match["section"])
    if re.fullmatch(rf"task_show_[1-{SHOWN_IDS}]", action_id) and value:
        return Click("show", target=value, section="alert")
    if action_id == RETRY_FAILED:
        since, _, name = value.partition("|")
        if not (since.isascii() and since.isdigit() and len(since) <= 12) or not 0 < len(name) <= 255:
            raise Forged(value)
        return Click(RETRY_FAILED, target=name, section="alert", since=float(since))
    raise Forged(action_id)


def decode_alert(action_id: str, value: str) -> tuple[str, str]:
    """An alert button's (incident id or its key, snooze length or ""); raises Forged."""
    if action_id in ("alert_ack", "alert_status"):
        return value, ""
    how_long = action_id.removeprefix("alert_snooze_")
    incident_ref, _, in_value = (value or "").rpartition("|")
    if action_id.startswith("alert_snooze_") and how_long in SNOOZE_VALUES and in_value == how_long:
        return incident_ref, how_long
    raise Forged(action_id)
