"""Socket Mode: ``apps.connections.open`` hands out ``ws://127.0.0.1:PORT/socket-mode?ticket=...``; the server
greets with ``hello``, sends envelopes (``slash_commands``, ``interactive``, ``events_api``) and expects
acks ``{"envelope_id": ..., "payload": ...}``; ``disconnect`` asks the client to reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import WSMsgType, web

from tests.support.slack.payloads import block_action_payload, event_callback_payload, slash_command_payload
from tests.support.slack.records import (
    Connection,
    Envelope,
    Message,
    Rejected,
    SlackError,
)
from tests.support.slack.response_url import ResponseUrls


class SocketMode(ResponseUrls):
    """apps.connections.open, the WebSocket, envelopes and their acks (the envelopes carry response_urls)."""

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        """Issue a Socket Mode URL with a fresh ticket (plain ws://, see module docs)."""
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket-mode?ticket={ticket}&app_id={self.app_id}"}

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

    def _register(self, ws: web.WebSocketResponse, ticket: str) -> Connection:
        """Track a new connection (counted in ``connections`` and ``total_connections``)."""
        with self._cond:
            conn = Connection(next(self._conn_ids), ws, ticket, time.time())
            self._conns.append(conn)
            self.total_connections += 1
            self._cond.notify_all()
        return conn

    def _hello(self) -> dict[str, Any]:
        """Slack's ``hello`` greeting."""
        return {"type": "hello", "num_connections": len(self._conns),
                "debug_info": {"host": "applink-standin", "build_number": 1, "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id}}

    async def _read_loop(self, conn: Connection) -> None:
        """Answer the client's pings, record acks until the socket closes."""
        async for msg in conn.ws:
            if msg.type == WSMsgType.TEXT:
                self._on_ack(conn, msg.data)
            elif msg.type == WSMsgType.PING:
                await conn.ws.pong(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break

    def _on_ack(self, conn: Connection, raw: str) -> None:
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

    def _pick_connection(self, timeout: float) -> Connection:
        """Route an envelope to one open connection, round-robin as Slack spreads load."""
        self.wait_connected(timeout)
        with self._cond:
            live = [c for c in self._conns if not c.closing]
            if not live:
                raise RuntimeError("no Socket Mode connection to send to")
            return live[next(self._rr) % len(live)]

    def send_envelope(self, envelope_type: str, payload: dict[str, Any], accepts_response_payload: bool,
                      timeout: float = 5.0) -> str:
        """Send any envelope to one bot connection; returns its envelope_id."""
        conn = self._pick_connection(timeout)
        envelope_id = str(uuid.uuid4())
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "payload": payload, "type": envelope_type,
                                    "accepts_response_payload": accepts_response_payload}
        if envelope_type == "events_api":
            envelope.update({"retry_attempt": 0, "retry_reason": ""})
        with self._cond:
            self.envelopes[envelope_id] = Envelope(envelope_id, envelope_type, payload, conn.id, time.monotonic())
        self._submit(conn.ws.send_str(json.dumps(envelope)), timeout)
        return envelope_id

    def send_slash_command(self, text: str, command: str = "/tasks", user_id: str = "U_ADMIN",
                           channel_id: str = "C_OPS", response_url: str | None = None) -> str:
        """Send a ``slash_commands`` envelope, with a recorded response_url; returns envelope_id."""
        payload = slash_command_payload(
            text, command, user_id, self._user_name(user_id), channel_id, "ops", self.team_id, self.team_domain,
            self.app_id, response_url or self.new_response_url(channel_id))
        return self.send_envelope("slash_commands", payload, accepts_response_payload=True)

    def send_block_action(self, action_id: str, value: str | None = None, user_id: str = "U_ADMIN",
                          message: dict[str, Any] | Message | None = None, channel_id: str = "C_OPS",
                          response_url: str | None = None) -> str:
        """Send an ``interactive`` block_actions envelope; ``message`` may be a stored Message.

        The response_url is linked to the clicked message, so ``replace_original`` /
        ``delete_original`` change ``messages`` as they would in Slack.
        """
        if isinstance(message, Message):
            channel_id, message = message.channel, message.as_payload()
        if response_url is None:
            response_url = self.new_response_url(channel_id, message.get("ts") if message else None)
        payload = block_action_payload(
            action_id, value, user_id, self._user_name(user_id), "actions", message, channel_id, "ops",
            self.team_id, self.team_domain, self.app_id, response_url)
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

    def request(self, kind: Literal["slash_command", "block_action", "event"], *args: Any, timeout: float = 5.0,
                **kwargs: Any) -> dict[str, Any]:
        """Send (``send_slash_command`` / ``send_block_action`` / ``send_event``) and wait for the ack."""
        senders: dict[str, Callable[..., str]] = {
            "slash_command": self.send_slash_command, "block_action": self.send_block_action, "event": self.send_event}
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
        self, targets: list[Connection] | None = None, code: int = 1000, message: str = "disconnect"
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
