"""Several stacks in one bot, from plain data: the stacks file and what it refuses, the overview of every
stack, `/tasks <stack>` and buttons that carry their stack, one deadline for all, each stack's alerts.
(The same against two real stacks: tests/test_stacks_stack.py.)
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bot.alerting.engine import AlertState, Policy, step
from bot.alerting.state import AlertStore
from bot.alerting.views import incident_view
from bot.commands.dispatch import Commands
from bot.config import ConfigError, load_settings
from bot.control.access import Actor
from bot.control.audit import AuditLog
from bot.db import Database, StateConflict
from bot.history.store import HistoryStore
from bot.metrics.collector import Metrics
from bot.metrics.families import read_store_facts
from bot.slack import blocks, buttons
from bot.stacks.alerting import StackAlertState
from bot.stacks.commands import StackCommands
from bot.stacks.config import load_stacks
from bot.stacks.metrics import StackedMetrics
from bot.stacks.runner import Member, StacksProber
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
from tests.support.bot import OPSBOT, clean_env
from tests.support.slack.rules import message_error

NOW = 1_800_000_000.0
SECRET = "hunter2secret"
TASK = "6f1c2a9e-5d1b-4c3e-9a8f-1b2c3d4e5f60"
ADMIN = Actor("U_ADMIN", "<@U_ADMIN>")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stacks.toml"
    path.write_text(text)
    return path


def stacks_of(path: Path, **env: str):
    return load_stacks(load_settings(OPSBOT_STACKS_FILE=str(path), **env))


GOOD = f"""
[prod]
broker_url = "amqp://ops:{SECRET}@mq.prod:5672/prod"
management_url = "http://mq.prod:15672"
flower_url = "http://flower:{SECRET}@flower.prod:5555"
queues = ["celery", "reports"]

