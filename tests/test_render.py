"""What users read, from snapshots built by hand: every state's wording and colour, Slack's limits at
any size, and no user data breaking out of its place. (The probes that produce real snapshots are
tested against the real stack in test_probes.py.)
"""

from __future__ import annotations

import json
from functools import partial

import pytest
from rich.console import Console

from bot.alerting.engine import Incident, Timeline
from bot.alerting.sinks import SlackSink
from bot.alerting.views import incident_view
from bot.commands.help import help_view
from bot.console import render as terminal
from bot.markup import mention, phrase
from bot.slack import blocks, buttons
from bot.status import assess
from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    Failure,
    FlowerStatus,
    Level,
    Problem,
    QueueInfo,
    Snapshot,
    TaskInfo,
    WorkerInfo,
)
from bot.status.views import Controls, Item, Notice, Section, View, status_view
from tests.support import snapshots
from tests.support.slack.rules import message_error
from tests.support.snapshots import busy

NOW = 1_800_000_000.0


snapshot = partial(snapshots.snapshot, taken_at=NOW)


def fleet(workers: int, tasks_each: int) -> CeleryStatus:
    return busy(workers, tasks_each, lambda n, t: NOW - t - n, "(42, user='x')")


def slack_text(view_blocks: list[dict]) -> str:
    return json.dumps(view_blocks)


def console_text(view) -> str:
    console = Console(width=120, record=True)
    console.print(terminal.render(view))
    return console.export_text()


def test_all_green_says_all_systems_go() -> None:
    snap = snapshot()
    assert assess.summary(snap) == "All systems go"
    assert assess.exit_code(assess.overall_level(snap)) == 0
    assert "All systems go" in console_text(status_view(snap))


@pytest.mark.parametrize("kind, words", [
    (Failure.REFUSED, "connection refused"),
    (Failure.TIMEOUT, "timed out"),
    (Failure.UNAUTHORIZED, "refuses opsbot's credentials"),
    (Failure.UNEXPECTED, "unexpected answer"),
])
def test_broker_failed_is_red_and_celery_unknown(kind: Failure, words: str) -> None:
    snap = snapshot(broker=BrokerStatus("rabbitmq", "127.0.0.1:5672", problem=Problem(kind, "127.0.0.1:5672")),
                    celery=CeleryStatus(CeleryState.UNKNOWN))
    assert assess.overall_level(snap) is Level.DOWN
    assert assess.exit_code(Level.DOWN) == 2
    text = console_text(status_view(snap))
    assert words in text
    assert "Status unknown: the broker is not reachable" in text


def test_waiting_tasks_counted_per_queue_and_amber_without_consumer() -> None:
    broker = BrokerStatus("rabbitmq", "h:5672", queues=(QueueInfo("celery", 7, 0, 0), QueueInfo("other", 2, 1, 0)))
    snap = snapshot(broker=broker)
    # Amber, and the reason is in the line itself, not only behind "(and N more problems)".
    assert assess.broker_text(broker) == "Running, 9 tasks waiting (celery: 7, other: 2); nothing consumes celery"
    assert assess.overall_level(snap) is Level.WARN
    assert "nothing consumes this queue" in assess.summary(snap)


def test_management_plugin_missing_is_its_own_state() -> None:
    broker = BrokerStatus("rabbitmq", "h:5672", queues=(QueueInfo("celery", 0, 1),),
                          management_problem=Problem(Failure.NO_MANAGEMENT, "http://h:15672"))
    snap = snapshot(broker=broker)
    assert assess.summary(snap) == ("RabbitMQ: management API not reachable at http://h:15672: "
                                    "is the rabbitmq_management plugin enabled?")
    assert assess.broker_text(broker) == ("Running, no tasks waiting; management API not reachable at "
                                          "http://h:15672: is the rabbitmq_management plugin enabled?")
    (finding,) = assess.findings(snap)
    # The broker runs: the impact is what the API alone would tell, not "nothing moves".
    assert finding.impact == ("Waiting counts are still exact; consumers, unacknowledged tasks and resource "
                              "alarms are unknown.")


def test_broker_down_impact_is_that_nothing_moves() -> None:
    broker = BrokerStatus("rabbitmq", "h:5672", problem=Problem(Failure.REFUSED, "h:5672"))
    (finding,) = assess.findings(snapshot(broker=broker, celery=CeleryStatus(CeleryState.UNKNOWN)))
    assert finding.impact == "No task can be queued or processed while the broker is down."


