"""Leader election between replicas: a PostgreSQL advisory lock held on a dedicated connection.

The leader runs alerting; the others answer Slack and stand by, trying to take the lock every few
seconds. The lock lives as long as the leader's session: a leader whose process dies releases it at
once. A leader whose host dies or is cut off is bounded twice over, so that failover takes at most
about `FAILOVER_BOUND` seconds whatever the network does:
- the lock's session sets `idle_session_timeout`: the leader confirms its lock every second, and
  the server ends a session silent for `SERVER_LEASE` seconds, which frees the lock for a standby;
- the leader stands down by itself when it could not confirm its lock for `CLIENT_LEASE` seconds
  (shorter than the server's), so it has stopped leading before anyone else can start.
With SQLite there is one replica, and it leads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection

from bot.db import LEADER_LOCK, Database
from bot.tables import leader_table

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0  # how often the leader checks its connection, and standbys try the lock (x2)
CLIENT_LEASE = 6.0  # a leader that could not confirm its lock for this long stands down
SERVER_LEASE = 10  # seconds: the server ends the lock's session after this much silence
# Worst case from the leader's last confirmation to a standby leading: the server's lease, a standby's
# next try, its connect timeout, and the first poll. The README quotes it.
FAILOVER_BOUND = 30


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class LeaderSeen:
    """Who said last that it leads, and when."""

    replica: str
    seen_at: float


class LeaderRecord:
    """The `leader` table: who leads, for the status footer and the console's series writer."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine

    def note(self, replica: str, now: float, conn: Connection | None = None) -> None:
        """Say who leads; on the leader's own connection when given (the caller commits)."""
        if conn is None:
            with self.engine.begin() as own:
                self.note(replica, now, own)
            return
        if not conn.execute(update(leader_table).where(leader_table.c.id == 1)
                            .values(replica=replica, seen_at=now)).rowcount:
            conn.execute(insert(leader_table).values(id=1, replica=replica, seen_at=now))

    def current(self) -> LeaderSeen | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(leader_table).where(leader_table.c.id == 1)).first()
        return LeaderSeen(row.replica, row.seen_at) if row else None


class Leadership:
    def __init__(self, db: Database, replica: str, on_change: Callable[[bool], None] | None = None) -> None:
        self.db = db
        self.record = LeaderRecord(db)
        self.replica = replica
        self.on_change = on_change or (lambda leading: None)
        self._leading = not db.shared
        self._conn: Connection | None = None
        self._stopped = threading.Event()
        self._guard = threading.Lock()
        self._confirmed_at = 0.0  # monotonic time of the last confirmation of the lock
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="leadership-watchdog", daemon=True)

    def is_leader(self) -> bool:
        return self._leading

    def start(self) -> Leadership:
        if self.db.shared:
            self._thread.start()
            self._watchdog.start()
        else:
            self.record.note(self.replica, time.time())
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            leading = self._leading
            try:  # nothing may end this thread silently: a dead thread would lead (or stand by) forever
                self._check() if leading else self._try_to_lead()
            except Exception:
                log.exception("leadership check failed")
                self._drop()
            self._stopped.wait(CHECK_SECONDS if leading else 2 * CHECK_SECONDS)

    def _try_to_lead(self) -> None:
        try:
            conn = self.db.engine.connect()
            conn.execute(text("SELECT set_config('application_name', :name, false)"),
                         {"name": f"opsbot-leader-{self.replica[:40]}"})
            # The server's half of the lease: a leader gone silent loses its session, and the lock.
            conn.execute(text("SELECT set_config('idle_session_timeout', :ms, false)"),
                         {"ms": str(SERVER_LEASE * 1000)})
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}).scalar()
            conn.commit()  # the advisory lock is per session: it outlives this transaction
        except Exception as exc:
            log.warning("cannot reach the database to try for leadership: %s", type(exc).__name__)
            return
        if not got:
            conn.close()
            return
        with self._guard:
            self._conn = conn
            self._confirmed_at = time.monotonic()
        self._set(True)
        # The database may go between the lock and this write: the next check then stands down. Raising
        # here would end this thread, and with it any hope of leading again.
        with contextlib.suppress(Exception):
            self._note(conn)

    def _check(self) -> None:
        conn = self._conn
        try:
            assert conn is not None
            self._note(conn)  # on the lock's own session: a success proves the lock is still ours
        except Exception as exc:
            log.error("lost the database connection that holds leadership (%s): standing down",
                      type(exc).__name__)
            self._drop(conn)
            return
        with self._guard:
            if self._conn is conn:
                self._confirmed_at = time.monotonic()

    def _note(self, conn: Connection) -> None:
        self.record.note(self.replica, time.time(), conn)
        conn.commit()

    def _watch(self) -> None:
        """The leader's half of the lease: a check stuck on a silent network must not keep it leading."""
        while not self._stopped.wait(CHECK_SECONDS / 2):
            with self._guard:
                late = self._conn is not None and time.monotonic() - self._confirmed_at > CLIENT_LEASE
                conn = self._conn
            if late:
                log.error("could not confirm leadership for %.0f s: standing down", CLIENT_LEASE)
                self._drop(conn)
                _unblock(conn)

    def _drop(self, conn: Connection | None = None) -> None:
        with self._guard:
            if conn is not None and conn is not self._conn:
                return  # already dropped
            conn, self._conn = self._conn, None
        self._set(False)
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
            self._thread.join(timeout=1)
        if self._thread.is_alive():  # stuck on a silent network: shutting down must not wait for it
            _unblock(self._conn)
            self._thread.join(timeout=1)
        self.on_change = lambda leading: None  # shutting down is not standing down
        self._leading = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _unblock(conn: Connection | None) -> None:
    """Wake a thread blocked on this connection's socket (a black-holed network never answers)."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        fd = conn.connection.dbapi_connection.pgconn.socket  # type: ignore[union-attr]
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
