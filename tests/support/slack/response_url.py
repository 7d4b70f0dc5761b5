"""response_url: where an app answers a slash command or a click after its ack."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.support.slack.core import StandInCore
from tests.support.slack.records import (
    Message,
    ResponseRecord,
    ResponseUrl,
    SlackError,
)


class ResponseUrls(StandInCore):
    """``POST /response/<id>`` with a JSON message (``replace_original``, ``delete_original``,
    ``response_type``), applied to the linked message as Slack applies it."""

    def new_response_url(self, channel_id: str | None = "C_OPS", message_ts: str | None = None) -> str:
        """A fresh recorded response_url; ``message_ts`` links it to a message for replace/delete."""
        url_id = uuid.uuid4().hex
        with self._cond:
            self._response_urls[url_id] = ResponseUrl(channel_id, message_ts)
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
            self._messages.append(Message(target.channel_id, self._next_ts(), body.get("text"), body.get("blocks"),
                                          thread_ts=body.get("thread_ts"), user=self.bot_user_id, bot_id=self.bot_id))
        return 200, "ok"

    def _linked_message(self, target: ResponseUrl) -> Message | None:
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


def _truthy(value: Any) -> bool:
    """Slack accepts booleans and their string forms ("true") in response_url bodies."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _response_record(url_id: str, body: dict[str, Any], status: int) -> ResponseRecord:
    """Build the record of one response_url POST."""
    return ResponseRecord(url_id, body, time.time(), status, replace_original=_truthy(body.get("replace_original")),
                          delete_original=_truthy(body.get("delete_original")),
                          response_type=body.get("response_type"))

