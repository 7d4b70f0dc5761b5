"""What the stand-in knows and records: the workspace's defaults, Slack's errors, calls, messages,
uploads, response_url posts, Socket Mode envelopes and connections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

DEFAULT_BOT_TOKEN = "xoxb-test-bot-token"
DEFAULT_APP_TOKEN = "xapp-test-app-token"

DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "U_ADMIN": {"name": "admin", "is_admin": True, "is_owner": False},
    "U_OWNER": {"name": "owner", "is_admin": True, "is_owner": True},
    "U_USER": {"name": "user", "is_admin": False, "is_owner": False},
}
# Conversations the stand-in knows; tests add others with ``add_channel``.
DEFAULT_CHANNELS = {"C_OPS": "ops", "C_ALERTS": "alerts", "C_AUDIT": "audit"}


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
class Fault:
    """An injected failure for the next ``count`` calls of one method."""

    status: int | None
    retry_after: int | None = None
    error: str | None = None
    hang: float = 0.0
    process: bool = True  # for hangs: answer normally after the delay
    count: int = 1


@dataclass
class ResponseUrl:
    """Where a response_url points: the channel and (for block actions) the source message."""

    channel_id: str | None
    message_ts: str | None
    uses: int = 0


@dataclass
class Connection:
    """One Socket Mode WebSocket connection of the bot."""

    id: int
    ws: web.WebSocketResponse
    ticket: str
    connected_at: float
    closing: bool = False

