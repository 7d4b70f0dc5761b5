"""Security hardening (issue 11): what a hostile or careless input must never get from the bot.

HTTP mode without verification, redaction that stalls on adversarial text, secrets in task history,
task details for anyone, a Slack Connect partner's admin acting as ours, rich markup from task data,
a world-readable store, tracebacks that skip the redaction filter, SQL built from the replica id.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy
from rich.console import Console

from bot.commands.dispatch import Commands
from bot.commands.grammar import parse
from bot.config import Settings, load_settings
from bot.console import render as terminal
from bot.console.loop import Session
from bot.control.access import Actor
from bot.control.audit import AuditEntry, AuditLog
from bot.control.views import audit_view
from bot.db import Database
from bot.history.read import History
from bot.history.record import fold
from bot.history.store import HistoryStore
from bot.leader import LeaderRecord, Leadership
from bot.probes.celery_probe import ask_active
from bot.redact import redact_details
from bot.slack import blocks
from bot.slack.app import make_client, slack_access
from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    FlowerStatus,
    QueueInfo,
    Snapshot,
    TaskInfo,
    WorkerInfo,
)
from bot.status.views import Action, Confirm, status_view
from bot.task_args import summarize_repr
from tests.support.bot import SIGNING_SECRET, BotProcess, stack_env
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import free_port, port_accepts, wait_until
from tests.support.rabbit import RabbitNode, purge_queue, queue_counts
from tests.support.slack import SlackStandIn, sign, slash_command_form

ADMIN = "U_ADMIN"
NOW = 1_800_000_000.0
TASK_ID = "0b6f5c8e-1111-2222-3333-444455556666"


def text_of(payload: dict[str, Any]) -> str:
    return json.dumps(payload.get("blocks", [])) + "\n" + str(payload.get("text", ""))


def slack_text(view: Any) -> str:
    return text_of(blocks.message(view))


# --- HTTP mode: verified, and bounded before it is verified -----------------------------------


def audit_rows(db: Path) -> list[tuple[str, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT user_id, action, target, outcome FROM audit").fetchall()
        except sqlite3.OperationalError:
            return []  # no schema yet


@pytest.fixture
def admin_http_bot(slack: SlackStandIn, rabbit: RabbitNode, flower: FlowerProcess, worker: CeleryWorker,
                   run_bot: Callable[..., BotProcess], tmp_path: Path) -> tuple[str, Path]:
    """HTTP mode with U_ADMIN an admin: a request that got through could purge."""
    port = free_port()
    env = stack_env(rabbit, flower, tmp_path)
    env.update(SLACK_BOT_TOKEN=slack.bot_token, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=slack.base_url,
               OPSBOT_HTTP_PORT=str(port), OPSBOT_ADMINS=ADMIN)
    bot = run_bot(["run"], env)
    if not wait_until(lambda: port_accepts(port) or bot.process.poll() is not None, 30):
        raise AssertionError(f"the bot never listened on {port}:\n{bot.output()[-3000:]}")
    assert bot.process.poll() is None, bot.output()[-3000:]
    return f"http://127.0.0.1:{port}/slack/events", tmp_path / "opsbot.sqlite3"


@pytest.mark.integration
def test_unsigned_or_oversized_requests_are_refused_and_change_nothing(
        admin_http_bot: tuple[str, Path], slack: SlackStandIn, rabbit: RabbitNode) -> None:
    url, db = admin_http_bot
    purge_queue(rabbit.amqp_url, "other")
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 2))
    assert wait_until(lambda: queue_counts(rabbit.amqp_url, "other") == (3, 0), 10)
    purge = slash_command_form("purge other", user_id=ADMIN, response_url=slack.new_response_url())
    now = int(time.time())

    unsigned = requests.post(url, data=purge, headers={"Content-Type": "application/x-www-form-urlencoded"},
                             timeout=10)
    forged = requests.post(url, data=purge, headers=sign("", purge, now), timeout=10)  # an empty secret's HMAC
    # Signed with the real secret, but far bigger than anything Slack sends: refused before it is read.
    huge = purge + "&padding=" + "x" * (2 * 1024 * 1024)
    oversized = requests.post(url, data=huge, headers=sign(SIGNING_SECRET, huge, now), timeout=30)

    assert (unsigned.status_code, forged.status_code, oversized.status_code) == (401, 401, 413)
    time.sleep(1.0)  # anything acted on would have purged and answered by now
    assert queue_counts(rabbit.amqp_url, "other") == (3, 0)
    assert audit_rows(db) == []
    assert slack.responses == []
    purge_queue(rabbit.amqp_url, "other")


# --- Redaction that is linear in its input ----------------------------------------------------

ADVERSARIAL = {
    "keyword run": "password" * 12_800,
    "unclosed quotes": "'password': '" * 8_000,
    "keys without values": "passwordpassword :" * 6_000,
    "spaces before colon": "token" + " " * 100_000,
    "scheme-like words": ("a" * 31 + "://" + "x" * 20) * 2_000,
    "slack-ish": "xoxb-" * 20_000,
    "bearer run": "Bearer " * 15_000,
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_redaction_of_100_kb_of_adversarial_text_takes_under_50_ms(name: str) -> None:
    text = (ADVERSARIAL[name] * 2)[:100 * 1024]
    # CPU time of this thread: other processes on a busy machine do not count against the bound.
    started = time.thread_time()
    summarize_repr(text, text)  # the path events take when a repr does not parse
    redact_details(text, limit=len(text))  # results, exceptions, tracebacks: no cut, the scan alone
    assert time.thread_time() - started < 0.05


@pytest.mark.parametrize("args, kwargs, shown, hidden", [
    # What the fallback masked before, still masked: keys quoted or not, values quoted or bare.
    ("(datetime.datetime(2024, 1, 1),)", "{'password': 'hunter2', 'n': 1}",
     "'password': ***, 'n': 1", "hunter2"),
    ("(UUID('3f2b'),)", "{'api_key': \"k e y\", 'auth_token': abc, 'session': 's'}",
     "'api_key': ***, 'auth_token': ***, 'session': ***", "k e y"),
    ("(password='hunter2', x=1)", "", "password=***, x=1", "hunter2"),
    ("(Decimal('1'), 'amqp://u:hunter2@h//')", "{}", "amqp://u:***@h//", "hunter2"),
    # A repr Celery cut inside a quoted secret: masked to the end.
    ("(datetime(1), {'secret': 'hunter2 and more", "", "'secret': ***", "hunter2"),
    # Positional credentials, known by their shape.
    ("(UUID('1'), 'ghp_" + "A" * 36 + "')", "", "***", "ghp_"),
    ("(UUID('1'), 'AKIAIOSFODNN7EXAMPLE', 'xoxp-1-2-3')", "", "***", "AKIA"),
    ("(UUID('1'), 'sk-proj-abcdefghijklmnop1234')", "", "***", "sk-proj"),
    ("(UUID('1'), 'Bearer eyJhbGciOi.payload.sig')", "", "Bearer ***", "eyJhbGciOi"),
])
def test_unparsable_reprs_still_mask_secrets(args: str, kwargs: str, shown: str, hidden: str) -> None:
    summary = summarize_repr(args, kwargs)
    assert shown in summary and hidden not in summary, summary


def test_positional_credentials_are_masked_in_parsed_arguments() -> None:
    summary = summarize_repr("('ghp_" + "B" * 36 + "', 'postgres://app:pw-9@db/x', 'Bearer tok.en', 42)", "{}")
    assert "ghp_" not in summary and "pw-9" not in summary and "tok.en" not in summary
    assert "42" in summary


# --- Task history: no secret in results, exceptions, tracebacks; details for viewers only -----

TRACEBACK = """Traceback (most recent call last):
  File "/app/tasks.py", line 12, in sync
    client = Client(api_key="AK-live-77", base="https://svc")
  File "/app/client.py", line 40, in call
    raise AuthError(f"refused: {{'access_token': '{token}'}}")
