"""Rendering a view as Slack Block Kit, with slack_sdk's typed block models.

Pure: a view in, a list of blocks out. Slack's limits are enforced here whatever the view holds:
at most 50 blocks, 3000 characters per section text, 150 per header, 75 per button label.
"""

from __future__ import annotations

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

from bot import markup
from bot.links import NO_LINKS, Links
from bot.markup import Markup, phrase
from bot.status.snapshot import Level
from bot.status.views import Action, Item, Section, View

# Slack's limits (https://api.slack.com/reference/block-kit/blocks and .../block-elements,
# .../composition-objects): the stand-in's validator (tests/slack_rules.py) holds Slack's side of them.
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_CONTEXT_TEXT = 3000
MAX_HEADER = 150
MAX_BUTTON_LABEL = 75
MAX_ACTIONS = 25
MAX_CONFIRM_TITLE = 100
MAX_CONFIRM_TEXT = 300
MAX_CONFIRM_BUTTON = 30
MAX_TITLE = 300  # an item's name, cut so a 10 KB task name leaves room for what follows it
MAX_FALLBACK = 3000  # a message's `text`: the notification and screen-reader fallback

ICONS = {
    Level.OK: ":large_green_circle:",
    Level.UNKNOWN: ":white_circle:",
    Level.WARN: ":large_yellow_circle:",
    Level.DOWN: ":red_circle:",
    None: "•",
}


def mrkdwn(text: str, limit: int = MAX_SECTION_TEXT) -> MarkdownTextObject:
    """The one way text reaches mrkdwn: data cut then escaped, the bot's markup as written."""
    return MarkdownTextObject(text=markup.for_slack(text, limit))


_links = NO_LINKS  # set once by the Slack edge at start (`use_links`); the console never links


def use_links(links: Links) -> None:
    global _links
    _links = links


def plain_text(text: str, limit: int) -> PlainTextObject:
    return PlainTextObject(text=markup.plain(text, limit) or " ")


def button(action: Action) -> ButtonElement:
    if action.ref is not None:  # a link button: Slack opens the URL (and still sends us an action to ack)
        return ButtonElement(text=plain_text(action.label, MAX_BUTTON_LABEL), action_id=action.action_id,
                             url=_links.url(action.ref))
    confirm = None
    if action.confirm:
        confirm = ConfirmObject(
            title=plain_text(action.confirm.title, MAX_CONFIRM_TITLE),
            text=mrkdwn(action.confirm.text, MAX_CONFIRM_TEXT),
            confirm=plain_text(action.confirm.confirm, MAX_CONFIRM_BUTTON),
            deny=plain_text(action.confirm.deny, MAX_CONFIRM_BUTTON),
        )
    # The value is never cut: bot.slack.buttons keeps it within Slack's 2000 characters.
    return ButtonElement(text=plain_text(action.label, MAX_BUTTON_LABEL), action_id=action.action_id,
                         value=action.value or None, style=action.style, confirm=confirm)


def item_line(item: Item) -> str:
    """One row: icon, name in bold, id in monospace, then the text. An empty part is left out.

    With links configured (FLOWER_PUBLIC_URL), the id, or else the name, links to its page.
    """
    url = _links.url(item.ref)
    link = Markup(markup.escape(url)) if url else None
    parts = [Markup(ICONS[item.level])]
    if item.title:
        title = markup.plain(item.title, MAX_TITLE)
        parts.append(phrase("*<{}|{}>*", link, title) if link and not item.code else phrase("*{}*", title))
    if item.code:
        code = markup.plain(item.code, MAX_TITLE)
        parts.append(phrase("<{}|{}>", link, code) if link else phrase("`{}`", code))
    if item.text:
        parts.append(item.text)
    return markup.join(" ", parts)


def more_line(count: int) -> str:
    return Markup(f"_… and {count} more_")


def text_blocks(lines: list[str]) -> list[Block]:
    """Lines in as few section blocks as fit 3000 characters each: long lists are split, never cut short."""
    chunks: list[list[str]] = [[]]
    for line in (markup.for_slack(line, MAX_SECTION_TEXT) for line in lines):
        if chunks[-1] and len("\n".join([*chunks[-1], line])) > MAX_SECTION_TEXT:
            chunks.append([])
        chunks[-1].append(line)
    # Each line is already in Slack's form: wrapped as markup so it is not escaped twice.
    return [SectionBlock(text=mrkdwn(Markup("\n".join(chunk)))) for chunk in chunks if chunk]


def section_blocks(section: Section) -> list[Block]:
    """Plain items share text blocks; an item with a button needs a block of its own."""
    heading = phrase("*{}*", section.title)
    if section.note:
        heading = phrase("{}  _{}_", heading, section.note)
    buttons: list[Block] = []
    lines = [heading]
    for item in section.items:
        if item.action is None:
            lines.append(item_line(item))
            continue
        buttons.append(SectionBlock(text=mrkdwn(item_line(item)), accessory=button(item.action)))
    if not section.more:
        return [*text_blocks(lines), *buttons]
    if not buttons:
        return text_blocks([*lines, more_line(section.more)])
    # "… and N more" goes after the rows it continues.
    return [*text_blocks(lines), *buttons, ContextBlock(elements=[mrkdwn(more_line(section.more))])]


def render(view: View, include_slack_only: bool = True) -> list[Block]:
    blocks: list[Block] = [
        HeaderBlock(text=plain_text(view.title, MAX_HEADER)),
        SectionBlock(text=mrkdwn(phrase("{} *{}*", Markup(ICONS[view.level]), view.summary))),
        DividerBlock(),
    ]
    if view.notice:
        blocks.insert(1, SectionBlock(text=mrkdwn(phrase("{} {}", Markup(ICONS[view.notice.level]),
                                                         view.notice.text))))
    for section in view.sections:
        blocks.extend(section_blocks(section))
    tail: list[Block] = []
    actions = [a for a in view.actions if (include_slack_only or not a.slack_only)
               and (a.ref is None or _links.url(a.ref))][:MAX_ACTIONS]
    if actions:
        tail.append(ActionsBlock(elements=[button(a) for a in actions]))
    if view.footer:
        tail.append(ContextBlock(elements=[mrkdwn(view.footer, MAX_CONTEXT_TEXT)]))
    room = MAX_BLOCKS - len(tail)
    if len(blocks) > room:
        dropped = len(blocks) - room + 1
        blocks = blocks[: room - 1]
        blocks.append(ContextBlock(elements=[mrkdwn(more_line(dropped))]))
    return blocks + tail


def to_dicts(blocks: list[Block]) -> list[dict]:
    return [block.to_dict() for block in blocks]


def message(view: View, include_slack_only: bool = True) -> dict:
    """Keyword arguments for a Slack message carrying this view: blocks and the plain fallback."""
    return {"text": fallback(view), "blocks": to_dicts(render(view, include_slack_only))}


def fallback(view: View) -> str:
    """The message's `text`, which Slack parses like mrkdwn: the same escaping rule."""
    return markup.for_slack(view.text, MAX_FALLBACK)


def plain_message(view: View) -> dict:
    """The view as text alone, for when Slack refused its blocks: the essentials still arrive."""
    lines = [view.text, *(item_line(item) for section in view.sections for item in section.items)]
    if view.footer:
        lines.append(view.footer)
    return {"text": markup.for_slack(markup.join("\n", lines), MAX_FALLBACK)}
