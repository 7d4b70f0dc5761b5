"""A local stand-in for Slack: Web API, response_url endpoints and Socket Mode.

Slack cannot be reached from the tests, so the bot under test (run exactly as in production) is
pointed at this server through ``SLACK_API_URL``.  The wire formats follow Slack's documentation:

* Web API: ``POST/GET /api/{method}``, form-encoded or JSON bodies, ``Authorization: Bearer``;
  answers are HTTP 200 ``{"ok": true, ...}`` / ``{"ok": false, "error": "..."}``, rate limits are
  HTTP 429 with ``Retry-After``.
* Socket Mode: ``apps.connections.open`` hands out ``ws://127.0.0.1:PORT/socket-mode?ticket=...``;
  the server greets with ``hello``, sends envelopes (``slash_commands``, ``interactive``,
  ``events_api``) and expects acks ``{"envelope_id": ..., "payload": ...}``; ``disconnect`` asks
  the client to reconnect.
* response_url: ``POST /response/<id>`` with a JSON message (``replace_original``,
  ``delete_original``, ``response_type``).
* Block Kit: every payload with blocks (chat.postMessage, chat.update, chat.postEphemeral,
  views.publish, response_url posts, and the acks of slash commands and interactions) is checked
  against Slack's documented rules (``tests/slack_rules.py``) and refused as Slack refuses it:
  ``{"ok": false, "error": "invalid_blocks", "errors": [...]}``. Refusals are kept in ``rejections``;
  an ack Slack would refuse makes ``wait_ack`` raise ``Rejected`` (the user would see an error).

Everything the bot sends is recorded so tests can assert on it and wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlencode

from aiohttp import WSMsgType, web

from tests.slack_outage import Outages
from tests.slack_rules import message_error

T = TypeVar("T")

DEFAULT_BOT_TOKEN = "xoxb-test-bot-token"
DEFAULT_APP_TOKEN = "xapp-test-app-token"
VERIFICATION_TOKEN = "verification-token-test"  # Slack's deprecated per-payload "token" field

# Parameters Slack accepts as JSON-encoded strings in form bodies; decoded when recorded.
JSON_PARAMS = frozenset({"blocks", "attachments", "view", "metadata", "user_auth_blocks", "files"})

# Methods authorised by the app-level token (everything else needs the bot token).
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})

DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "U_ADMIN": {"name": "admin", "is_admin": True, "is_owner": False},
    "U_OWNER": {"name": "owner", "is_admin": True, "is_owner": True},
    "U_USER": {"name": "user", "is_admin": False, "is_owner": False},
}


class SlackError(Exception):
    """A Slack-level error: answered as HTTP 200 ``{"ok": false, "error": code}`` like Slack does."""

    def __init__(self, code: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra or {}


class Rejected(AssertionError):
    """Slack refused what the bot sent (its answer is the argument): a user would see an error."""


@dataclass
class Rejection:
    """A payload Slack refused: where it was sent (method, ``response_url`` or ``ack``) and the answer."""

    where: str
    answer: dict[str, Any]
    payload: dict[str, Any]


# --------------------------------------------------------------------------------------- records


@dataclass
class ApiCall:
    """One Web API request as received; ``faulted`` is set when an injected fault answered it."""

    method: str
    params: dict[str, Any]
    token: str | None
    time: float
    http_method: str = "POST"
    status: int | None = None  # HTTP status once answered
    response: dict[str, Any] | None = None
    faulted: str | None = None  # e.g. "http_429", "http_503", "hang"
    delayed: float = 0.0  # seconds the answer was held back by hang_next


@dataclass
class Message:
    """A channel message as Slack stores it; updated in place by chat.update / replace_original."""

    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    user: str | None = None
    bot_id: str | None = None
    updates: int = 0
    deleted: bool = False
    files: list[dict[str, Any]] | None = None  # a file share (files.completeUploadExternal with a channel)

    def as_payload(self) -> dict[str, Any]:
        """The message object as Slack embeds it in API answers and block_actions payloads."""
        msg: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text or ""}
        if self.blocks is not None:
            msg["blocks"] = self.blocks
        if self.user:
            msg["user"] = self.user
        if self.bot_id:
            msg["bot_id"] = self.bot_id
        if self.thread_ts:
            msg["thread_ts"] = self.thread_ts
        if self.files:
            msg["files"] = self.files
        return msg


@dataclass
class Channel:
    """A conversation the workspace has; the bot can post files only where it is a member."""

    name: str
    bot_member: bool = True


@dataclass
class UploadedFile:
    """A file through the external upload flow: URL issued, bytes uploaded, upload completed."""

    id: str
    filename: str
    length: int
    token: str  # who started the upload: only they may complete it, and see it while it is shared nowhere
    alt_txt: str | None = None
    content: bytes | None = None  # None until the bytes were POSTed to the upload URL
    title: str | None = None
    completed: bool = False
    channels: tuple[str, ...] = ()

    @property
    def is_image(self) -> bool:
        """Slack's image blocks take png, jpg, jpeg and gif files (the slack file object's reference page)."""
        return self.filename.lower().rsplit(".", 1)[-1] in ("png", "jpg", "jpeg", "gif")


# Conversations the stand-in knows; tests add others with ``add_channel``.
DEFAULT_CHANNELS = {"C_OPS": "ops", "C_ALERTS": "alerts", "C_AUDIT": "audit"}


@dataclass
class Ephemeral:
    """A chat.postEphemeral message: visible to one user, never retrievable, so stored apart."""

    channel: str
    user: str
    message_ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None


@dataclass
class ResponseRecord:
    """One POST to a response_url, with the Slack-relevant flags lifted out of the body."""

    url_id: str
    body: dict[str, Any]
    time: float
    status: int
    replace_original: bool
    delete_original: bool
    response_type: str | None


@dataclass
class Envelope:
    """A Socket Mode envelope sent to the bot and, once it arrives, its ack."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    connection_id: int
    sent_at: float
    acked_at: float | None = None
    ack_payload: dict[str, Any] | None = None
    ack_error: dict[str, Any] | None = None  # Slack's refusal of the ack's message, if it refused it

    @property
    def acked(self) -> bool:
        """Whether the bot acked this envelope."""
        return self.acked_at is not None