client.AuthError: refused: {'access_token': 'tok-live-88'} Authorization: Bearer bear-99
"""
SECRETS = ("AK-live-77", "tok-live-88", "bear-99", "res-tok-55", "ghp_CCCC")


def task_events() -> list[dict[str, Any]]:
    """The events Celery sends for one task that succeeded once and failed on retry, as it shapes them."""
    base = {"uuid": TASK_ID, "hostname": "w1@h", "timestamp": NOW}
    return [
        {**base, "type": "task-received", "name": "app.sync", "args": "('ghp_CCCC" + "C" * 32 + "',)",
         "kwargs": "{'mode': 'full'}"},
        {**base, "type": "task-succeeded", "result": "{'access_token': 'res-tok-55', 'rows': 3}", "runtime": 1.5},
        {**base, "type": "task-failed", "exception": "AuthError(\"refused: {'access_token': 'tok-live-88'}\")",
         "traceback": TRACEBACK},
    ]


def test_show_masks_secrets_in_results_exceptions_and_tracebacks(tmp_path: Path) -> None:
    settings = load_settings(OPSBOT_DB_URL=f"sqlite:///{tmp_path / 'h.sqlite3'}")
    store = Database(settings.db_url)
    try:
        HistoryStore(store).record_task_events(task_events(), fold)
        commands = Commands(take_snapshot=lambda: snapshot(), history=History(settings, HistoryStore(store), None))
        shown = slack_text(commands.run(parse(f"show {TASK_ID}"), Actor(ADMIN, ADMIN)).view)
    finally:
        store.close()
    for secret in SECRETS:
        assert secret not in shown, f"{secret} shown"
    assert "'access_token': ***, 'rows': 3" in shown  # the rest of the result is still readable
    assert "AuthError: refused" in shown and "Authorization: ***" in shown


def snapshot() -> Snapshot:
    task = TaskInfo(TASK_ID, "app.sync", "w1@h", NOW - 30, "(report_id=42)")
    return Snapshot(taken_at=NOW, broker=BrokerStatus("rabbitmq", "h:5672", queues=(QueueInfo("celery", 0, 1, 1),)),
                    celery=CeleryStatus(CeleryState.RUNNING, (WorkerInfo("w1@h", "prefork", 2, (task,)),)),
                    flower=FlowerStatus("http://h:5555"))


# An argument that cannot turn up by chance in a task id (hex) or a timing.
MARKER_ID = 987654321987
MARKER = "report_id=987654321987"


@pytest.mark.integration
def test_task_details_answer_only_viewers_and_admins(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                     rabbit: RabbitNode, worker: CeleryWorker) -> None:
    slack.usergroups["S_VIEWERS"] = ["U_GROUPIE"]
    socket_bot(OPSBOT_ADMINS=ADMIN, OPSBOT_VIEWERS="U_USER", OPSBOT_VIEWER_GROUP="S_VIEWERS")
    publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(30,), kwargs={"report_id": MARKER_ID})
    assert wait_until(lambda: MARKER in text_of(slack.wait_ack(slack.send_slash_command("active"))), 20)

    def ack(text: str, user: str) -> str:
        return text_of(slack.wait_ack(slack.send_slash_command(text, user_id=user), timeout=3.0))

    for text in ("active", "history", f"show {TASK_ID}"):
        refused = ack(text, "U_NOBODY")
        assert "viewers and admins only" in refused and MARKER not in refused, (text, refused)
        for allowed in ("U_USER", "U_GROUPIE", ADMIN):
            assert "viewers and admins only" not in ack(text, allowed), (text, allowed)
    assert MARKER in ack("active", "U_GROUPIE")
    # The overview is for anyone: it still lists the running task, without its arguments.
    overview = ack("", "U_NOBODY")
    assert "stackapp.sleep" in overview and MARKER not in overview

    slack.send_block_action("share", "overview:1", user_id="U_NOBODY")
    refusal = slack.wait_for_response(lambda r: "viewers and admins only" in text_of(r.body))
    assert refusal.response_type == "ephemeral"
    slack.send_block_action("share", "active:1", user_id="U_USER")
    shared = slack.wait_for_response(lambda r: r.response_type == "in_channel")
    assert "Shared by <@U_USER>" in text_of(shared.body)
    assert not any(r.response_type == "in_channel" and "U_NOBODY" in text_of(r.body) for r in slack.responses)


# --- Workspace admins: of this workspace only ---------------------------------------------------


def test_a_slack_connect_partners_admin_is_not_our_admin() -> None:
    users = {"U_ADMIN": {"is_admin": True}, "U_OWNER": {"is_owner": True},
             "U_PARTNER": {"is_admin": True, "is_owner": True, "team_id": "T_PARTNER"}}
    with SlackStandIn(users=users) as slack:
        settings = load_settings(SLACK_BOT_TOKEN=slack.bot_token, SLACK_API_URL=slack.base_url,
                                 OPSBOT_WORKSPACE_ADMINS="true")
        access = slack_access(settings, make_client(settings))
        assert access.allows(Actor("U_ADMIN", "a")) and access.allows(Actor("U_OWNER", "o"))
        assert not access.allows(Actor("U_PARTNER", "p"))


# --- The console: task data is never rich markup ------------------------------------------------


def test_markup_in_task_names_and_audit_targets_is_shown_as_typed() -> None:
    task = TaskInfo(TASK_ID, "evil[/x][bold]", "w[/]@h", NOW - 5, "('[/x]',)")
    snap = Snapshot(NOW, BrokerStatus("rabbitmq", "h:5672", queues=(QueueInfo("q[/x]", 2, 1, 0),)),
                    CeleryStatus(CeleryState.RUNNING, (WorkerInfo("w[/]@h", "prefork", 1, (task,)),)),
                    FlowerStatus("http://h:5555"))
    entry = AuditEntry(NOW, "U1", "terminate", "[/x]", "denied", "[red]no[/red]")
    assert "evil[/x][bold]" in text_of_console(status_view(snap, "active"))
    assert "q[/x]" in text_of_console(status_view(snap, "overview"))
    audit = text_of_console(audit_view([entry]))
    assert "terminate [/x]" in audit and "[red]no[/red]" in audit


def text_of_console(view: Any) -> str:
    screen = Console(width=200, record=True, file=StringIO())
    screen.print(terminal.render(view))
    return screen.export_text()


def test_console_confirmation_shows_task_names_as_typed() -> None:
    screen = Console(width=200, record=True, file=StringIO())
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return "n"

    session = Session(Commands(take_snapshot=snapshot), Actor("console:op", "op"), screen, ask)
    action = Action("terminate", "Terminate", "active|x", confirm=Confirm("Terminate [/x]?", "evil[/x] on w1"))
    assert not session.confirmed(action)
    assert prompts == ["Terminate [/x]? evil[/x] on w1 [y/N] "]


# --- The store: private and in WAL mode -------------------------------------------------------


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_sqlite_store_is_private_and_in_wal_mode(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "fresh" / "opsbot.sqlite3"
    store = Database(f"sqlite:///{path}")
    try:
        AuditLog(store).record(AuditEntry(NOW, "U1", "purge", "celery", "done"))
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert path.stat().st_mode & 0o777 == 0o600
        assert all(p.stat().st_mode & 0o077 == 0 for p in path.parent.iterdir())  # -wal and -shm too
    finally:
        store.close()


# --- Uncaught exceptions go through the redaction filter ---------------------------------------

CRASHER = """
import threading
from bot.redact import install_log_redaction
install_log_redaction(["configured-s3cret"])
def boom():
    raise RuntimeError("amqp://u:url-pw-1@h// configured-s3cret xoxb-9-9 api_key=key-2")
