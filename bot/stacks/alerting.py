"""One alert engine per stack, in one stored state: each stack's state lives under its name.

The store keeps one alert-state row (with its version, the compare-and-set between replicas); with several
stacks that row holds `{"stacks": {"prod": <engine state>, "staging": ...}}`. `StackAlertState` gives a
stack's `AlertService` its part as if it were the whole, and saves it back under the same version check.
"""

from __future__ import annotations

from typing import Any, Protocol

from bot.store import StateConflict

STACKS = "stacks"


class AlertStateStore(Protocol):
    def load_alert_state(self) -> tuple[dict[str, Any], int]: ...

    def save_alert_state(self, data: dict[str, Any], version: int,
                         outbox: list[tuple[str, str, dict[str, Any]]]) -> None: ...


def alert_states(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every engine state in a stored alert state: the one of a single stack, or each stack's."""
    stacks = data.get(STACKS)
    return list(stacks.values()) if isinstance(stacks, dict) else [data]


class StackAlertState:
    """A stack's part of the alert state, read and written through the store's versioned row."""

    def __init__(self, store: AlertStateStore, stack: str) -> None:
        self.store = store
        self.stack = stack

    def load_alert_state(self) -> tuple[dict[str, Any], int]:
        data, version = self.store.load_alert_state()
        stacks = data.get(STACKS)
        return (dict(stacks.get(self.stack, {})) if isinstance(stacks, dict) else {}), version

    def save_alert_state(self, data: dict[str, Any], version: int,
                         outbox: list[tuple[str, str, dict[str, Any]]]) -> None:
        whole, current = self.store.load_alert_state()
        if current != version:
            raise StateConflict()  # another stack (or replica) saved since we read: step again
        stacks = whole.get(STACKS)
        others = dict(stacks) if isinstance(stacks, dict) else {}
        # The save is conditional on `version` too: a save between our read and this write still conflicts.
        self.store.save_alert_state({STACKS: {**others, self.stack: data}}, version, outbox)
