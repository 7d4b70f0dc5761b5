"""Reliability on real faults: a store that stops answering, Slack that stalls or refuses, a broker user
without a permission, SIGTERM to a running bot, a locked SQLite file, a console beside a Slack bot.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy

from tests.support.bot import OPSBOT, BotProcess, clean_env, stack_env
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import TcpProxy, wait_until
from tests.support.rabbit import RabbitNode, purge_queue
from tests.support.redis_server import RedisServer
from tests.support.slack import Message, SlackStandIn

pytestmark = pytest.mark.integration

CHANNEL = "C_ALERTS"
ALERTING = {"OPSBOT_ALERT_CHANNEL": CHANNEL, "OPSBOT_POLL_SECONDS": "2", "OPSBOT_ADMINS": "U_ADMIN"}


def text_of(payload: dict) -> str:
    return json.dumps(payload.get("blocks", [])) + "\n" + str(payload.get("text", ""))


def alerts(slack: SlackStandIn, about: str) -> list[Message]:
    return [m for m in slack.messages if m.channel == CHANNEL and not m.thread_ts and about in (m.text or "")]


def sql(url: str, query: str, **params: object) -> list[tuple]:
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(query), params)]
    finally:
        engine.dispose()


def sqlite_rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(query).fetchall()


def all_done(rabbit: RabbitNode, task_ids: list[str]) -> bool:
    inspect = control_app(rabbit.amqp_url).control.inspect(timeout=1)
    held = json.dumps([inspect.active(), inspect.reserved()])
    return not any(task_id in held for task_id in task_ids)


def alert_button(message: Message, action_id: str) -> dict:
    (button,) = [e for b in message.blocks or [] if b["type"] == "actions" for e in b["elements"]
                 if e["action_id"] == action_id]
    return button


# --- 4: the status does not depend on the store -----------------------------------------------


def test_status_answers_from_the_probes_when_the_store_stops_answering(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], pg_url: str,
        tcp_proxy: Callable[[int], TcpProxy]) -> None:
    proxy = tcp_proxy(5432)
    socket_bot(OPSBOT_DB_URL=pg_url.replace(":5432/", f":{proxy.port}/"), **ALERTING)
    assert "Store unavailable" not in text_of(slack.request("slash_command", "", timeout=3.0))
    proxy.black_hole()
    for _ in range(3):  # and again: a read stuck on the dead store must not hold up the next answers
        answer = text_of(slack.request("slash_command", "", timeout=3.0))
        assert "Store unavailable" in answer and "RabbitMQ" in answer


def test_status_answers_in_time_with_tasks_waiting_while_the_store_stops_answering(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], pg_url: str, rabbit: RabbitNode,
        tcp_proxy: Callable[[int], TcpProxy]) -> None:
    """With tasks waiting the status measures the oldest one's age from the history: that read must not
    hold up the answer either (the soak, bench/soak, found it missing Slack's 3 s)."""
    proxy = tcp_proxy(5432)
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 1))  # no worker consumes it
    try:
        socket_bot(OPSBOT_DB_URL=pg_url.replace(":5432/", f":{proxy.port}/"), **ALERTING)
        assert "3 tasks waiting" in text_of(slack.request("slash_command", "", timeout=3.0))
        proxy.black_hole()
        for _ in range(3):
            answer = text_of(slack.request("slash_command", "", timeout=3.0))
            assert "Store unavailable" in answer and "3 tasks waiting" in answer
    finally:
        purge_queue(rabbit.amqp_url, "other")


# --- 5 and the audit of alert actions: acks never wait for Slack -----------------------------


