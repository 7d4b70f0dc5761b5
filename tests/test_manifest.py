"""The Slack app manifest declares what the bot uses, and only that."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Web API methods the bot may call, and the bot scope each needs (None: no scope needed).
METHOD_SCOPES = {
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "usergroups_users_list": "usergroups:read",
    "users_info": "users:read",
    "views_publish": None,
    "auth_test": None,
    "files_upload_v2": "files:write",
}


def manifest() -> dict:
    return yaml.safe_load((REPO / "manifest.yml").read_text())


def methods_called() -> set[str]:
    source = "\n".join(p.read_text() for p in (REPO / "bot").rglob("*.py"))
    # Slack Web API methods as slack_sdk names them (chat_postMessage); other clients (Redis) differ.
    families = "chat|users|usergroups|views|conversations|reactions|pins|files|apps|auth|team|bots"
    return set(re.findall(rf"client\.((?:{families})_[A-Za-z0-9_]+)\(", source))


def test_manifest_declares_the_command_home_tab_interactivity_and_socket_mode() -> None:
    data = manifest()
    (command,) = data["features"]["slash_commands"]
    assert command["command"] == "/tasks" and command["usage_hint"] and command["description"]
    assert data["features"]["app_home"]["home_tab_enabled"] is True
    assert data["settings"]["interactivity"]["is_enabled"] is True
    assert data["settings"]["socket_mode_enabled"] is True
    assert "app_home_opened" in data["settings"]["event_subscriptions"]["bot_events"]
    assert data["display_information"]["name"]


def test_manifest_asks_for_exactly_the_scopes_the_bot_uses() -> None:
    called = methods_called()
    assert called, "no Web API call found: the scan is broken"
    unknown = called - set(METHOD_SCOPES)
    assert not unknown, f"calls with no known scope, add them to METHOD_SCOPES: {unknown}"
    needed = {METHOD_SCOPES[m] for m in called if METHOD_SCOPES[m]} | {"commands"}
    assert set(manifest()["oauth_config"]["scopes"]["bot"]) == needed


def test_usage_hint_names_only_real_subcommands() -> None:
    from bot.commands.grammar import ALIASES

    hint = manifest()["features"]["slash_commands"][0]["usage_hint"]
    words = {w for w in re.findall(r"[a-z]+", hint) if w not in ("id", "queue")}
    assert words <= set(ALIASES.values()) | {"workers", "queues", "active"}
