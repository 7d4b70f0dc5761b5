"""Several `opsbot run` replicas on one PostgreSQL (this machine's): one alert per incident, failover of
the alerting leader, clicks answered by any replica, a replica that loses the database stands down.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from alembic.script import ScriptDirectory

import bot
from bot.db import Database
from bot.leader import Leadership
from bot.tables import leader_table
from tests.support.bot import BotProcess
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import TcpProxy, wait_until
from tests.support.postgres import PG_ADMIN, LeaderRow
from tests.support.rabbit import RabbitNode
from tests.support.slack import Message, SlackStandIn

pytestmark = pytest.mark.integration

CHANNEL = "C_ALERTS"
FAILOVER_BOUND = 30.0  # seconds, as the README promises


MIGRATIONS_HEAD = ScriptDirectory(str(Path(bot.__file__).parent / "migrations")).get_current_head()


def leader_since(pg_url: str) -> float:
    """When a replica last said it leads (0 when none has)."""
    with contextlib.closing(LeaderRow(pg_url)) as leader:
        row = leader.read()
    return row[1] if row else 0.0


def leader_of(pg_url: str) -> str | None:
    with contextlib.closing(LeaderRow(pg_url)) as leader:
        return leader.current()


def alerts(slack: SlackStandIn, about: str) -> list[Message]:
    return [m for m in slack.messages if m.channel == CHANNEL and not m.thread_ts and about in (m.text or "")]


def resolved(slack: SlackStandIn, message: Message) -> bool:
    current = slack.message(message.channel, message.ts)
    return current is not None and (current.text or "").startswith("Resolved")


@pytest.fixture
def replicas(socket_bot: Callable[..., BotProcess], make_flower: Callable[..., FlowerProcess],
             pg_url: str) -> Callable[[int], tuple[dict[str, BotProcess], FlowerProcess]]:
    """Start n replicas r1..rn on one database, alerting about a Flower of their own."""

    def start(n: int) -> tuple[dict[str, BotProcess], FlowerProcess]:
        flower = make_flower()
        bots = {f"r{i}": socket_bot(OPSBOT_DB_URL=pg_url, OPSBOT_REPLICA_ID=f"r{i}", FLOWER_URL=flower.url,
                                    OPSBOT_ALERT_CHANNEL=CHANNEL, OPSBOT_POLL_SECONDS="2", OPSBOT_ADMINS="U_ADMIN")
                for i in range(1, n + 1)}
        assert wait_until(lambda: leader_of(pg_url) in bots, 15), "no replica took the lead"
        return bots, flower

    return start


@pytest.mark.parametrize("count", [2, 3])
def test_one_alert_per_incident_whatever_the_replicas(slack: SlackStandIn, replicas: Callable, count: int) -> None:
    _, flower = replicas(count)
    flower.kill()
    assert wait_until(lambda: alerts(slack, "Flower"), 20)
    time.sleep(6)
    assert len(alerts(slack, "Flower")) == 1
    flower.restart()
    (alert,) = alerts(slack, "Flower")
    assert wait_until(lambda: resolved(slack, alert), 30)
    assert len(alerts(slack, "Flower")) == 1


def test_leader_killed_mid_incident_another_takes_over(slack: SlackStandIn, replicas: Callable,
                                                       pg_url: str) -> None:
    bots, flower = replicas(2)
    flower.kill()
    assert wait_until(lambda: alerts(slack, "Flower"), 20)
    (alert,) = alerts(slack, "Flower")
    leader = leader_of(pg_url)
    assert leader is not None
    bots[leader].process.kill()  # no goodbye: the lock goes with its connection
    assert wait_until(lambda: leader_of(pg_url) not in (None, leader), 15), "nobody took over"
    flower.restart()
    assert wait_until(lambda: resolved(slack, alert), 30), "the new leader did not update the same message"
    time.sleep(3)
    assert len(alerts(slack, "Flower")) == 1


def test_any_replica_answers_and_names_the_leader(slack: SlackStandIn, replicas: Callable, pg_url: str) -> None:
    replicas(3)
    leader = leader_of(pg_url)
    answered = set()
    for _ in range(9):
        text = str(slack.request("slash_command", "", timeout=3.0))
        assert f"leader {leader}" in text
        answered |= {r for r in ("r1", "r2", "r3") if f"answered by {r}," in text}
    assert len(answered) >= 2  # Socket Mode spreads envelopes over the connections


def test_a_replica_that_loses_the_database_stops_leading(slack: SlackStandIn, replicas: Callable,
                                                         pg_url: str) -> None:
    bots, flower = replicas(2)
    leader = leader_of(pg_url)
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"opsbot-leader-{leader}",)).fetchall()
    admin.dispose()
    assert killed, "the leader's lock connection was not found"
    assert wait_until(lambda: "standing down" in bots[leader].output(), 10)
    # Then a replica leads again, within seconds: either, since the lock is free for both to take.
    stood_down = time.time()
    assert wait_until(lambda: leader_since(pg_url) > stood_down, 15)
    flower.kill()
    assert wait_until(lambda: alerts(slack, "Flower"), 20)
    time.sleep(5)
    assert len(alerts(slack, "Flower")) == 1


def test_a_leader_cut_off_from_the_database_fails_over_within_the_bound(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], make_flower: Callable[..., FlowerProcess],
        pg_url: str, tcp_proxy: Callable[[int], TcpProxy]) -> None:
    """The leader's host drops off the network: its packets vanish, its sockets stay open on both ends."""
    flower = make_flower()
    proxies = {name: tcp_proxy(5432) for name in ("r1", "r2")}
    bots = {name: socket_bot(OPSBOT_DB_URL=pg_url.replace(":5432/", f":{proxy.port}/"), OPSBOT_REPLICA_ID=name,
                             FLOWER_URL=flower.url, OPSBOT_ALERT_CHANNEL=CHANNEL, OPSBOT_POLL_SECONDS="2")
            for name, proxy in proxies.items()}
    assert wait_until(lambda: leader_of(pg_url) in bots, 15), "no replica took the lead"
    leader = leader_of(pg_url)
    (standby,) = set(bots) - {leader}

    cut_at = time.monotonic()
    proxies[leader].black_hole()
    assert wait_until(lambda: leader_of(pg_url) == standby, FAILOVER_BOUND + 15), "the standby never took over"
    took = time.monotonic() - cut_at
    assert took <= FAILOVER_BOUND, f"failover took {took:.1f} s"
    assert "could not confirm leadership" in bots[leader].output()  # it stood down on its own

    flower.kill()  # the new leader alerts, exactly once
    assert wait_until(lambda: alerts(slack, "Flower"), 30)
    time.sleep(5)
    assert len(alerts(slack, "Flower")) == 1


