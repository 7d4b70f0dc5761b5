"""/tasks from live event state (bot.live) against a real RabbitMQ node and real Celery workers.

The bot's own parts, in this process: the heartbeat monitor feeding the live state from the real event
stream, the live Celery probe, the reconciler. Every inspect request the probe sends is recorded (its
destination), so a test can tell "answered from events" from "asked the worker".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from bot.config import load_settings
from bot.live.probe import LiveCeleryProbe
from bot.live.reconcile import Reconciler
from bot.live.state import LiveState, WorkerFacts
from bot.probes.prober import Prober
from bot.status import assess, views
from bot.status.heartbeats import HeartbeatMonitor
from bot.status.snapshot import CeleryStatus, LiveAges, Snapshot, TaskInfo, WorkerInfo
from tests.support.celery_procs import CeleryWorker, control_app
from tests.support.net import free_port, wait_until
from tests.support.rabbit import RabbitNode

pytestmark = pytest.mark.integration

WAIT = 30.0  # generous: a busy 2-core machine


@dataclass
class Rig:
    rabbit: RabbitNode
    probe: LiveCeleryProbe
    monitor: HeartbeatMonitor
    prober: Prober
    asked: list[list[str] | None] = field(default_factory=list)  # each inspect's destination (None: everyone)

    def status(self) -> CeleryStatus:
        return self.probe.probe(time.monotonic() + 2.0)

    def snapshot(self) -> Snapshot:
        return self.prober.snapshot()

    def worker(self, name: str) -> WorkerInfo | None:
        return next((w for w in self.status().workers if w.name == name and w.answered), None)

    def known(self, name: str) -> bool:
        return any(w.name == name for w in self.probe.live.view({name}).workers)

    def asked_about(self, name: str) -> int:
        return sum(1 for destination in self.asked if destination is None or name in destination)


@pytest.fixture
def rig(make_rabbit: Callable[..., RabbitNode], monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    rabbit = make_rabbit(name_prefix="opsbot-live")
    settings = load_settings(CELERY_BROKER_URL=rabbit.amqp_url, FLOWER_URL=f"http://127.0.0.1:{free_port()}",
                             RABBITMQ_MANAGEMENT_URL=rabbit.management_url, OPSBOT_PROBE_TIMEOUT="2")
    live = LiveState()
    monitor: list[HeartbeatMonitor] = []
    probe = LiveCeleryProbe(settings, live, alive_workers=lambda: monitor[0].alive_workers(),
                            heartbeat_details=lambda: monitor[0].worker_details(),
                            heartbeat_quiet=lambda: monitor[0].quiet_seconds())
    monitor.append(HeartbeatMonitor(probe.app, live=live).start())
    rig = Rig(rabbit, probe, monitor[0], Prober(settings, probe))
    real_inspect = probe.app.control.inspect

    def recording_inspect(*args: object, **kwargs: object) -> object:
        destination = kwargs.get("destination")
        rig.asked.append(list(destination) if destination else None)  # type: ignore[call-overload]
        return real_inspect(*args, **kwargs)

    monkeypatch.setattr(probe.app.control, "inspect", recording_inspect)
    yield rig
    monitor[0].stop()
    rig.prober.close()


def start_sleep(broker_url: str, seconds: float, queue: str = "celery") -> str:
    return control_app(broker_url).send_task("stackapp.sleep", args=(seconds,), kwargs={"password": "hunter2"},
                                             queue=queue).id


def wait_alive(rig: Rig, worker: CeleryWorker) -> None:
    assert wait_until(lambda: worker.name in (rig.monitor.alive_workers() or set()), WAIT), "no heartbeat seen"


def test_a_worker_with_events_is_shown_without_asking_it_and_a_finished_task_disappears(
        rig: Rig, make_worker: Callable[..., CeleryWorker]) -> None:
    url = rig.rabbit.amqp_url
    worker = make_worker(url, events=True)
    wait_alive(rig, worker)
    first = rig.worker(worker.name)  # not known yet: asked, and its answer seeds the state
    assert first is not None and first.pool == "prefork" and first.concurrency == 2
    long_id = start_sleep(url, 120)
    short_id = start_sleep(url, 120)
    # Started since the worker was asked: asked once more (the pool child's pid), then known from its events.
    assert wait_until(lambda: {t.id for t in rig.worker(worker.name).active} == {long_id, short_id}
                      and rig.known(worker.name), WAIT)
    asked = rig.asked_about(worker.name)
    shown = rig.worker(worker.name)
    assert shown is not None and {t.id for t in shown.active} == {long_id, short_id}
    (long_task,) = [t for t in shown.active if t.id == long_id]
    assert long_task.name == "stackapp.sleep" and "hunter2" not in long_task.args_summary
    assert long_task.started_at is not None and shown.pool == "prefork" and shown.concurrency == 2
    assert rig.asked_about(worker.name) == asked  # answered from its events: no inspect reached it
    # The other task ends: its event takes it off the list, still without asking.
    control_app(url).control.revoke(short_id, terminate=True)
    assert wait_until(lambda: [t.id for t in rig.worker(worker.name).active] == [long_id], WAIT)
    assert rig.asked_about(worker.name) == asked
    snapshot = rig.snapshot()
    assert snapshot.celery.live is not None and snapshot.celery.live.workers == 1
    assert "Running: 1 worker, 1 active, 0 reserved" in assess.celery_text(snapshot.celery)
    control_app(url).control.revoke(long_id, terminate=True)


def test_a_worker_without_task_events_is_asked_by_name_every_time(
        rig: Rig, make_worker: Callable[..., CeleryWorker]) -> None:
    url = rig.rabbit.amqp_url
    with_events = make_worker(url, events=True, queues=("celery",))
    without = make_worker(url, events=False, queues=("other",))
    wait_alive(rig, with_events)
    wait_alive(rig, without)
    rig.status()
    start_sleep(url, 120, "celery")
    quiet_id = start_sleep(url, 120, "other")
    assert wait_until(lambda: rig.status() and rig.known(with_events.name), WAIT)  # asked once, then known
    before = len(rig.asked)
    status = rig.status()
    (shown,) = [w for w in status.workers if w.name == without.name]
    assert [t.id for t in shown.active] == [quiet_id]  # from inspect, as before the live state
    asked = rig.asked[before:]
    assert asked and all(destination == [without.name] for destination in asked), asked
    assert not rig.known(without.name)
    control_app(url).control.revoke(quiet_id, terminate=True)


def test_the_reconcile_corrects_a_state_that_disagrees_with_the_heartbeats(
        make_rabbit: Callable[..., RabbitNode], make_worker: Callable[..., CeleryWorker],
        ) -> None:
    """A task started before the bot listened: no event of it was seen, the heartbeat counts it."""
    rabbit = make_rabbit(name_prefix="opsbot-live-r")
    worker = make_worker(rabbit.amqp_url, events=True)
    early_id = start_sleep(rabbit.amqp_url, 120)
    assert wait_until(lambda: early_id in str(control_app(rabbit.amqp_url).control.inspect(
        destination=[worker.name], timeout=1.0, limit=1).active()), WAIT)
    settings = load_settings(CELERY_BROKER_URL=rabbit.amqp_url, FLOWER_URL=f"http://127.0.0.1:{free_port()}",
                             RABBITMQ_MANAGEMENT_URL=rabbit.management_url, OPSBOT_PROBE_TIMEOUT="2")
    live = LiveState()
    probe = LiveCeleryProbe(settings, live)
    monitor = HeartbeatMonitor(probe.app, live=live).start()
    try:
        probe.alive_workers = monitor.alive_workers
        assert wait_until(lambda: worker.name in (monitor.alive_workers() or set()), WAIT)
        late_id = start_sleep(rabbit.amqp_url, 120)  # seen by its events: the worker sends them
        assert wait_until(lambda: live.to_reconcile(stale_after=300) == [worker.name], WAIT)
        assert not live.view({worker.name}).workers  # the heartbeat counts 2, we saw 1: uncertain
        assert Reconciler(probe, every=30).once() == [worker.name]
        assert wait_until(lambda: live.view({worker.name}).workers, WAIT)
        (shown,) = live.view({worker.name}).workers
        assert {t.id for t in shown.active} == {early_id, late_id}
        assert Reconciler(probe, every=30).once() == []  # agreed: nobody asked
    finally:
        monitor.stop()
        control_app(rabbit.amqp_url).control.revoke([early_id, late_id], terminate=True)


def test_the_status_says_how_old_the_event_state_is(rig: Rig, make_worker: Callable[..., CeleryWorker]) -> None:
    """A worker beating every 10 s: what its events told may be seconds old, and the footer says so."""
    url = rig.rabbit.amqp_url
    worker = make_worker(url, events=True, extra_args=("--heartbeat-interval", "10"))
    wait_alive(rig, worker)
    rig.status()
    task_id = start_sleep(url, 120)
    assert wait_until(lambda: rig.status() and rig.known(worker.name), WAIT)
    assert wait_until(lambda: rig.snapshot().celery.live.heard_age >= 3, WAIT)  # between two heartbeats
    snapshot = rig.snapshot()
    live = snapshot.celery.live
    assert live is not None and live.heard_age >= 3
    footer = views.status_view(snapshot).footer
    assert f"active tasks as of {assess.duration(live.heard_age)} ago (events of 1 worker)" in footer, footer
    control_app(url).control.revoke(task_id, terminate=True)


def test_the_age_of_a_pool_reading_is_named_once_it_matters() -> None:
    assert assess.live_text(LiveAges(workers=500, heard_age=2.2, facts_age=12)) == \
        "active tasks as of 2 s ago (events of 500 workers)"
    assert assess.live_text(LiveAges(workers=1, heard_age=0.4, facts_age=185)) == \
        "active tasks as of 0 s ago (events of 1 worker), pools as of 3 min 5 s ago"


# --- the state's rules, on events as Celery sends them (no stack needed) -------------------------------


def _facts(now: float) -> WorkerFacts:
    return WorkerFacts(pool="prefork", concurrency=4, started=now - 60, queues=("celery",), autoscale=None,
                       processed=7, read_at=now)


def _task(task_id: str, name: str, started_at: float | None = None) -> TaskInfo:
    return TaskInfo(id=task_id, name=name, worker="w1@h", started_at=started_at, args_summary="(1)",
                    worker_pid=4242 if started_at is not None else None)  # as inspect tells a running task's


def _events(live: LiveState, worker: str, *events: tuple[str, dict]) -> None:
    for kind, fields in events:
        live.apply({"type": kind, "hostname": worker, **fields})


def test_a_heartbeat_that_counts_otherwise_makes_the_worker_uncertain_until_asked() -> None:
    now = [1000.0]
    live = LiveState(clock=lambda: now[0])
    _events(live, "w1@h", ("worker-online", {"freq": 2.0}),
            ("task-received", {"uuid": "a", "name": "app.job", "args": "(1,)", "kwargs": "{'password': 'x'}"}),
            ("task-started", {"uuid": "a", "timestamp": 999.0}),
            ("worker-heartbeat", {"freq": 2.0, "active": 1}))
    assert not live.view({"w1@h"}).workers  # no pool reading yet
    live.seed("w1@h", (_task("a", "app.job", 999.0),), (), _facts(now[0]), asked_at=0.0)
    (shown,) = live.view({"w1@h"}).workers
    assert [(t.id, t.name) for t in shown.active] == [("a", "app.job")] and shown.concurrency == 4
    _events(live, "w1@h", ("worker-heartbeat", {"freq": 2.0, "active": 2}))  # a start we never saw
    view = live.view({"w1@h"})
    assert not view.workers and view.uncertain == {"w1@h"} and live.to_reconcile(300) == ["w1@h"]
    _events(live, "w1@h", ("task-succeeded", {"uuid": "a"}))
    # An answer sent before "a" ended must not bring it back.
    live.seed("w1@h", (_task("a", "app.job", 999.0), _task("b", "app.other", 999.5)), (_task("c", "app.job"),),
              _facts(now[0]), asked_at=0.0)
    (shown,) = live.view({"w1@h"}).workers
    assert [t.id for t in shown.active] == ["b"] and shown.reserved == 1
    now[0] += 5  # no heartbeat for twice its interval: gone, and not vouched for
    assert not live.view({"w1@h"}).workers


def test_a_started_task_never_seen_received_and_a_restart_are_not_trusted() -> None:
    live = LiveState()
    _events(live, "w1@h", ("worker-online", {"freq": 2.0}), ("task-started", {"uuid": "x", "timestamp": 1.0}),
            ("worker-heartbeat", {"freq": 2.0, "active": 1}))
    live.forget_facts(["w1@h"])
    assert live.to_reconcile(300) == ["w1@h"]
    live.seed("w1@h", (_task("x", "app.job", 1.0),), (), _facts(time.time()), asked_at=0.0)
    assert [t.name for t in live.view({"w1@h"}).workers[0].active] == ["app.job"]
    _events(live, "w1@h", ("worker-online", {"freq": 2.0}))  # restarted: what it ran is gone
    assert not live.view({"w1@h"}).workers and live.task_name("w1@h", "x") is None
    _events(live, "w1@h", ("worker-offline", {}))
    assert live.to_reconcile(300) == []
