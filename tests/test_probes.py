"""The probes against the real stack: a private RabbitMQ node with the management plugin, real Celery
workers, a real Flower and a real Redis, and real faults: killed processes, stopped nodes, and a port
that accepts and never answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from bot.config import Settings, load_settings
from bot.probes.celery_probe import CeleryProbe
from bot.probes.prober import Prober
from bot.status import assess
from bot.status.snapshot import CeleryState, Failure, Level, Snapshot
from tests.support.celery_procs import CeleryWorker, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import HungServer, free_port, wait_until
from tests.support.rabbit import RabbitNode
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

DEADLINE = 2.0
# What a snapshot may take beyond its deadline: thread hand-off and building the result.
SLACK = 0.3


def settings_for(broker_url: str, management_url: str | None = None, flower_url: str | None = None,
                 **extra: str) -> Settings:
    return load_settings(
        CELERY_BROKER_URL=broker_url,
        RABBITMQ_MANAGEMENT_URL=management_url or f"http://127.0.0.1:{free_port()}",
        FLOWER_URL=flower_url or f"http://127.0.0.1:{free_port()}",
        OPSBOT_QUEUES="celery,other",
        OPSBOT_PROBE_TIMEOUT=str(DEADLINE),
        **extra,
    )


@pytest.fixture
def probe() -> Callable[[Settings], Snapshot]:
    probers: list[Prober] = []

    def take(settings: Settings) -> Snapshot:
        prober = Prober(settings)
        probers.append(prober)
        return prober.snapshot()

    yield take
    for prober in probers:
        prober.close()


def test_healthy_stack(rabbit: RabbitNode, worker: CeleryWorker, flower: FlowerProcess,
                       probe: Callable[[Settings], Snapshot]) -> None:
    snap = probe(settings_for(rabbit.amqp_url, rabbit.management_url, flower.url))
    assert snap.broker.up and snap.broker.management_problem is None
    assert snap.celery.state is CeleryState.RUNNING
    (found,) = [w for w in snap.celery.workers if w.name == worker.name]
    assert found.pool == "prefork" and found.concurrency == 2 and found.answered
    assert snap.flower.up
    celery_queue = next(q for q in snap.broker.queues if q.name == "celery")
    assert celery_queue.consumers == 1 and celery_queue.ready == 0
    assert assess.overall_level(snap) in (Level.OK, Level.WARN)  # "other" may exist without consumers


def test_waiting_count_is_exact_at_once(rabbit: RabbitNode, probe: Callable[[Settings], Snapshot]) -> None:
    """The management API lags ~5 s; the passive declare must see tasks the instant they are queued."""
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 2))
    snap = probe(settings_for(rabbit.amqp_url, rabbit.management_url))
    other = next(q for q in snap.broker.queues if q.name == "other")
    assert other.ready == 3 and other.consumers == 0
    assert "3 tasks waiting" in assess.broker_text(snap.broker)
    assert any(f.key == "queue:other" and "nothing consumes this queue" in f.text for f in assess.findings(snap))


def test_active_and_reserved_tasks(rabbit: RabbitNode, worker: CeleryWorker,
                                   probe: Callable[[Settings], Snapshot]) -> None:
    ids = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 4, args=(30,),
                        kwargs={"password": "hunter2", "note": "x"})
    settings = settings_for(rabbit.amqp_url, rabbit.management_url)

    def two_running() -> bool:
        snap = probe(settings)
        return len(snap.celery.active_tasks) == 2

    assert wait_until(two_running, 15)
    snap = probe(settings)
    (w,) = [w for w in snap.celery.workers if w.name == worker.name]
    assert {t.id for t in w.active} <= set(ids)
    assert all(t.name == "stackapp.sleep" and t.started_at for t in w.active)
    assert w.reserved == 2  # prefetched: neither waiting in the broker nor running
    assert all("hunter2" not in t.args_summary and "password=***" in t.args_summary for t in w.active)


@pytest.mark.slow
def test_each_real_fault_shows_red(make_rabbit: Callable[..., RabbitNode],
                                   make_worker: Callable[..., CeleryWorker],
                                   make_flower: Callable[..., FlowerProcess],
                                   probe: Callable[[Settings], Snapshot]) -> None:
    node = make_rabbit()
    worker = make_worker(broker_url=node.amqp_url)
    flower = make_flower(broker_url=node.amqp_url)
    settings = settings_for(node.amqp_url, node.management_url, flower.url)
    assert assess.celery_level(probe(settings).celery) is Level.OK

    worker.kill()
    snap = probe(settings)
    assert snap.celery.state is CeleryState.NOT_RUNNING
    assert assess.summary(snap) == "Celery: Not running: no worker answered"

    flower.kill()
    snap = probe(settings)
    assert snap.flower.problem is not None and snap.flower.problem.kind is Failure.REFUSED

    node.kill()
    snap = probe(settings)
    assert snap.broker.problem is not None and snap.broker.problem.kind is Failure.REFUSED
    assert snap.celery.state is CeleryState.UNKNOWN
    assert assess.exit_code(assess.overall_level(snap)) == 2
    assert snap.elapsed < DEADLINE + SLACK


def test_hung_services_time_out_within_the_deadline(hung_server: HungServer,
                                                    probe: Callable[[Settings], Snapshot]) -> None:
    hung = f"127.0.0.1:{hung_server.port}"
    settings = settings_for(f"amqp://guest:guest@{hung}//", f"http://{hung}", f"http://{hung}")
    started = time.monotonic()
    snap = probe(settings)
    took = time.monotonic() - started
    assert took < DEADLINE + SLACK
    assert snap.broker.problem is not None and snap.broker.problem.kind is Failure.TIMEOUT
    assert snap.flower.problem is not None and snap.flower.problem.kind is Failure.TIMEOUT
    assert "timed out" in assess.summary(snap)


def test_hung_flower_alone_does_not_delay_the_rest(rabbit: RabbitNode, worker: CeleryWorker,
                                                   hung_server: HungServer,
                                                   probe: Callable[[Settings], Snapshot]) -> None:
    snap = probe(settings_for(rabbit.amqp_url, rabbit.management_url, f"http://127.0.0.1:{hung_server.port}"))
    assert snap.broker.up and snap.celery.state is CeleryState.RUNNING
    assert snap.flower.problem is not None and snap.flower.problem.kind is Failure.TIMEOUT
    assert snap.elapsed < DEADLINE + SLACK


def test_management_plugin_unreachable_and_wrong_credentials(rabbit: RabbitNode, flower: FlowerProcess,
                                                             probe: Callable[[Settings], Snapshot]) -> None:
    snap = probe(settings_for(rabbit.amqp_url, f"http://127.0.0.1:{free_port()}"))
    assert snap.broker.up
    assert snap.broker.management_problem is not None
    assert snap.broker.management_problem.kind is Failure.NO_MANAGEMENT

    wrong_mgmt = rabbit.management_url.replace("http://", "http://guest:wrongpass@")
    snap = probe(settings_for(rabbit.amqp_url, wrong_mgmt))
    assert snap.broker.management_problem is not None
    assert snap.broker.management_problem.kind is Failure.UNAUTHORIZED

    wrong_broker = rabbit.amqp_url.replace("guest:guest", "guest:wrongpass")
    snap = probe(settings_for(wrong_broker, rabbit.management_url))
    assert snap.broker.problem is not None and snap.broker.problem.kind is Failure.UNAUTHORIZED
    assert "wrongpass" not in assess.summary(snap)

    wrong_flower = flower.bare_url.replace("http://", "http://opsbot:not-the-password@")
    snap = probe(settings_for(rabbit.amqp_url, rabbit.management_url, wrong_flower))
    assert snap.flower.problem is not None and snap.flower.problem.kind is Failure.UNAUTHORIZED
    assert "not-the-password" not in assess.flower_text(snap.flower)


def test_redis_broker_counts_priority_queues_and_fails_when_killed(
        redis_server: RedisServer, make_worker: Callable[..., CeleryWorker],
        probe: Callable[[Settings], Snapshot]) -> None:
    url = redis_server.url
    publish_tasks(url, "stackapp.add", 2, queue="other", args=(1, 1))
    # Celery's Redis transport keeps priorities 3, 6 and 9 in their own lists: "other\x06\x166", ...
    from tests.support.celery_procs import control_app
    control_app(url).send_task("stackapp.add", args=(1, 1), queue="other", priority=6)
    make_worker(broker_url=url, queues=("celery",))
    settings = settings_for(url)
    snap = probe(settings)
    assert snap.broker.kind == "redis" and snap.broker.up
    assert next(q for q in snap.broker.queues if q.name == "other").ready == 3
    assert snap.celery.state is CeleryState.RUNNING


@pytest.mark.slow
def test_redis_killed_is_red(probe: Callable[[Settings], Snapshot]) -> None:
    server = RedisServer().start()
    try:
        settings = settings_for(server.url)
        assert probe(settings).broker.up
        server.kill()
        snap = probe(settings)
        assert snap.broker.problem is not None and snap.broker.problem.kind is Failure.REFUSED
        assert snap.celery.state is CeleryState.UNKNOWN
    finally:
        server.cleanup()


def test_probe_learns_how_many_workers_to_expect(rabbit: RabbitNode, worker: CeleryWorker,
                                                 make_worker: Callable[..., CeleryWorker]) -> None:
    """After one answer, the probe waits for exactly those workers; a new worker's heartbeat adds it."""
    settings = settings_for(rabbit.amqp_url, rabbit.management_url)
    celery_probe = CeleryProbe(settings)
    first = celery_probe.probe(time.monotonic() + DEADLINE)
    names = {w.name for w in first.workers}
    assert worker.name in names
    assert celery_probe.expected() == names
    extra = make_worker()
    alive = names | {extra.name}
    celery_probe.alive_workers = lambda: alive  # what the heartbeat monitor would report
    second = celery_probe.probe(time.monotonic() + DEADLINE)
    assert {w.name for w in second.workers} == alive


