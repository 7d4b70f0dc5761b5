"""Slack's documented Block Kit rules, as one validator for the stand-in and the property tests.

Each check cites the reference page it comes from. `problems` answers like Slack does in the
`errors` list of an `invalid_blocks` error: a sentence and a JSON pointer to the offending field.
Block and element types this validator does not model in detail are only checked for a known type
(opsbot uses sections, headers, context, actions, dividers, buttons and images).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

BLOCKS_URL = "https://api.slack.com/reference/block-kit/blocks"
ELEMENTS_URL = "https://api.slack.com/reference/block-kit/block-elements"
OBJECTS_URL = "https://api.slack.com/reference/block-kit/composition-objects"
IMAGE_URL = "https://docs.slack.dev/reference/block-kit/blocks/image-block"
SLACK_FILE_URL = "https://docs.slack.dev/reference/block-kit/composition-objects/slack-file-object"
# Slack's own answer to a malformed file id: "input must match regex pattern: ^[F][A-Z0-9]{8,}$"
# (slackapi/python-slack-sdk#1521).
FILE_ID = re.compile(r"^[F][A-Z0-9]{8,}$")
# Whether the workspace has a file a slack_file object may show: a reason it may not, or None.
FileCheck = Callable[[dict[str, Any]], "str | None"]

# https://api.slack.com/reference/block-kit/blocks: "up to 50 blocks in each message, and 100 blocks
# in modals or Home tabs".
MAX_BLOCKS = {"message": 50, "home": 100, "modal": 100}
# https://api.slack.com/methods/chat.postMessage#arg_text and #errors: `msg_too_long`.
MAX_MESSAGE_TEXT = 40_000
# BLOCKS_URL#section: "Maximum length for the text in this field is 3000 characters."
MAX_SECTION_TEXT = 3000
# https://api.slack.com/interactivity/handling#acknowledgment_response: an app must acknowledge a slash
# command or an interaction within 3000 ms, or the user is shown an error.
ACK_SECONDS = 3.0
KNOWN_BLOCKS = frozenset({"actions", "context", "divider", "file", "header", "image", "input", "rich_text",
                          "section", "video", "markdown"})
KNOWN_ELEMENTS = frozenset({"button", "checkboxes", "datepicker", "datetimepicker", "email_text_input", "image",
                            "multi_static_select", "multi_external_select", "multi_users_select",
                            "multi_conversations_select", "multi_channels_select", "number_input", "overflow",
                            "plain_text_input", "radio_buttons", "static_select", "external_select",
                            "users_select", "conversations_select", "channels_select", "timepicker",
                            "url_text_input", "rich_text_input", "file_input", "workflow_button"})

Problems = list[str]


def _at(path: str, message: str) -> str:
    return f"{message} [json-pointer:{path}]"


def text_object(obj: Any, path: str, limit: int, plain_only: bool = False) -> Problems:
    """A text object (OBJECTS_URL#text): plain_text or mrkdwn, 1 to 3000 characters (less where a field says)."""
    if not isinstance(obj, dict):
        return [_at(path, "must be a text object")]
    kinds = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in kinds:
        return [_at(f"{path}/type", f"must be {' or '.join(kinds)}")]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [_at(f"{path}/text", "must be a non-empty string")]
    if len(text) > limit:
        return [_at(f"{path}/text", f"must be at most {limit} characters")]
    return []


def confirm_object(obj: Any, path: str) -> Problems:
    """OBJECTS_URL#confirm: title plain_text <= 100, text <= 300, confirm and deny plain_text <= 30."""
    if not isinstance(obj, dict):
        return [_at(path, "must be a confirmation object")]
    found = text_object(obj.get("title"), f"{path}/title", 100, plain_only=True)
    found += text_object(obj.get("text"), f"{path}/text", 300)
    for key in ("confirm", "deny"):
        found += text_object(obj.get(key), f"{path}/{key}", 30, plain_only=True)
    if obj.get("style") not in (None, "primary", "danger"):
        found.append(_at(f"{path}/style", "must be primary or danger"))
    return found


def action_id(element: dict, path: str, seen: set[str]) -> Problems:
    """ELEMENTS_URL: action_id at most 255 characters, unique among the action_ids of its containing block."""
    value = element.get("action_id")
    if value is None:
        return []  # Slack generates one
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        return [_at(f"{path}/action_id", "must be 1 to 255 characters")]
    if value in seen:
        return [_at(f"{path}/action_id", f"duplicate action_id '{value}' in its block")]
    seen.add(value)
    return []


def button(element: dict, path: str) -> Problems:
    """ELEMENTS_URL#button: text plain_text <= 75, value <= 2000, url <= 3000, style primary/danger."""
    found = text_object(element.get("text"), f"{path}/text", 75, plain_only=True)
    value = element.get("value")
    if value is not None and (not isinstance(value, str) or len(value) > 2000):
        found.append(_at(f"{path}/value", "must be a string of at most 2000 characters"))
    url = element.get("url")
    if url is not None and (not isinstance(url, str) or len(url) > 3000):
        found.append(_at(f"{path}/url", "must be a string of at most 3000 characters"))
    if element.get("style") not in (None, "primary", "danger"):
        found.append(_at(f"{path}/style", "must be primary or danger"))
    if "confirm" in element:
        found += confirm_object(element["confirm"], f"{path}/confirm")
    return found


def element(obj: Any, path: str, seen: set[str]) -> Problems:
    if not isinstance(obj, dict) or obj.get("type") not in KNOWN_ELEMENTS:
        return [_at(f"{path}/type", "unsupported element type")]
    found = action_id(obj, path, seen)
    if obj["type"] == "button":
        found += button(obj, path)
    return found


def section(block: dict, path: str, seen: set[str]) -> Problems:
    """BLOCKS_URL#section: text <= 3000; at most 10 fields of <= 2000; text or fields required."""
    if "text" not in block and "fields" not in block:
        return [_at(path, "must have text or fields")]
    found = text_object(block["text"], f"{path}/text", MAX_SECTION_TEXT) if "text" in block else []
    fields = block.get("fields")
    if fields is not None:
        if not isinstance(fields, list) or not 0 < len(fields) <= 10:
            found.append(_at(f"{path}/fields", "must hold 1 to 10 fields"))
        else:
            for n, field in enumerate(fields):
                found += text_object(field, f"{path}/fields/{n}", 2000)
    if "accessory" in block:
        found += element(block["accessory"], f"{path}/accessory", seen)
    return found


def header(block: dict, path: str, seen: set[str]) -> Problems:
    """BLOCKS_URL#header: plain_text only, at most 150 characters."""
    return text_object(block.get("text"), f"{path}/text", 150, plain_only=True)


def context(block: dict, path: str, seen: set[str]) -> Problems:
    """BLOCKS_URL#context: 1 to 10 elements, each a text object or an image."""
    elements = block.get("elements")
    if not isinstance(elements, list) or not 0 < len(elements) <= 10:
        return [_at(f"{path}/elements", "must hold 1 to 10 elements")]
    found: Problems = []
    for n, item in enumerate(elements):
        if isinstance(item, dict) and item.get("type") == "image":
            continue
        found += text_object(item, f"{path}/elements/{n}", 3000)
    return found


def actions(block: dict, path: str, seen: set[str]) -> Problems:
    """BLOCKS_URL#actions: 1 to 25 interactive elements."""
    elements = block.get("elements")
    if not isinstance(elements, list) or not 0 < len(elements) <= 25:
        return [_at(f"{path}/elements", "must hold 1 to 25 elements")]
    found: Problems = []
    for n, item in enumerate(elements):
        found += element(item, f"{path}/elements/{n}", seen)
    return found


def slack_file(obj: Any, path: str, check: FileCheck | None) -> Problems:
    """SLACK_FILE_URL: exactly one of `url` and `id` (both: rejected); the file must be an image (png,
    jpg, jpeg, gif) that the poster can access. Slack answers "invalid slack file" otherwise
    (slackapi/python-slack-sdk#1658)."""
    if not isinstance(obj, dict) or ("id" in obj) == ("url" in obj):
        return [_at(path, "must have exactly one of url and id")]
    if "id" in obj and not (isinstance(obj["id"], str) and FILE_ID.match(obj["id"])):
        return [_at(f"{path}/id", "input must match regex pattern: ^[F][A-Z0-9]{8,}$")]
    if "url" in obj and not isinstance(obj["url"], str):
        return [_at(f"{path}/url", "must be a string")]
    reason = check(obj) if check is not None else None
    return [_at(path, reason)] if reason else []


def image(block: dict, path: str, seen: set[str], check: FileCheck | None = None) -> Problems:
    """IMAGE_URL: alt_text required (plain, at most 2000 characters); exactly one of image_url (at most
    3000 characters) and slack_file; an optional plain_text title of at most 2000 characters."""
    found: Problems = []
    alt = block.get("alt_text")
    if not isinstance(alt, str) or not 0 < len(alt) <= 2000:
        found.append(_at(f"{path}/alt_text", "must be a string of 1 to 2000 characters"))
    if ("image_url" in block) == ("slack_file" in block):
        return [*found, _at(path, "must have exactly one of image_url and slack_file")]
    if "image_url" in block:
        url = block["image_url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 3000:
            found.append(_at(f"{path}/image_url", "must be an http(s) URL of at most 3000 characters"))
    else:
        found += slack_file(block["slack_file"], f"{path}/slack_file", check)
    if "title" in block:
        found += text_object(block["title"], f"{path}/title", 2000, plain_only=True)
    return found


CHECKS = {"section": section, "header": header, "context": context, "actions": actions}


def problems(blocks: Any, surface: str = "message", files: FileCheck | None = None) -> Problems:
    """Every rule `blocks` breaks (empty: Slack accepts them)."""
    if not isinstance(blocks, list):
        return [_at("/blocks", "must be an array")]
    found: Problems = []
    if len(blocks) > MAX_BLOCKS[surface]:
        found.append(_at("/blocks", f"must hold at most {MAX_BLOCKS[surface]} blocks in a {surface}"))
    block_ids: set[str] = set()
    for n, block in enumerate(blocks):
        path = f"/blocks/{n}"
        if not isinstance(block, dict) or block.get("type") not in KNOWN_BLOCKS:
            found.append(_at(f"{path}/type", "unsupported block type"))
            continue
        block_id = block.get("block_id")
        if block_id is not None:  # BLOCKS_URL: block_id <= 255 characters, unique within the message
            if not isinstance(block_id, str) or not 0 < len(block_id) <= 255:
                found.append(_at(f"{path}/block_id", "must be 1 to 255 characters"))
            elif block_id in block_ids:
                found.append(_at(f"{path}/block_id", f"duplicate block_id '{block_id}'"))
            block_ids.add(block_id)
        if block["type"] == "image":
            found += image(block, path, set(), files)
            continue
        check = CHECKS.get(block["type"])
        if check is not None:
            found += check(block, path, set())  # action_ids are unique per block
    return found


def message_error(payload: dict[str, Any], surface: str = "message", files: FileCheck | None = None
                  ) -> dict[str, Any] | None:
    """Slack's answer to a message (or view) it refuses, or None when it accepts it."""
    text = payload.get("text")
    if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
        return {"ok": False, "error": "msg_too_long"}
    if "blocks" not in payload:
        return None
    found = problems(payload["blocks"], surface, files)
    if found:
        return {"ok": False, "error": "invalid_blocks", "errors": found,
                "response_metadata": {"messages": [f"[ERROR] {p}" for p in found]}}
    return None
