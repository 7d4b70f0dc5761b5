"""One escaping rule, held by types: text is either data or markup the bot wrote.

A plain `str` is **data**: a name, an argument, a result, an exception, anything typed by a user or
read from the stack. `Markup` is Slack markup the bot wrote itself (a mention, emphasis); a `Phrase` is
a sentence the bot wrote with data inside it, kept as parts so each part is treated by what it is.

For Slack (mrkdwn and plain message text), data is cut first and then escaped (`& < >`), so a cut
never splits an entity and no data can become a mention or a link; markup is never escaped. Any str
operation on a Phrase (an f-string, `+`, a slice) gives a plain str, that is data: a mistake
over-escapes, it never pings anyone. In a terminal (`str(text)`) a phrase reads as its plain words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ELLIPSIS = "…"
ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
USER_ID = re.compile(r"^[UW][A-Z0-9_]{1,63}$")
STORED_MENTION = re.compile(r"^<@([UW][A-Z0-9_]{1,63})>$")


class Markup(str):
    """Slack markup written by the bot (never data): sent as is."""


class Phrase(str):
    """Bot text with data inside; its str value is the plain reading, `parts` the structure."""

    parts: tuple[str, ...]

    def __new__(cls, *parts: str) -> Phrase:
        flat = tuple(p for part in parts for p in (part.parts if isinstance(part, Phrase) else (part,)) if p)
        phrase = super().__new__(cls, "".join(flat))
        phrase.parts = flat
        return phrase


def phrase(template: str, *args: object) -> Phrase:
    """`template` (the bot's own words, markup) with each `{}` filled by an argument.

    A Markup or Phrase argument keeps its kind; anything else is data.
    """
    pieces = template.split("{}")
    if len(pieces) != len(args) + 1:
        raise ValueError(f"{len(pieces) - 1} placeholders for {len(args)} arguments")
    parts: list[str] = [Markup(pieces[0])]
    for arg, piece in zip(args, pieces[1:], strict=True):
        parts += [arg if isinstance(arg, str) else str(arg), Markup(piece)]
    return Phrase(*parts)


def join(separator: str, texts: Iterable[str]) -> Phrase:
    """Texts joined by a separator the bot wrote; each keeps its kind."""
    texts = list(texts)
    return phrase(separator.join(["{}"] * len(texts)), *texts) if texts else Phrase()


def mention(user_id: str) -> str:
    """A live Slack mention for a real user id; anything else stays data."""
    return Markup(f"<@{user_id}>") if USER_ID.match(user_id) else user_id


def stored_mention(text: str) -> str:
    """A mention the bot saved earlier (e.g. who acknowledged an incident) read back as markup, if it is one."""
    match = STORED_MENTION.match(text or "")
    return mention(match[1]) if match else text


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escaped_within(data: str, room: int) -> tuple[str, bool]:
    """Data escaped, cut first so the escaped text fits `room`; True when all of it fitted."""
    out: list[str] = []
    for char in data[:room]:
        piece = ENTITIES.get(char, char)
        if len(piece) > room:
            break
        out.append(piece)
        room -= len(piece)
    return "".join(out), len(out) == len(data)


def _parts(text: str) -> tuple[str, ...]:
    return text.parts if isinstance(text, Phrase) else (text,)


def for_slack(text: str, limit: int) -> str:
    """Text for mrkdwn or a message's `text`: data cut then escaped, markup as is, at most `limit` long.

    When it is too long, the data shares the room left by the markup (the bot's words and mentions
    stay whole), the longest data giving way first; each cut piece of data ends with "…".
    """
    parts = _parts(text)
    shown = [p if isinstance(p, Markup) else escape(p) for p in parts]
    if sum(map(len, shown)) <= limit:
        return "".join(shown)
    data = [n for n, part in enumerate(parts) if not isinstance(part, Markup)]
    room = limit - sum(len(shown[n]) for n in range(len(parts)) if n not in data)
    if room < 2 * len(data):
        return _cut_in_order(parts, limit)
    for n, budget in zip(data, _share(room, [len(shown[n]) for n in data]), strict=True):
        if len(shown[n]) > budget:
            shown[n] = _escaped_within(parts[n], budget - len(ELLIPSIS))[0] + ELLIPSIS
    return "".join(shown)


def _share(room: int, wants: list[int]) -> list[int]:
    """Split `room` between claims: small ones get all they want, large ones share the rest evenly."""
    budgets = [0] * len(wants)
    for done, n in enumerate(sorted(range(len(wants)), key=wants.__getitem__)):
        budgets[n] = min(wants[n], room // (len(wants) - done))
        room -= budgets[n]
    return budgets


def _cut_in_order(parts: tuple[str, ...], limit: int) -> str:
    """Too little room to share: keep what fits from the start, never half a piece of markup or an entity."""
    out: list[str] = []
    room = limit - len(ELLIPSIS)
    for part in parts:
        if isinstance(part, Markup):
            if len(part) > room:
                break
            out.append(part)
            room -= len(part)
            continue
        escaped, complete = _escaped_within(part, room)
        out.append(escaped)
        room -= len(escaped)
        if not complete:
            break
    return "".join(out) + ELLIPSIS


def cut(text: str, limit: int) -> str:
    """At most `limit` characters: a longer text keeps its start and ends with "…"."""
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def plain(text: str, limit: int) -> str:
    """Text for a plain_text object: Slack shows it literally, so it is only cut."""
    return cut(str(text), limit)
