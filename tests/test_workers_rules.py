"""Worker control's pure parts: parsing, what pools can do, what replies mean, pauses, views, buttons."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from bot.alerting.engine import AlertState, Policy, Post, step
from bot.commands.grammar import UsageError, parse, parse_button
from bot.commands.help import help_view
from bot.slack import blocks, buttons
from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    FlowerStatus,
    Level,
    Pause,
    QueueInfo,
    Snapshot,
    TaskInfo,
    TaskLimits,
    WorkerInfo,
)
from bot.status.views import status_view
from bot.workers import rules, views
from bot.workers.pauses import overdue, pause_text, queue_pauses
from bot.workers.rules import BadInput, Request, Result, WorkerResult
from tests.support.slack.rules import message_error

NOW = 1_700_000_000.0


def test_typed_commands_parse_into_worker_and_arguments() -> None:
    assert parse("pool w1@h +2").worker == "w1@h" and parse("pool w1@h +2").target == "+2"
    assert parse("/tasks pause other").target == "other" and parse("pause other").worker == ""
    assert parse("resume other w2").worker == "w2"
    assert parse("autoscale w1 8 2").target == "8 2"
    assert parse("ratelimit proj.send 10/m").target == "proj.send 10/m"
    assert parse("workers w1@h").name == "detail" and parse("workers 2").page == 2
    assert parse("registered").name == "registered" and parse("scheduled").name == "scheduled"


@pytest.mark.parametrize(("text", "says"), [
    ("pool w1 2", "+N or -N"), ("pool w1 +0", "+N or -N"), ("pool w1 +1000", "+N or -N"), ("pool w1", "Usage"),
    ("autoscale w1 2 8", "min <= max"), ("autoscale w1 x 1", "two whole numbers"),
    ("ratelimit proj.send fast", "not a rate"), ("ratelimit 'x; 1/s", "not a task name"),
    ("timelimit proj.send 30 10", "soft time limit must be shorter"), ("timelimit proj.send 10 8d", "at most 7 days"),
    ("pause", "Usage"), ("shutdown", "Usage"), ("shutdown a b", "Usage"), ("scheduled now", "Usage"),
])
def test_malformed_input_is_refused_with_a_clear_message(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        parse(text)


def test_arguments_mean_what_celery_expects() -> None:
    assert rules.parse_request("pool", "\u22123", "w1").delta == -3  # a typographic minus
    assert rules.parse_request("ratelimit", "proj.send off", "").rate is None
    limits = rules.parse_request("timelimit", "proj.send 1m off", "")
    assert (limits.soft, limits.hard) == (60.0, None)
    with pytest.raises(BadInput):
        rules.parse_request("pause", "a|b", "")


def test_typed_names_echoed_back_are_never_markup_nor_secrets() -> None:
    with pytest.raises(BadInput) as problem:
        rules.parse_request("ratelimit", "proj.send <!channel>", "")
    assert "<" not in str(problem.value) and "\u2039!channel" in str(problem.value)
    assert "hunter2" not in rules.echo("amqp://u:hunter2@h//")


def test_pools_that_cannot_do_an_action_are_named() -> None:
    assert "threads pool, which cannot grow or shrink" in rules.unsupported("pool", "threads", None, None)
    assert "solo pool" in rules.unsupported("pool", "solo", None, None)
    assert "gevent pool" in rules.unsupported("pool", "gevent", None, None)
    assert "--autoscale (1 to 4)" in rules.unsupported("pool", "prefork", (1, 4), None)
    assert rules.unsupported("pool", "prefork", None, None) == ""
    assert "not started with --autoscale" in rules.unsupported("autoscale", "prefork", None, None)
    assert "worker_pool_restarts" in rules.unsupported("restart-pool", "prefork", None, False)
    assert "no processes to restart" in rules.unsupported("restart-pool", "threads", None, True)
    assert rules.unsupported("restart-pool", "prefork", None, True) == ""


def test_each_targeted_worker_is_reported_done_error_or_silent() -> None:
    replies = rules.by_worker([{"a@h": {"ok": "pool will grow"}}, {"b@h": {"error": "Pool restarts not enabled"}}])
    results = [rules.answer_of(name, replies) for name in ("a@h", "b@h", "c@h")]
    assert [r.result for r in results] == [Result.DONE, Result.ERROR, Result.NO_REPLY]
    assert results[1].detail == "Pool restarts not enabled"
    assert rules.outcome_label(results) == "partial"
    assert rules.outcome_label(results[:1]) == "done" and rules.outcome_label(results[2:]) == "no_reply"


def test_registered_lines_give_the_limits_in_force() -> None:
    line = "proj.send [rate_limit=10/m soft_time_limit=20.0 time_limit=30.0]"
    assert rules.task_limits(line) == TaskLimits("proj.send", "10/m", 20.0, 30.0)
    assert rules.task_limits("proj.plain") == TaskLimits("proj.plain")
    assert rules.limits_text(rules.task_limits(line)) == "rate 10/m; time limits soft 20 s, hard 30 s"


def worker(name: str, queues: tuple[str, ...] | None, answered: bool = True) -> WorkerInfo:
    return WorkerInfo(name, "prefork", 2, queues=queues, answered=answered)


def snapshot(workers: tuple[WorkerInfo, ...], pauses: tuple[Pause, ...], ready: int = 0) -> Snapshot:
    return Snapshot(NOW, BrokerStatus("rabbitmq", "x", queues=(QueueInfo("other", ready, 1),)),
                    CeleryStatus(CeleryState.RUNNING, workers), FlowerStatus("f"), pauses=pauses)


def test_a_pause_counts_only_while_its_worker_does_not_consume_the_queue() -> None:
    pauses = (Pause("other", "a@h", "U_ANA", NOW - 60), Pause("other", "b@h", "U_BOB", NOW - 30))
    # a@h restarted and consumes "other" again: its pause no longer holds.
    found = queue_pauses(pauses, (worker("a@h", ("celery", "other")), worker("b@h", ("celery",)),
                                  worker("c@h", ("other",))))
    pause = found["other"]
    assert pause.workers == ("b@h",) and pause.of == 3 and pause.user_id == "U_BOB"
    assert str(pause_text(pause)) == f"paused on 1 of 3 workers by <@U_BOB> at {views.assess.time_of_day(NOW - 30)}"


def test_a_paused_queue_is_amber_with_who_and_when() -> None:
    snap = snapshot((worker("a@h", ("celery",)),), (Pause("other", "a@h", "U_ANA", NOW),))
    view = status_view(snap, "queues")
    (item,) = [i for s in view.sections for i in s.items if i.title == "other"]
    assert item.level is Level.WARN and "paused on 1 of 1 worker by <@U_ANA> at" in str(item.text)
    assert message_error(blocks.message(view)) is None
    rendered = blocks.message(view)["blocks"]
    assert "<@U_ANA>" in str(rendered)  # a live mention of who paused it


def test_the_alert_channel_is_reminded_of_a_queue_paused_too_long() -> None:
    policy = Policy(alert_after=2, pause_remind_seconds=3600)
    fresh = snapshot((worker("a@h", ()),), (Pause("other", "a@h", "U_ANA", NOW - 600),))
    assert overdue(fresh, NOW, 3600) == []
    old = snapshot((worker("a@h", ()),), (Pause("other", "a@h", "U_ANA", NOW - 4000),))
    (finding,) = overdue(old, NOW, 3600)
    assert finding.key == "queue:other:paused" and "/tasks resume other" in finding.text
    state, effects = step(AlertState(), old, NOW, policy)
    state, effects = step(state, old, NOW + 10, policy)
    assert [type(e) for e in effects] == [Post] and "paused on 1 of 1 workers" in effects[0].incident.text
    resumed = snapshot((worker("a@h", ("other",)),), (Pause("other", "a@h", "U_ANA", NOW - 4000),))
    assert overdue(resumed, NOW, 3600) == []  # it consumes the queue again: the pause is over


def test_worker_buttons_round_trip_and_forgeries_are_refused() -> None:
    long_name = "w" * 1000 + "@host"
    for action in (buttons.worker("pause", "w1@h", "Pause", queue="other"),
                   buttons.worker("grow", long_name, "Pool +1"), buttons.worker("resume", "w1@h", "R", queue="a|b")):
        command = parse_button(action.action_id, action.value)
        assert command.section == "detail" and len(action.value) <= buttons.MAX_VALUE
    assert parse_button("worker_grow", "w1@h").target == "+1"
    assert buttons.resolve(parse_button("worker_grow", buttons.worker("grow", long_name, "x").value).worker,
                           [long_name]) == long_name
    for action_id, value in (("worker_pause", "w1@h"), ("worker_grow", "a|b"), ("worker_explode", "w1@h"),
                             ("worker_detail", "")):
        with pytest.raises(UsageError, match="not one I made"):
            parse_button(action_id, value)


def test_worker_detail_offers_what_the_pool_can_do_and_names_active_tasks() -> None:
    task = TaskInfo("abcdef12-0000", "proj.export", "w1@h", NOW - 5)
    info = WorkerInfo("w1@h", "prefork", 3, active=(task,), queues=("celery", "other"),
                      limits=(TaskLimits("proj.export", "10/m"), TaskLimits("proj.plain")))
    pauses = queue_pauses((Pause("spare", "w1@h", "U_ANA", NOW),), (info,))
    view = views.worker_view(info, False, pauses, ("celery", "spare"), True, NOW)
    ids = [a.action_id for a in view.actions]
    assert ids == ["worker_grow", "worker_shrink", "worker_shutdown", "worker_detail"]  # no restarts allowed
    shutdown = next(a for a in view.actions if a.action_id == "worker_shutdown")
    assert shutdown.confirm is not None and "proj.export (abcdef12)" in shutdown.confirm.text
    rows = {i.title: i for s in view.sections for i in s.items}
    assert rows["other"].action.action_id == "worker_pause" and rows["spare"].action.action_id == "worker_resume"
    assert "rate 10/m" in rows["proj.export"].text and "proj.plain" not in rows
    assert "Not watched by opsbot: other" in view.footer
    assert message_error(blocks.message(view)) is None
    threads = views.worker_view(WorkerInfo("t@h", "threads", 4, queues=()), True, {}, (), True, NOW)
    assert [a.action_id for a in threads.actions] == ["worker_shutdown", "worker_detail"]
    viewer = views.worker_view(info, True, pauses, (), False, NOW)
    assert [a.action_id for a in viewer.actions] == ["worker_detail"]


def test_the_outcome_says_what_changed_where_who_and_when() -> None:
    request = Request("pause", queue="other")
    results = [WorkerResult("a@h", Result.DONE, "no longer consumes other"),
               WorkerResult("b@h", Result.NO_REPLY, "did not reply in time")]
    line = views.headline(request, results, "<@U_ANA>", NOW)
    assert str(line) == f"Paused other on 1 of 2 workers by <@U_ANA> at {views.assess.time_of_day(NOW)}"
    none = views.headline(request, results[1:], "<@U_ANA>", NOW)
    assert "Nothing was changed" in str(none)
    view = views.result_view(line, Level.WARN, results, request)
    assert message_error(blocks.message(view)) is None


def test_read_views_list_what_workers_hold() -> None:
    eta = datetime.fromtimestamp(NOW + 100, tz=UTC).isoformat()  # as Celery sends it
    scheduled = {"a@h": [{"eta": eta, "priority": 6,
                          "request": {"id": "1234abcd-x", "name": "proj.later"}}]}
    view = views.held_view("scheduled", scheduled, NOW)
    (row,) = view.sections[0].items
    assert row.title == "proj.later" and row.code == "1234abcd" and "ETA" in row.text and "in 1 min" in row.text
    revoked = views.held_view("revoked", {"a@h": ["id-1", "id-2"]}, NOW)
    assert [i.code for i in revoked.sections[0].items] == ["id-1", "id-2"]
    assert "No worker answered" in views.held_view("reserved", {}, NOW).summary
    registered = views.registered_view({"a@h": ["proj.a [rate_limit=1/s]", "proj.b"], "b@h": ["proj.b"]})
    texts = {i.title: str(i.text) for i in registered.sections[0].items}
    assert texts == {"proj.a": "on 1 of 2 workers: rate 1/s", "proj.b": "on 2 of 2 workers: no limits"}


def test_help_groups_the_commands_by_topic() -> None:
    view = help_view()
    topics = [s.title for s in view.sections]
    assert topics == ["Status", "Task control (admins)", "Worker control (admins)", "History and alerts"]
    worker_commands = {i.title.split()[1] for i in view.sections[2].items}
    assert worker_commands == set(rules.ACTIONS)
    assert message_error(blocks.message(view)) is None
