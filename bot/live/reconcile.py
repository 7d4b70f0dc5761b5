"""Background reconciliation: once per `OPSBOT_RECONCILE_SECONDS`, ask the workers whose state is uncertain.

Uncertain: alive but with no task event seen, a heartbeat's active count that disagrees with the tasks
we track, a task seen started but never received, or a pool reading older than STALE_ROUNDS periods.
They are asked by name (bot.live.probe.LiveCeleryProbe.ask_named), at most MAX_BATCH per round, so the
broker and the workers see a bounded number of replies whatever the fleet's size; a worker nobody asks
about costs nothing.
"""

from __future__ import annotations

import logging
import threading

from bot.live.probe import LiveCeleryProbe

log = logging.getLogger(__name__)

# Pools, their sizes and consumed queues change by worker control (which forgets what it changed) or
# autoscale: read again every this many rounds (5 min at the default 30 s), shown with their age meanwhile.
STALE_ROUNDS = 10
MAX_BATCH = 500  # workers asked per round: a fleet coming up all at once converges over a few rounds


class Reconciler:
    def __init__(self, probe: LiveCeleryProbe, every: float) -> None:
        self.probe = probe
        self.every = every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            try:
                self.once()
            except Exception:
                log.exception("reconcile round failed")

    def once(self) -> list[str]:
        """One round: the workers asked (none when every known worker agrees)."""
        live = self.probe.live
        live.prune()
        names = live.to_reconcile(stale_after=self.every * STALE_ROUNDS)[:MAX_BATCH]
        if names:
            self.probe.reconcile(names)
        return names

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=3)
