"""Worker heartbeats from Celery's event stream, followed in a background thread.

Workers send a heartbeat every 2 s (with or without `-E`), so the bot knows which workers are alive
without asking. The probe uses that to know how many replies to wait for; the alert engine (later)
uses it to see a dead worker about 4 s after its last heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import Celery
from celery.events.receiver import EventReceiver
from celery.events.state import State

from bot.live.state import LiveState

log = logging.getLogger(__name__)

# A monitor that just connected has not yet heard from every worker: heartbeats come every 2 s.
WARM_UP_SECONDS = 2.5
RECONNECT_SECONDS = 1.0


WATCH_SECONDS = 0.5  # how often the set of live workers is compared with the last one
# celery's State is fed task events only, to label the metrics of a task's later events (its name and queue
# from task-sent): about 3 KB a task, so far fewer than its default 10,000. The workers and what they run
# are in bot.live: a heartbeat (every 2 s from every worker) costs a dict update there, and no drift check
# that logs a warning per heartbeat whenever the bot falls behind.
STATE_TASKS = 1000


class HeartbeatMonitor:
    def __init__(self, app: Celery, on_change: Callable[[], None] | None = None,
                 on_task_event: Callable[[dict], None] | None = None, live: LiveState | None = None) -> None:
        self.app = app
        # Called when a worker appears or goes quiet, or the event connection drops: poll now.
        self.on_change = on_change or (lambda: None)
        # Every task event (sent, received, started, succeeded, ...), for the task history.
        self.on_task_event = on_task_event or (lambda event: None)
        self.state = State(max_tasks_in_memory=STATE_TASKS)
        # The workers (alive, load average) and what each runs (bot.live), from the same events.
        self.live = live or LiveState()
        self._connected_at: float | None = None
        self.connected_since: float | None = None  # wall clock: task events before it were not seen
        self._receiver: EventReceiver | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._watcher = threading.Thread(target=self._watch, name="heartbeat-watch", daemon=True)

    def start(self) -> HeartbeatMonitor:
        self._thread.start()
        self._watcher.start()
        return self

    def _watch(self) -> None:
        last = self.alive_workers()
        while not self._stopped.wait(WATCH_SECONDS):
            current = self.alive_workers()
            if current is not None and last is not None and current != last:
                self._notify()
            last = current

    def _notify(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("heartbeat change handler failed")

    @property
    def ready(self) -> bool:
        connected_at = self._connected_at
        return connected_at is not None and time.monotonic() - connected_at >= WARM_UP_SECONDS

    def alive_workers(self) -> set[str] | None:
        """Names of the workers whose heartbeats are current; None while we cannot know."""
        if not self.ready:
            return None
        return self.live.alive_workers()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._listen()
            except Exception as exc:
                # The broker is down or restarting: try again; the probes report the outage.
                log.debug("event stream lost: %s", type(exc).__name__)
            if self._connected_at is not None and not self._stopped.is_set():
                self._notify()  # a connection we had just dropped: the broker may be gone
            self._connected_at = None
            self.connected_since = None
            self.live.reset()  # events were missed while away: no worker's tasks can be vouched for
            self._stopped.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=0)
            receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            self._receiver = receiver
            self._connected_at = time.monotonic()
            self.connected_since = time.time()
            receiver.capture(limit=None, timeout=None, wakeup=True)

    def _on_event(self, event: dict) -> None:
        if str(event.get("type", "")).startswith("task-"):
            self.state.event(event)  # only task events: see STATE_TASKS
            try:
                self.on_task_event(event)  # before the live state drops a finished task: its name labels metrics
            except Exception:
                log.exception("task event handler failed")
        self.live.apply(event)

    def quiet_seconds(self) -> float | None:
        """How long no worker has sent a heartbeat (counted from when we began to listen, if none ever
        did); None while we are not listening."""
        connected_at = self._connected_at
        if connected_at is None:
            return None
        listening = time.monotonic() - connected_at
        heard = self.live.last_heard()
        return min(listening, time.time() - heard) if heard is not None else listening

    def worker_details(self) -> dict[str, dict]:
        """What the heartbeats tell about each worker: age of the last one, alive or not, load average."""
        return self.live.worker_details()

    def stop(self) -> None:
        self._stopped.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=3)