@dataclass
class _Fault:
    """An injected failure for the next ``count`` calls of one method."""

    status: int | None
    retry_after: int | None = None
    error: str | None = None
    hang: float = 0.0
    process: bool = True  # for hangs: answer normally after the delay
    count: int = 1


@dataclass
class _ResponseUrl:
    """Where a response_url points: the channel and (for block actions) the source message."""

    channel_id: str | None
    message_ts: str | None
    uses: int = 0


@dataclass
class _Connection:
    """One Socket Mode WebSocket connection of the bot."""

    id: int
    ws: web.WebSocketResponse
    ticket: str
    connected_at: float
    pings: int = 0
    pongs: int = 0
    closing: bool = False


# ---------------------------------------------------------------------------- payload builders


def _trigger_id() -> str:
    """A trigger_id shaped like Slack's (``<digits>.<digits>.<hex>``)."""
    return f"{int(time.time() * 1000)}.{uuid.uuid4().int % 10**10}.{uuid.uuid4().hex}"


def slash_command_payload(
    text: str,
    command: str = "/tasks",
    user_id: str = "U_ADMIN",
    user_name: str = "admin",
    channel_id: str = "C_OPS",
    channel_name: str = "ops",
    team_id: str = "T_TEST",
    team_domain: str = "opsbot-test",
    api_app_id: str = "A_TEST",
    response_url: str = "",
    trigger_id: str | None = None,
) -> dict[str, str]:
    """The slash command fields, all strings, in the order Slack sends them (HTTP and Socket Mode)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _trigger_id(),
    }


def block_action_payload(
    action_id: str,
    value: str | None = None,
    user_id: str = "U_ADMIN",
    user_name: str = "admin",
    block_id: str = "actions",
    message: dict[str, Any] | None = None,
    container: dict[str, Any] | None = None,
    channel_id: str = "C_OPS",
    channel_name: str = "ops",
    team_id: str = "T_TEST",
    team_domain: str = "opsbot-test",
    api_app_id: str = "A_TEST",
    response_url: str = "",
    action_type: str = "button",
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for a click on a message (or App Home) block."""
    if container is None:
        container = _message_container(message, channel_id)
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": _trigger_id(),
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "state": state or {"values": {}},
        "actions": [_action(action_id, value, block_id, action_type)],
    }
    if container.get("type") != "view":
        payload["channel"] = {"id": channel_id, "name": channel_name}
    if message is not None:
        payload["message"] = message
    if response_url:
        payload["response_url"] = response_url
    return payload


def _message_container(message: dict[str, Any] | None, channel_id: str) -> dict[str, Any]:
    """The ``container`` Slack reports for a message click (ts falls back to 'now' without message)."""
    ts = message["ts"] if message and "ts" in message else f"{time.time():.6f}"
    return {"type": "message", "message_ts": ts, "channel_id": channel_id, "is_ephemeral": False}


def _action(action_id: str, value: str | None, block_id: str, action_type: str) -> dict[str, Any]:
    """One element of ``actions``: buttons carry ``value``, selects ``selected_option``."""
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "type": action_type,
        "action_ts": f"{time.time():.6f}",
    }
    if action_type == "static_select":
        action["selected_option"] = {"text": {"type": "plain_text", "text": value or ""}, "value": value}
    else:
        action["text"] = {"type": "plain_text", "text": action_id, "emoji": True}
        if value is not None:
            action["value"] = value
    return action


def event_callback_payload(
    event: dict[str, Any], team_id: str = "T_TEST", api_app_id: str = "A_TEST", bot_user_id: str = "U_BOT"
) -> dict[str, Any]:
    """The Events API ``event_callback`` wrapper around ``event`` (same over HTTP and Socket Mode)."""
    now = int(time.time())
    event = {"event_ts": f"{time.time():.6f}", **event}
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": "Ev" + uuid.uuid4().hex[:10].upper(),
        "event_time": now,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-" + uuid.uuid4().hex,
    }


# ----------------------------------------------------------------------------- HTTP mode helpers