def history_rows(pg_url: str, task_ids: list[str]) -> dict[str, str]:
    engine = sqlalchemy.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT task_id, state FROM task_history WHERE task_id = ANY(:ids)"),
                                {"ids": task_ids}).all()
    finally:
        engine.dispose()
    return dict(rows)  # type: ignore[arg-type]


def test_history_keeps_every_task_when_the_leader_dies_mid_stream(
        replicas: Callable, pg_url: str, rabbit: RabbitNode, worker: CeleryWorker) -> None:
    bots, _ = replicas(2)
    leader = leader_of(pg_url)
    assert leader is not None
    time.sleep(1)  # both event receivers are connected
    task_ids: list[str] = []
    for round_ in range(20):
        task_ids += publish_tasks(rabbit.amqp_url, "stackapp.add", 3, args=(round_, 1))
        if round_ == 10:
            bots[leader].process.kill()  # mid-stream, events queued and not yet written
        time.sleep(0.15)
    inspect = control_app(rabbit.amqp_url).control.inspect(timeout=1)
    assert wait_until(lambda: not any(t in str([inspect.active(), inspect.reserved()]) for t in task_ids), 30)
    assert wait_until(lambda: len(history_rows(pg_url, task_ids)) == len(task_ids), 20), \
        f"{len(task_ids) - len(history_rows(pg_url, task_ids))} of {len(task_ids)} tasks are missing from the history"
    assert wait_until(lambda: set(history_rows(pg_url, task_ids).values()) == {"SUCCESS"}, 10)


def test_the_daily_digest_is_posted_once_whatever_the_replicas(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], pg_url: str) -> None:
    now = datetime.now()
    at = (now + timedelta(minutes=1 if now.second < 40 else 2)).replace(second=0, microsecond=0)
    for name in ("r1", "r2"):
        socket_bot(OPSBOT_DB_URL=pg_url, OPSBOT_REPLICA_ID=name, OPSBOT_ALERT_CHANNEL=CHANNEL,
                   OPSBOT_DIGEST_AT=at.strftime("%H:%M"))
    assert wait_until(lambda: alerts(slack, "Daily digest"), (at - datetime.now()).total_seconds() + 20)
    time.sleep(5)
    assert len(alerts(slack, "Daily digest")) == 1


def test_the_leadership_thread_survives_a_failed_step(pg_url: str) -> None:
    """Taking the lock works but saying so fails (the leader table is gone): the thread must live on."""
    store = Database(pg_url)
    with store.engine.begin() as conn:
        leader_table.drop(conn)
    leadership = Leadership(store, "r1").start()
    try:
        time.sleep(3)  # several failed steps
        with store.engine.begin() as conn:
            leader_table.create(conn)
        assert wait_until(lambda: leader_of(pg_url) == "r1", 15), "the leadership thread died"
        assert leadership.is_leader()
    finally:
        leadership.stop()
        store.close()


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Database(pg_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    engine = sqlalchemy.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == MIGRATIONS_HEAD
        assert conn.exec_driver_sql("SELECT count(*) FROM outbox").scalar() == 0
    engine.dispose()
