"""The stack fixtures do what the bot's integration tests will rely on."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest
import requests

from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import HungServer, port_accepts, wait_until
from tests.support.rabbit import RabbitNode, purge_queue, queue_counts
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_management_api_reports_published_queue(rabbit: RabbitNode) -> None:
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 2))
    # Exact count from a passive declare; the API's counters are sampled and lag.
    assert queue_counts(rabbit.amqp_url, "other") == (3, 0)
    resp = requests.get(
        f"{rabbit.management_url}/api/queues/{quote('/', safe='')}/other", auth=("guest", "guest"), timeout=2
    )
    assert resp.status_code == 200
    assert resp.json()["name"] == "other"
    assert purge_queue(rabbit.amqp_url, "other") == 3


def test_management_api_needs_credentials(rabbit: RabbitNode) -> None:
    assert requests.get(f"{rabbit.management_url}/api/overview", timeout=2).status_code == 401


def test_purge_of_missing_queue_is_zero(rabbit: RabbitNode) -> None:
    assert purge_queue(rabbit.amqp_url, "no-such-queue") == 0
    assert queue_counts(rabbit.amqp_url, "no-such-queue") is None


def test_session_worker_runs_tasks(worker: CeleryWorker) -> None:
    assert worker.name.startswith("w1@")
    assert len(worker.pool_child_pids()) == 2
    publish_tasks(worker.broker_url, "stackapp.sleep", 1, args=(30,))
    inspect = control_app(worker.broker_url).control.inspect(destination=[worker.name], timeout=1.0, limit=1)
    assert wait_until(lambda: (inspect.active() or {}).get(worker.name), timeout=10)
    # The autouse cleanup terminates this 30 s task after the test.


def test_worker_pings_and_kill_silences_it(make_worker: Callable[..., CeleryWorker]) -> None:
    w = make_worker(concurrency=1)
    children = w.pool_child_pids()
    assert w.answers_ping()
    assert len(children) == 1
    w.kill()
    w.wait_gone(timeout=5)
    assert not w.answers_ping(timeout=0.5)
    assert not any(_alive(pid) for pid in [w.pid or 0, *children])


def test_flower_healthcheck_without_auth_api_with_auth(make_flower: Callable[..., FlowerProcess]) -> None:
    f = make_flower()
    # /healthcheck is open even with --basic-auth; the API is not.
    assert requests.get(f"{f.bare_url}/healthcheck", timeout=2).text == "OK"
    assert requests.get(f"{f.bare_url}/api/workers?refresh=0", timeout=2).status_code == 401
    assert requests.get(f"{f.bare_url}/api/workers?refresh=0", auth=("opsbot", "wrong"), timeout=2).status_code == 401
    assert requests.get(f"{f.url}/api/workers?refresh=0", timeout=2).status_code == 200
    f.kill()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{f.bare_url}/healthcheck", timeout=2)
    f.restart()
    assert requests.get(f"{f.bare_url}/healthcheck", timeout=2).status_code == 200


def test_hung_server_accepts_and_never_answers(hung_server: HungServer) -> None:
    with socket.create_connection(("127.0.0.1", hung_server.port), timeout=1) as sock:
        sock.settimeout(0.5)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            sock.recv(1)
        assert time.monotonic() - started >= 0.45
    with pytest.raises(requests.Timeout):
        requests.get(hung_server.url("http") + "/healthcheck", timeout=0.5)


@pytest.mark.slow
def test_rabbit_kill_then_restart_keeps_durable_queue(make_rabbit: Callable[..., RabbitNode]) -> None:
    node = make_rabbit()
    publish_tasks(node.amqp_url, "stackapp.add", 2, args=(1, 1))  # "celery" is durable, persistent msgs
    node.kill()
    assert not port_accepts(node.port)
    assert not port_accepts(node.management_port)
    node.restart()
    assert queue_counts(node.amqp_url, "celery") == (2, 0)
    resp = requests.get(f"{node.management_url}/api/overview", auth=("guest", "guest"), timeout=2)
    assert resp.status_code == 200


@pytest.mark.slow
def test_worker_reconnects_after_broker_restart(
    make_rabbit: Callable[..., RabbitNode], make_worker: Callable[..., CeleryWorker]
) -> None:
    node = make_rabbit()
    w = make_worker(broker_url=node.amqp_url)
    node.kill()
    node.restart()
    assert wait_until(w.answers_ping, timeout=30), "worker did not reconnect after broker restart"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_redis_kill_and_restart_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert _redis_ping(port)
    redis_server.kill()
    assert not port_accepts(port)
    redis_server.restart()
    assert redis_server.port == port
    assert _redis_ping(port)


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16) == b"+PONG\r\n"
