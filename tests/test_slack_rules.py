"""Slack's Block Kit rules as the stand-in enforces them (tests/support/slack/rules.py): each documented rule
broken once is refused as Slack refuses it, and each limit reached exactly is accepted."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from tests.support.slack import SlackStandIn

pytestmark = pytest.mark.timeout(60)


def text(kind: str, value: str) -> dict[str, str]:
    return {"type": kind, "text": value}


def a_button(action_id: str = "b", **extra: Any) -> dict[str, Any]:
    return {"type": "button", "action_id": action_id, "text": text("plain_text", "Go"), **extra}


def a_confirm(**extra: Any) -> dict[str, Any]:
    return {"title": text("plain_text", "Sure?"), "text": text("mrkdwn", "It cannot be undone."),
            "confirm": text("plain_text", "Yes"), "deny": text("plain_text", "No"), **extra}


def a_section(value: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": text("mrkdwn", value), **extra}


# Each case breaks exactly one documented rule (tests/support/slack/rules.py cites the page of each).
VIOLATIONS: dict[str, list[dict[str, Any]]] = {
    "51 blocks in a message": [a_section() for _ in range(51)],
    "section text over 3000": [a_section("x" * 3001)],
    "section with neither text nor fields": [{"type": "section"}],
    "11 fields": [{"type": "section", "fields": [text("mrkdwn", "f")] * 11}],
    "a field over 2000": [{"type": "section", "fields": [text("mrkdwn", "f" * 2001)]}],
    "header over 150": [{"type": "header", "text": text("plain_text", "h" * 151)}],
    "header in mrkdwn": [{"type": "header", "text": text("mrkdwn", "*h*")}],
    "empty text": [a_section("")],
    "empty context": [{"type": "context", "elements": []}],
    "11 context elements": [{"type": "context", "elements": [text("mrkdwn", "c")] * 11}],
    "empty actions": [{"type": "actions", "elements": []}],
    "26 actions": [{"type": "actions", "elements": [a_button(f"b{n}") for n in range(26)]}],
    "action_id over 255": [{"type": "actions", "elements": [a_button("a" * 256)]}],
    "two action_ids alike in a block": [{"type": "actions", "elements": [a_button("page"), a_button("page")]}],
    "two block_ids alike": [a_section(block_id="b1"), a_section(block_id="b1")],
    "block_id over 255": [a_section(block_id="b" * 256)],
    "button label over 75": [{"type": "actions", "elements": [
        {**a_button(), "text": text("plain_text", "l" * 76)}]}],
    "button label in mrkdwn": [{"type": "actions", "elements": [{**a_button(), "text": text("mrkdwn", "Go")}]}],
    "button value over 2000": [{"type": "actions", "elements": [a_button(value="v" * 2001)]}],
    "button url over 3000": [{"type": "actions", "elements": [a_button(url="https://x/" + "u" * 2991)]}],
    "button style": [{"type": "actions", "elements": [a_button(style="secondary")]}],
    "confirm title over 100": [a_section(accessory=a_button(confirm=a_confirm(title=text("plain_text", "t" * 101))))],
    "confirm title in mrkdwn": [a_section(accessory=a_button(confirm=a_confirm(title=text("mrkdwn", "t"))))],
    "confirm text over 300": [a_section(accessory=a_button(confirm=a_confirm(text=text("mrkdwn", "t" * 301))))],
    "confirm button over 30": [a_section(accessory=a_button(confirm=a_confirm(confirm=text("plain_text", "y" * 31))))],
    "deny over 30": [a_section(accessory=a_button(confirm=a_confirm(deny=text("plain_text", "n" * 31))))],
    "unknown block type": [{"type": "sectoin", "text": text("mrkdwn", "typo")}],
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_the_standin_refuses_what_slack_refuses(slack: SlackStandIn, case: str) -> None:
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel="C_OPS", text="fallback", blocks=VIOLATIONS[case])
    assert refused.value.response["error"] == "invalid_blocks"
    assert refused.value.response["errors"] and "json-pointer:/blocks" in refused.value.response["errors"][0]
    assert slack.messages == [] and len(slack.rejections) == 1


def test_the_standin_accepts_each_rule_at_its_limit(slack: SlackStandIn) -> None:
    """The limits are limits, not off by one: the most Slack allows goes through."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    blocks = [
        {"type": "header", "text": text("plain_text", "h" * 150)},
        a_section("x" * 3000, block_id="b" * 255, accessory=a_button(
            "a" * 255, value="v" * 2000, style="danger", confirm=a_confirm(
                title=text("plain_text", "t" * 100), text=text("mrkdwn", "t" * 300),
                confirm=text("plain_text", "y" * 30), deny=text("plain_text", "n" * 30)))),
        {"type": "section", "fields": [text("mrkdwn", "f" * 2000)] * 10},
        {"type": "context", "elements": [text("mrkdwn", "c")] * 10},
        {"type": "actions", "elements": [a_button(f"b{n}", url="https://x/" + "u" * 2990) for n in range(25)]},
        *[{"type": "divider"} for _ in range(45)],
    ]
    assert len(blocks) == 50
    client.chat_postMessage(channel="C_OPS", text="fallback", blocks=blocks)
    assert slack.rejections == [] and len(slack.messages) == 1


def test_a_test_can_force_one_refusal(slack: SlackStandIn) -> None:
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    slack.reject_next("chat.postMessage")
    client.chat_postMessage(channel="C_OPS", text="text alone is not refused")
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        client.chat_postMessage(channel="C_OPS", text="x", blocks=[a_section()])
    client.chat_postMessage(channel="C_OPS", text="x", blocks=[a_section()])
    assert len(slack.messages) == 2 and len(slack.rejections) == 1
