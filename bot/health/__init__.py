"""Task-level health (issue 13): failing, stuck and long-waiting tasks, and Retry.

`rules` is pure (findings from recorded outcomes and a snapshot); `queries` reads the store;
`waiting` measures the oldest waiting task without touching a message; `retry` re-sends a task
with its exact arguments; `TaskHealth` hands the findings to the alert engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bot.alerting.engine import AlertState
from bot.config import Settings
from bot.db import Database
from bot.health import queries, rules
from bot.health.rules import FAILING, TaskFinding
from bot.status.assess import Finding
from bot.status.snapshot import Snapshot


class TaskHealth:
    """The task-level findings for one poll, read from the store and the snapshot."""

    def __init__(self, settings: Settings, store: Callable[[], Database],
                 retryable: Callable[[list[str]], set[str]] = lambda ids: set()) -> None:
        self.policy = rules.policy_from(settings)
        self.store = store
        self.retryable = retryable

    def findings(self, snapshot: Snapshot, state: AlertState, now: float) -> list[Finding]:
        # A store that cannot be read raises: the poll fails and no incident resolves for want of news.
        outcomes = queries.outcomes(self.store(), now, self.policy.longest_window, self.policy.failure_window)
        found = rules.task_findings(snapshot, outcomes, now, self.policy, frozenset(state.incidents))
        return [self._with_retry(f) for f in found]

    def _with_retry(self, finding: Finding) -> Finding:
        if not isinstance(finding, TaskFinding) or not finding.key.startswith(FAILING):
            return finding
        known = self.retryable(list(finding.targets))
        return replace(finding, retryable=tuple(t for t in finding.targets if t in known))
