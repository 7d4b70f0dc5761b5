"""The soak itself: the stack up, the load and the faults for the given minutes, the drain, the evidence."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import RESULTS_DIR, load_average, log
from bench.soak import checks
from bench.soak.evidence import AlertMessage, alert_messages, backend_states, history_states
from bench.soak.faults import FaultRecord, Injector, Stage
from bench.soak.load import Ping, SentTask, SlashLoad, Stoppable, TaskLoad, every
from bench.soak.plan import Kind, Planned, Profile, plan, profile_for
from bench.soak.replicas import CHANNEL, Life, Replicas, thread_deaths
from tests.support.celery_procs import CeleryWorker, control_app
from tests.support.flower import FlowerProcess
from tests.support.net import wait_until
from tests.support.postgres import fresh_database
from tests.support.rabbit import RabbitNode
from tests.support.redis_server import RedisServer
from tests.support.slack import SlackStandIn

REPLICA_IDS = ("r1", "r2")
TASK_DRAIN = 180.0  # at most this long for the last tasks to finish once the load stops
HISTORY_DRAIN = 90.0
STILL = 20.0  # a drain is over when nothing changed for this long
LEADER_SAMPLE = 0.5
PROCESS_SAMPLE = 5.0


@dataclass(frozen=True)
class Config:
    minutes: float
    seed: int
    kinds: tuple[Kind, ...] = tuple(Kind)
    rate: float = 1.0  # tasks a second
    ping_every: float = 5.0  # a /tasks this often

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def warm_up(self) -> float:
        """A replica's memory is judged against its level this long after its start."""
        return max(30.0, min(180.0, self.seconds / 6))

    @property
    def min_span(self) -> float:
        """A replica's memory is judged only if it lived this long past its warm-up."""
        return max(45.0, self.seconds / 4)


@dataclass
class Evidence:
    """Everything recorded, for the checks and the report."""

    config: Config
    profile: Profile
    planned: list[Planned]
    started: float = 0.0
    ended: float = 0.0
    records: list[FaultRecord] = field(default_factory=list)
    messages: list[AlertMessage] = field(default_factory=list)
    timeline: list[tuple[float, str | None]] = field(default_factory=list)
    sent: list[SentTask] = field(default_factory=list)
    backend: dict[str, str] = field(default_factory=dict)
    history: dict[str, tuple[str, int]] = field(default_factory=dict)
    pings: list[Ping] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)
    deaths: dict[str, list[str]] = field(default_factory=dict)
    crashed: list[str] = field(default_factory=list)  # the soak's own threads that died
    load_at_start: list[float] = field(default_factory=list)


@dataclass
class Services:
    rabbit: RabbitNode
    backend: RedisServer
    workers: tuple[CeleryWorker, ...]
    flower: FlowerProcess
    slack: SlackStandIn
    db_url: str
    tmp: Path


@contextlib.contextmanager
def services() -> Iterator[Services]:
    """The real stack, each service killed on the way out whatever happened."""
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="opsbot-soak-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        log("starting RabbitMQ, Redis (the result backend), workers w1 and w2, Flower, PostgreSQL database")
        rabbit = RabbitNode(name_prefix="opsbot-soak")
        cleanup.callback(rabbit.cleanup)
        rabbit.start()
        backend = RedisServer()
        cleanup.callback(backend.cleanup)
        backend.start()
        workers = tuple(CeleryWorker(rabbit.amqp_url, hostname=f"w{i}@%h", concurrency=2,
                                     extra_env={"STACK_RESULT_BACKEND": backend.url}) for i in (1, 2))
        flower = FlowerProcess(rabbit.amqp_url)
        for service in (*workers, flower):
            cleanup.callback(service.cleanup)
            service.start()
        slack = cleanup.enter_context(SlackStandIn())
        db_url = cleanup.enter_context(fresh_database("opsbot_soak"))
        yield Services(rabbit, backend, workers, flower, slack, db_url, tmp)


