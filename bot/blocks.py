"""Rendering a view as Slack Block Kit, with slack_sdk's typed block models.

Pure: a view in, a list of blocks out. Slack's limits are enforced here whatever the view holds:
at most 50 blocks, 3000 characters per section text, 150 per header, 75 per button label.
"""

from __future__ import annotations

import re

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.links import NO_LINKS, Links
from bot.snapshot import Level
from bot.views import Action, Item, Section, View

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER = 150
MAX_BUTTON_LABEL = 75
MAX_BUTTON_VALUE = 2000
MAX_ACTIONS = 25

ICONS = {
    Level.OK: ":large_green_circle:",
    Level.UNKNOWN: ":white_circle:",
    Level.WARN: ":large_yellow_circle:",
    Level.DOWN: ":red_circle:",
    None: "•",
}


_links = NO_LINKS  # set once by the Slack edge at start (`use_links`); the console never links


def use_links(links: Links) -> None:
    global _links
    _links = links


def escape(text: str) -> str:
    """Slack mrkdwn control characters: user data must not turn into mentions or links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


MENTION = re.compile(r"&lt;@([UW][A-Z0-9_]+)&gt;")


def escape_keeping_mentions(text: str) -> str:
    """For our own sentences that name a user ("by <@U123>") around user data (a task name)."""
    return MENTION.sub(r"<@\1>", escape(text))


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def button(action: Action) -> ButtonElement:
    if action.ref is not None:  # a link button: Slack opens the URL (and still sends us an action to ack)
        return ButtonElement(text=cut(action.label, MAX_BUTTON_LABEL), action_id=action.action_id,
                             url=_links.url(action.ref))
    confirm = None
    if action.confirm:
        confirm = ConfirmObject(
            title=cut(action.confirm.title, 100), text=cut(action.confirm.text, 300),
            confirm=cut(action.confirm.confirm, 30), deny=cut(action.confirm.deny, 30),
        )
    return ButtonElement(
        text=cut(action.label, MAX_BUTTON_LABEL), action_id=action.action_id,
        value=cut(action.value, MAX_BUTTON_VALUE), style=action.style, confirm=confirm,
    )


def item_line(item: Item) -> str:
    url = _links.url(item.ref)
    code = f" `{escape(item.code)}`" if item.code else ""
    title = escape(item.title)
    if url and item.code:
        code = f" <{escape(url)}|{escape(item.code)}>"
    elif url:
        title = f"<{escape(url)}|{title}>"
    return f"{ICONS[item.level]} *{title}*{code} {escape(item.text)}"


def more_line(count: int) -> str:
    return f"_… and {count} more_"


def text_blocks(lines: list[str]) -> list[Block]:
    """Lines in as few section blocks as fit 3000 characters each: long lists are split, never cut short."""
    chunks: list[list[str]] = [[]]
    for line in lines:
        line = cut(line, MAX_SECTION_TEXT)
        if chunks[-1] and len("\n".join([*chunks[-1], line])) > MAX_SECTION_TEXT:
            chunks.append([])
        chunks[-1].append(line)
    return [SectionBlock(text=MarkdownTextObject(text="\n".join(chunk))) for chunk in chunks if chunk]


def section_blocks(section: Section) -> list[Block]:
    """Plain items share text blocks; an item with a button needs a block of its own."""
    heading = f"*{escape(section.title)}*"
    if section.note:
        heading += f"  _{escape(section.note)}_"
    buttons: list[Block] = []
    lines = [heading]
    for item in section.items:
        if item.action is None:
            lines.append(item_line(item))
            continue
        buttons.append(SectionBlock(text=MarkdownTextObject(text=cut(item_line(item), MAX_SECTION_TEXT)),
                                    accessory=button(item.action)))
    if not section.more:
        return [*text_blocks(lines), *buttons]
    if not buttons:
        return text_blocks([*lines, more_line(section.more)])
    # "… and N more" goes after the rows it continues.
    return [*text_blocks(lines), *buttons, ContextBlock(elements=[MarkdownTextObject(text=more_line(section.more))])]


def render(view: View, include_slack_only: bool = True) -> list[Block]:
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=cut(view.title, MAX_HEADER))),
        SectionBlock(text=MarkdownTextObject(
            text=cut(f"{ICONS[view.level]} *{escape(view.summary)}*", MAX_SECTION_TEXT))),
        DividerBlock(),
    ]
    if view.notice:
        notice = f"{ICONS[view.notice.level]} {escape_keeping_mentions(view.notice.text)}"
        blocks.insert(1, SectionBlock(text=MarkdownTextObject(text=cut(notice, MAX_SECTION_TEXT))))
    for section in view.sections:
        blocks.extend(section_blocks(section))
    tail: list[Block] = []
    actions = [a for a in view.actions if (include_slack_only or not a.slack_only)
               and (a.ref is None or _links.url(a.ref))][:MAX_ACTIONS]
    if actions:
        tail.append(ActionsBlock(elements=[button(a) for a in actions]))
    if view.footer:
        # The footer is our own text (it may hold a <@user> mention), never user data.
        tail.append(ContextBlock(elements=[MarkdownTextObject(text=cut(view.footer, 3000))]))
    room = MAX_BLOCKS - len(tail)
    if len(blocks) > room:
        dropped = len(blocks) - room + 1
        blocks = blocks[: room - 1]
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=more_line(dropped))]))
    return blocks + tail


def to_dicts(blocks: list[Block]) -> list[dict]:
    return [block.to_dict() for block in blocks]


def message(view: View, include_slack_only: bool = True) -> dict:
    """Keyword arguments for a Slack message carrying this view: blocks and the plain fallback."""
    return {"text": cut(escape_keeping_mentions(view.text), 3000), "blocks": to_dicts(render(view, include_slack_only))}
