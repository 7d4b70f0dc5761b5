"""The Celery probe on live state: the known workers from their events, inspect only for the others.

A worker is asked (by name, `limit` = how many were named, so the answer comes as soon as they all
replied) only when its state is uncertain (bot.live.state); every answer seeds the state. With no
worker known yet (the bot just started, or no worker sends task events), this is today's probe:
`inspect` to everyone, waiting for as many replies as heartbeats tell (bot.probes.CeleryProbe).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kombu

from bot.config import Settings
from bot.live.state import LiveState, LiveView, facts_from
from bot.probes.celery_probe import HEARTBEAT_INTERVAL, CeleryProbe, active_tasks, ask_active
from bot.probes.failures import problem_from, target_of
from bot.status.snapshot import CeleryState, CeleryStatus, LiveAges

log = logging.getLogger(__name__)

COMMANDS = ("active", "reserved", "stats", "active_queues")
# In the background nobody waits on Slack's 3 s: each command of a reconcile may take this long.
RECONCILE_TIMEOUT = 5.0
NAMED_MAX = 64  # workers named in one request; more are asked as everyone (see LiveCeleryProbe._inspect)


class LiveCeleryProbe(CeleryProbe):
    def __init__(self, settings: Settings, live: LiveState,
                 alive_workers: Callable[[], set[str] | None] | None = None,
                 heartbeat_details: Callable[[], dict[str, dict]] | None = None,
                 heartbeat_quiet: Callable[[], float | None] | None = None) -> None:
        super().__init__(settings, alive_workers, heartbeat_details, heartbeat_quiet)
        self.live = live
        self.inspect_calls = 0  # inspect requests sent (each one a message to one or more workers)
        self._count_lock = threading.Lock()

    def probe(self, deadline: float) -> CeleryStatus:
        expected = self.expected()
        view = self.live.view(expected)
        if not view.workers:
            return super().probe(deadline)  # nobody known: ask everyone, as ever (and seed from the answers)
        quiet = self.heartbeat_quiet()
        silent = quiet is not None and quiet > HEARTBEAT_INTERVAL
        replies: dict[str, dict] = {command: {} for command in COMMANDS}
        if view.uncertain:
            try:
                with self.app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=0)
                    replies = self.ask_named(conn, sorted(view.uncertain), deadline)
            except Exception as exc:
                return CeleryStatus(state=CeleryState.UNKNOWN,
                                    problem=problem_from(exc, target_of(self.settings.broker_url)))
        return self.status(expected, replies, silent, known=view.workers, ages=ages(view))

    def _ask_all(self, conn: kombu.Connection, expected: set[str], deadline: float,
                 discovery: float) -> dict[str, dict]:
        """Everyone's `active` (bot.probes.ask_active), then the rest from those that answered; seeds the state."""
        asked_at = time.monotonic()
        self._count(1)
        replies = {"active": ask_active(self.app, conn, expected, deadline, discovery)}
        self._ask_rest(conn, replies, deadline)
        self.seed(replies, asked_at)
        return replies

    def ask_named(self, conn: kombu.Connection, names: list[str], deadline: float,
                  each: float | None = None) -> dict[str, dict]:
        """stats, active, reserved and active_queues from exactly these workers; seeds the live state.

        Within one `deadline`, or with `each` seconds for every command (the background can wait: a big
        fleet answering slowly still gets its pools read, even if its task lists come too late)."""
        asked_at = time.monotonic()
        replies = {"stats": self._inspect(conn, "stats", names, deadline if each is None else asked_at + each)}
        self._ask_rest(conn, replies, deadline, each, first="stats")
        self.seed(replies, asked_at)
        return replies

    def _ask_rest(self, conn: kombu.Connection, replies: dict[str, dict], deadline: float,
                  each: float | None = None, first: str = "active") -> None:
        answered = sorted(replies[first])  # the others, only from those that answered
        for command in [c for c in COMMANDS if c != first]:
            until = deadline if each is None else time.monotonic() + each
            replies[command] = self._inspect(conn, command, answered, until) if answered else {}

    def _inspect(self, conn: kombu.Connection, command: str, names: list[str], deadline: float) -> dict[str, Any]:
        """One inspect command to these workers, returning once they all replied.

        Remote control is a fanout: every worker receives every request and drops those not addressed to it,
        so a long destination list is paid by the whole fleet (2,000 names are 90 KB, times 2,000 workers).
        Past NAMED_MAX names, the request goes to everyone with a limit, and only the named ones are kept.
        """
        named = len(names) <= NAMED_MAX
        limit = len(names) if named else max(len(names), len(self.expected()))
        timeout = max(0.05, deadline - time.monotonic())
        inspector = self.app.control.inspect(destination=names if named else None, timeout=timeout, limit=limit,
                                             connection=conn)
        self._count(1)
        # safe=True: the reprs Celery cut at send time, not full reprs of arguments of any size.
        answer = (inspector.active(safe=True) if command == "active" else getattr(inspector, command)()) or {}
        wanted = set(names)
        return {name: value for name, value in answer.items() if name in wanted}

    def seed(self, replies: dict[str, dict], asked_at: float) -> None:
        read_at = time.time()
        active, reserved = active_tasks(replies.get("active", {})), active_tasks(replies.get("reserved", {}))
        for name, stats in replies.get("stats", {}).items():
            if not isinstance(stats, dict):
                continue
            facts = facts_from(stats, replies.get("active_queues", {}).get(name), read_at)
            if name in active and name in reserved:
                self.live.seed(name, active[name], reserved[name], facts, asked_at)
            else:  # the deadline came between two commands: the pool only (its tasks may be vouched by events)
                self.live.seed_facts(name, facts)

    def reconcile(self, names: list[str]) -> None:
        """Ask these workers (in the background) and seed their state; failures wait for the next round."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=0)
                self.ask_named(conn, names, time.monotonic(), each=RECONCILE_TIMEOUT)
        except Exception as exc:
            log.debug("reconcile failed: %s", type(exc).__name__)

    def _count(self, calls: int) -> None:
        with self._count_lock:
            self.inspect_calls += calls


def ages(view: LiveView) -> LiveAges:
    return LiveAges(workers=len(view.workers), heard_age=view.heard_age or 0.0, facts_age=view.facts_age or 0.0)
