"""Task-level rules (bot.health), pure: durations, rule syntax, failing, stuck and waiting findings, the
engine's handling of them, and how their alerts render (every payload checked by Slack's rules).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bot.alerting import engine as alerts
from bot.alerting.engine import AlertState, Policy, Post, Refresh, Timeline
from bot.alerting.mute import parse_mute
from bot.alerting.views import incident_view
from bot.commands.grammar import UsageError, parse
from bot.config import ConfigError, load_settings
from bot.durations import parse_duration
from bot.health import rules
from bot.health.retry import call_from
from bot.health.rules import Failed, HealthPolicy, Outcomes
from bot.health.waiting import task_id_of
from bot.history.store import TaskRecord
from bot.history.views import history_item, task_view
from bot.slack import blocks, buttons
from bot.status.assess import queue_text
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
from tests.support.slack.rules import message_error

NOW = 1_750_000_000.0
POLICY = HealthPolicy(failure_threshold=3, failure_window=600)


def snapshot(now: float = NOW, tasks: tuple[TaskInfo, ...] = (), queues: tuple[QueueInfo, ...] = ()) -> Snapshot:
    workers = (WorkerInfo("w1@h", "prefork", 2, active=tasks),)
    return Snapshot(now, BrokerStatus("rabbitmq", "h:5672", queues=queues),
                    CeleryStatus(CeleryState.RUNNING, workers), FlowerStatus("http://h:5555"))


def failed(n: int, name: str = "reports.export", at: float = NOW, worker: str = "w1@h") -> tuple[Failed, ...]:
    return tuple(Failed(f"id-{name}-{i}", name, at - i, worker, "ValueError: no report; password=hunter2\nmore")
                 for i in range(n))


# --- durations and settings --------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("1d", 86400), ("2H", 7200)])
def test_one_duration_parser(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "1w", "1.5h", "-1m", "10 m", "1h30m", "9" * 8 + "s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_mute_uses_the_same_parser() -> None:
    assert parse_mute(["90s"]) == (90, "all")
    with pytest.raises(UsageError, match="not a duration"):
        parse_mute(["soon"])


@pytest.mark.parametrize("variable, value", [
    ("OPSBOT_FAILURE_WINDOW", "10 minutes"), ("OPSBOT_TASK_MAX_RUNTIME", "0s"), ("OPSBOT_QUEUE_MAX_WAIT", "5"),
    ("OPSBOT_FAILURE_RULES", "reports.*=1"), ("OPSBOT_FAILURE_RULES", "reports.*=0/1h"),
    ("OPSBOT_FAILURE_RULES", "=1/1h"), ("OPSBOT_RUNTIME_RULES", "reports.*=long"),
    ("OPSBOT_FAILURE_THRESHOLD", "0"), ("OPSBOT_FAILURE_RATIO", "1.5"),
    ("CELERY_RESULT_BACKEND", "rpc://"),
])
def test_bad_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings(_env_file=None)


def test_settings_defaults_and_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_FAILURE_RULES", "reports.*=1/1h, billing.charge=1/5m")
    monkeypatch.setenv("OPSBOT_FAILURE_IGNORE", "flaky.*,noisy")
    monkeypatch.setenv("OPSBOT_RUNTIME_RULES", "reports.*=2h")
    policy = rules.policy_from(load_settings(_env_file=None))
    assert (policy.failure_threshold, policy.failure_window, policy.failure_ratio) == (3, 600, 0.5)
    assert (policy.max_runtime, policy.queue_max_wait) == (1800, 300)
    assert policy.failure_rule("reports.daily") == rules.CountRule("reports.*", 1, 3600)
    assert policy.failure_rule("billing.charge").window == 300
    assert policy.failure_rule("other").count == 3
    assert policy.ignored("flaky.x") and policy.ignored("noisy") and not policy.ignored("noisy.x")
    assert policy.runtime_limit("reports.x") == 7200 and policy.runtime_limit("x") == 1800
    assert policy.longest_window == 3600


# --- failing tasks -----------------------------------------------------------------------------


def test_three_failures_in_the_window_make_a_finding() -> None:
    assert not rules.failing_tasks(Outcomes(failed(2)), NOW, POLICY)
    (finding,) = rules.failing_tasks(Outcomes(failed(3), {"reports.export": 40}), NOW, POLICY)
    assert finding.key == "task:failing:reports.export" and finding.level is Level.DOWN
    assert finding.text == "Task reports.export: 3 failures in 10 min"
    assert finding.details[0] == "3 failures out of 40 runs in the last 10 min"
    assert finding.details[1] == "Latest: ValueError: no report; password=***"  # first line, redacted
    assert finding.details[2] == "Failed on w1@h"
    assert finding.targets == ("id-reports.export-0", "id-reports.export-1", "id-reports.export-2")


@pytest.mark.parametrize("seconds, text", [(600, "10 min"), (3600, "1 h"), (172800, "2 d"), (45, "45 s"),
                                           (90, "1 min 30 s"), (5400, "90 min")])
def test_windows_read_as_they_were_set(seconds: float, text: str) -> None:
    assert rules.window_text(seconds) == text


@pytest.mark.parametrize("event, line", [
    ("ValueError('no such report')", "ValueError: no such report"),
    ("ValueError('no report; password=***)", "ValueError: no report; password=***"),  # redaction ate the quote
    ('KeyError("k")', "KeyError: k"), ("Boom()", "Boom"), ("\n\nTimeout: slow\nsecond", "Timeout: slow"),
    ("RuntimeError('token=xoxb-1234-abcd')", "RuntimeError: token=***"),
])
def test_the_exception_line(event: str, line: str) -> None:
    assert rules.exception_line(event) == line


def test_failures_outside_the_window_do_not_count() -> None:
    old = tuple(Failed(f"o{i}", "a", NOW - 700 - i) for i in range(5))
    assert not rules.failing_tasks(Outcomes(old), NOW, POLICY)


def test_the_ratio_needs_five_runs_and_more_than_half() -> None:
    two = failed(2, "a")
    assert not rules.failing_tasks(Outcomes(two, {"a": 4}), NOW, POLICY)  # 2/2 would be 100 %, but 4 runs only
    assert not rules.failing_tasks(Outcomes(two, {"a": 5}), NOW, POLICY)  # 40 %
    relaxed = HealthPolicy(failure_threshold=50, failure_window=600, failure_ratio=0.3)
    assert rules.failing_tasks(Outcomes(two, {"a": 5}), NOW, relaxed)


def test_per_name_rules_and_ignore() -> None:
    policy = HealthPolicy(failure_rules=(rules.CountRule("billing.*", 1, 300),), failure_ignore=("noisy.*",))
    (finding,) = rules.failing_tasks(Outcomes(failed(1, "billing.charge"), {"billing.charge": 9}), NOW, policy)
    assert finding.details[0] == "1 failure in the last 5 min"  # runs are counted over the default window only
    assert not rules.failing_tasks(Outcomes(failed(1, "billing.charge", at=NOW - 400)), NOW, policy)
    assert not rules.failing_tasks(Outcomes(failed(9, "noisy.job")), NOW, policy)


def test_an_open_failure_incident_lasts_until_a_whole_window_without_failure() -> None:
    key = frozenset({"task:failing:a"})
    one = failed(1, "a", at=NOW - 500)
    assert not rules.failing_tasks(Outcomes(one), NOW, POLICY)
    assert rules.failing_tasks(Outcomes(one), NOW, POLICY, key)
    assert not rules.failing_tasks(Outcomes(one), NOW + 101, POLICY, key)


def test_the_engine_opens_one_incident_updates_it_in_place_and_resolves_it() -> None:
    policy = Policy(alert_after=2, resolve_after=2)
    state = AlertState()
    steps: list[list] = []

    def poll(outcomes: Outcomes, now: float) -> None:
        nonlocal state
        found = rules.task_findings(snapshot(now), outcomes, now, POLICY, frozenset(state.incidents))
        state, effects = alerts.step(state, snapshot(now), now, policy, found)
        steps.append(effects)

    poll(Outcomes(failed(3, "a", at=NOW)), NOW)
    poll(Outcomes(failed(3, "a", at=NOW)), NOW + 1)
    (post,) = steps[-1]
    assert isinstance(post, Post) and post.incident.text == "Task a: 3 failures in 10 min"
    poll(Outcomes(failed(12, "a", at=NOW + 2)), NOW + 2)
    (refresh,) = steps[-1]  # more failures: redrawn in place, no new post and no thread noise
    assert isinstance(refresh, Refresh) and "12 failures" in refresh.incident.text
    assert refresh.incident.id == post.incident.id
    poll(Outcomes(failed(12, "a", at=NOW + 2)), NOW + 300)
    assert steps[-1] == []
    poll(Outcomes(), NOW + 700)
    poll(Outcomes(), NOW + 701)
    assert [type(e) for e in steps[-1]] == [Refresh, Timeline] and not state.incidents
    assert not [e for s in steps for e in s if isinstance(e, Post) and e is not post]


def test_an_incident_read_back_from_json_equals_a_fresh_one() -> None:
    state, _ = alerts.step(AlertState(), snapshot(), NOW, Policy(alert_after=1),
                           rules.failing_tasks(Outcomes(failed(3)), NOW, POLICY))
    again = AlertState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
    assert alerts.step(again, snapshot(), NOW + 1, Policy(alert_after=1),
                       rules.failing_tasks(Outcomes(failed(3)), NOW + 1, POLICY))[1] == []


# --- stuck and waiting -------------------------------------------------------------------------


def test_a_task_past_its_limit_is_stuck_with_a_steady_text() -> None:
    task = TaskInfo("6f1c2a9e-0000", "reports.export", "w1@h", NOW - 1801, worker_pid=4242)
    (finding,) = rules.stuck_tasks(snapshot(tasks=(task,)), POLICY)
    assert finding.key == "task:stuck:6f1c2a9e-0000" and finding.targets == ("6f1c2a9e-0000",)
    assert "(6f1c2a9e) has run since" in finding.text and "w1@h, pid 4242" in finding.text
    later = rules.stuck_tasks(snapshot(NOW + 60, tasks=(task,)), POLICY)
    assert later[0].text == finding.text  # no ticking clock: the alert is not redrawn every poll
    assert not rules.stuck_tasks(snapshot(tasks=(TaskInfo("x", "a", "w1@h", NOW - 60),)), POLICY)
    down = Snapshot(NOW, BrokerStatus("rabbitmq", "h"), CeleryStatus(CeleryState.UNKNOWN), FlowerStatus("f"))
    assert not rules.stuck_tasks(down, POLICY)


def test_waiting_too_long_and_how_the_queue_reads() -> None:
    queue = QueueInfo("celery", 3, 1, oldest_sent_at=NOW - 252, oldest_age=252)
    (finding,) = rules.waiting_too_long(snapshot(queues=(queue,)), HealthPolicy(queue_max_wait=240))
    assert finding.key == "queue:celery:wait" and "a task has waited since" in finding.text
    assert not rules.waiting_too_long(snapshot(queues=(queue,)), HealthPolicy(queue_max_wait=300))
    assert queue_text(queue) == "3 tasks waiting, 1 consumer, oldest waiting 4 min 12 s"
    from dataclasses import replace

    assert "oldest waiting over 4 min 12 s" in queue_text(replace(queue, oldest_exact=False))
    assert "oldest" not in queue_text(QueueInfo("celery", 0, 1, oldest_age=3))


def test_the_head_of_a_redis_list_names_its_task() -> None:
    message = json.dumps({"body": "W10=", "headers": {"id": "6f1c", "task": "a"}, "properties": {"priority": 0}})
    assert task_id_of(message) == "6f1c"
    assert task_id_of(b"not json") is None and task_id_of("{}") is None and task_id_of("[1]") is None


# --- retry: exact calls only --------------------------------------------------------------------


def test_a_call_needs_an_extended_result() -> None:
    assert call_from({"status": "FAILURE", "result": None}, None) is None  # result_extended off
    assert call_from(None, None) is None
    meta = {"name": "a.b", "args": [1, "x"], "kwargs": {"k": [1]}, "queue": "rk"}
    call = call_from(meta, TaskRecord("t", "FAILURE", queue="reports", exchange="reports", routing_key="reports"))
    assert (call.name, call.args, call.kwargs) == ("a.b", [1, "x"], {"k": [1]})
    assert (call.queue, call.exchange, call.routing_key) == ("reports", "reports", "reports")
    assert call_from(meta, None).queue == "rk"  # no task-sent event: the routing key it was delivered with


def test_retry_commands_parse() -> None:
    assert parse("retry 6f1c-2a9e").name == "retry"
    command = parse("retry failed reports.export 2h")
    assert command.name == buttons.RETRY_FAILED and command.target == "reports.export"
    for bad in ("retry", "retry a b", "retry failed", "retry failed x soon", "retry failed x 1h more"):
        with pytest.raises(UsageError):
            parse(bad)
    click = buttons.decode(buttons.RETRY_FAILED, "1750000000|reports.export")
    assert (click.target, click.since) == ("reports.export", 1750000000.0)
    for forged in ("x|reports.export", "1750000000|", "nope"):
        with pytest.raises(buttons.Forged):
            buttons.decode(buttons.RETRY_FAILED, forged)
    assert buttons.decode("retry", "alert|6f1c").section == "alert"
    with pytest.raises(buttons.Forged):
        buttons.decode("retry", "elsewhere|6f1c")


# --- rendering ---------------------------------------------------------------------------------


def rendered(view: object) -> dict:
    message = blocks.message(view)  # type: ignore[arg-type]
    assert message_error(message) is None, message_error(message)
    return message


def test_a_failure_alert_renders_within_slacks_rules() -> None:
    finding = rules.failing_tasks(Outcomes(failed(5, "<!channel> & co")), NOW, POLICY)[0]
    finding = replace(finding, retryable=finding.targets[:2])
    _, (post,) = alerts.step(AlertState(), snapshot(), NOW, Policy(alert_after=1), [finding])
    message = rendered(incident_view(post.incident, NOW))
    shown = json.dumps([message["text"], *(b.get("text") for b in message["blocks"])])  # values are not shown
    assert "&lt;!channel&gt; &amp; co" in shown and "<!channel>" not in shown
    ids = [e["action_id"] for b in message["blocks"] for e in [*b.get("elements", []), b.get("accessory") or {}]
           if e.get("type") == "button"]
    assert ids.count("retry") == 2  # only where the exact arguments are known
    assert {"task_show_1", "task_show_2", "task_show_3", "alert_ack"} <= set(ids)


def test_a_stuck_alert_has_terminate_and_kill() -> None:
    task = TaskInfo("6f1c2a9e", "a", "w1@h", NOW - 4000, worker_pid=7)
    _, (post,) = alerts.step(AlertState(), snapshot(tasks=(task,)), NOW, Policy(alert_after=1),
                             rules.stuck_tasks(snapshot(tasks=(task,)), POLICY))
    message = rendered(incident_view(post.incident, NOW))
    actions = [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert {"terminate", "kill"} <= {e["action_id"] for e in actions}
    assert buttons.decode("terminate", next(e["value"] for e in actions if e["action_id"] == "terminate")).section \
        == "alert"


def test_history_shows_retry_links_and_the_button() -> None:
    row = TaskRecord("6f1c2a9e-1", "FAILURE", name="a", retried_as="8a2b33-2")
    assert "retried as 8a2b…" in history_item(row).text and history_item(row, True).action is None
    retry = TaskRecord("8a2b33-2", "FAILURE", name="a", retry_of="6f1c2a9e-1")
    item = history_item(retry, True)
    assert "retry of 6f1c…" in item.text and item.action is not None and item.action.action_id == "retry"
    assert rendered(task_view(retry, True))["blocks"]


# --- what the rules read from the store ----------------------------------------------------------


def test_the_head_is_the_nth_newest_pending_task_and_retries_link_both_ways(tmp_path: Path) -> None:
    from bot.db import Database
    from bot.health import queries
    from bot.history.record import fold
    from bot.history.store import HistoryStore

    db = Database(f"sqlite:///{tmp_path}/h.sqlite3")
    store = HistoryStore(db)
    sent = [{"type": "task-sent", "uuid": f"t{i}", "name": "a", "queue": "q", "exchange": "q", "routing_key": "q",
             "timestamp": 100.0 + i} for i in range(6)]
    received = [{"type": "task-received", "uuid": f"t{i}", "timestamp": 110.0} for i in (4,)]
    store.record_task_events(sent + received, fold)
    # t0..t3 and t5 pending; the queue holds 2: t5 and t3, so its head was sent at 103 (t0..t2 were purged).
    assert queries.nth_newest_pending(db, "q", 2) == (103.0, True)
    assert queries.nth_newest_pending(db, "q", 9) == (100.0, False)  # only a lower bound
    assert queries.nth_newest_pending(db, "other", 1) == (None, False)
    assert store.task("t1").routing_key == "q" and queries.sent_at(db, "t1") == 101.0

    failed = [{"type": "task-failed", "uuid": f"t{i}", "name": "a", "exception": "E('x')", "hostname": "w1",
               "timestamp": NOW - i} for i in range(3)]
    store.record_task_events([*failed, {"type": "task-succeeded", "uuid": "ok", "name": "a", "timestamp": NOW}],
                             fold)
    outcomes = queries.outcomes(db, NOW, 3600, 600)
    assert [f.task_id for f in outcomes.failed] == ["t0", "t1", "t2"] and outcomes.runs == {"a": 4}
    queries.link_retry(db, "t0", "r0", "a", NOW)
    store.record_task_events([{"type": "task-sent", "uuid": "r0", "name": "a", "queue": "q", "timestamp": NOW}],
                             fold)  # the retry's own events fold into the row made for it
    assert store.task("t0").retried_as == "r0" and store.task("r0").retry_of == "t0"
    assert queries.failed_ids(db, "a", 0) == ["t1", "t2"]  # a retried failure is not retried again
    queries.unlink_retry(db, "t1", "nope")
    assert store.task("t0").retried_as == "r0"
    db.close()
