"""Fixtures for the real task stack, the bot and the Slack stand-in (all built in tests/support/).

A fixture that cannot start its service raises (the test errors with the service's log tail):
an integration test silently skipped would hide exactly the outages opsbot exists to report.
Teardown uses kill() rather than stop(): a graceful RabbitMQ stop costs ~6 s and tests don't
need it; the data dirs are thrown away.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bot import OPSBOT, SIGNING_SECRET, BotProcess, stack_env, start_socket_mode
from tests.support.celery_procs import CeleryWorker, control_app
from tests.support.flower import FlowerProcess
from tests.support.net import HungServer, TcpProxy, free_port, port_accepts, wait_until
from tests.support.postgres import fresh_database
from tests.support.procs import ManagedProcess
from tests.support.rabbit import RabbitNode, purge_queue
from tests.support.redis_server import RedisServer
from tests.support.slack import SlackStandIn

TEST_QUEUES = ("celery", "other", "spare")
_worker_numbers = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers only "integration"; slow tests (own RabbitMQ node) stay in the
    # default run but can be deselected with -m "not slow".
    config.addinivalue_line("markers", "slow: starts its own RabbitMQ node (several seconds)")


def _cleanup_all(services: list[ManagedProcess]) -> None:
    for service in reversed(services):  # workers and Flower before their broker
        service.cleanup()


# --------------------------------------------------------------------------- session services


@pytest.fixture(scope="session")
def rabbit() -> Iterator[RabbitNode]:
    """One private RabbitMQ node (with management) for all non-destructive tests."""
    node = RabbitNode()
    try:
        yield node.start()
    finally:
        node.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def worker(rabbit: RabbitNode) -> Iterator[CeleryWorker]:
    """Prefork worker w1@<host>, concurrency 2, task events on, consuming "celery".

    Shared by the session: don't kill it (use make_worker). After each test that uses it,
    _leave_session_stack_idle purges the queues and terminates whatever it still runs.
    """
    w = CeleryWorker(rabbit.amqp_url, hostname="w1@%h", concurrency=2, events=True)
    try:
        yield w.start()
    finally:
        w.cleanup()


@pytest.fixture(scope="session")
def flower(rabbit: RabbitNode) -> Iterator[FlowerProcess]:
    """Flower on the session node, basic auth opsbot:flower-secret. Don't kill it (make_flower)."""
    f = FlowerProcess(rabbit.amqp_url)
    try:
        yield f.start()
    finally:
        f.cleanup()


def _terminate_active(w: CeleryWorker) -> None:
    """Stop what the session worker still holds: a leftover sleep would skew the next test.

    Running tasks get SIGKILL (stubborn ignores SIGTERM); prefetched ("reserved") ones, which a
    queue purge cannot reach, are revoked so the worker drops them instead of running them.
    """
    control = control_app(w.broker_url).control
    inspect = control.inspect(destination=[w.name], timeout=1.0, limit=1)
    for task in (inspect.active() or {}).get(w.name, []):
        control.revoke(task["id"], terminate=True, signal="SIGKILL")
    reserved = [task["id"] for task in (inspect.reserved() or {}).get(w.name, [])]
    if reserved:
        control.revoke(reserved)


