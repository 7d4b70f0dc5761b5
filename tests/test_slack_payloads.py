"""Property tests over every renderer: whatever the stack or its users hold, Slack accepts the payload
(checked by the stand-in's own validator, tests/support/slack/rules.py), and no text that came from data is a
live mention or link. The only `<...>` in a payload are the bot's own mentions.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.alerting.engine import Incident
from bot.alerting.views import incident_view
from bot.commands.dispatch import Commands
from bot.control.access import Actor
from bot.control.audit import AuditEntry
from bot.control.views import audit_view
from bot.history.store import TaskRecord
from bot.history.views import history_view, task_view
from bot.markup import mention, phrase
from bot.slack import blocks, buttons
from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    FlowerStatus,
    Level,
    QueueInfo,
    Snapshot,
    TaskInfo,
    WorkerInfo,
)
from bot.status.views import Controls, Notice, status_view
from tests.support.slack.rules import message_error

NOW = 1_800_000_000.0
OURS = "U0OPS1"  # the one user whose mention the bot writes in these payloads
OUR_MENTION = f"<@{OURS}>"
ENTITY = re.compile(r"&(?!(?:amp|lt|gt);)")

HOSTILE = ("<!channel>", "<!here>", "<!everyone>", "<@U123>", "<@U0OPS1>", "<#C1|ops>", "<http://x|y>",
           "<https://evil.example|click>", "<mailto:a@b.c|m>", "&", "&amp;", "&lt;!channel&gt;", "*_~", "`", "```",
           "> quote", "\u202e", "\u200b", "🔥", "e\u0301", "\n", "")
hostile = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40),
                    st.lists(st.sampled_from(HOSTILE), max_size=8).map("".join),
                    st.builds(lambda unit, n: unit * n, st.sampled_from(HOSTILE[:12]), st.integers(1, 3000)))
# 10 KB strings too: data of any size must be cut (before escaping) to fit.
big = st.builds(lambda unit: (unit * 10_240)[:10_240], st.sampled_from(("<!channel>", "&", "<@U123>", "x")))
data = st.one_of(hostile, hostile, hostile, big)

PAYLOADS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def parsed_texts(message: dict[str, Any]) -> list[str]:
    """Every text Slack parses for mentions and links: mrkdwn objects and the message's `text`."""
    found = [message.get("text", "")]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") == "mrkdwn":
                found.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(message.get("blocks", []))
    return found


def assert_accepted_and_inert(message: dict[str, Any], surface: str = "message") -> None:
    refused = message_error(message, surface)
    assert refused is None, refused["errors"][:3] if "errors" in refused else refused
    assert message["text"].strip(), "no fallback text"
    for text in parsed_texts(message):
        rest = text.replace(OUR_MENTION, "")
        assert "<" not in rest and ">" not in rest, f"live markup from data: {text[:300]!r}"
        assert not ENTITY.search(rest), f"an unescaped & (or a split entity): {text[:300]!r}"


