"""The Slack stand-in (Web API, response_url, Socket Mode) and Slack's Block Kit rules it enforces."""

from tests.support.slack.payloads import (
    block_action_form,
    block_action_payload,
    sign,
    slash_command_form,
    slash_command_payload,
)
from tests.support.slack.records import ApiCall, Message, Rejected, ResponseRecord
from tests.support.slack.standin import SlackStandIn

__all__ = [
    "ApiCall",
    "Message",
    "Rejected",
    "ResponseRecord",
    "SlackStandIn",
    "block_action_form",
    "block_action_payload",
    "sign",
    "slash_command_form",
    "slash_command_payload",
]