@pytest.fixture(autouse=True)
def _leave_session_stack_idle(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the session broker: empty the test queues, stop running tasks.

    Only acts when the test asked for rabbit/worker/flower, so unit tests never start a node.
    """
    yield
    used = set(request.fixturenames) & {"rabbit", "worker", "flower"}
    if not used:
        return
    node: RabbitNode = request.getfixturevalue("rabbit")
    if not node.is_running():
        return  # a test is not supposed to kill the session node; don't hide it with errors here
    for name in TEST_QUEUES:
        purge_queue(node.amqp_url, name)
    if "worker" in used:
        _terminate_active(request.getfixturevalue("worker"))


# --------------------------------------------------------------------------- factories


@pytest.fixture
def make_rabbit() -> Iterator[Callable[..., RabbitNode]]:
    """Fresh private nodes for tests that kill or restart the broker."""
    nodes: list[ManagedProcess] = []

    def factory(**kwargs: Any) -> RabbitNode:
        node = RabbitNode(**kwargs)
        nodes.append(node)
        return node.start()

    yield factory
    _cleanup_all(nodes)


@pytest.fixture
def make_worker(request: pytest.FixtureRequest) -> Iterator[Callable[..., CeleryWorker]]:
    """make_worker(broker_url=None, hostname=None, **CeleryWorker kwargs) -> started worker.

    broker_url defaults to the session node; hostname to a unique "tN@%h" so workers of
    different tests never share a node name (pidbox replies would mix).
    """
    workers: list[ManagedProcess] = []

    def factory(broker_url: str | None = None, hostname: str | None = None, **kwargs: Any) -> CeleryWorker:
        url = broker_url or request.getfixturevalue("rabbit").amqp_url
        name = hostname or f"t{next(_worker_numbers)}@%h"
        w = CeleryWorker(url, hostname=name, **kwargs)
        workers.append(w)
        return w.start()

    yield factory
    _cleanup_all(workers)


@pytest.fixture
def make_flower(request: pytest.FixtureRequest) -> Iterator[Callable[..., FlowerProcess]]:
    """make_flower(broker_url=None, **FlowerProcess kwargs) -> started Flower."""
    flowers: list[ManagedProcess] = []

    def factory(broker_url: str | None = None, **kwargs: Any) -> FlowerProcess:
        url = broker_url or request.getfixturevalue("rabbit").amqp_url
        f = FlowerProcess(url, **kwargs)
        flowers.append(f)
        return f.start()

    yield factory
    _cleanup_all(flowers)


@pytest.fixture
def hung_server() -> Iterator[HungServer]:
    with HungServer() as server:
        yield server


# --------------------------------------------------------------------------- the bot and Slack


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn() as standin:
        yield standin


@pytest.fixture
def run_bot(tmp_path: Path) -> Iterator[Callable[..., BotProcess]]:
    """Start `opsbot` (or `program`, another install of it) with the given arguments and environment;
    stopped after the test."""
    started: list[BotProcess] = []

    def start(args: list[str], env: dict[str, str], program: str = OPSBOT) -> BotProcess:
        bot = BotProcess(args, env, tmp_path / f"bot-{len(started)}.log", program)
        started.append(bot)
        return bot

    yield start
    for bot in started:
        bot.stop()


@pytest.fixture
def socket_bot(slack: SlackStandIn, rabbit: RabbitNode, flower: FlowerProcess, worker: Any,
               run_bot: Callable[..., BotProcess], tmp_path: Path) -> Callable[..., BotProcess]:
    """A factory: `opsbot run` in Socket Mode against the session stack, connected before it returns."""

    def start(**overrides: str) -> BotProcess:
        return start_socket_mode(slack, run_bot, stack_env(rabbit, flower, tmp_path) | overrides)

    return start


@pytest.fixture
def http_bot(slack: SlackStandIn, rabbit: RabbitNode, flower: FlowerProcess, worker: Any,
             run_bot: Callable[..., BotProcess], tmp_path: Path) -> tuple[BotProcess, str]:
    """`opsbot run` in HTTP mode; returns the process and its events URL."""
    port = free_port()
    env = stack_env(rabbit, flower, tmp_path)
    env.update(SLACK_BOT_TOKEN=slack.bot_token, SLACK_SIGNING_SECRET=SIGNING_SECRET,
               SLACK_API_URL=slack.base_url, OPSBOT_HTTP_PORT=str(port))
    bot = run_bot(["run"], env)
    if not wait_until(lambda: port_accepts(port) or bot.process.poll() is not None, 30):
        raise AssertionError(f"the bot never listened on {port}:\n{bot.output()[-3000:]}")
    time.sleep(0.2)
    return bot, f"http://127.0.0.1:{port}/slack/events"


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def start(target: int) -> TcpProxy:
        proxies.append(TcpProxy(target).start())
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    with fresh_database() as url:
        yield url
