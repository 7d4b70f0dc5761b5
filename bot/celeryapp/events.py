"""Task events on, as Flower does: ask every worker, again and again, to send them.

A worker started without `-E` sends only heartbeats; `enable_events` switches its task events on until
it restarts, which is why the request is repeated (a restarted or new worker hears it within a period).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

ENABLE_EVERY = 10.0  # seconds between two requests


class EventEnabler:
    def __init__(self, app: Any, every: float = ENABLE_EVERY) -> None:
        self.app = app  # the bot's control app: no retries, short timeouts
        self.every = every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enable-events", daemon=True)

    def start(self) -> EventEnabler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.app.control.enable_events()  # a broadcast: no reply to wait for
            except Exception as exc:
                log.debug("enable_events not sent: %s", type(exc).__name__)  # the probes report the outage
            self._stopped.wait(self.every)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
