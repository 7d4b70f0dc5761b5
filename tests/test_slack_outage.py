"""The stand-in's outages (tests/support/slack/outage.py): Slack failing every post for a while, as the
soak uses them. What a client sees: the status, the error, Retry-After, and nothing stored meanwhile.
"""

from __future__ import annotations

import json

import requests

from tests.support.net import wait_until
from tests.support.slack import SlackStandIn
from tests.support.slack.outage import OutageKind

BLOCKS = json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "alert"}}])


def post(slack: SlackStandIn, **params: str) -> requests.Response:
    return requests.post(f"{slack.base_url}chat.postMessage", data={"channel": "C_ALERTS", **params},
                         headers={"Authorization": f"Bearer {slack.bot_token}"}, timeout=5)


def test_a_rate_limit_outage_answers_429_with_retry_after_and_stores_nothing(slack: SlackStandIn) -> None:
    slack.outages.start(OutageKind.RATE_LIMITED, 30)
    answers = [post(slack, text="alert") for _ in range(3)]
    assert [(a.status_code, a.json()["error"], a.headers.get("Retry-After")) for a in answers] == \
        [(429, "ratelimited", "1")] * 3
    assert slack.messages == [] and slack.outages.answered == 3
    assert requests.post(f"{slack.base_url}auth.test", headers={"Authorization": f"Bearer {slack.bot_token}"},
                         timeout=5).json()["ok"]  # only the methods that post are down


def test_an_invalid_blocks_outage_refuses_blocks_and_lets_text_through(slack: SlackStandIn) -> None:
    slack.outages.start(OutageKind.INVALID_BLOCKS, 30)
    refused = post(slack, text="alert", blocks=BLOCKS)
    assert (refused.status_code, refused.json()) == (200, {"ok": False, "error": "invalid_blocks"})
    assert post(slack, text="alert, as text").json()["ok"]
    assert [m.text for m in slack.messages] == ["alert, as text"]


def test_an_outage_ends_by_itself(slack: SlackStandIn) -> None:
    slack.outages.start(OutageKind.SERVER_ERROR, 0.5)
    assert post(slack, text="alert").status_code == 503
    assert wait_until(lambda: not slack.outages.active, 5)
    assert post(slack, text="alert").json()["ok"]
    assert [m.text for m in slack.messages] == ["alert"]
