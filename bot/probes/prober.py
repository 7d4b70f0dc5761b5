"""The Prober: every probe at once, one deadline for all, one `Snapshot`.

All probes run concurrently under one deadline (`OPSBOT_PROBE_TIMEOUT`), so a service that accepts
connections and never answers shows as *timed out* instead of delaying the answer past Slack's
3-second limit. Each probe also sets its own socket timeouts inside that budget, so no thread is left
hanging once the deadline has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import requests

from bot.config import Settings, strip_credentials
from bot.probes.broker import probe_rabbitmq, probe_redis
from bot.probes.celery_probe import CeleryProbe
from bot.probes.failures import FailureLog, target_of
from bot.probes.flower import probe_flower
from bot.redact import redact_url
from bot.status.snapshot import BrokerStatus, CeleryState, CeleryStatus, Failure, FlowerStatus, Problem, Snapshot

log = logging.getLogger("bot.probes")  # one logger for every probe


def _timed(durations: dict[str, float], service: str, probe: Callable[..., Any], *args: Any) -> Any:
    """Run one probe and note how long it took (for the probe-duration metric)."""
    started = time.monotonic()
    try:
        return probe(*args)
    finally:
        durations[service] = time.monotonic() - started


class Prober:
    """Takes snapshots: every probe at once, one deadline for all."""

    def __init__(self, settings: Settings, celery_probe: CeleryProbe | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.celery = celery_probe or CeleryProbe(settings)
        self.clock = clock
        self.session = requests.Session()
        self.executor = ThreadPoolExecutor(max_workers=12, thread_name_prefix="probe")
        self.failures = FailureLog()

    def snapshot(self) -> Snapshot:
        started = time.monotonic()
        budget = self.settings.probe_timeout
        deadline = started + budget
        # Sockets give up a little before the deadline, so each probe reports its own timeout.
        socket_timeout = budget * 0.8
        durations: dict[str, float] = {}
        broker_f = self.executor.submit(_timed, durations, "broker", self._probe_broker, socket_timeout)
        celery_f = self.executor.submit(_timed, durations, "celery", self.celery.probe, started + budget * 0.9)
        flower_f = self.executor.submit(_timed, durations, "flower", probe_flower, self.settings, self.session,
                                        socket_timeout)
        wait_futures([broker_f, celery_f, flower_f], timeout=budget)
        # A probe still running at the deadline took (at least) the whole budget.
        durations = {service: durations.get(service, budget) for service in ("broker", "celery", "flower")}
        broker_target = target_of(self.settings.broker_url)
        broker = self._result(broker_f, lambda p: BrokerStatus(self.settings.broker_kind, broker_target, p),
                              broker_target)
        celery = self._result(celery_f, lambda p: CeleryStatus(CeleryState.UNKNOWN, problem=p), broker_target)
        flower_target = redact_url(strip_credentials(self.settings.flower_url))
        flower = self._result(flower_f, lambda p: FlowerStatus(flower_target, p), flower_target)
        if not broker.up:
            # With the broker down no worker can answer; that says nothing about the workers, and the
            # cause is the broker's (a Celery status without a problem: see CeleryStatus).
            celery = CeleryStatus(state=CeleryState.UNKNOWN)
        self._log_failures(broker, celery, flower)
        elapsed = time.monotonic() - started
        if elapsed > deadline - started + 0.1:
            log.warning("snapshot took %.2fs, past its %.2fs deadline", elapsed, budget)
        return Snapshot(taken_at=self.clock(), broker=broker, celery=celery, flower=flower, elapsed=elapsed,
                        durations=durations)

    def _log_failures(self, broker: BrokerStatus, celery: CeleryStatus, flower: FlowerStatus) -> None:
        name = "Redis" if broker.kind == "redis" else "RabbitMQ"
        self.failures.note(name, broker.problem)
        if broker.kind == "rabbitmq":
            self.failures.note("RabbitMQ management API", broker.management_problem)
        self.failures.note("Celery", celery.problem)
        self.failures.note("Flower", flower.problem)

    def _probe_broker(self, timeout: float) -> BrokerStatus:
        if self.settings.broker_kind == "redis":
            return probe_redis(self.settings, timeout)
        return probe_rabbitmq(self.settings, self.session, timeout)

    @staticmethod
    def _result(future: Future, on_timeout: Callable[[Problem], Any], target: str) -> Any:
        if future.done():
            return future.result()
        return on_timeout(Problem(Failure.TIMEOUT, target, "no answer within the probe deadline",
                                  cause="no answer within the probe deadline"))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()