def sign(signing_secret: str, body: str, timestamp: int) -> dict[str, str]:
    """Slack's request-signing headers: ``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    base = f"v0:{timestamp}:{body}".encode()
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}


def slash_command_form(
    text: str,
    command: str = "/tasks",
    user_id: str = "U_ADMIN",
    user_name: str = "admin",
    channel_id: str = "C_OPS",
    channel_name: str = "ops",
    team_id: str = "T_TEST",
    team_domain: str = "opsbot-test",
    api_app_id: str = "A_TEST",
    response_url: str = "",
    trigger_id: str | None = None,
) -> str:
    """The urlencoded body Slack POSTs for a slash command in HTTP mode."""
    fields = slash_command_payload(
        text,
        command,
        user_id,
        user_name,
        channel_id,
        channel_name,
        team_id,
        team_domain,
        api_app_id,
        response_url,
        trigger_id,
    )
    return urlencode(fields)


def block_action_form(payload: dict[str, Any]) -> str:
    """The urlencoded body Slack POSTs for interactivity in HTTP mode: ``payload=<json>``."""
    return urlencode({"payload": json.dumps(payload)})


def event_body(payload: dict[str, Any]) -> str:
    """The JSON body Slack POSTs for the Events API in HTTP mode."""
    return json.dumps(payload)


# ------------------------------------------------------------------------------------ stand-in


class SlackStandIn:
    """Slack's Web API + response_url + Socket Mode on 127.0.0.1, served from a background thread.

    State is shared between the server thread and the test thread under one Condition, so every
    ``wait_*`` helper can block until the bot has done something, without polling sleeps.
    """

    def __init__(
        self,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        team_id: str = "T_TEST",
        app_id: str = "A_TEST",
        *,
        team_domain: str = "opsbot-test",
        team_name: str = "Opsbot Test",
        bot_user_id: str = "U_BOT",
        bot_id: str = "B_BOT",
        bot_name: str = "opsbot",
        users: dict[str, dict[str, Any]] | None = None,
        usergroups: dict[str, list[str]] | None = None,
        response_url_max_uses: int = 5,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.app_id = app_id
        self.team_domain = team_domain
        self.team_name = team_name
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_name = bot_name
        self.users: dict[str, dict[str, Any]] = dict(DEFAULT_USERS if users is None else users)
        self.usergroups: dict[str, list[str]] = dict(usergroups or {})
        self.response_url_max_uses = response_url_max_uses
        self.channels: dict[str, Channel] = {cid: Channel(name) for cid, name in DEFAULT_CHANNELS.items()}
        self._cond = threading.Condition()
        self._ts_counter = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._rr = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.outages = Outages()  # Slack failing for a while (tests/slack_outage.py)
        self._reset_state()

    def _reset_state(self) -> None:
        """(Re)initialise every record; used by the constructor and ``clear``."""
        self.calls: list[ApiCall] = []
        self._messages: list[Message] = []
        self.ephemerals: list[Ephemeral] = []
        self.home_views: dict[str, dict[str, Any]] = {}
        self.responses: list[ResponseRecord] = []
        self.envelopes: dict[str, Envelope] = {}
        self.stray_acks: list[dict[str, Any]] = []
        self._faults: dict[str, list[_Fault]] = {}
        self.rejections: list[Rejection] = []
        self._forced_rejections: dict[str, int] = {}
        self.files: dict[str, UploadedFile] = {}
        self._upload_keys: dict[str, str] = {}  # upload URL key -> file id
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._tickets: set[str] = set()
        self._conns: list[_Connection] = getattr(self, "_conns", [])
        self.total_connections: int = getattr(self, "total_connections", 0)

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the aiohttp server on a free port in its own thread and event loop."""
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, errors), name="slack-standin", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or errors:
            raise RuntimeError(f"Slack stand-in failed to start: {errors}")
        return self

    def _serve(self, ready: threading.Event, errors: list[BaseException]) -> None:
        """Thread body: bring the server up, signal readiness, run the loop until ``stop``."""
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start()
            errors.append(exc)
            ready.set()
            return
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _startup(self) -> None:
        """Bind 127.0.0.1:0 and remember the port the OS picked."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/response/{url_id}", self._handle_response_url)
        app.router.add_post("/upload/v1/{key}", self._handle_upload)
        app.router.add_get("/socket-mode", self._handle_socket_mode)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Close bot connections, shut the server down and join the thread."""
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._submit(self._shutdown(), timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    async def _shutdown(self) -> None:
        """Close every WebSocket (going away) and clean the runner up."""
        await self._close_connections(code=1001, message="server shutdown")
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    # ----------------------------------------------------------------------------- Web API

    def _next_ts(self) -> str:
        """A unique, increasing message ts in Slack's ``<seconds>.<6 digits>`` format."""
        return f"{int(time.time())}.{next(self._ts_counter):06d}"

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        """Entry point of every Web API call: parse, record, apply faults, dispatch."""
        method = request.match_info["method"]
        params = await _read_params(request)
        token = _bearer(request) or params.pop("token", None)
        params.pop("token", None)
        call = ApiCall(method, params, token, time.time(), http_method=request.method)
        fault = self._outage_fault(method, params) or self._take_fault(method)
        if fault is None:
            with self._cond:
                return self._answer(call)
        if fault.hang:
            return await self._answer_hung(call, fault)
        return self._answer_faulted(call, fault, record=True)

    def _outage_fault(self, method: str, params: dict[str, Any]) -> _Fault | None:
        """An outage under way answers instead of the method (see tests/slack_outage.py)."""
        answer = self.outages.answer(method, params)
        if answer is None:
            return None
        return _Fault(status=answer.status, retry_after=answer.retry_after, error=answer.error,
                      hang=answer.hang, process=False)

    async def _answer_hung(self, call: ApiCall, fault: _Fault) -> web.StreamResponse:
        """Record at arrival, hold the answer back, then answer normally or with the fault status."""
        call.delayed = fault.hang
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()
        await asyncio.sleep(fault.hang)
        if fault.process:
            with self._cond:
                return self._answer(call, record=False)
        return self._answer_faulted(call, fault, record=False)

    def _answer_faulted(self, call: ApiCall, fault: _Fault, record: bool) -> web.StreamResponse:
        """Answer with the injected HTTP status instead of running the method (nothing stored)."""
        status = fault.status or 503
        body = {"ok": False, "error": fault.error or _fault_error(status)}
        headers = {"Retry-After": str(fault.retry_after)} if status == 429 and fault.retry_after else {}
        with self._cond:
            call.faulted = "hang" if fault.hang else f"http_{status}"
            call.status, call.response = status, body
            if record:
                self.calls.append(call)
            self._cond.notify_all()
        return web.json_response(body, status=status, headers=headers)

    def _answer(self, call: ApiCall, record: bool = True) -> web.StreamResponse:
        """Dispatch a call to its Slack method (lock held, so record and side effects are atomic)."""
        try:
            body = self._dispatch(call.method, call.params, call.token)
        except SlackError as err:
            body = {"ok": False, "error": err.code, **err.extra}
        call.status, call.response = 200, body
        if record:
            self.calls.append(call)
        self._cond.notify_all()
        return web.json_response(body)

    def _dispatch(self, method: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        """Check the token the way Slack does, then run the method implementation."""
        handler = self._methods().get(method)
        if handler is None:
            raise SlackError("unknown_method")
        self._check_token(method, token)
        return {"ok": True, **handler(params)}

    def _check_token(self, method: str, token: str | None) -> None:
        """not_authed without token, not_allowed_token_type for the other known token, else invalid_auth."""
        if not token:
            raise SlackError("not_authed")
        wanted, other = (
            (self.app_token, self.bot_token)
            if method in APP_TOKEN_METHODS
            else (self.bot_token, self.app_token)
        )
        if token == other:
            raise SlackError("not_allowed_token_type")
        if token != wanted:
            raise SlackError("invalid_auth")

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """The implemented Web API methods."""
        return {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.delete": self._chat_delete,
            "views.publish": self._views_publish,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.replies": self._conversations_replies,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
        }

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        """auth.test for the bot token (bolt calls it at App construction)."""
        return {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        """Issue a Socket Mode URL with a fresh ticket (plain ws://, see module docs)."""
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket-mode?ticket={ticket}&app_id={self.app_id}"}

    def _validate(self, where: str, payload: dict[str, Any], surface: str = "message") -> None:
        """Refuse, as Slack does, a payload breaking a Block Kit rule (or one a test forces to fail)."""
        answer = message_error(payload, surface, self._slack_file_problem)
        if answer is None and "blocks" in payload and self._forced_rejections.get(where, 0) > 0:
            self._forced_rejections[where] -= 1
            answer = {"ok": False, "error": "invalid_blocks", "errors": ["forced by the test"]}
        if answer is not None:
            self.rejections.append(Rejection(where, answer, payload))
            raise SlackError(answer["error"], {k: v for k, v in answer.items() if k not in ("ok", "error")})

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        """Store a new message; Slack requires a channel and one of text/blocks/attachments."""
        channel = _require_channel(params)
        self._validate("chat.postMessage", params)
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise SlackError("no_text")
        msg = Message(
            channel=channel,
            ts=self._next_ts(),
            text=params.get("text"),
            blocks=params.get("blocks"),
            thread_ts=params.get("thread_ts") or None,
            user=self.bot_user_id,
            bot_id=self.bot_id,
        )
        self._messages.append(msg)
        return {"channel": channel, "ts": msg.ts, "message": msg.as_payload()}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        """Update an existing message in place; unknown channel+ts is ``message_not_found``."""
        msg = self._find_message(_require_channel(params), str(params.get("ts", "")))
        self._validate("chat.update", params)
        if "text" in params:
            msg.text = params["text"]
        if "blocks" in params:
            msg.blocks = params["blocks"]
        msg.updates += 1
        return {"channel": msg.channel, "ts": msg.ts, "text": msg.text or "", "message": msg.as_payload()}

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        """Record an ephemeral message; Slack needs channel, user and some content."""
        channel = _require_channel(params)
        user = params.get("user")
        if not user:
            raise SlackError("user_not_in_channel")
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise SlackError("no_text")
        self._validate("chat.postEphemeral", params)
        eph = Ephemeral(
            channel, user, self._next_ts(), params.get("text"), params.get("blocks"), params.get("thread_ts")
        )
        self.ephemerals.append(eph)
        return {"message_ts": eph.message_ts}

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        """Delete a stored message (it disappears from ``messages``)."""
        msg = self._find_message(_require_channel(params), str(params.get("ts", "")))
        msg.deleted = True
        return {"channel": msg.channel, "ts": msg.ts}

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        """Store the App Home view per user and echo it back with Slack's view metadata."""
        user_id = params.get("user_id")
        view = params.get("view")
        if not user_id or not isinstance(view, dict):
            raise SlackError("invalid_arguments")
        if view.get("type") != "home":
            raise SlackError("invalid_arguments")
        self._validate("views.publish", view, surface="home")
        self.home_views[user_id] = view
        vid = "V" + uuid.uuid4().hex[:10].upper()
        return {
            "view": {"id": vid, "team_id": self.team_id, "app_id": self.app_id, "bot_id": self.bot_id, **view}
        }

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        """users.info from the configured ``users`` dict; others are ``user_not_found``."""
        user_id = params.get("user", "")
        spec = self.users.get(user_id)
        if spec is None:
            raise SlackError("user_not_found")
        return {"user": self._user_object(user_id, spec)}

    def _user_object(self, user_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A Slack user object with the fields bots usually read."""
        name = spec.get("name", user_id.lower())
        return {
            "id": user_id,
            "team_id": spec.get("team_id", self.team_id),  # another team's: a Slack Connect partner
            "name": name,
            "deleted": False,
            "real_name": spec.get("real_name", name),
            "tz": "Etc/UTC",
            "profile": {"real_name": spec.get("real_name", name), "display_name": name},
            "is_admin": bool(spec.get("is_admin", False)),
            "is_owner": bool(spec.get("is_owner", False)),
            "is_primary_owner": bool(spec.get("is_primary_owner", False)),
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": bool(spec.get("is_bot", False)),
            "is_app_user": False,
        }

    def _usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        """Members of a configured user group; unknown groups are ``no_such_subteam``."""
        group = params.get("usergroup", "")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        """The thread parent plus its replies, oldest first."""
        channel = _require_channel(params)
        ts = str(params.get("ts", ""))
        found = [
            m.as_payload()
            for m in self._messages
            if m.channel == channel and not m.deleted and (m.ts == ts or m.thread_ts == ts)
        ]
        if not found:
            raise SlackError("thread_not_found")
        return {"messages": found, "has_more": False}

    def _find_message(self, channel: str, ts: str) -> Message:
        """The live message at channel+ts, or Slack's ``message_not_found``."""
        for msg in self._messages:
            if msg.channel == channel and msg.ts == ts and not msg.deleted:
                return msg
        raise SlackError("message_not_found")

    # --------------------------------------------------------------------------- file uploads

    def add_channel(self, channel_id: str, name: str, bot_member: bool = True) -> None:
        """A conversation the workspace has (the bot in it, or not)."""
        with self._cond:
            self.channels[channel_id] = Channel(name, bot_member)

    def _files_get_upload_url_external(self, params: dict[str, Any]) -> dict[str, Any]:
        """files.getUploadURLExternal: needs a filename and the length in bytes of what will be uploaded."""
        filename = str(params.get("filename") or "")
        length = str(params.get("length") or "")
        if not filename or not length.isdigit() or int(length) < 1:
            raise SlackError("invalid_arguments")
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        key = uuid.uuid4().hex
        token = self.bot_token  # _check_token let only the bot token through
        self.files[file_id] = UploadedFile(file_id, filename, int(length), token, params.get("alt_txt"))
        self._upload_keys[key] = file_id
        return {"upload_url": f"http://127.0.0.1:{self.port}/upload/v1/{key}", "file_id": file_id}

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        """The POST of the bytes to the upload URL: the length must be the one announced."""
        data = await request.read()
        with self._cond:
            file_id = self._upload_keys.get(request.match_info["key"])
            upload = self.files.get(file_id or "")
            if upload is None:
                return web.Response(status=404, text="not_found")
            if len(data) != upload.length:
                self.rejections.append(Rejection("upload", {"error": "length mismatch", "declared": upload.length,
                                                            "received": len(data)}, {"file_id": upload.id}))
                return web.Response(status=400, text="length_mismatch")
            upload.content = data
            self._cond.notify_all()
        return web.Response(status=200, text=f"OK - {len(data)}")

    def _files_complete_upload_external(self, params: dict[str, Any]) -> dict[str, Any]:
        """files.completeUploadExternal: known, uploaded files; a channel that exists with the bot in it."""
        files = params.get("files")
        if not isinstance(files, list) or not files or not all(isinstance(f, dict) and f.get("id") for f in files):
            raise SlackError("invalid_arguments")
        uploads = [self.files.get(str(f["id"])) for f in files]
        if any(u is None or u.content is None or u.completed for u in uploads):
            raise SlackError("file_not_found")
        channel = params.get("channel_id") or None
        targets = [channel] if channel else [c for c in str(params.get("channels") or "").split(",") if c]
        for target in targets:
            if target not in self.channels:
                raise SlackError("channel_not_found")
            if not self.channels[target].bot_member:
                raise SlackError("not_in_channel")
        shared = []
        for spec, upload in zip(files, uploads, strict=True):
            assert upload is not None
            upload.title, upload.completed, upload.channels = spec.get("title") or upload.filename, True, tuple(targets)
            shared.append(self._file_object(upload))
        for target in targets:
            self._messages.append(Message(target, self._next_ts(), params.get("initial_comment") or "", None,
                                          thread_ts=params.get("thread_ts") or None, user=self.bot_user_id,
                                          bot_id=self.bot_id, files=shared))
        return {"files": shared}

    def _file_object(self, upload: UploadedFile) -> dict[str, Any]:
        """The file object Slack answers with (the fields clients read)."""
        return {"id": upload.id, "name": upload.filename, "title": upload.title, "size": upload.length,
                "mimetype": "image/png" if upload.is_image else "application/octet-stream",
                "channels": list(upload.channels), "is_public": bool(upload.channels), "user": self.bot_user_id,
                "url_private": f"https://files.slack.test/files-pri/{self.team_id}-{upload.id}/{upload.filename}",
                "permalink": f"https://{self.team_domain}.slack.test/files/{self.bot_user_id}/{upload.id}"}

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

    def uploaded(self, predicate: Callable[[UploadedFile], bool] | None = None) -> list[UploadedFile]:
        """Completed uploads (matching ``predicate``), oldest first."""
        with self._cond:
            return [f for f in self.files.values() if f.completed and (predicate is None or predicate(f))]

    # ------------------------------------------------------------------- records for tests

    @property
    def messages(self) -> list[Message]:
        """Live (not deleted) channel messages, in posting order."""
        with self._cond:
            return [m for m in self._messages if not m.deleted]

    def message(self, channel: str, ts: str) -> Message | None:
        """The live message at channel+ts, if any."""
        with self._cond:
            return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)

    def calls_to(self, method: str) -> list[ApiCall]:
        """Every recorded call of one Web API method, faulted ones included."""
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def wait_for_call(
        self, method: str, predicate: Callable[[ApiCall], bool] | None = None, timeout: float = 5.0
    ) -> ApiCall:
        """Wait for a call of ``method`` (matching ``predicate``) already made or still to come."""

        def probe() -> ApiCall | None:
            return next(
                (c for c in self.calls if c.method == method and (predicate is None or predicate(c))), None
            )

        return self._wait(probe, timeout, f"a {method} call")

    def wait_for_message(
        self, predicate: Callable[[Message], bool] | None = None, timeout: float = 5.0
    ) -> Message:
        """Wait for a live stored message matching ``predicate``."""

        def probe() -> Message | None:
            live = (m for m in self._messages if not m.deleted)
            return next((m for m in live if predicate is None or predicate(m)), None)

        return self._wait(probe, timeout, "a message")

    # ----------------------------------------------------------------------- fault injection

    def fail_next(
        self, method: str, status: int = 429, retry_after: int = 1, count: int = 1, error: str | None = None
    ) -> None:
        """Answer the next ``count`` calls of ``method`` with an HTTP error instead of running them.

        429 carries ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}`` as Slack does;
        5xx carries a server error body. With ``status=200`` the answer is ``{"ok": false, "error":
        error}`` (a Slack-level failure). Nothing is stored for faulted calls.
        """
        self._add_fault(method, _Fault(status=status, retry_after=retry_after, error=error, count=count))

    def hang_next(self, method: str, seconds: float, count: int = 1, process: bool = True) -> None:
        """Hold the answer to the next ``count`` calls of ``method`` for ``seconds``.

        With ``process=True`` the call then runs normally (as real Slack would still post a message
        the client gave up waiting for); with ``process=False`` it is answered 503 and not stored.
        """
        fault = _Fault(status=None if process else 503, hang=seconds, process=process, count=count)
        self._add_fault(method, fault)

    def _add_fault(self, method: str, fault: _Fault) -> None:
        """Queue a fault for a method (faults are consumed in order)."""
        with self._cond:
            self._faults.setdefault(method, []).append(fault)

    def _take_fault(self, method: str) -> _Fault | None:
        """Consume one use of the first queued fault of ``method``."""
        with self._cond:
            queue = self._faults.get(method)
            if not queue:
                return None
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.pop(0)
            return fault

    # -------------------------------------------------------------------------- response_url

    def new_response_url(self, channel_id: str | None = "C_OPS", message_ts: str | None = None) -> str:
        """A fresh recorded response_url; ``message_ts`` links it to a message for replace/delete."""
        url_id = uuid.uuid4().hex
        with self._cond:
            self._response_urls[url_id] = _ResponseUrl(channel_id, message_ts)
        return f"http://127.0.0.1:{self.port}/response/{url_id}"

    async def _handle_response_url(self, request: web.Request) -> web.StreamResponse:
        """Record a POST to a response_url and apply it to the linked message like Slack does."""
        url_id = request.match_info["url_id"]
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {"_raw": await request.text()}
        with self._cond:
            status, answer = self._apply_response(url_id, body)
            self.responses.append(_response_record(url_id, body, status))
            self._cond.notify_all()
        if status != 200:
            return web.Response(status=status, text=answer)
        return web.json_response({"ok": True})

    def _apply_response(self, url_id: str, body: dict[str, Any]) -> tuple[int, str]:
        """Slack semantics: 404 for unknown/exhausted URLs; delete/replace the original or post."""
        target = self._response_urls.get(url_id)
        if target is None:
            return 404, "no_service"
        target.uses += 1
        if target.uses > self.response_url_max_uses:
            return 404, "used_url"
        try:
            self._validate("response_url", body)
        except SlackError as refused:
            return 400, json.dumps({"ok": False, "error": refused.code, **refused.extra})
        original = self._linked_message(target)
        if _truthy(body.get("delete_original")):
            if original is not None:
                original.deleted = True
        elif _truthy(body.get("replace_original")) and original is not None:
            original.text = body.get("text", original.text)
            original.blocks = body.get("blocks", original.blocks)
            original.updates += 1
        elif body.get("response_type") == "in_channel" and target.channel_id:
            self._messages.append(
                Message(
                    target.channel_id,
                    self._next_ts(),
                    body.get("text"),
                    body.get("blocks"),
                    thread_ts=body.get("thread_ts"),
                    user=self.bot_user_id,
                    bot_id=self.bot_id,
                )
            )
        return 200, "ok"

    def _linked_message(self, target: _ResponseUrl) -> Message | None:
        """The stored message a response_url's block action came from, if it is known."""
        if target.channel_id is None or target.message_ts is None:
            return None
        try:
            return self._find_message(target.channel_id, target.message_ts)
        except SlackError:
            return None

    def wait_for_response(
        self, predicate: Callable[[ResponseRecord], bool] | None = None, timeout: float = 5.0
    ) -> ResponseRecord:
        """Wait for a POST to any response_url (matching ``predicate``)."""

        def probe() -> ResponseRecord | None:
            return next((r for r in self.responses if predicate is None or predicate(r)), None)

        return self._wait(probe, timeout, "a response_url POST")

    # --------------------------------------------------------------------------- Socket Mode

    async def _handle_socket_mode(self, request: web.Request) -> web.StreamResponse:
        """Accept a bot WebSocket (valid ticket only), say hello, then read acks and pings."""
        ticket = request.query.get("ticket", "")
        with self._cond:
            known = ticket in self._tickets
        if not known:
            return web.Response(status=401, text="invalid_ticket")
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=2.0)
        await ws.prepare(request)
        conn = self._register(ws, ticket)
        try:
            await ws.send_json(self._hello())
            await self._read_loop(conn)
        finally:
            with self._cond:
                self._conns.remove(conn)
                self._cond.notify_all()
        return ws

    def _register(self, ws: web.WebSocketResponse, ticket: str) -> _Connection:
        """Track a new connection (counted in ``connections`` and ``total_connections``)."""
        with self._cond:
            conn = _Connection(next(self._conn_ids), ws, ticket, time.time())
            self._conns.append(conn)
            self.total_connections += 1
            self._cond.notify_all()
        return conn

    def _hello(self) -> dict[str, Any]:
        """Slack's ``hello`` greeting."""
        return {
            "type": "hello",
            "num_connections": len(self._conns),
            "debug_info": {
                "host": "applink-standin",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.app_id},
        }

    async def _read_loop(self, conn: _Connection) -> None:
        """Answer pings, count pongs, record acks until the socket closes."""
        async for msg in conn.ws:
            if msg.type == WSMsgType.TEXT:
                self._on_ack(conn, msg.data)
            elif msg.type == WSMsgType.PING:
                conn.pings += 1
                await conn.ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                conn.pongs += 1
            elif msg.type == WSMsgType.ERROR:
                break

    def _on_ack(self, conn: _Connection, raw: str) -> None:
        """Match an ack to its envelope; anything unmatched is kept in ``stray_acks``."""
        try:
            ack = json.loads(raw)
        except json.JSONDecodeError:
            ack = {"_raw": raw}
        with self._cond:
            env = self.envelopes.get(ack.get("envelope_id", "")) if isinstance(ack, dict) else None
            if env is None or env.acked:
                self.stray_acks.append(ack)
            else:
                env.acked_at = time.monotonic()
                env.ack_payload = ack.get("payload")
                self._check_ack(env)
            self._cond.notify_all()

    def _check_ack(self, env: Envelope) -> None:
        """An ack carrying a message (a slash command's answer) is held to the same rules."""
        if not isinstance(env.ack_payload, dict):
            return
        try:
            self._validate("ack", env.ack_payload)
        except SlackError as refused:
            env.ack_error = {"ok": False, "error": refused.code, **refused.extra}

    def reject_next(self, where: str, count: int = 1) -> None:
        """Refuse the next ``count`` payloads with blocks sent to ``where`` (a Web API method,
        ``response_url`` or ``ack``) with ``invalid_blocks``, whatever they hold."""
        with self._cond:
            self._forced_rejections[where] = self._forced_rejections.get(where, 0) + count

    @property
    def connections(self) -> int:
        """Number of open bot WebSocket connections."""
        with self._cond:
            return sum(1 for c in self._conns if not c.closing)

    def wait_connected(self, timeout: float = 5.0, count: int = 1) -> int:
        """Wait until at least ``count`` bot connections are open; returns the number open."""

        def probe() -> int | None:
            open_now = sum(1 for c in self._conns if not c.closing)
            return open_now if open_now >= count else None

        return self._wait(probe, timeout, f"{count} Socket Mode connection(s)")

    def wait_reconnected(self, previous_total: int, timeout: float = 10.0) -> int:
        """Wait for a connection opened after ``total_connections`` was ``previous_total``."""

        def probe() -> int | None:
            fresh = self.total_connections > previous_total and any(not c.closing for c in self._conns)
            return self.total_connections if fresh else None

        return self._wait(probe, timeout, "a new Socket Mode connection")

    def _pick_connection(self, timeout: float) -> _Connection:
        """Route an envelope to one open connection, round-robin as Slack spreads load."""
        self.wait_connected(timeout)
        with self._cond:
            live = [c for c in self._conns if not c.closing]
            if not live:
                raise RuntimeError("no Socket Mode connection to send to")
            return live[next(self._rr) % len(live)]

    def send_envelope(
        self,
        envelope_type: str,
        payload: dict[str, Any],
        accepts_response_payload: bool,
        timeout: float = 5.0,
    ) -> str:
        """Send any envelope to one bot connection; returns its envelope_id."""
        conn = self._pick_connection(timeout)
        envelope_id = str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": envelope_type,
            "accepts_response_payload": accepts_response_payload,
        }
        if envelope_type == "events_api":
            envelope.update({"retry_attempt": 0, "retry_reason": ""})
        with self._cond:
            self.envelopes[envelope_id] = Envelope(
                envelope_id, envelope_type, payload, conn.id, time.monotonic()
            )
        self._submit(conn.ws.send_str(json.dumps(envelope)), timeout)
        return envelope_id

    def send_slash_command(
        self,
        text: str,
        command: str = "/tasks",
        user_id: str = "U_ADMIN",
        user_name: str | None = None,
        channel_id: str = "C_OPS",
        team_id: str | None = None,
        channel_name: str = "ops",
        response_url: str | None = None,
    ) -> str:
        """Send a ``slash_commands`` envelope, with a recorded response_url; returns envelope_id."""
        payload = slash_command_payload(
            text,
            command,
            user_id,
            user_name or self._user_name(user_id),
            channel_id,
            channel_name,
            team_id or self.team_id,
            self.team_domain,
            self.app_id,
            response_url or self.new_response_url(channel_id),
        )
        return self.send_envelope("slash_commands", payload, accepts_response_payload=True)

    def send_block_action(
        self,
        action_id: str,
        value: str | None = None,
        user_id: str = "U_ADMIN",
        block_id: str = "actions",
        message: dict[str, Any] | Message | None = None,
        container: dict[str, Any] | None = None,
        channel_id: str = "C_OPS",
        response_url: str | None = None,
        user_name: str | None = None,
        action_type: str = "button",
        state: dict[str, Any] | None = None,
    ) -> str:
        """Send an ``interactive`` block_actions envelope; ``message`` may be a stored Message.

        The response_url is linked to the clicked message, so ``replace_original`` /
        ``delete_original`` change ``messages`` as they would in Slack.
        """
        if isinstance(message, Message):
            channel_id, message = message.channel, message.as_payload()
        is_view = container is not None and container.get("type") == "view"
        if response_url is None and not is_view:
            response_url = self.new_response_url(channel_id, message.get("ts") if message else None)
        payload = block_action_payload(
            action_id,
            value,
            user_id,
            user_name or self._user_name(user_id),
            block_id,
            message,
            container,
            channel_id,
            "ops",
            self.team_id,
            self.team_domain,
            self.app_id,
            response_url or "",
            action_type,
            state,
        )
        return self.send_envelope("interactive", payload, accepts_response_payload=False)

    def send_event(self, event: dict[str, Any]) -> str:
        """Send an ``events_api`` envelope wrapping ``event`` (e.g. app_home_opened)."""
        payload = event_callback_payload(event, self.team_id, self.app_id, self.bot_user_id)
        return self.send_envelope("events_api", payload, accepts_response_payload=False)

    def _user_name(self, user_id: str) -> str:
        """The configured user name, so payloads agree with users.info."""
        return str(self.users.get(user_id, {}).get("name", user_id.lower()))

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the bot's ack; returns its ``payload`` ({} for a bare ack)."""

        def probe() -> Envelope | None:
            env = self.envelopes.get(envelope_id)
            return env if env is not None and env.acked else None

        env = self._wait(probe, timeout, f"the ack of envelope {envelope_id}")
        if env.ack_error is not None:
            raise Rejected(env.ack_error)
        return dict(env.ack_payload or {})

    def request(
        self,
        kind: Literal["slash_command", "block_action", "event"],
        *args: Any,
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send (``send_slash_command`` / ``send_block_action`` / ``send_event``) and wait for the ack."""
        senders: dict[str, Callable[..., str]] = {
            "slash_command": self.send_slash_command,
            "block_action": self.send_block_action,
            "event": self.send_event,
        }
        return self.wait_ack(senders[kind](*args, **kwargs), timeout)

    def ack_latency(self, envelope_id: str) -> float | None:
        """Seconds between sending an envelope and receiving its ack (None if not acked)."""
        with self._cond:
            env = self.envelopes.get(envelope_id)
            if env is None or env.acked_at is None:
                return None
            return env.acked_at - env.sent_at

    def disconnect_all(self, reason: str = "refresh_requested", close_after: float = 0.0) -> int:
        """Send Slack's ``disconnect`` message to every connection, then close them; returns count.

        The bot is expected to reconnect through apps.connections.open (see ``wait_reconnected``).
        """
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-standin"}}
        return self._submit(self._disconnect(message, close_after), timeout=close_after + 15)

    async def _disconnect(self, message: dict[str, Any], close_after: float) -> int:
        """Loop side of ``disconnect_all``."""
        with self._cond:
            targets = [c for c in self._conns if not c.closing]
        for conn in targets:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_json(message)
        if close_after:
            await asyncio.sleep(close_after)
        await self._close_connections(targets=targets)
        return len(targets)

    def close_all(self) -> int:
        """Drop every connection without a ``disconnect`` message (a network failure)."""
        return self._submit(self._close_connections(code=1006, message="abnormal"), timeout=15)

    async def _close_connections(
        self, targets: list[_Connection] | None = None, code: int = 1000, message: str = "disconnect"
    ) -> int:
        """Close connections concurrently (each close waits briefly for the client's close frame)."""
        with self._cond:
            targets = [c for c in (self._conns if targets is None else targets) if not c.closing]
            for conn in targets:
                conn.closing = True
            self._cond.notify_all()
        await asyncio.gather(
            *(c.ws.close(code=code, message=message.encode()) for c in targets), return_exceptions=True
        )
        return len(targets)

    def ping_all(self, payload: bytes = b"standin") -> None:
        """Ping every connection (the bot must pong; counted in ``pongs``)."""

        async def _ping() -> None:
            for conn in [c for c in self._conns if not c.closing]:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.ws.ping(payload)

        self._submit(_ping())

    def ping_stats(self) -> list[tuple[int, int, int]]:
        """(connection id, pings received from the bot, pongs received) per open connection."""
        with self._cond:
            return [(c.id, c.pings, c.pongs) for c in self._conns]


# ------------------------------------------------------------------------------- module helpers


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string plus form or JSON body; JSON-string params like ``blocks`` are decoded."""
    params: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        else:
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    for key in JSON_PARAMS & params.keys():
        if isinstance(params[key], str):
            with contextlib.suppress(json.JSONDecodeError):
                params[key] = json.loads(params[key])
    return params


def _bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    return auth[7:].strip() or None


def _require_channel(params: dict[str, Any]) -> str:
    """The ``channel`` parameter, or Slack's ``channel_not_found``."""
    channel = params.get("channel")
    if not channel:
        raise SlackError("channel_not_found")
    return str(channel)


def _fault_error(status: int) -> str:
    """The Slack error code matching an injected HTTP status."""
    return {429: "ratelimited", 500: "internal_error", 503: "service_unavailable"}.get(status, "fatal_error")


def _truthy(value: Any) -> bool:
    """Slack accepts booleans and their string forms ("true") in response_url bodies."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _response_record(url_id: str, body: dict[str, Any], status: int) -> ResponseRecord:
    """Build the record of one response_url POST."""
    return ResponseRecord(
        url_id=url_id,
        body=body,
        time=time.time(),
        status=status,
        replace_original=_truthy(body.get("replace_original")),
        delete_original=_truthy(body.get("delete_original")),
        response_type=body.get("response_type"),
    )
