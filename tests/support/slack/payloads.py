"""What Slack sends an app: slash commands, block actions and events, as Socket Mode payloads or as
signed HTTP requests (the HTTP mode helpers)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

VERIFICATION_TOKEN = "verification-token-test"  # Slack's deprecated per-payload "token" field


def _trigger_id() -> str:
    """A trigger_id shaped like Slack's (``<digits>.<digits>.<hex>``)."""
    return f"{int(time.time() * 1000)}.{uuid.uuid4().int % 10**10}.{uuid.uuid4().hex}"


def slash_command_payload(
    text: str, command: str = "/tasks", user_id: str = "U_ADMIN", user_name: str = "admin",
    channel_id: str = "C_OPS", channel_name: str = "ops", team_id: str = "T_TEST", team_domain: str = "opsbot-test",
    api_app_id: str = "A_TEST", response_url: str = "", trigger_id: str | None = None,
) -> dict[str, str]:
    """The slash command fields, all strings, in the order Slack sends them (HTTP and Socket Mode)."""
    return {
        "token": VERIFICATION_TOKEN, "team_id": team_id, "team_domain": team_domain,
        "channel_id": channel_id, "channel_name": channel_name, "user_id": user_id, "user_name": user_name,
        "command": command, "text": text, "api_app_id": api_app_id, "is_enterprise_install": "false",
        "response_url": response_url, "trigger_id": trigger_id or _trigger_id(),
    }  # fmt: skip


def block_action_payload(
    action_id: str, value: str | None = None, user_id: str = "U_ADMIN", user_name: str = "admin",
    block_id: str = "actions", message: dict[str, Any] | None = None, channel_id: str = "C_OPS",
    channel_name: str = "ops", team_id: str = "T_TEST", team_domain: str = "opsbot-test", api_app_id: str = "A_TEST",
    response_url: str = "",
) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for a click on a button of a message."""
    ts = message["ts"] if message and "ts" in message else f"{time.time():.6f}"  # 'now' without a message
    action: dict[str, Any] = {"action_id": action_id, "block_id": block_id, "type": "button",
                              "action_ts": f"{time.time():.6f}",
                              "text": {"type": "plain_text", "text": action_id, "emoji": True}}
    if value is not None:
        action["value"] = value
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": api_app_id, "token": VERIFICATION_TOKEN,
        "container": {"type": "message", "message_ts": ts, "channel_id": channel_id, "is_ephemeral": False},
        "trigger_id": _trigger_id(), "team": {"id": team_id, "domain": team_domain}, "enterprise": None,
        "is_enterprise_install": False, "state": {"values": {}}, "actions": [action],
        "channel": {"id": channel_id, "name": channel_name},
    }  # fmt: skip
    if message is not None:
        payload["message"] = message
    if response_url:
        payload["response_url"] = response_url
    return payload


def event_callback_payload(
    event: dict[str, Any], team_id: str = "T_TEST", api_app_id: str = "A_TEST", bot_user_id: str = "U_BOT"
) -> dict[str, Any]:
    """The Events API ``event_callback`` wrapper around ``event`` (same over HTTP and Socket Mode)."""
    authorization = {"enterprise_id": None, "team_id": team_id, "user_id": bot_user_id, "is_bot": True,
                     "is_enterprise_install": False}
    return {
        "token": VERIFICATION_TOKEN, "team_id": team_id, "api_app_id": api_app_id,
        "event": {"event_ts": f"{time.time():.6f}", **event}, "type": "event_callback",
        "event_id": "Ev" + uuid.uuid4().hex[:10].upper(), "event_time": int(time.time()),
        "authorizations": [authorization], "is_ext_shared_channel": False,
        "event_context": "4-" + uuid.uuid4().hex,
    }  # fmt: skip


# ----------------------------------------------------------------------------- HTTP mode helpers


def sign(signing_secret: str, body: str, timestamp: int) -> dict[str, str]:
    """Slack's request-signing headers: ``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    base = f"v0:{timestamp}:{body}".encode()
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}


def slash_command_form(text: str, **fields: Any) -> str:
    """The urlencoded body Slack POSTs for a slash command in HTTP mode (``fields`` as for the payload)."""
    return urlencode(slash_command_payload(text, **fields))


def block_action_form(payload: dict[str, Any]) -> str:
    """The urlencoded body Slack POSTs for interactivity in HTTP mode: ``payload=<json>``."""
    return urlencode({"payload": json.dumps(payload)})