# --- Strategies ---------------------------------------------------------------------------------


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    """0 to 1000 workers, 0 to 10000 running tasks, names and arguments drawn from hostile text."""
    workers = draw(st.integers(0, 1000))
    tasks = draw(st.integers(0, 10_000)) if workers else 0
    names = draw(st.lists(data, min_size=1, max_size=4))
    args = draw(st.lists(data, min_size=1, max_size=3))
    per_worker = [tasks // workers + (1 if n < tasks % workers else 0) for n in range(workers)] if workers else []
    task_ids = draw(st.lists(st.one_of(st.uuids().map(str), data), min_size=1, max_size=3))
    worker_list = tuple(
        WorkerInfo(f"{names[n % len(names)]}@{n}", "prefork", count, tuple(
            TaskInfo(f"{task_ids[t % len(task_ids)]}-{n}-{t}", names[t % len(names)], f"w{n}",
                     NOW - t if t % 7 else None, args[t % len(args)]) for t in range(count)),
            reserved=n % 3, answered=n % 11 != 0)
        for n, count in enumerate(per_worker))
    queues = tuple(QueueInfo(draw(data), draw(st.integers(0, 10**6)), draw(st.sampled_from([None, 0, 3])))
                   for _ in range(draw(st.integers(0, 30))))
    lost = tuple(WorkerInfo(draw(data), heartbeat_age=30.0) for _ in range(draw(st.integers(0, 3))))
    return Snapshot(NOW, BrokerStatus("rabbitmq", draw(data), queues=queues),
                    CeleryStatus(CeleryState.RUNNING if workers else CeleryState.NOT_RUNNING, worker_list, lost=lost),
                    FlowerStatus(draw(data)), elapsed=0.01)


def largest() -> Snapshot:
    """The top of the range, always tried: 1000 workers, 10000 running tasks, every name hostile."""
    workers = tuple(WorkerInfo(f"<!channel>&{n}@" + "h" * 200, "prefork", 10, tuple(
        TaskInfo(f"<@U123>{n}-{t}", "<https://evil.example|click>&" * 30, f"w{n}", NOW - t, "('<!here>',)" * 50)
        for t in range(10)), reserved=1) for n in range(1000))
    queues = tuple(QueueInfo(f"<!everyone>{n}" + "&" * 300, n, 0) for n in range(30))
    return Snapshot(NOW, BrokerStatus("rabbitmq", "<@U123>", queues=queues),
                    CeleryStatus(CeleryState.RUNNING, workers), FlowerStatus("<!here>"), elapsed=0.01)


LARGEST = largest()
controls = st.sampled_from([None, Controls(True), Controls(False, "Set OPSBOT_ADMINS <to> & enable")])
notices = st.one_of(st.none(), st.builds(lambda level, name: Notice(level, phrase(
    "Terminated {} `{}` on {}, by {}", name, name[:8], name, mention(OURS))), st.sampled_from(list(Level)), data))


@st.composite
def incidents(draw: st.DrawFn) -> Incident:
    key = draw(st.one_of(st.sampled_from(["broker", "flower"]), data.map("worker:".__add__)))
    started = NOW - draw(st.integers(0, 10**6))
    resolved = draw(st.one_of(st.none(), st.just(NOW)))
    return Incident(f"{key}@{int(started * 1000)}", key, draw(st.sampled_from([1, 2, 3])), draw(data), draw(data),
                    started, started, resolved_at=resolved,
                    acked_by=draw(st.sampled_from([None, OUR_MENTION, "<@U123> <!channel>", "ana"])), acked_at=NOW,
                    snoozed_until=draw(st.sampled_from([None, NOW + 3600])),
                    snoozed_by=draw(st.sampled_from([OUR_MENTION, "<!here>", "&"])))


def history_rows(draw: st.DrawFn, count: int) -> list[TaskRecord]:
    states = st.sampled_from(["SUCCESS", "FAILURE", "REVOKED", "REJECTED", "RETRY", "STARTED"])
    return [TaskRecord(draw(st.one_of(st.uuids().map(str), data)) or "x", draw(states),
                       name=draw(st.one_of(st.none(), data)), worker=draw(st.one_of(st.none(), data)),
                       runtime=draw(st.one_of(st.none(), st.floats(0, 10**6))), finished_at=NOW,
                       received_at=NOW, started_at=None, args=draw(data), result=draw(data),
                       exception=draw(data), traceback=draw(data), retries=draw(st.integers(0, 5)))
            for _ in range(count)]


class RecentFailures:
    """What the Home tab asks of the history: its latest failures (here: drawn rows)."""

    def __init__(self, rows: list[TaskRecord]) -> None:
        self.rows = rows

    def recent_failures(self) -> list[TaskRecord]:
        return self.rows


# --- Properties ---------------------------------------------------------------------------------


@PAYLOADS
@given(snap=snapshots(), section=st.sampled_from(buttons.SECTIONS), page=st.integers(1, 600),
       control=controls, notice=notices)
@example(snap=Snapshot(NOW, BrokerStatus("rabbitmq", "h"), CeleryStatus(CeleryState.NOT_RUNNING), FlowerStatus("f")),
         section="overview", page=1, control=None, notice=None)
@example(snap=LARGEST, section="overview", page=1, control=Controls(True), notice=None)
@example(snap=LARGEST, section="active", page=250, control=Controls(True), notice=None)
@example(snap=LARGEST, section="active", page=500, control=Controls(True), notice=None)
@example(snap=LARGEST, section="workers", page=25, control=None, notice=None)
@example(snap=LARGEST, section="queues", page=1, control=Controls(True), notice=None)
def test_status_views_are_accepted_and_inert(snap: Snapshot, section: str, page: int, control: Controls | None,
                                             notice: Notice | None) -> None:
    view = status_view(snap, section, page, control).with_notice(notice)
    message = blocks.message(view)
    assert_accepted_and_inert(message)
    if notice is not None:
        assert OUR_MENTION in message["blocks"][1]["text"]["text"]  # the bot's own mention stays live


@PAYLOADS
@given(snap=snapshots(), control=controls, data_=st.data())
def test_the_home_tab_is_accepted_and_inert(snap: Snapshot, control: Controls | None, data_: st.DataObject) -> None:
    rows = history_rows(data_.draw, data_.draw(st.integers(0, 5)))
    commands = Commands(take_snapshot=lambda: snap, history=RecentFailures(rows))  # type: ignore[arg-type]
    commands.controls = lambda: control  # type: ignore[method-assign]
    home = blocks.to_dicts(blocks.render(commands.home(), include_slack_only=False))
    assert_accepted_and_inert({"text": "home", "blocks": home}, surface="home")


@PAYLOADS
@given(incident=incidents())
def test_incidents_are_accepted_and_inert(incident: Incident) -> None:
    message = blocks.message(incident_view(incident, NOW))
    assert_accepted_and_inert(message)
    if incident.acked_by == OUR_MENTION:
        assert f"by {OUR_MENTION} at" in str(message["blocks"])
    assert_accepted_and_inert({"text": blocks.plain_message(incident_view(incident, NOW))["text"]})


@PAYLOADS
@given(data_=st.data(), total=st.integers(0, 100_000), page=st.integers(1, 5000),
       state=st.sampled_from([None, "FAILURE", "SUCCESS"]),
       name=st.one_of(st.none(), data.map(lambda s: s[:buttons.MAX_FILTER])))  # longer: refused when typed
def test_history_pages_and_task_views_are_accepted_and_inert(data_: st.DataObject, total: int, page: int,
                                                             state: str | None, name: str | None) -> None:
    rows = history_rows(data_.draw, data_.draw(st.integers(0, 20)))
    view = history_view(rows, total, page, state, name, note=data_.draw(data))
    assert_accepted_and_inert(blocks.message(view))
    ids = [a.action_id for a in view.actions]
    assert len(ids) == len(set(ids))
    for row in rows[:3]:
        assert_accepted_and_inert(blocks.message(task_view(row)))


@PAYLOADS
@given(entries=st.lists(st.builds(AuditEntry, st.just(NOW), data, data, data, data, data), max_size=20))
def test_audit_views_are_accepted_and_inert(entries: list[AuditEntry]) -> None:
    assert_accepted_and_inert(blocks.message(audit_view(entries)))


@PAYLOADS
@given(user=st.sampled_from([OURS, "U123<!channel>", "not a user", ""]), snap=snapshots())
def test_a_shared_status_names_its_sharer_live_and_nothing_else(user: str, snap: Snapshot) -> None:
    from bot.slack.app import actor

    who: Actor = actor(user)
    view = status_view(snap)
    shared = replace(view, actions=(), footer=phrase("Shared by {} · {}", who.mention, view.footer))
    message = blocks.message(shared)
    assert_accepted_and_inert(message)
    footer = message["blocks"][-1]["elements"][0]["text"]
    assert (OUR_MENTION in footer) == (user == OURS)