def soak(config: Config) -> Evidence:
    """Run the soak and gather what the checks need; services are gone when this returns."""
    profile = profile_for(config.minutes)
    evidence = Evidence(config, profile, plan(config.seed, config.seconds, config.kinds, profile))
    evidence.load_at_start = load_average()
    with services() as svc, contextlib.ExitStack() as cleanup:
        replicas = Replicas(REPLICA_IDS, svc.db_url, svc.slack, svc.rabbit, svc.flower, svc.tmp)
        cleanup.callback(replicas.close)
        for replica in REPLICA_IDS:
            replicas.start(replica)
        if not wait_until(lambda: replicas.leader() in replicas.live, 30):
            raise RuntimeError("no replica took the lead")
        log(f"replicas {', '.join(REPLICA_IDS)} up, leader {replicas.leader()}; "
            f"soaking for {config.minutes:g} min, seed {config.seed}, {len(evidence.planned)} faults planned")
        stage = Stage(svc.rabbit, svc.workers, svc.flower, svc.slack, replicas)
        run_load(config, evidence, stage, svc)
        gather(evidence, svc, replicas)
    return evidence


def run_load(config: Config, evidence: Evidence, stage: Stage, svc: Services) -> None:
    replicas = stage.replicas
    tasks = TaskLoad(control_app(svc.rabbit.amqp_url), config.rate, config.seed)
    slash = SlashLoad(svc.slack, config.ping_every)
    leaders = every(LEADER_SAMPLE, lambda: evidence.timeline.append((time.time(), replicas.leader())),
                    "soak-leader")
    processes = every(PROCESS_SAMPLE, replicas.sample, "soak-sample")
    injector = Injector(stage, evidence.planned, evidence.profile, config.seconds, config.seed)
    evidence.started = time.time()
    threads: list[Stoppable] = [tasks, slash, leaders, processes]
    try:
        for thread in threads:
            thread.start()
        injector.start()
        time.sleep(config.seconds)
        log("soak time over: waiting for the faults under way to recover")
        injector.join()
        tasks.stop()
        log(f"load stopped after {len(tasks.sent)} tasks; waiting for the last ones to finish")
        drain(lambda: finished_count(svc.backend.url, tasks.sent), TASK_DRAIN)
        drain(lambda: recorded_count(svc.db_url, tasks.sent), HISTORY_DRAIN)
    finally:
        injector.stop()
        for thread in threads:
            thread.stop()
        replicas.sample()
    evidence.ended = time.time()
    evidence.records, evidence.sent, evidence.pings = injector.records, tasks.sent, slash.pings
    evidence.crashed = [f"{t.thread.name}: {t.crash!r}" for t in threads if t.crash is not None]


def finished_count(redis_url: str, sent: list[SentTask]) -> int:
    states = backend_states(redis_url, [t.task_id for t in sent])
    return sum(1 for state in states.values() if state in checks.FINAL)


def recorded_count(db_url: str, sent: list[SentTask]) -> int:
    rows = history_states(db_url, [t.task_id for t in sent])
    return sum(1 for state, _ in rows.values() if state in checks.FINAL)


def drain(count: Callable[[], int], limit: float) -> None:
    """Wait until `count()` stops growing for STILL seconds (or `limit` passes)."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < STILL:
        with contextlib.suppress(Exception):
            now = count()
            if now != last:
                last, since = now, time.monotonic()
        time.sleep(2)


def gather(evidence: Evidence, svc: Services, replicas: Replicas) -> None:
    ids = [t.task_id for t in evidence.sent]
    evidence.messages = alert_messages(svc.slack.calls_to("chat.postMessage") + svc.slack.calls_to("chat.update"),
                                       CHANNEL)
    evidence.backend = backend_states(svc.backend.url, ids)
    evidence.history = history_states(svc.db_url, ids)
    replicas.stop_all()
    evidence.lives = list(replicas.lives)
    evidence.deaths = {life.name: thread_deaths(life.bot.log_path.read_text(errors="replace"))
                       for life in replicas.lives}
    kept = RESULTS_DIR / "soak-logs"  # the replicas' logs outlive the stack's temp dir, for a failed check
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for life in replicas.lives:
        shutil.copy(life.bot.log_path, kept / f"{life.name}.log")
