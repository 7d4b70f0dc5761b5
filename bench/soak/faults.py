"""The fault injector: the planned faults (bench.soak.plan), injected and repaired on the real stack.

Each fault is recorded with wall-clock times (the stand-in and the bot's incident ids use the wall
clock): when it was injected, when its repair was done (the service answers again), when it settled
(its alert resolved, or its replica back). The checks read nothing else from here.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.common import log
from bench.soak.plan import BOT_SETTLE, Kind, Planned, Profile, Track
from bench.soak.replicas import CHANNEL, Replicas
from tests.support.celery_procs import CeleryWorker
from tests.support.flower import FlowerProcess
from tests.support.net import wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn
from tests.support.slack.outage import OutageKind

MIN_SETTLE = 8.0  # after a stack fault's repair, at least this long before the next one: a late alert comes now
OUTAGES = {Kind.SLACK_429: OutageKind.RATE_LIMITED, Kind.SLACK_5XX: OutageKind.SERVER_ERROR,
           Kind.SLACK_TIMEOUT: OutageKind.TIMEOUT, Kind.SLACK_INVALID_BLOCKS: OutageKind.INVALID_BLOCKS}


@dataclass
class Stage:
    """What the faults act on."""

    rabbit: RabbitNode
    workers: tuple[CeleryWorker, ...]
    flower: FlowerProcess
    slack: SlackStandIn
    replicas: Replicas

    def open_alerts(self) -> list[str]:
        """Texts of the alert messages that do not read "Resolved" yet."""
        return [m.text or "" for m in self.slack.messages if m.channel == CHANNEL and not m.thread_ts
                and not (m.text or "").startswith("Resolved")]


@dataclass
class FaultRecord:
    planned: Planned
    target: str = ""
    expect_key: str | None = None  # the incident a stack fault must open (its key in the bot's alert engine)
    started: float | None = None
    repaired: float | None = None
    settled: float | None = None
    skipped: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Kind:
        return self.planned.kind


Repair = Callable[[], object]


def inject(stage: Stage, record: FaultRecord, rng: random.Random) -> Repair:
    """Break something now; returns what repairs it."""
    kind = record.kind
    if kind is Kind.WORKER:
        worker = rng.choice(stage.workers)
        record.target, record.expect_key = worker.name, f"worker:{worker.name}"
        worker.kill()
        return worker.start
    if kind is Kind.RABBIT:
        record.target, record.expect_key = stage.rabbit.node_name, "broker"
        stage.rabbit.kill()
        return stage.rabbit.restart
    if kind is Kind.FLOWER:
        record.target, record.expect_key = stage.flower.bare_url, "flower"
        stage.flower.kill()
        return stage.flower.start
    if kind in (Kind.LEADER, Kind.DB_BLACK_HOLE):
        return cut_leader(stage, record, rng)
    if kind in OUTAGES:
        return slack_outage(stage.slack, record)
    if kind is Kind.SOCKET_DISCONNECT:
        record.target = f"{stage.slack.disconnect_all()} connections"
        return lambda: None
    raise ValueError(f"unknown fault {kind}")


def slack_outage(slack: SlackStandIn, record: FaultRecord) -> Repair:
    """Slack's Web API fails every post for the hold; the target says how many calls it failed."""
    before = slack.outages.answered
    slack.outages.start(OUTAGES[record.kind], record.planned.hold)

    def over() -> None:
        wait_until(lambda: not slack.outages.active, record.planned.hold + 30)
        record.target = f"{slack.outages.answered - before} Web API calls failed"

    return over


def cut_leader(stage: Stage, record: FaultRecord, rng: random.Random) -> Repair:
    """The leading replica (any live one when none leads right now) is killed, or its database goes silent."""
    replicas = stage.replicas
    leader = replicas.leader()
    target = leader if leader in replicas.live else rng.choice(sorted(replicas.live))
    record.target = target
    if record.kind is Kind.LEADER:
        replicas.kill(target)
        return lambda: replicas.start(target)
    proxy = replicas.proxies[target]
    proxy.black_hole()
    return proxy.heal


def settle(stage: Stage, record: FaultRecord, profile: Profile) -> bool:
    """Wait until the fault's consequences are over: its alert resolved, or its replica back."""
    if record.kind.track is Track.STACK:
        time.sleep(MIN_SETTLE)
        return wait_until(lambda: not stage.open_alerts(), profile.settle - MIN_SETTLE, 0.5)
    replicas = stage.replicas
    if record.kind in (Kind.LEADER, Kind.DB_BLACK_HOLE):
        return wait_until(lambda: replicas.healthy(record.target) and replicas.leader() in replicas.live,
                          BOT_SETTLE, 0.5)
    if record.kind is Kind.SOCKET_DISCONNECT:
        return wait_until(lambda: stage.slack.connections >= len(replicas.live), BOT_SETTLE, 0.2)
    return True


def run_fault(stage: Stage, record: FaultRecord, profile: Profile, rng: random.Random) -> None:
    """One fault from injection to settling; what goes wrong is written on the record, never raised."""
    record.started = time.time()
    try:
        repair = inject(stage, record, rng)
        log(f"fault {record.kind.value} on {record.target} for {record.planned.hold:g} s")
        time.sleep(record.planned.hold)
        repair()
        record.repaired = time.time()
        if settle(stage, record, profile):
            record.settled = time.time()
        else:
            record.problems.append(f"not settled within its budget; open alerts: {stage.open_alerts()}")
    except Exception as exc:
        record.problems.append(f"{type(exc).__name__}: {exc}"[:500])
    log(f"fault {record.kind.value} on {record.target} over"
        + (f": {'; '.join(record.problems)}" if record.problems else ""))


class Injector:
    """Runs the plan: each fault at its time, in a thread of its own, once its track is free."""

    def __init__(self, stage: Stage, planned: list[Planned], profile: Profile, seconds: float, seed: int) -> None:
        self.stage = stage
        self.planned = planned
        self.profile = profile
        self.seconds = seconds
        self.rng = random.Random(seed)  # which worker, which replica when none leads
        self.records: list[FaultRecord] = []
        self.stopping = threading.Event()
        self.busy: dict[Track, threading.Thread] = {}
        self.thread = threading.Thread(target=self._run, name="soak-injector", daemon=True)
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        for planned in self.planned:
            record = FaultRecord(planned)
            self.records.append(record)
            if self.stopping.wait(max(0.0, self.t0 + planned.at - time.monotonic())):
                record.skipped = "the soak was stopped"
                return
            track = planned.kind.track
            latest = self.t0 + self.seconds - planned.hold
            running = self.busy.get(track)
            if running is not None:
                running.join(max(0.0, latest - time.monotonic()))
                if running.is_alive():
                    record.skipped = "its track was still busy with the previous fault"
                    continue
            thread = threading.Thread(target=run_fault, args=(self.stage, record, self.profile, self.rng),
                                      name=f"soak-fault-{planned.kind.value}", daemon=True)
            self.busy[track] = thread
            thread.start()

    def join(self) -> None:
        """Wait for the plan and every fault to be over (each bounded by its hold and settle budget)."""
        self.thread.join()
        for thread in list(self.busy.values()):
            thread.join()

    def stop(self) -> None:
        self.stopping.set()