def test_acknowledge_and_mute_are_answered_while_slack_stalls(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], make_flower: Callable[..., FlowerProcess],
        tmp_path: Path) -> None:
    flower = make_flower()
    socket_bot(FLOWER_URL=flower.url, **ALERTING)
    flower.kill()
    assert wait_until(lambda: alerts(slack, "Flower"), 30)
    (alert,) = alerts(slack, "Flower")

    # Slack's Web API stalls: every update and post hangs for 20 s, then fails.
    slack.hang_next("chat.update", 20, count=3, process=False)
    slack.hang_next("chat.postMessage", 20, count=3, process=False)
    slack.send_block_action("alert_ack", alert_button(alert, "alert_ack")["value"], user_id="U_ADMIN", message=alert)
    time.sleep(1)  # the acknowledgement's posts are under way, and stuck
    started = time.monotonic()
    muted = text_of(slack.request("slash_command", "mute 30m flower", timeout=3.0))
    assert "muted until" in muted and time.monotonic() - started < 3.0
    # Once Slack recovers, the acknowledgement reaches the alert.
    assert wait_until(lambda: "Acknowledged" in json.dumps(slack.message(alert.channel, alert.ts).blocks), 90)
    text_of(slack.request("slash_command", "unmute", timeout=3.0))

    actions = {(user, action, outcome) for user, action, outcome in
               sqlite_rows(tmp_path / "opsbot.sqlite3", "select user_id, action, outcome from audit")}
    assert {("U_ADMIN", "acknowledge", "done"), ("U_ADMIN", "mute", "done"),
            ("U_ADMIN", "unmute", "done")} <= actions


# --- Also: permanent Slack errors -------------------------------------------------------------


def test_a_post_slack_refuses_for_good_is_given_up_and_shown(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
        make_flower: Callable[..., FlowerProcess]) -> None:
    flower = make_flower()
    bot = socket_bot(FLOWER_URL=flower.url, **ALERTING)
    slack.fail_next("chat.postMessage", status=200, error="not_in_channel", count=100)
    flower.kill()
    assert wait_until(lambda: "not_in_channel" in bot.output(), 30)
    time.sleep(8)  # a retrying sender would have tried 2-3 times more by now
    refused = [c for c in slack.calls_to("chat.postMessage") if c.faulted]
    assert len(refused) == 1
    assert "Slack refused an alert post (not_in_channel)" in text_of(slack.request("slash_command", "", timeout=3.0))


# --- 6: a partial action is reported and audited ----------------------------------------------


