"""Slack having a bad while: for some seconds every call of the Web API methods that post answers 429
with Retry-After, 5xx, hangs past the client's timeout, or refuses any blocks.

The stand-in asks `Outages.fault(method, params)` where it answers a request (``WebApi._handle_api``),
before the count-based faults (``fail_next``, ``hang_next``) that tests use for exactly one failure;
a fault answers instead of the method, and nothing is stored, as when Slack fails.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from tests.support.slack.records import Fault

POSTING = frozenset({"chat.postMessage", "chat.update", "views.publish", "files.getUploadURLExternal",
                     "files.completeUploadExternal"})
CLIENT_TIMEOUT = 10.0  # the bot's WebClient timeout (bot.slack.app.make_client): a hang must outlast it


class OutageKind(Enum):
    RATE_LIMITED = "429"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    INVALID_BLOCKS = "invalid_blocks"


FAULTS = {
    OutageKind.RATE_LIMITED: Fault(status=429, retry_after=1, error="ratelimited"),
    OutageKind.SERVER_ERROR: Fault(status=503, error="service_unavailable"),
    # Slack never answers in time, and did not act (the client's retry cannot double a post).
    OutageKind.TIMEOUT: Fault(status=503, error="service_unavailable", hang=CLIENT_TIMEOUT + 2, process=False),
    OutageKind.INVALID_BLOCKS: Fault(status=200, error="invalid_blocks"),
}


@dataclass(frozen=True)
class Outage:
    kind: OutageKind
    until: float  # time.monotonic()
    methods: frozenset[str] = POSTING


class Outages:
    """The current outage, if any; it ends by itself once its time is up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Outage | None = None
        self.answered = 0  # calls an outage answered so far

    def start(self, kind: OutageKind, seconds: float, methods: frozenset[str] = POSTING) -> Outage:
        with self._lock:
            self._current = Outage(kind, time.monotonic() + seconds, methods)
            return self._current

    @property
    def active(self) -> bool:
        with self._lock:
            return self._current is not None and time.monotonic() < self._current.until

    def fault(self, method: str, params: dict[str, Any]) -> Fault | None:
        """How Slack answers this call now, if the outage takes it."""
        with self._lock:
            outage = self._current
            if outage is None or time.monotonic() >= outage.until or method not in outage.methods:
                return None
            if outage.kind is OutageKind.INVALID_BLOCKS and not params.get("blocks"):
                return None  # text alone passes: that is how a client gets through a refusal of its blocks
            self.answered += 1
        return FAULTS[outage.kind]
