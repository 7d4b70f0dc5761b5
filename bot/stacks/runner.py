"""Probe several stacks at once, under one deadline: a stack that hangs never delays the others.

Each stack's own snapshot is already bounded (its probes share `OPSBOT_PROBE_TIMEOUT`); what comes after
the probes (the store's pauses, the oldest waiting task) is bounded too, but a stack is only given until
the common deadline: past it, it is shown as not answering, and the others are shown as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

from bot.config import Settings, strip_credentials
from bot.redact import redact_url
from bot.status.snapshot import BrokerStatus, CeleryState, CeleryStatus, Failure, FlowerStatus, Problem, Snapshot

log = logging.getLogger(__name__)

# After the probes' own budget: the store's lines and the waiting time, inside Slack's 3-s ack.
MARGIN = 0.45
NO_ANSWER = "no answer within the deadline"


@dataclass(frozen=True)
class StackSnapshot:
    """One stack's snapshot, by its name."""

    name: str
    snapshot: Snapshot


def target_of(url: str) -> str:
    from bot.probes.failures import target_of as probe_target  # the probes' own rule: host:port, nothing secret

    return probe_target(url)


def unanswered(settings: Settings, now: float, elapsed: float) -> Snapshot:
    """What is known of a stack that did not answer in time: nothing, and where it was asked."""
    broker_target = target_of(settings.broker_url)
    problem = Problem(Failure.TIMEOUT, broker_target, NO_ANSWER)
    flower_target = redact_url(strip_credentials(settings.flower_url))
    return Snapshot(taken_at=now, broker=BrokerStatus(settings.broker_kind, broker_target, problem),
                    celery=CeleryStatus(CeleryState.UNKNOWN),
                    flower=FlowerStatus(flower_target, Problem(Failure.TIMEOUT, flower_target, NO_ANSWER)),
                    elapsed=elapsed)


@dataclass(frozen=True)
class Member:
    """A stack as the runner sees it: its name, settings and how to take its snapshot."""

    name: str
    settings: Settings
    take_snapshot: Callable[[], Snapshot]


class StacksProber:
    """Takes every stack's snapshot concurrently; returns by the deadline whatever happens."""

    def __init__(self, members: tuple[Member, ...], budget: float, clock: Callable[[], float] = time.time) -> None:
        self.members = members
        self.deadline = budget + MARGIN
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=2 * len(members), thread_name_prefix="stacks")
        self._running: dict[str, Future[Snapshot]] = {}
        self._lock = threading.Lock()

    def _start(self, member: Member) -> Future[Snapshot]:
        """A stack's snapshot in the making: a call still running (a hung stack) is joined, not doubled, so a
        stack that hangs for good holds one thread and never the others' turn."""
        with self._lock:
            running = self._running.get(member.name)
            if running is None or running.done():
                running = self._running[member.name] = self.executor.submit(member.take_snapshot)
            return running

    def snapshots(self) -> tuple[StackSnapshot, ...]:
        started = time.monotonic()
        futures = {m.name: self._start(m) for m in self.members}
        wait_futures(list(futures.values()), timeout=self.deadline)
        elapsed = time.monotonic() - started
        return tuple(StackSnapshot(m.name, self._result(m, futures[m.name], elapsed)) for m in self.members)

    def _result(self, member: Member, future: Future[Snapshot], elapsed: float) -> Snapshot:
        if future.done() and future.exception() is None:
            return future.result()
        if future.done():
            log.error("stack %s: snapshot failed: %s", member.name, type(future.exception()).__name__)
        else:
            log.warning("stack %s: no snapshot within %.1f s", member.name, self.deadline)
        return unanswered(member.settings, self.clock(), elapsed)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