@pytest.fixture
def redis_without_del(redis_server: RedisServer) -> Iterator[str]:
    """A broker URL for a Redis user that may read queues but not delete them (NOPERM on DEL)."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("ACL", "SETUSER", "nodel", "on", ">nodel-pw", "~*", "&*", "+@all", "-del")
    try:
        yield redis_server.url.replace("redis://", "redis://nodel:nodel-pw@")
    finally:
        admin.execute_command("ACL", "DELUSER", "nodel")
        admin.close()


def test_a_purge_the_broker_refuses_is_reported_and_audited(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], redis_server: RedisServer,
        redis_without_del: str, tmp_path: Path) -> None:
    publish_tasks(redis_server.url, "stackapp.add", 3, queue="other", args=(1, 1))
    socket_bot(CELERY_BROKER_URL=redis_without_del, OPSBOT_ADMINS="U_ADMIN", OPSBOT_QUEUES="celery,other")
    before = len(slack.responses)
    slack.send_block_action("purge", "queues|other", user_id="U_ADMIN")
    assert wait_until(lambda: len(slack.responses) > before, 15)
    answer = text_of(slack.responses[before].body)
    assert "refused the purge" in answer and "check /tasks queues" in answer
    assert "nothing was changed" not in answer.lower()
    rows = sqlite_rows(tmp_path / "opsbot.sqlite3", "select user_id, action, target, outcome from audit")
    assert ("U_ADMIN", "purge", "other", "refused") in rows


# --- 8: the console never takes alerting from a Slack-connected bot ---------------------------


def test_a_console_on_the_same_store_leaves_alerting_to_the_slack_bot(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], rabbit: RabbitNode,
        make_flower: Callable[..., FlowerProcess], tmp_path: Path) -> None:
    flower = make_flower()
    env = clean_env(stack_env(rabbit, flower, tmp_path) | {"OPSBOT_POLL_SECONDS": "1", "COLUMNS": "200"})
    console = subprocess.Popen([OPSBOT, "console"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        flower.kill()
        time.sleep(6)  # the console has seen the failure through and printed its alert
        socket_bot(FLOWER_URL=flower.url, **ALERTING)  # same store (tmp_path's SQLite file)
        assert wait_until(lambda: alerts(slack, "Flower"), 30), "the Slack bot never posted the alert"
        out, _ = console.communicate("quit\n", timeout=20)
    finally:
        if console.poll() is None:
            console.kill()
    assert "ALERT" in out and "Flower: Not running" in out  # the console still shows its own


# --- 9: SIGTERM -------------------------------------------------------------------------------


def test_sigterm_stops_cleanly_and_frees_the_outbox_at_once(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], make_flower: Callable[..., FlowerProcess],
        pg_url: str, rabbit: RabbitNode, worker: CeleryWorker) -> None:
    flower = make_flower()
    env = {"OPSBOT_DB_URL": pg_url, "FLOWER_URL": flower.url, **ALERTING}
    first = socket_bot(OPSBOT_REPLICA_ID="r1", **env)
    slack.hang_next("chat.postMessage", 60, process=False)  # the alert's post is claimed, and in flight
    flower.kill()
    assert wait_until(lambda: sql(pg_url, "SELECT claimed_by FROM outbox") == [("r1",)], 30)
    task_ids = publish_tasks(rabbit.amqp_url, "stackapp.add", 5, args=(2, 2))
    assert wait_until(lambda: all_done(rabbit, task_ids), 20)

    sent_at = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    code = first.process.wait(timeout=15)
    assert code == 0 and time.monotonic() - sent_at <= 10.0, first.output()[-3000:]
    assert "SIGTERM received: shutting down" in first.output()
    assert sql(pg_url, "SELECT claimed_by FROM outbox") == [(None,)]  # kept, and free for the others
    rows = sql(pg_url, "SELECT task_id FROM task_history WHERE task_id = ANY(:ids)", ids=task_ids)
    assert len(rows) == len(task_ids)

    socket_bot(OPSBOT_REPLICA_ID="r2", **env)  # takes over the post at once, not after the claim expires
    assert wait_until(lambda: alerts(slack, "Flower"), 20)


# --- 10: history survives a locked store and bad task ids -------------------------------------


def test_history_waits_out_a_locked_sqlite_store(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                 rabbit: RabbitNode, worker: CeleryWorker, tmp_path: Path) -> None:
    socket_bot()
    time.sleep(1)  # the event receiver is connected
    db = tmp_path / "opsbot.sqlite3"
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file: "database is locked"
    try:
        task_ids = publish_tasks(rabbit.amqp_url, "stackapp.add", 5, args=(1, 2))
        assert wait_until(lambda: all_done(rabbit, task_ids), 20)
        time.sleep(8)  # longer than SQLite's busy timeout: a batch written now fails
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    ids = ", ".join(f"'{task_id}'" for task_id in task_ids)
    query = f"select count(*) from task_history where state = 'SUCCESS' and task_id in ({ids})"
    assert wait_until(lambda: sqlite_rows(db, query) == [(len(task_ids),)], 30)


def test_a_task_id_too_long_to_store_does_not_cost_the_others(
        socket_bot: Callable[..., BotProcess], redis_server: RedisServer, make_worker: Callable[..., CeleryWorker],
        pg_url: str) -> None:
    # AMQP caps a task id at 255 bytes (it is the message's correlation id); Redis carries any length.
    make_worker(broker_url=redis_server.url, queues=("spare",))
    bot = socket_bot(OPSBOT_DB_URL=pg_url, CELERY_BROKER_URL=redis_server.url)
    time.sleep(2)  # the bot's event receiver is connected
    app = control_app(redis_server.url)
    long_id = "x" * 300
    with app.producer_or_acquire() as producer:  # in one burst: one batch of events
        task_ids = [app.send_task("stackapp.add", args=[1, n], queue="spare", producer=producer).id
                    for n in range(4)]
        app.send_task("stackapp.add", args=[1, 1], task_id=long_id, queue="spare", producer=producer)
    query = "SELECT task_id FROM task_history WHERE task_id = ANY(:ids) AND state = 'SUCCESS'"
    assert wait_until(lambda: len(sql(pg_url, query, ids=task_ids)) == len(task_ids), 30)
    assert "unusable task id (300 characters)" in bot.output()