def test_a_failing_probe_logs_why_once_per_change_of_cause(rabbit: RabbitNode, hung_server: HungServer,
                                                           flower: FlowerProcess,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Real faults: a Flower port nobody listens on (three polls), then one that never answers, then a
    running Flower; the management API behind wrong credentials. One line per cause, no secret."""
    closed = free_port()
    settings = settings_for(rabbit.amqp_url, rabbit.management_url.replace("//", "//guest:wrong-secret@"),
                            f"http://opsbot:flower-pass@127.0.0.1:{closed}")
    prober = Prober(settings)
    try:
        with caplog.at_level("INFO", logger="bot.probes"):
            for _ in range(3):
                prober.snapshot()
            prober.settings = settings.model_copy(update={"flower_url": f"http://127.0.0.1:{hung_server.port}"})
            prober.snapshot()
            prober.settings = settings.model_copy(update={"flower_url": flower.url})
            prober.snapshot()
    finally:
        prober.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "bot.probes"]
    unauthorized = f"401 Client Error: Unauthorized for url: {rabbit.management_url}/api/"
    assert lines[0][1].startswith(f"RabbitMQ management API probe failed at {rabbit.management_url}: HTTPError: "
                                  f"{unauthorized}"), lines  # /api/queues/... or, with no queue yet, /api/nodes
    assert lines[1:] == [
        ("WARNING", f"Flower probe failed at http://127.0.0.1:{closed}: ConnectionRefusedError: "
                    "[Errno 111] Connection refused (raised as ConnectionError)"),
        ("WARNING", f"Flower probe failed at http://127.0.0.1:{hung_server.port}: TimeoutError: timed out "
                    "(raised as ReadTimeout)"),
        ("INFO", "Flower probe works again"),
    ], lines
    assert "wrong-secret" not in caplog.text and "flower-pass" not in caplog.text


def test_quiet_heartbeats_answer_at_once_and_still_find_a_worker_without_them(
        rabbit: RabbitNode, make_worker: Callable[..., CeleryWorker]) -> None:
    """With no heartbeat for longer than the interval the probe does not wait the whole discovery
    timeout, yet a worker started with --without-heartbeat still answers the short broadcast."""
    settings = settings_for(rabbit.amqp_url, rabbit.management_url)
    quiet = make_worker(extra_args=["--without-heartbeat"])
    celery_probe = CeleryProbe(settings, alive_workers=set, heartbeat_quiet=lambda: 30.0)
    status = celery_probe.probe(time.monotonic() + DEADLINE)
    assert quiet.name in {w.name for w in status.workers}
    assert status.heartbeats_silent
