"""Leader election between replicas: a PostgreSQL advisory lock held on a dedicated connection.

The leader runs alerting and records task history; the others answer Slack and stand by, trying to
take the lock every few seconds. The lock lives as long as the leader's connection: a leader that
dies releases it at once, and a leader that loses its connection stops leading at once. With SQLite
there is one replica, and it leads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection

from bot.store import Store

log = logging.getLogger(__name__)

LEADER_LOCK = 0x6F7073626F74 + 1
CHECK_SECONDS = 1.0  # how often the leader checks its connection, and standbys try the lock (x2)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Leadership:
    def __init__(self, store: Store, replica: str, on_change: Callable[[bool], None] | None = None) -> None:
        self.store = store
        self.replica = replica
        self.on_change = on_change or (lambda leading: None)
        self._leading = not store.shared
        self._conn: Connection | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    def is_leader(self) -> bool:
        return self._leading

    def start(self) -> Leadership:
        if self.store.shared:
            self._thread.start()
        else:
            self.store.note_leader(self.replica, time.time())
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            if self._leading:
                self._check()
                self._stopped.wait(CHECK_SECONDS)
            else:
                self._try_to_lead()
                self._stopped.wait(2 * CHECK_SECONDS)

    def _try_to_lead(self) -> None:
        try:
            conn = self.store.engine.connect()
            conn.execute(text("SELECT set_config('application_name', :name, false)"),
                         {"name": f"opsbot-leader-{self.replica[:40]}"})
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}).scalar()
            conn.commit()  # the advisory lock is per session: it outlives this transaction
        except Exception as exc:
            log.warning("cannot reach the database to try for leadership: %s", type(exc).__name__)
            return
        if not got:
            conn.close()
            return
        self._conn = conn
        self._set(True)
        # The database may go between the lock and this write: the next check then stands down. Raising
        # here would end this thread, and with it any hope of leading again.
        with contextlib.suppress(Exception):
            self.store.note_leader(self.replica, time.time())

    def _check(self) -> None:
        try:
            assert self._conn is not None
            self._conn.execute(text("SELECT 1")).scalar()
            self._conn.commit()
            self.store.note_leader(self.replica, time.time())
        except Exception as exc:
            log.error("lost the database connection that holds leadership (%s): standing down",
                      type(exc).__name__)
            self._drop()

    def _drop(self) -> None:
        self._set(False)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()  # never hand a connection in doubt back to the pool

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info("replica %s %s", self.replica, "now leads" if leading else "stands by")
            self.on_change(leading)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3)
        self.on_change = lambda leading: None  # shutting down is not standing down
        self._leading = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
