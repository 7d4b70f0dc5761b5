"""What one `/tasks` answer of the `scale` benchmark carried, against Slack's limits and against the fleet.

Every answer is checked against Slack's limits (at most 50 blocks, 3000 characters per section text,
150 per header, 75 per button label, 25 elements per actions block) and for completeness: the Celery
line must say "Running: N workers, N*M active, N*R reserved" with nobody "not answering". A section
text of exactly 3000 characters ending in "…" was cut by bot.blocks: within the limit, but lines lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.support.fleet import FleetSpec
from tests.support.slack.rules import MAX_BLOCKS as SLACK_MAX_BLOCKS
from tests.support.slack.rules import MAX_SECTION_TEXT

MAX_BLOCKS = SLACK_MAX_BLOCKS["message"]
MAX_HEADER = 150
MAX_BUTTON_LABEL = 75
MAX_BUTTON_VALUE = 2000
MAX_ACTIONS = 25
CUT_MARK = "…"
CELERY_LINE = re.compile(r"Running: (\d+) workers?, (\d+) active, (\d+) reserved(?:; (\d+) workers? not answering)?")
PROBED = re.compile(r"Probed in (\d+) ms")

# --------------------------------------------------------------------------- one answer


@dataclass
class Answer:
    """What one ack carried, measured against Slack's limits and against the fleet."""

    bytes: int
    blocks: int
    longest_section: int
    cut_sections: int
    page_rows: int | None  # rows of a paged list a user can read in full (a page holds 20); None: no list
    violations: list[str]
    workers: int | None  # from "Running: N workers, ..."; None when the Celery line is missing
    active: int | None
    reserved: int | None
    silent: int
    probe_ms: int | None


def examine(payload: dict[str, Any]) -> Answer:
    blocks = payload.get("blocks") or []
    violations: list[str] = []
    sections: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        violations.append(f"{len(blocks)} blocks > {MAX_BLOCKS}")
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "section":
            texts = [(block.get("text") or {}).get("text", "")]
            texts += [f.get("text", "") for f in block.get("fields") or []]
            sections += texts
            for text in texts:
                if len(text) > MAX_SECTION_TEXT:
                    violations.append(f"block {i}: section text of {len(text)} chars > {MAX_SECTION_TEXT}")
        elif kind == "header":
            text = (block.get("text") or {}).get("text", "")
            if len(text) > MAX_HEADER:
                violations.append(f"block {i}: header of {len(text)} chars > {MAX_HEADER}")
        elif kind == "context":
            for element in block.get("elements") or []:
                if len(element.get("text", "")) > MAX_SECTION_TEXT:
                    violations.append(f"block {i}: context text of {len(element['text'])} chars")
        buttons = list(block.get("elements") or []) if kind == "actions" else []
        if kind == "actions" and len(buttons) > MAX_ACTIONS:
            violations.append(f"block {i}: {len(buttons)} actions > {MAX_ACTIONS}")
        if block.get("accessory"):
            buttons.append(block["accessory"])
        for button in buttons:
            label = (button.get("text") or {}).get("text", "")
            if len(label) > MAX_BUTTON_LABEL:
                violations.append(f"block {i}: button label of {len(label)} chars > {MAX_BUTTON_LABEL}")
            if len(button.get("value", "")) > MAX_BUTTON_VALUE:
                violations.append(f"block {i}: button value of {len(button['value'])} chars > {MAX_BUTTON_VALUE}")
    readable = "\n".join(sections)
    celery = CELERY_LINE.search(readable)
    probed = PROBED.search(json.dumps(blocks))
    return Answer(
        bytes=len(json.dumps(payload).encode()),
        blocks=len(blocks),
        longest_section=max((len(t) for t in sections), default=0),
        cut_sections=sum(1 for t in sections if len(t) >= MAX_SECTION_TEXT and t.endswith(CUT_MARK)),
        page_rows=page_rows(blocks),
        violations=violations,
        workers=int(celery[1]) if celery else None,
        active=int(celery[2]) if celery else None,
        reserved=int(celery[3]) if celery else None,
        silent=int(celery[4] or 0) if celery else 0,
        probe_ms=int(probed[1]) if probed else None,
    )


def page_rows(blocks: list[dict[str, Any]]) -> int | None:
    """Rows of the paged list (`/tasks active`, `/tasks workers`) shown in full.

    The list's section starts with its title and "_page 1 of P_" (or is the only list); plain rows are
    lines of that text ("… and N more" aside, a line cut short by the 3000-character limit not counted),
    rows with a button are the section blocks that follow it, one each.
    """
    texts = [(b.get("text") or {}).get("text", "") if b.get("type") == "section" else None for b in blocks]
    start = next((i for i, t in enumerate(texts) if t and "_page " in t.split("\n", 1)[0]), None)
    if start is None:
        start = next((i for i, t in enumerate(texts) if t and t.startswith(("*Active tasks*", "*Workers*"))
                      and i > 3), None)  # a single page has no "page 1 of" note
    if start is None:
        return None
    lines = texts[start].splitlines()[1:]
    rows = sum(1 for line in lines if not line.startswith("_") and not line.endswith(CUT_MARK))
    for block in blocks[start + 1:]:
        if block.get("type") != "section" or not block.get("accessory"):
            break
        rows += 1
    return rows


def complete(answer: Answer, spec: FleetSpec) -> bool:
    """Did the answer count every worker, task and reservation of the fleet, with nobody silent?"""
    return (answer.workers, answer.active, answer.reserved, answer.silent) == (
        spec.workers, spec.workers * spec.tasks, spec.workers * spec.reserved, 0)