@pytest.mark.parametrize("silent, waiting, text, impact", [
    (True, 0, "Celery: Not running: no worker answered, and none is sending heartbeats",
     "No worker would process a task sent now."),
    (False, 3, "Celery: Not running: no worker answered",
     "No worker would process a task sent now, nor the tasks already waiting."),
])
def test_no_worker_says_a_task_sent_now_would_not_run(silent: bool, waiting: int, text: str, impact: str) -> None:
    broker = BrokerStatus("rabbitmq", "h:5672", queues=(QueueInfo("celery", waiting, 0, 0),))
    snap = snapshot(broker=broker, celery=CeleryStatus(CeleryState.NOT_RUNNING, heartbeats_silent=silent))
    celery = next(f for f in assess.findings(snap) if f.key == "celery")
    assert (celery.level, celery.text, celery.impact) == (Level.DOWN, text, impact)
    assert assess.summary(snap).startswith(text)


def test_workers_that_could_not_be_asked_are_amber_with_the_cause_never_all_go() -> None:
    """The broker runs but asking the workers failed (issue 21: a transport that cannot be imported)."""
    problem = Problem(Failure.UNEXPECTED, "h:6379", "ModuleNotFoundError: No module named 'packaging'")
    snap = snapshot(broker=BrokerStatus("redis", "h:6379", queues=(QueueInfo("celery", 3),)),
                    celery=CeleryStatus(CeleryState.UNKNOWN, problem=problem))
    expected = "Status unknown: could not ask the workers: ModuleNotFoundError: No module named 'packaging'"
    assert assess.celery_text(snap.celery) == expected
    assert assess.summary(snap) == f"Celery: {expected}"
    assert assess.overall_level(snap) is Level.WARN
    assert "broker is not reachable" not in console_text(status_view(snap))
    refused = CeleryStatus(CeleryState.UNKNOWN, problem=Problem(Failure.REFUSED, "h:6379"))
    assert assess.celery_text(refused) == ("Status unknown: could not ask the workers: "
                                           "not reachable at h:6379 (connection refused)")


def test_a_service_that_cannot_be_judged_is_never_all_systems_go() -> None:
    snap = snapshot(celery=CeleryStatus(CeleryState.UNKNOWN))
    assert assess.summary(snap) == "Status unknown: Celery"
    assert assess.exit_code(assess.overall_level(snap)) == 1


def test_alarm_is_red() -> None:
    broker = BrokerStatus("rabbitmq", "h:5672", queues=(QueueInfo("celery", 0, 1),), alarms=("memory alarm on r@h",))
    assert assess.overall_level(snapshot(broker=broker)) is Level.DOWN
    assert "publishers are blocked" in assess.summary(snapshot(broker=broker))


def test_celery_not_running_and_flower_states() -> None:
    snap = snapshot(celery=CeleryStatus(CeleryState.NOT_RUNNING),
                    flower=FlowerStatus("http://h:5555", Problem(Failure.REFUSED, "http://h:5555")))
    text = console_text(status_view(snap))
    assert "✖  Celery    Not running: no worker answered " in text
    assert "Has it been started?" in text
    unauthorized = FlowerStatus("http://h:5555", Problem(Failure.UNAUTHORIZED, "http://h:5555"))
    assert assess.flower_level(unauthorized) is Level.WARN
    assert "check FLOWER_URL" in assess.flower_text(unauthorized)


@pytest.mark.parametrize("workers, tasks_each", [(1, 0), (10, 10), (100, 10), (500, 10)])
@pytest.mark.parametrize("section", ["overview", "workers", "active", "queues"])
def test_block_kit_limits_hold_at_any_size(workers: int, tasks_each: int, section: str) -> None:
    snap = snapshot(celery=fleet(workers, tasks_each))
    view = status_view(snap, section)
    rendered = blocks.to_dicts(blocks.render(view))
    assert message_error({"text": "t", "blocks": rendered}) is None  # the stand-in's validator: Slack's rules
    total = workers * tasks_each
    if section == "active" and total > 20:
        assert f"and {total - 20} more" in slack_text(rendered)
        assert any(e.get("value") == "active:2" for b in rendered if b["type"] == "actions" for e in b["elements"])


def test_paging_walks_every_task_exactly_once() -> None:
    snap = snapshot(celery=fleet(7, 10))
    seen: list[str] = []
    page = 1
    while True:
        view = status_view(snap, "active", page)
        seen += [item.code for item in view.sections[1].items]
        if not any(a.label == "Next page" for a in view.actions):
            break
        page += 1
    assert len(seen) == 70 and len(set(seen)) == 70


