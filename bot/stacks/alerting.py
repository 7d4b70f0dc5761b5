"""One alert engine per stack, in one stored state: each stack's state lives under its name.

The store keeps one alert-state row (with its version, the compare-and-set between replicas); with several
stacks that row holds `{"stacks": {"prod": <engine state>, "staging": ...}}`. `StackAlertState` gives a
stack's `AlertService` its part as if it were the whole, and saves it back under the same version check.
"""

from __future__ import annotations

from typing import Any

from bot.alerting.engine import AlertState
from bot.alerting.state import AlertStore, OutboxRow
from bot.db import StateConflict

STACKS = "stacks"


def alert_states(data: dict[str, Any]) -> list[AlertState]:
    """Every engine state in a stored alert state: the one of a single stack, or each stack's."""
    stacks = data.get(STACKS)
    return [AlertState.from_json(d) for d in stacks.values()] if isinstance(stacks, dict) \
        else [AlertState.from_json(data)]


class StackAlertState:
    """A stack's part of the alert state, read and written through the store's versioned row."""

    def __init__(self, store: AlertStore, stack: str) -> None:
        self.store = store
        self.stack = stack

    def load(self) -> tuple[AlertState, int]:
        data, version = self.store.load_data()
        stacks = data.get(STACKS)
        return AlertState.from_json(stacks.get(self.stack, {}) if isinstance(stacks, dict) else {}), version

    def save(self, state: AlertState, version: int, outbox: list[OutboxRow]) -> None:
        whole, current = self.store.load_data()
        if current != version:
            raise StateConflict()  # another stack (or replica) saved since we read: step again
        stacks = whole.get(STACKS)
        others = dict(stacks) if isinstance(stacks, dict) else {}
        # The save is conditional on `version` too: a save between our read and this write still conflicts.
        self.store.save_data({STACKS: {**others, self.stack: state.to_json()}}, version, outbox)
