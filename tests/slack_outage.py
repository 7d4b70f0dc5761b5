"""Slack having a bad while, for the stand-in: for some seconds every call of the Web API methods that
post answers 429 with Retry-After, 5xx, hangs past the client's timeout, or refuses any blocks.

One hook in the stand-in asks `Outages.answer(method, params)` before it runs a Web API method; an
answer replaces the method's own (nothing is stored, as when Slack fails). Count-based faults
(`fail_next`, `hang_next`, `reject_next`) remain for tests that want exactly one failure.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

POSTING = frozenset({"chat.postMessage", "chat.update", "chat.postEphemeral", "chat.delete", "views.publish",
                     "files.getUploadURLExternal", "files.completeUploadExternal"})
CLIENT_TIMEOUT = 10.0  # the bot's WebClient timeout (bot.slack_app.make_client): a hang must outlast it


class OutageKind(Enum):
    RATE_LIMITED = "429"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    INVALID_BLOCKS = "invalid_blocks"


@dataclass(frozen=True)
class Outage:
    kind: OutageKind
    until: float  # time.monotonic()
    methods: frozenset[str] = POSTING
    retry_after: int = 1


@dataclass(frozen=True)
class Answer:
    """How the stand-in answers instead: an HTTP status and Slack error, after `hang` seconds."""

    status: int
    error: str
    retry_after: int | None = None
    hang: float = 0.0


class Outages:
    """The current outage, if any; it ends by itself once its time is up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Outage | None = None
        self.answered = 0  # calls answered by an outage so far

    def start(self, kind: OutageKind, seconds: float, methods: frozenset[str] = POSTING) -> Outage:
        with self._lock:
            self._current = Outage(kind, time.monotonic() + seconds, methods)
            return self._current

    def end(self) -> None:
        with self._lock:
            self._current = None

    @property
    def active(self) -> bool:
        with self._lock:
            return self._current is not None and time.monotonic() < self._current.until

    def answer(self, method: str, params: dict[str, Any]) -> Answer | None:
        with self._lock:
            outage = self._current
            if outage is None or time.monotonic() >= outage.until or method not in outage.methods:
                return None
            if outage.kind is OutageKind.INVALID_BLOCKS and not params.get("blocks"):
                return None  # text alone is fine: that is how a client gets through a refusal of its blocks
            self.answered += 1
        return {
            OutageKind.RATE_LIMITED: Answer(429, "ratelimited", retry_after=outage.retry_after),
            OutageKind.SERVER_ERROR: Answer(503, "service_unavailable"),
            OutageKind.TIMEOUT: Answer(503, "service_unavailable", hang=CLIENT_TIMEOUT + 2),
            OutageKind.INVALID_BLOCKS: Answer(200, "invalid_blocks"),
        }[outage.kind]