def test_user_data_cannot_mention_or_link() -> None:
    task = TaskInfo("id-1", "evil<!channel>&<https://x|click>", "w1@h", NOW - 5, "('<@U123>')")
    snap = snapshot(celery=CeleryStatus(CeleryState.RUNNING, (WorkerInfo("w1@h", "prefork", 1, (task,)),)))
    text = slack_text(blocks.to_dicts(blocks.render(status_view(snap, "active"))))
    assert "<!channel>" not in text and "<@U123>" not in text and "<https" not in text
    assert "&lt;!channel&gt;" in text


def test_every_message_has_a_plain_text_fallback() -> None:
    msg = blocks.message(status_view(snapshot(celery=CeleryStatus(CeleryState.NOT_RUNNING))))
    assert msg["text"].startswith("Task status: Celery: Not running")


def test_help_lists_every_subcommand() -> None:
    text = console_text(help_view("Unknown subcommand 'x'."))
    for command in ("/tasks workers", "/tasks queues", "/tasks active", "/tasks help"):
        assert command in text
    assert "Unknown subcommand 'x'." in text


def test_console_numbers_buttons_and_leaves_out_slack_only_ones() -> None:
    view = status_view(snapshot(celery=fleet(3, 10)), "active")
    labels = [a.label for a in terminal.choices(view)]
    assert labels == ["Next page", "Refresh"]
    text = console_text(view)
    assert "[1] Next page" in text and "Share in channel" not in text


def test_running_time_and_redacted_args_shown() -> None:
    task = TaskInfo("abc", "app.export", "w1@h", NOW - 192, "(password=***)")
    snap = snapshot(celery=CeleryStatus(CeleryState.RUNNING, (WorkerInfo("w1@h", "prefork", 1, (task,)),)))
    text = console_text(status_view(snap, "active"))
    assert "running 3 min 12 s" in text and "(password=***)" in text


def test_a_page_of_long_rows_is_split_into_blocks_not_cut() -> None:
    long_name = "orders-worker-19b6d8a270-p6nrs.production.example.internal"
    tasks = tuple(TaskInfo(f"{n:08d}-aaaa-bbbb-cccc-{n:012d}", "reports.export_monthly_statement_pdf",
                           f"celery@{long_name}", NOW - n, "(" + "x" * 80 + ")") for n in range(45))
    worker = WorkerInfo(f"celery@{long_name}", "prefork", 45, tasks)
    snap = snapshot(celery=CeleryStatus(CeleryState.RUNNING, (worker,)))
    rendered = slack_text(blocks.to_dicts(blocks.render(status_view(snap, "active"))))
    shown = [t.id for t in tasks if t.id in rendered]
    assert len(shown) == 20  # the whole first page, none lost to the 3000-character limit
    assert "and 25 more" in rendered


def one_task(name: str, worker: str = "w1@h", task_id: str = "id-1") -> Snapshot:
    task = TaskInfo(task_id, name, worker, NOW - 5, "")
    return snapshot(celery=CeleryStatus(CeleryState.RUNNING, (WorkerInfo(worker, "prefork", 1, (task,)),)))


def test_confirm_dialogs_escape_what_they_name() -> None:
    snap = snapshot(broker=BrokerStatus("rabbitmq", "h", queues=(QueueInfo("q<!channel>", 3, 0),)),
                    celery=one_task("evil<@U123>", worker="w<!here>").celery)
    rendered = blocks.to_dicts(blocks.render(status_view(snap, "overview", controls=Controls(True))))
    confirms = [b["accessory"]["confirm"] for b in rendered if "accessory" in b]
    assert len(confirms) == 2
    texts = json.dumps([c["text"] for c in confirms])  # mrkdwn; titles are plain_text, never parsed
    assert all(c["text"]["type"] == "mrkdwn" and c["title"]["type"] == "plain_text" for c in confirms)
    assert "evil&lt;@U123&gt;" in texts and "w&lt;!here&gt;" in texts and "q&lt;!channel&gt;" in texts
    assert "<@U123>" not in texts and "<!here>" not in texts and "<!channel>" not in texts


