"""Metrics of several stacks: each stack's own `Metrics`, exported with a `stack` label.

The host's registry keeps what is no stack's (the leader, the store, the incidents, the outbox, Slack's
errors); every family of each stack's registry is exported with `stack="<name>"` added to its samples,
the families of the same name merged into one, so a scrape stays valid exposition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import Metric

from bot.metrics.collector import Metrics
from bot.status.snapshot import Snapshot

HOSTS_OWN = frozenset({"opsbot_leader", "opsbot_store_up"})  # said once, by the host


def relabelled(families: dict[str, Metrics]) -> Iterator[Metric]:
    merged: dict[str, Metric] = {}
    for stack, metrics in families.items():
        for family in metrics.registry.collect():
            if family.name in HOSTS_OWN:
                continue
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                         family.unit))
            into.samples += [sample._replace(labels={**sample.labels, "stack": stack}) for sample in family.samples]
    yield from merged.values()


class StackedMetrics(Metrics):
    def __init__(self, poll_seconds: float, stacks: dict[str, Metrics],
                 is_leader: Callable[[], bool] = lambda: True) -> None:
        super().__init__(poll_seconds, is_leader)
        self.stacks = stacks
        # The stacks count task events and probes; the host's own would be exported empty, twice over.
        for collector in (*self.task_counters.values(), self.task_runtime, self.probe_duration, self.probe_results):
            self.registry.unregister(collector)

    def latest_snapshot(self) -> Snapshot | None:
        """The stalest stack's snapshot: a background poll is due as soon as one stack's is old."""
        latest = [m.latest_snapshot() for m in self.stacks.values()]
        if not latest or any(s is None for s in latest):
            return None
        return min(latest, key=lambda s: s.taken_at)

    def collect(self) -> Iterator[Metric]:
        yield from super().collect()  # the host's: no snapshot of its own, so no stack's families
        if self.is_leader():
            yield from relabelled(self.stacks)

    def readiness(self) -> dict[str, tuple[bool, str]]:
        checks = super().readiness()
        snapshot = self.latest_snapshot()
        limit = 3 * self.poll_seconds
        if snapshot is None:
            checks["poll"] = (False, "no snapshot of every stack yet")
        else:
            age = self.clock() - snapshot.taken_at
            checks["poll"] = (age < limit, f"oldest stack snapshot {age:.1f} s ago (limit {limit:.0f} s)")
        return checks
