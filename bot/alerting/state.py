"""Alerting's records in the store: the engine's state (mutes included), the outbox of Slack posts it
calls for, and which Slack message shows which incident.

The state and its posts are saved in one transaction, conditional on the version read, so that two
replicas stepping at once cannot both post (`StateConflict`); the console keeps its state in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from bot.alerting.engine import AlertState
from bot.db import Database, StateConflict
from bot.tables import alert_state_table, incident_messages_table, outbox_table


@dataclass(frozen=True)
class OutboxRow:
    """A Slack post to make for an incident: "post" (open its message), "refresh" or "thread"."""

    incident_id: str
    kind: str
    payload: dict[str, Any]  # JSON: text and blocks


@dataclass(frozen=True)
class OutboxItem:
    id: int
    row: OutboxRow
    attempts: int
    due: bool  # False: waiting out a retry delay

    @property
    def incident_id(self) -> str:
        return self.row.incident_id


@dataclass(frozen=True)
class IncidentMessage:
    """Where an incident's message is in Slack."""

    channel: str
    ts: str


class AlertStateStore(Protocol):
    """Where the engine's state lives: the shared store (`AlertStore`) or memory (`MemoryAlertState`)."""

    def load(self) -> tuple[AlertState, int]: ...

    def save(self, state: AlertState, version: int, outbox: list[OutboxRow]) -> None: ...


class MemoryAlertState:
    """The alert state in memory, for the console: its alerts are its own, the store's stay untouched."""

    def __init__(self) -> None:
        self._state = AlertState()
        self._version = 0

    def load(self) -> tuple[AlertState, int]:
        return self._state, self._version

    def save(self, state: AlertState, version: int, outbox: list[OutboxRow]) -> None:
        self._state, self._version = state, version + 1


def _enqueue(conn: Connection, row: OutboxRow) -> None:
    conn.execute(insert(outbox_table).values(incident_id=row.incident_id, kind=row.kind,
                                             payload=json.dumps(row.payload), attempts=0, next_try_at=0.0))


class AlertStore:
    """The alert state, the outbox and the incidents' messages, over the shared engine."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine
        self.shared = db.shared

    def load(self) -> tuple[AlertState, int]:
        """The engine's state and its version (0: none saved yet)."""
        query = select(alert_state_table.c.data, alert_state_table.c.version).where(alert_state_table.c.id == 1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (AlertState.from_json(json.loads(row.data)), int(row.version)) if row else (AlertState(), 0)

    def save(self, state: AlertState, version: int, outbox: list[OutboxRow]) -> None:
        """The engine's new state and the Slack posts it calls for, in one transaction: a crash in
        between can neither lose a post nor queue one for a state that was never saved. The update is
        conditional on the version we read, so two replicas stepping at once cannot both post."""
        state_json = json.dumps(state.to_json())
        table = alert_state_table
        with self.engine.begin() as conn:
            if version == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(table).values(id=1, data=state_json, version=1))
                except IntegrityError:
                    raise StateConflict() from None
            elif not conn.execute(update(table).where(table.c.id == 1, table.c.version == version)
                                  .values(data=state_json, version=version + 1)).rowcount:
                raise StateConflict()
            for row in outbox:
                _enqueue(conn, row)

    def enqueue(self, row: OutboxRow) -> None:
        with self.engine.begin() as conn:
            _enqueue(conn, row)

    def pending(self, now: float) -> list[OutboxItem]:
        """Every item, due or not, in order: the sender keeps each incident's posts in sequence."""
        query = select(outbox_table).order_by(outbox_table.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
        return [OutboxItem(r.id, OutboxRow(r.incident_id, r.kind, json.loads(r.payload)), r.attempts,
                           r.next_try_at <= now) for r in rows]

    def depth(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(outbox_table)).scalar_one())

    def claim(self, item_id: int, replica: str, now: float, lease: float) -> bool:
        """Take an item for sending, atomically: whoever's update matches first sends it."""
        table = outbox_table
        free = or_(table.c.claimed_until.is_(None), table.c.claimed_until < now, table.c.claimed_by == replica)
        with self.engine.begin() as conn:
            return bool(conn.execute(update(table).where(table.c.id == item_id, free)
                                     .values(claimed_by=replica, claimed_until=now + lease)).rowcount)

    def release_claims(self, replica: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(outbox_table).where(outbox_table.c.claimed_by == replica)
                         .values(claimed_by=None, claimed_until=None))

    def done(self, item_id: int, posted: tuple[str, IncidentMessage] | None = None) -> None:
        """Drop a sent item; for a first post, remember the incident's message in the same transaction."""
        with self.engine.begin() as conn:
            if posted is not None:
                incident_id, message = posted
                conn.execute(insert(incident_messages_table).values(incident_id=incident_id, channel=message.channel,
                                                                    ts=message.ts))
            conn.execute(delete(outbox_table).where(outbox_table.c.id == item_id))

    def retry(self, item_id: int, attempts: int, next_try_at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(outbox_table).where(outbox_table.c.id == item_id)
                         .values(attempts=attempts, next_try_at=next_try_at, claimed_by=None, claimed_until=None))

    def incident_message(self, incident_id: str) -> IncidentMessage | None:
        query = select(incident_messages_table).where(incident_messages_table.c.incident_id == incident_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return IncidentMessage(row.channel, row.ts) if row else None