def test_fallback_text_notices_and_footers_keep_data_inert() -> None:
    snap = snapshot(broker=BrokerStatus("rabbitmq", "h", queues=(QueueInfo("<@U123>", 3, 0),)))
    notice_text = phrase("Purged 3 waiting tasks from {}, by {}.", "<@U123>", mention("U0ADMIN"))
    message = blocks.message(status_view(snap).with_notice(blocks_notice(notice_text)))
    assert "<@U123>" not in message["text"] and "&lt;@U123&gt;" in message["text"]
    assert "by <@U0ADMIN>." in message["text"]  # the bot's own mention is live, in the fallback too
    assert "by <@U0ADMIN>." in message["blocks"][1]["text"]["text"]
    incident = Incident("worker:<!channel>@1", "worker:<!channel>", 3, "Worker <!channel> lost", "", NOW, NOW)
    footer = blocks.message(incident_view(incident, NOW))["blocks"][-1]["elements"][0]["text"]
    assert footer == "Incident worker:&lt;!channel&gt;@1"


def blocks_notice(text: str) -> Notice:
    return Notice(Level.OK, text)


def test_the_bots_own_mentions_are_live_and_stored_ones_checked() -> None:
    incident = Incident("flower@1", "flower", 3, "Flower down", "", NOW - 60, NOW - 60, acked_by="<@U0ANA>",
                        acked_at=NOW, snoozed_until=NOW + 600, snoozed_by="<@U0BOB> <!channel>")
    text = json.dumps(blocks.message(incident_view(incident, NOW))["blocks"])
    assert "by <@U0ANA> at" in text  # live
    assert "by &lt;@U0BOB&gt; &lt;!channel&gt;" in text  # not just a mention: data, escaped


def test_a_cut_never_splits_an_entity_and_keeps_our_words() -> None:
    message = blocks.message(status_view(one_task("&" * 5000), "active"))
    for block in message["blocks"]:
        text = block.get("text", {}).get("text", "")
        assert "&am…" not in text and "&a…" not in text and "&…" not in text
        assert len(text) <= 3000
    notice = phrase("Terminated {} by {}", "<" * 10_000, mention("U0ANA"))
    text = blocks.message(status_view(snapshot()).with_notice(blocks_notice(notice)))["blocks"][1]["text"]["text"]
    assert text.endswith("… by <@U0ANA>") and "&l…" not in text and len(text) <= 3000


def test_an_item_without_a_title_has_no_empty_emphasis() -> None:
    view = View("T", "s", None, (Section("S", (Item(None, "", "just text"), Item(None, "", "", code="abc"))),))
    text = json.dumps(blocks.message(view)["blocks"], ensure_ascii=False)
    assert "**" not in text and "• just text" in text and "• `abc`" in text


def test_each_button_of_a_block_has_its_own_action_id() -> None:
    snap = snapshot(celery=fleet(8, 3))
    for view in (status_view(snap, "overview"), status_view(snap, "active", 1), status_view(snap, "active", 2)):
        (actions,) = [b for b in blocks.message(view)["blocks"] if b["type"] == "actions"]
        ids = [e["action_id"] for e in actions["elements"]]
        assert len(ids) == len(set(ids)) >= 3, ids
    overview = {a.label: a.action_id for a in status_view(snap).actions}
    assert overview == {"Refresh": "page_refresh", "All active tasks": "page_active", "All workers": "page_workers",
                        "Share in channel": "share"}


def test_a_value_too_long_for_slack_carries_a_key_the_bot_resolves() -> None:
    incident_id = "worker:" + "w" * 3000 + "@1"
    ack, snooze, *_ = buttons.incident(incident_id)
    assert len(ack.value) <= 2000 and len(snooze.value) <= 2000 and "…" not in ack.value
    claimed, how_long = buttons.decode_alert(snooze.action_id, snooze.value)
    assert how_long == "3600" and buttons.resolve(claimed, ["flower@1", incident_id]) == incident_id
    assert buttons.resolve(claimed, ["flower@1"]) == ""  # gone since: names nothing
    long_task = "t" * 2500
    action = buttons.targeted("terminate", "active", long_task, "Terminate", buttons.Confirm("?", "?"))
    click = buttons.decode(action.action_id, action.value)
    assert len(action.value) <= 2000 and buttons.resolve(click.target, ["other", long_task]) == long_task


def test_thread_lines_escape_data_and_keep_the_bots_mentions() -> None:
    incident = Incident("flower@1", "flower", 3, "Flower <!channel> down", "", NOW, NOW)
    sink = SlackSink(store=None, client=None, channel="C_ALERTS")  # type: ignore[arg-type]
    rows = sink.outbox_rows([Timeline(incident, phrase("Acknowledged by {}.", mention("U0ANA"))),
                             Timeline(incident, f"Still not resolved: {incident.text}")], NOW)
    assert [row.payload["text"] for row in rows] == ["Acknowledged by <@U0ANA>.",
                                                           "Still not resolved: Flower &lt;!channel&gt; down"]
