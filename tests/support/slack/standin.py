"""A local stand-in for Slack: the Web API methods opsbot calls, file uploads, response_url endpoints
and Socket Mode, assembled from one module each.

Slack cannot be reached from the tests, so the bot under test (run exactly as in production) is
pointed at this server through ``SLACK_API_URL``.  The wire formats follow Slack's documentation:

* Web API (``web_api.py``): ``POST/GET /api/{method}``, form-encoded or JSON bodies, ``Authorization:
  Bearer``; answers are HTTP 200 ``{"ok": true, ...}`` / ``{"ok": false, "error": "..."}``, rate limits
  are HTTP 429 with ``Retry-After``. Only the methods opsbot calls are implemented (``_methods``
  below); any other is ``unknown_method``.
* Files (``files.py``): the upload URL, the upload and its completion, as ``files_upload_v2`` does them.
* Socket Mode (``socket_mode.py``): tickets, ``hello``, envelopes and acks, ``disconnect``.
* response_url (``response_url.py``): ``POST /response/<id>`` with a JSON message (``replace_original``,
  ``delete_original``, ``response_type``).
* Block Kit: every payload with blocks (chat.postMessage, chat.update, views.publish, response_url
  posts, and the acks of slash commands and interactions) is checked against Slack's documented rules
  (``rules.py``) and refused as Slack refuses it: ``{"ok": false, "error": "invalid_blocks", "errors":
  [...]}``. Refusals are kept in ``rejections``; an ack Slack would refuse makes ``wait_ack`` raise
  ``Rejected`` (the user would see an error).

Everything the bot sends is recorded so tests can assert on it and wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Self

from aiohttp import web

from tests.support.slack.files import Files
from tests.support.slack.socket_mode import SocketMode
from tests.support.slack.web_api import WebApi


class SlackStandIn(WebApi, Files, SocketMode):
    """Slack's Web API + response_url + Socket Mode on 127.0.0.1, served from a background thread."""

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

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """The Web API methods opsbot calls (bolt calls auth.test at start, files_upload_v2 the two files.*)."""
        return {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "views.publish": self._views_publish,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
        }
