"""The stand-in's state and what every part of it shares: waiting, validation against Slack's rules,
the stored messages."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from tests.support.slack.outage import Outages
from tests.support.slack.records import (
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_TOKEN,
    DEFAULT_CHANNELS,
    DEFAULT_USERS,
    ApiCall,
    Channel,
    Connection,
    Envelope,
    Fault,
    Message,
    Rejection,
    ResponseRecord,
    ResponseUrl,
    SlackError,
    UploadedFile,
)
from tests.support.slack.rules import message_error

T = TypeVar("T")


class StandInCore:
    """The stand-in's state, shared by the server thread and the test thread under one Condition, so
    every ``wait_*`` helper can block until the bot has done something, without polling sleeps.

    The Web API, files, response_url and Socket Mode parts of the stand-in are subclasses of this one.
    """

    # Who the stand-in's workspace and app are (as auth.test and the payloads tell the bot).
    bot_token, app_token = DEFAULT_BOT_TOKEN, DEFAULT_APP_TOKEN
    team_id, team_domain, team_name, app_id = "T_TEST", "opsbot-test", "Opsbot Test", "A_TEST"
    bot_user_id, bot_id, bot_name = "U_BOT", "B_BOT", "opsbot"
    response_url_max_uses = 5

    def __init__(self, users: dict[str, dict[str, Any]] | None = None,
                 usergroups: dict[str, list[str]] | None = None) -> None:
        self.users: dict[str, dict[str, Any]] = dict(DEFAULT_USERS if users is None else users)
        self.usergroups: dict[str, list[str]] = dict(usergroups or {})
        self.channels: dict[str, Channel] = {cid: Channel(name) for cid, name in DEFAULT_CHANNELS.items()}
        self._cond = threading.Condition()
        self._ts_counter = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._rr = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        """(Re)initialise every record; used by the constructor and ``clear``."""
        self.calls: list[ApiCall] = []
        self._messages: list[Message] = []
        self.home_views: dict[str, dict[str, Any]] = {}
        self.responses: list[ResponseRecord] = []
        self.envelopes: dict[str, Envelope] = {}
        self.stray_acks: list[dict[str, Any]] = []
        self._faults: dict[str, list[Fault]] = {}
        self.outages = Outages()  # Slack failing for a while (outage.py)
        self.rejections: list[Rejection] = []
        self._forced_rejections: dict[str, int] = {}
        self.files: dict[str, UploadedFile] = {}
        self._upload_keys: dict[str, str] = {}  # upload URL key -> file id
        self._response_urls: dict[str, ResponseUrl] = {}
        self._tickets: set[str] = set()
        self._conns: list[Connection] = getattr(self, "_conns", [])
        self.total_connections: int = getattr(self, "total_connections", 0)

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only after ``start``)."""
        if self._port is None:
            raise RuntimeError("stand-in not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The Web API base URL for slack_sdk's ``WebClient(base_url=...)`` / SLACK_API_URL."""
        return f"http://127.0.0.1:{self.port}/api/"

    def clear(self) -> None:
        """Forget all records (calls, messages, responses, envelopes, faults); keeps connections."""
        with self._cond:
            self._reset_state()
            self._cond.notify_all()

    def _submit(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the server loop from the test thread and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _wait(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        """Block until ``probe()`` returns something other than None; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = probe()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"Slack stand-in: timed out after {timeout}s waiting for {what}")
                self._cond.wait(left)

    def _next_ts(self) -> str:
        """A unique, increasing message ts in Slack's ``<seconds>.<6 digits>`` format."""
        return f"{int(time.time())}.{next(self._ts_counter):06d}"

    def _validate(self, where: str, payload: dict[str, Any], surface: str = "message") -> None:
        """Refuse, as Slack does, a payload breaking a Block Kit rule (or one a test forces to fail)."""
        answer = message_error(payload, surface, self._slack_file_problem)
        if answer is None and "blocks" in payload and self._forced_rejections.get(where, 0) > 0:
            self._forced_rejections[where] -= 1
            answer = {"ok": False, "error": "invalid_blocks", "errors": ["forced by the test"]}
        if answer is not None:
            self.rejections.append(Rejection(where, answer, payload))
            raise SlackError(answer["error"], {k: v for k, v in answer.items() if k not in ("ok", "error")})

    def reject_next(self, where: str, count: int = 1) -> None:
        """Refuse the next ``count`` payloads with blocks sent to ``where`` (a Web API method,
        ``response_url`` or ``ack``) with ``invalid_blocks``, whatever they hold."""
        with self._cond:
            self._forced_rejections[where] = self._forced_rejections.get(where, 0) + count

    def _slack_file_problem(self, ref: dict[str, Any]) -> str | None:
        """Why a slack_file reference is invalid, or None: the file must be a completed image upload that
        the poster (the bot, which uploaded it) can see."""
        upload = self.files.get(str(ref.get("id") or ""))
        if upload is None and ref.get("url"):
            upload = next((f for f in self.files.values() if str(ref["url"]).endswith(f.filename)
                           and f.id in str(ref["url"])), None)
        if upload is None or not upload.completed or not upload.is_image or upload.token != self.bot_token:
            return "invalid slack file"
        return None

    def _find_message(self, channel: str, ts: str) -> Message:
        """The live message at channel+ts, or Slack's ``message_not_found``."""
        for msg in self._messages:
            if msg.channel == channel and msg.ts == ts and not msg.deleted:
                return msg
        raise SlackError("message_not_found")

    @property
    def messages(self) -> list[Message]:
        """Live (not deleted) channel messages, in posting order."""
        with self._cond:
            return [m for m in self._messages if not m.deleted]

    def message(self, channel: str, ts: str) -> Message | None:
        """The live message at channel+ts, if any."""
        with self._cond:
            return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)
