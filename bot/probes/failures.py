"""Why a probe failed: exceptions sorted into the failure kinds a user can act on, described the same way
every time, and logged once per change of cause."""

from __future__ import annotations

import logging
import re
import socket
import threading
from urllib.parse import urlsplit

import amqp.exceptions
import redis.exceptions
import requests

from bot.redact import redact
from bot.status.snapshot import Failure, Problem

log = logging.getLogger("bot.probes")  # one logger for every probe


def target_of(url: str) -> str:
    """host:port of a URL, for messages: enough to find the service, nothing secret."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname or '?'}{port}"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes: kombu and requests wrap the socket error we care about."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _classify_one(exc: BaseException) -> Failure | None:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return Failure.UNAUTHORIZED if exc.response.status_code in (401, 403) else Failure.UNEXPECTED
    if isinstance(exc, (amqp.exceptions.AccessRefused, redis.exceptions.AuthenticationError)):
        return Failure.UNAUTHORIZED
    text = str(exc)
    if "ACCESS_REFUSED" in text or "NOAUTH" in text or "WRONGPASS" in text:
        return Failure.UNAUTHORIZED
    if isinstance(exc, (TimeoutError, socket.timeout, requests.Timeout, redis.exceptions.TimeoutError)):
        return Failure.TIMEOUT
    if "timed out" in text.lower():
        return Failure.TIMEOUT
    if isinstance(exc, (ConnectionError, socket.gaierror)) or "refused" in text.lower():
        return Failure.REFUSED
    return None


def classify(exc: BaseException) -> Failure:
    """Sort an exception into the failure kinds a user can act on."""
    for link in _chain(exc):
        kind = _classify_one(link)
        if kind is not None:
            return kind
    if isinstance(exc, (OSError, requests.ConnectionError, redis.exceptions.ConnectionError)):
        return Failure.REFUSED
    return Failure.UNEXPECTED


# Object addresses ("<... object at 0x7f3a...>") differ on every attempt; the cause does not.
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+\b")


def describe(exc: BaseException) -> str:
    """The exception's class and redacted message, the same text every time the same thing fails.

    Libraries wrap the real cause (requests: ConnectionError < MaxRetryError < NewConnectionError <
    ConnectionRefusedError); the innermost exception says it best, the outermost says who raised it.
    """
    root = _chain(exc)[-1]
    text = f"{type(root).__name__}: {root}"
    if root is not exc:
        text += f" (raised as {type(exc).__name__})"
    return redact(_ADDRESS.sub("0x…", text))[:300]


def problem_from(exc: BaseException, target: str) -> Problem:
    kind = classify(exc)
    cause = describe(exc)
    # The kind says it all for the usual failures; for the rest, a short redacted reason helps.
    detail = "" if kind is not Failure.UNEXPECTED else cause[:160]
    return Problem(kind=kind, target=target, detail=detail, cause=cause)


class FailureLog:
    """Logs why a probe fails, once per change of cause: a refused port polled every 10 s is one line."""

    def __init__(self) -> None:
        self._causes: dict[str, str] = {}
        self._lock = threading.Lock()

    def note(self, probe: str, problem: Problem | None) -> None:
        cause = f"at {problem.target}: {problem.cause or problem.kind}" if problem else None
        with self._lock:
            before = self._causes.pop(probe, None)
            if cause is not None:
                self._causes[probe] = cause
        if cause is not None and cause != before:
            log.warning("%s probe failed %s", probe, cause)
        elif cause is None and before is not None:
            log.info("%s probe works again", probe)