thread = threading.Thread(target=boom, name="prober")
thread.start()
thread.join()
boom()
"""


def test_uncaught_exceptions_in_any_thread_are_logged_redacted() -> None:
    result = subprocess.run([sys.executable, "-c", CRASHER], capture_output=True, text=True, timeout=60)
    for secret in ("url-pw-1", "configured-s3cret", "xoxb-9-9", "key-2"):
        assert secret not in result.stderr, result.stderr
    assert "uncaught exception in thread prober" in result.stderr
    assert "uncaught exception in the main thread" in result.stderr
    assert result.stderr.count("RuntimeError: amqp://u:***@h//") == 2
    assert result.returncode == 1


# --- Celery: active tasks from the reprs Celery already cut --------------------------------------


@pytest.mark.integration
def test_active_tasks_come_with_cut_reprs_not_whole_arguments(rabbit: RabbitNode, worker: CeleryWorker) -> None:
    blob = "z" * 500_000
    (task_id,) = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(30,),
                               kwargs={"password": "hunter2", "blob": blob})
    app = control_app(rabbit.amqp_url)

    def running() -> dict[str, Any] | None:
        with app.connection_for_write() as conn:
            answers = ask_active(app, conn, {worker.name}, time.monotonic() + 2.0)
        return next((t for t in answers.get(worker.name) or [] if t["id"] == task_id), None)

    assert wait_until(lambda: running() is not None, 20)
    task = running()
    assert task is not None
    # The worker answered with Celery's own cut reprs (about 1 KB), not half a megabyte of argument.
    assert len(json.dumps(task)) < 5_000
    summary = summarize_repr(task["args"], task["kwargs"])
    assert "password=***" in summary and "hunter2" not in summary


# --- Leadership: the replica id is data, not SQL -----------------------------------------------


@pytest.mark.integration
def test_a_replica_id_with_quotes_leads_and_is_named_as_given(pg_url: str) -> None:
    replica = f"it's-{uuid.uuid4().hex[:6]}'; SELECT 1; --"
    store = Database(pg_url)
    leadership = Leadership(store, replica).start()
    try:
        assert wait_until(leadership.is_leader, 15)
        engine = sqlalchemy.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            names = conn.execute(sqlalchemy.text("SELECT application_name FROM pg_stat_activity")).scalars().all()
        engine.dispose()
        assert f"opsbot-leader-{replica}"[:54] in [n[:54] for n in names]
        seen = LeaderRecord(store).current()
        assert seen is not None and seen.replica == replica
    finally:
        leadership.stop()
        store.close()


def test_http_mode_never_builds_an_app_without_verification() -> None:
    from bot.config import ConfigError
    from bot.slack.app import build_app

    settings = Settings(slack_bot_token="xoxb-1-2", slack_app_token=None,  # type: ignore[arg-type]
                        slack_signing_secret=None)
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        build_app(settings, Commands(take_snapshot=snapshot), make_client(settings))


def test_the_body_cap_answers_413_before_the_app_reads_anything() -> None:
    from wsgiref.util import setup_testing_defaults
    from wsgiref.validate import validator

    from bot.slack.app import capped

    reached: list[int] = []

    def slack_handler(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        reached.append(len(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def post(size: int) -> str:
        environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(size),
                                   "QUERY_STRING": "", "wsgi.input": BytesIO(b"x" * size)}
        setup_testing_defaults(environ)
        statuses: list[str] = []
        body = validator(capped(slack_handler, limit=1024))(environ, lambda s, h, e=None: statuses.append(s))
        list(body)
        body.close()
        return statuses[0]

    assert post(1025) == "413 Payload Too Large" and reached == []
    assert post(1024) == "200 OK" and reached == [1024]
