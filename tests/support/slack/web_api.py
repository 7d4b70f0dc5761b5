"""Slack's Web API as opsbot uses it (auth.test, chat.postMessage, chat.update, views.publish, users.info,
usergroups.users.list), and the faults a test can inject into it.

Every request is answered in one place, ``WebApi._handle_api``: parse, record, apply an injected fault
(an outage under way, see outage.py; ``fail_next``, ``hang_next``), else run the method."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.support.slack.core import StandInCore
from tests.support.slack.records import (
    ApiCall,
    Fault,
    Message,
    SlackError,
)

# Parameters Slack accepts as JSON-encoded strings in form bodies; decoded when recorded.
JSON_PARAMS = frozenset({"blocks", "attachments", "view", "metadata", "user_auth_blocks", "files"})


# Methods authorised by the app-level token (everything else needs the bot token).
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})



class WebApi(StandInCore):
    """Slack's Web API: ``POST/GET /api/{method}``, the methods opsbot calls, and injected faults."""

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        """Entry point of every Web API call: parse, record, apply faults, dispatch."""
        method = request.match_info["method"]
        params = await _read_params(request)
        token = _bearer(request) or params.pop("token", None)
        params.pop("token", None)
        call = ApiCall(method, params, token, time.time(), http_method=request.method)
        fault = self.outages.fault(method, params) or self._take_fault(method)
        if fault is None:
            with self._cond:
                return self._answer(call)
        if fault.hang:
            return await self._answer_hung(call, fault)
        return self._answer_faulted(call, fault, record=True)

    async def _answer_hung(self, call: ApiCall, fault: Fault) -> web.StreamResponse:
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

    def _answer_faulted(self, call: ApiCall, fault: Fault, record: bool) -> web.StreamResponse:
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
        """The implemented Web API methods (listed by the assembled stand-in)."""
        raise NotImplementedError

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

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        """Store a new message; Slack requires a channel and one of text/blocks/attachments."""
        channel = _require_channel(params)
        self._validate("chat.postMessage", params)
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise SlackError("no_text")
        msg = Message(channel, self._next_ts(), params.get("text"), params.get("blocks"),
                      thread_ts=params.get("thread_ts") or None, user=self.bot_user_id, bot_id=self.bot_id)
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

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        """Store the App Home view per user and echo it back with Slack's view metadata."""
        user_id = params.get("user_id")
        view = params.get("view")
        if not user_id or not isinstance(view, dict) or view.get("type") != "home":
            raise SlackError("invalid_arguments")
        self._validate("views.publish", view, surface="home")
        self.home_views[user_id] = view
        vid = "V" + uuid.uuid4().hex[:10].upper()
        return {"view": {"id": vid, "team_id": self.team_id, "app_id": self.app_id, "bot_id": self.bot_id, **view}}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        """users.info from the configured ``users`` dict; others are ``user_not_found``."""
        user_id = params.get("user", "")
        spec = self.users.get(user_id)
        if spec is None:
            raise SlackError("user_not_found")
        return {"user": self._user_object(user_id, spec)}

    def _user_object(self, user_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A Slack user object: the fields opsbot reads (team_id, is_admin, is_owner) and a few around them."""
        name = spec.get("name", user_id.lower())
        return {
            "id": user_id, "name": name, "deleted": False, "is_bot": bool(spec.get("is_bot", False)),
            "team_id": spec.get("team_id", self.team_id),  # another team's: a Slack Connect partner
            "is_admin": bool(spec.get("is_admin", False)), "is_owner": bool(spec.get("is_owner", False)),
            "is_primary_owner": bool(spec.get("is_primary_owner", False)),
        }  # fmt: skip

    def _usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        """Members of a configured user group; unknown groups are ``no_such_subteam``."""
        group = params.get("usergroup", "")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

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

    def fail_next(
        self, method: str, status: int = 429, retry_after: int = 1, count: int = 1, error: str | None = None
    ) -> None:
        """Answer the next ``count`` calls of ``method`` with an HTTP error instead of running them.

        429 carries ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}`` as Slack does;
        5xx carries a server error body. With ``status=200`` the answer is ``{"ok": false, "error":
        error}`` (a Slack-level failure). Nothing is stored for faulted calls.
        """
        self._add_fault(method, Fault(status=status, retry_after=retry_after, error=error, count=count))

    def hang_next(self, method: str, seconds: float, count: int = 1, process: bool = True) -> None:
        """Hold the answer to the next ``count`` calls of ``method`` for ``seconds``.

        With ``process=True`` the call then runs normally (as real Slack would still post a message
        the client gave up waiting for); with ``process=False`` it is answered 503 and not stored.
        """
        fault = Fault(status=None if process else 503, hang=seconds, process=process, count=count)
        self._add_fault(method, fault)

    def _add_fault(self, method: str, fault: Fault) -> None:
        """Queue a fault for a method (faults are consumed in order)."""
        with self._cond:
            self._faults.setdefault(method, []).append(fault)

    def _take_fault(self, method: str) -> Fault | None:
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