[staging]
broker_url = "redis://:{SECRET}@redis.staging:6379/0"
"""


def test_each_stack_of_the_file_has_its_own_settings_and_shares_the_rest(tmp_path: Path) -> None:
    prod, staging = stacks_of(write(tmp_path, GOOD), OPSBOT_POLL_SECONDS="3")
    assert (prod.name, staging.name) == ("prod", "staging")
    assert prod.settings.broker_kind == "rabbitmq" and prod.settings.queues == ("celery", "reports")
    assert prod.settings.management_credentials() == ("ops", SECRET)
    assert staging.settings.broker_kind == "redis" and staging.settings.queues == ("celery",)
    assert prod.settings.poll_seconds == staging.settings.poll_seconds == 3.0  # from the environment


def test_without_a_file_there_is_one_stack_without_a_name() -> None:
    (only,) = load_stacks(load_settings())
    assert only.name == ""


@pytest.mark.parametrize("text, words", [
    ('[prod]\nbrokr_url = "amqp://h//"\n', ["[prod]", "unknown key 'brokr_url'", "broker_url"]),
    ('["Prod env"]\nbroker_url = "amqp://h//"\n', ["[Prod env]", "one simple word"]),
    ('[active]\nbroker_url = "amqp://h//"\n', ["[active]", "subcommand"]),
    (f'[prod]\nbroker_url = "amqp://h//"\nflower_url = "ftp://u:{SECRET}@h"\n', ["[prod] flower_url", "http"]),
    (f'[prod]\nbroker_url = "kafka://u:{SECRET}@h:9092"\n', ["[prod] broker_url", "kafka"]),
    ('[prod]\nqueues = ["celery"]\n', ["[prod]", "app", "broker_url"]),
    ('[prod]\nbroker_url = "amqp://h//"\nqueues = "celery"\n', ["[prod] queues", "list"]),
    ('[prod]\nbroker_url = "amqp://a//"\n[prod]\nbroker_url = "amqp://b//"\n', ["prod", "twice"]),
    ("", ["names no stack"]),
    ('prod = "amqp://h//"\n', ["prod", "table"]),
])
def test_a_bad_file_is_refused_naming_the_file_the_stack_and_the_key(tmp_path: Path, text: str,
                                                                      words: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        stacks_of(path)
    message = str(refused.value)
    assert message.startswith(f"OPSBOT_STACKS_FILE: {path}")
    assert all(word in message for word in words), message
    assert SECRET not in message


def test_opsbot_stops_at_start_on_a_bad_file_with_the_configuration_exit_code(tmp_path: Path) -> None:
    path = write(tmp_path, f'[prod]\nbroker_url = "amqp://ops:{SECRET}@h//"\nflower_url = "nope://x:{SECRET}@h"\n')
    result = subprocess.run([OPSBOT, "status"], env=clean_env({"OPSBOT_STACKS_FILE": str(path)}),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "stacks.toml: [prod] flower_url" in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    missing = subprocess.run([OPSBOT, "status"], env=clean_env({"OPSBOT_STACKS_FILE": str(tmp_path / "no.toml")}),
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 3 and "no.toml: cannot read it" in missing.stderr


def test_the_app_setting_and_a_stacks_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give each stack's app"):
        load_stacks(load_settings(OPSBOT_STACKS_FILE=str(write(tmp_path, GOOD)), OPSBOT_CELERY_APP="proj"))


# --- Snapshots, views and commands ---------------------------------------------------------------


def snapshot(broker_problem: Problem | None = None, tasks: tuple[TaskInfo, ...] = ()) -> Snapshot:
    queues = () if broker_problem else (QueueInfo("celery", 0, 1, 0),)
    return Snapshot(taken_at=NOW, broker=BrokerStatus("rabbitmq", "mq:5672", broker_problem, queues),
                    celery=CeleryStatus(CeleryState.UNKNOWN) if broker_problem else
                    CeleryStatus(CeleryState.RUNNING, (WorkerInfo("w1@h", "prefork", 2, tasks),)),
                    flower=FlowerStatus("http://flower:5555"), elapsed=0.01)


DOWN = Problem(Failure.REFUSED, "mq:5672")


def two_stacks(prod: Snapshot, staging: Snapshot) -> StackCommands:
    settings = load_settings()
    members = {name: Commands(lambda s=snap: s) for name, snap in (("prod", prod), ("staging", staging))}
    prober = StacksProber(tuple(Member(n, settings, c.take_snapshot) for n, c in members.items()), 2.0)
    return StackCommands(members, prober)


def values(view) -> list[str]:
    """Every value a click brings back (a link button's is never read)."""
    found = [a.value for a in view.actions if a.ref is None]
    return found + [i.action.value for s in view.sections for i in s.items if i.action is not None]


def test_the_overview_has_one_line_per_stack_then_the_details_of_those_not_green() -> None:
    running = (TaskInfo(TASK, "reports.export", "w1@h", NOW - 5),)
    commands = two_stacks(snapshot(tasks=running), snapshot(DOWN))
    view = commands.run_text("", ADMIN).view
    lines = view.sections[0]
    assert [(i.title, i.level) for i in lines.items] == [("prod", Level.OK), ("staging", Level.DOWN)]
    assert "RabbitMQ" in lines.items[1].text and view.level is Level.DOWN
    assert view.summary.startswith("staging: ")
    titles = [s.title for s in view.sections[1:]]
    assert titles and all(t.startswith("staging · ") for t in titles)  # prod is green: its line is enough
    assert message_error(blocks.message(view)) is None
    green = two_stacks(snapshot(), snapshot()).run_text("/tasks", ADMIN).view
    assert green.summary == "All 2 stacks go" and len(green.sections) == 1


def test_a_stack_named_first_targets_it_and_its_buttons_carry_it() -> None:
    running = (TaskInfo(TASK, "reports.export", "w1@h", NOW - 5),)
    commands = two_stacks(snapshot(), snapshot(tasks=running))
    view = commands.run_text("staging active", ADMIN).view
    assert view.title == "Active tasks · staging" and TASK in json.dumps(blocks.message(view))
    assert values(view) and all(v.startswith("staging>") for v in values(view))
    assert TASK not in json.dumps(blocks.message(commands.run_text("prod active", ADMIN).view))
    paged = commands.run_button("page_refresh", "staging>workers:1", ADMIN).view
    assert paged.title == "Workers · staging"


@pytest.mark.parametrize("text, words", [
    ("active", "Name the stack: /tasks <stack> active (stacks: prod, staging)"),
    ("nosuch active", "'nosuch' is neither a subcommand nor a stack (stacks: prod, staging)"),
])
def test_a_command_needing_a_stack_or_naming_none_is_explained(text: str, words: str) -> None:
    view = two_stacks(snapshot(), snapshot()).run_text(text, ADMIN).view
    assert words in view.summary and view.level is Level.WARN


@pytest.mark.parametrize("action_id, value", [
    ("terminate", f"nosuch>active|{TASK}"),  # a stack we do not watch
    ("terminate", f"active|{TASK}"),  # no stack at all
    ("page_refresh", "workers:1"),
    ("alert_ack", "broker@1"),
])
def test_a_click_naming_no_stack_we_watch_is_refused_and_changes_nothing(action_id: str, value: str) -> None:
    commands = two_stacks(snapshot(), snapshot())
    run = commands.run_alert_button if action_id.startswith("alert_") else commands.run_button
    reply = run(action_id, value, ADMIN)
    assert reply is not None and not reply.replace_original
    assert reply.view.summary == "That button names no stack I watch; nothing was done."


def test_stamps_round_trip_and_leave_unstamped_values_alone() -> None:
    assert buttons.unstamp(buttons.stamp("prod-2", "active|x>y")) == ("prod-2", "active|x>y")
    assert buttons.unstamp("active|x>y") == ("", "active|x>y")
    assert buttons.unstamp("Prod>x") == ("", "Prod>x")
    long_target = "q" * 3000
    stamped = buttons.stamp("a" * 30, buttons.targeted("purge", "queues", long_target, "Purge",
                                                         buttons.Confirm("t", "x")).value)
    assert len(stamped) <= buttons.MAX_VALUE


# --- One deadline ----------------------------------------------------------------------------------


def test_a_stack_that_never_answers_does_not_hold_back_the_others() -> None:
    settings = load_settings()
    release = threading.Event()
    calls: list[str] = []

    def hung() -> Snapshot:
        calls.append("staging")
        release.wait(60)
        return snapshot()

    prober = StacksProber((Member("prod", settings, snapshot), Member("staging", settings, hung)), 0.3)
    answered: list = []

    def ask_three_times() -> None:
        answered.extend(prober.snapshots() for _ in range(3))

    caller = threading.Thread(target=ask_three_times)
    caller.start()
    caller.join(30)  # generous: each deadline is 0.75 s; a runner that waits for the hung stack never returns
    release.set()
    assert not caller.is_alive() and len(answered) == 3
    assert calls == ["staging"]  # still hung: joined, never asked again on top (one thread held, not three)
    prod, staging = answered[-1]
    assert prod.snapshot.broker.up and prod.snapshot.taken_at == NOW
    assert staging.snapshot.broker.problem is not None
    assert staging.snapshot.broker.problem.kind is Failure.TIMEOUT
    assert "no answer within the deadline" in staging.snapshot.broker.problem.detail
    prober.close()


# --- Alerts and metrics ------------------------------------------------------------------------------


def test_an_incident_names_its_stack_in_its_id_its_text_and_its_buttons() -> None:
    policy = Policy(alert_after=1, stack="staging")
    state, _ = step(AlertState(), snapshot(DOWN), NOW, policy)
    (incident,) = state.incidents.values()
    assert incident.id.startswith("staging/broker@") and incident.text.startswith("staging: RabbitMQ")
    view = incident_view(incident, NOW)
    assert all(v.startswith("staging>") for v in values(view))
    commands = two_stacks(snapshot(), snapshot(DOWN))
    ack = next(a for a in view.actions if a.action_id == "alert_ack")
    reply = commands.run_alert_button("alert_ack", ack.value, ADMIN)  # staging's commands have no alerting
    assert reply is not None and "Alerting is off" in reply.view.summary and "staging" in reply.view.title


def test_each_stack_keeps_its_alert_state_under_its_name_in_one_versioned_row(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'opsbot.sqlite3'}")
    store = AlertStore(db)
    prod, staging = StackAlertState(store, "prod"), StackAlertState(store, "staging")
    policy = Policy(alert_after=1, stack="staging")
    state, _ = step(AlertState(), snapshot(DOWN), NOW, policy)
    staging.save(state, staging.load()[1], [])
    state, version = prod.load()
    assert state == AlertState()
    prod.save(AlertState(mutes={"all": NOW + 60}), version, [])
    assert staging.load()[0].incidents.keys() == {"broker"}
    assert prod.load()[0].mutes == {"all": NOW + 60}
    with pytest.raises(StateConflict):
        staging.save(AlertState(), version, [])  # read before prod saved: step again
    assert read_store_facts(store).incidents == {"broker": 1}
    db.close()


def test_metrics_carry_a_stack_label_and_each_family_once() -> None:
    prod, staging = Metrics(10.0), Metrics(10.0)
    prod.observe_snapshot(snapshot())
    staging.observe_snapshot(snapshot(DOWN))
    text = generate_latest(StackedMetrics(10.0, {"prod": prod, "staging": staging}).registry).decode()
    assert 'opsbot_probe_up{service="broker",stack="prod"} 1.0' in text
    assert 'opsbot_probe_up{service="broker",stack="staging"} 0.0' in text
    assert text.count("# TYPE opsbot_probe_up ") == 1 and text.count("# TYPE opsbot_leader ") == 1
    assert 'celery_worker_up{hostname="h",stack="prod"} 1.0' in text


def test_rows_written_before_the_stacks_migration_are_the_single_stacks(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from bot.db import MIGRATIONS, make_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "workers")  # the schema before several stacks
        conn.execute(text("INSERT INTO audit (at, user_id, action, target, outcome, detail) "
                          "VALUES (1, 'U1', 'purge', 'celery', 'done', '')"))
        conn.execute(text("INSERT INTO task_history (task_id, state, retries, updated_at, finished_at) "
                          f"VALUES ('{TASK}', 'FAILURE', 0, 1, 1)"))
    engine.dispose()
    db = Database(url)  # upgrades to the head
    assert [e.stack for e in AuditLog(db).latest()] == [""]
    history = HistoryStore(db)
    assert history.finished_tasks("FAILURE", None, 0, 5)[0][0].stack == ""
    assert history.finished_tasks("FAILURE", None, 0, 5, stack="prod") == ([], 0)
    db.close()


def test_each_stack_charts_its_own_series(tmp_path: Path) -> None:
    from bot.charts.series import Key, SeriesStore
    from bot.charts.service import Request
    from bot.stacks.series import StackCharts, StackSeriesStore, in_stack

    store = Database(f"sqlite:///{tmp_path / 'opsbot.sqlite3'}")
    waiting = Key("queue", "celery", "waiting")
    for stack, count in (("prod", 3.0), ("staging", 40.0)):
        StackSeriesStore(store.engine, stack).write({waiting: count}, NOW - 60, {})
    prod = StackSeriesStore(store.engine, "prod")
    assert prod.read([waiting], NOW - 600) == {waiting: [(int((NOW - 60) // 60 * 60), 3.0)]}
    assert prod.names("queue", NOW - 600) == ["celery"]
    assert SeriesStore(store.engine).names("queue", NOW - 600) == []  # no stack's series is a single stack's
    chart = StackCharts(StackSeriesStore(store.engine, "staging"), ("celery",), 10, 7.0,
                        lambda: NOW).data(Request("celery", "1h"))
    assert not isinstance(chart, str) and "max 40 " in chart.alt_text and "max 3 " not in chart.alt_text
    assert chart.title.endswith(" · staging")
    assert in_stack("staging/queue:celery:backlog@1") == ("staging", "queue:celery:backlog@1")
    assert in_stack("queue:celery:backlog@1") == ("", "queue:celery:backlog@1")
    store.close()


def test_incidents_across_stacks_say_for_each_stack_what_it_has() -> None:
    view = two_stacks(snapshot(), snapshot()).run_text("incidents", ADMIN).view
    assert [(s.title, s.note) for s in view.sections] == [
        ("prod", "Alerting is off: set OPSBOT_ALERT_CHANNEL to the channel for alerts."),
        ("staging", "Alerting is off: set OPSBOT_ALERT_CHANNEL to the channel for alerts.")]
