"""Charts in Slack: uploaded with slack_sdk's `files_upload_v2` (files.getUploadURLExternal, the
upload, files.completeUploadExternal).

An ephemeral answer cannot carry a file, so `/tasks chart` posts the PNG into the channel the command
came from and answers privately where it went, or how to invite the bot. Alert messages carry their
chart as an image block whose `slack_file` is an upload shared nowhere (no extra post in the channel),
uploaded again each time the message is redrawn.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import markup
from bot.charts import draw
from bot.charts.service import ChartData, Charts, ChartUsage, Request, incident_subject, parse
from bot.markup import Markup, phrase
from bot.status.snapshot import Level
from bot.status.views import View, message_view

log = logging.getLogger(__name__)

CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9_]{1,30}$")
MAX_ALT = 2000  # https://docs.slack.dev/reference/block-kit/blocks/image-block: alt_text and title
NOT_IN_CHANNEL = ("I am not in this channel, so I cannot post the chart here. Invite me with `/invite @opsbot` "
                  "(or mention @opsbot and choose to add it), then ask again. Nothing was posted.")
NO_CHANNEL = ("I cannot post files in this conversation (a direct message or a private channel I was not "
              "added to). Ask in a channel I am in, or invite me with `/invite @opsbot`. Nothing was posted.")


def channel_link(channel_id: str) -> str:
    return Markup(f"<#{channel_id}>") if CHANNEL_ID.match(channel_id) else channel_id


def filename(chart: ChartData) -> str:
    return re.sub(r"[^a-z0-9]+", "-", chart.title.lower()).strip("-")[:80] + ".png"


class ChartPoster:
    """`/tasks chart` in Slack: draw, upload into the command's channel, say where it went."""

    def __init__(self, client: WebClient, charts: Charts) -> None:
        self.client = client
        self.charts = charts

    def post(self, words: str, channel_id: str, requester: str) -> View:
        try:
            chart = self.charts.data(parse(words.split()))
        except ChartUsage as problem:
            return message_view("opsbot", str(problem), Level.WARN)
        if isinstance(chart, str):
            return message_view("opsbot", chart, Level.WARN)
        comment = phrase("{} (asked by {})", chart.title, requester)
        try:
            self.client.files_upload_v2(channel=channel_id, file=draw.png(chart), filename=filename(chart),
                                        title=markup.plain(chart.title, 250), alt_txt=chart.alt_text[:1000],
                                        initial_comment=markup.for_slack(comment, 3000))
        except SlackApiError as problem:
            error = problem.response.get("error")
            if error == "not_in_channel":
                return message_view("opsbot", NOT_IN_CHANNEL, Level.WARN)
            if error == "channel_not_found":
                return message_view("opsbot", NO_CHANNEL, Level.WARN)
            raise
        return message_view("opsbot", phrase("Chart posted in {}.", channel_link(channel_id)), Level.OK)


class IncidentCharts:
    """The chart of the last hour for an alert message, as an image block, or None."""

    def __init__(self, client: WebClient, charts: Charts) -> None:
        self.client = client
        self.charts = charts

    def block(self, incident_id: str) -> dict[str, Any] | None:
        subject = incident_subject(incident_id.rsplit("@", 1)[0])
        if subject is None:
            return None
        try:
            chart = self.charts.data(Request(subject, "1h"))
            if isinstance(chart, str):
                return None
            # Shared nowhere: the alert message is the only place it appears.
            uploaded = self.client.files_upload_v2(file=draw.png(chart), filename=filename(chart),
                                                   title=markup.plain(chart.title, 250))
            file_id = uploaded["file"]["id"]
        except Exception as exc:  # an alert without its chart still goes out
            log.warning("could not upload the chart of incident %s: %s", incident_id, type(exc).__name__)
            return None
        return {"type": "image", "slack_file": {"id": file_id}, "alt_text": markup.plain(chart.alt_text, MAX_ALT),
                "title": {"type": "plain_text", "text": markup.plain(chart.title, MAX_ALT)}}

    def attach(self, incident_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The alert's payload with its chart placed before the buttons (or last)."""
        image = self.block(incident_id)
        blocks = payload.get("blocks")
        if image is None or not isinstance(blocks, list) or len(blocks) >= 50:
            return payload
        blocks = list(blocks)
        where = next((n for n, b in enumerate(blocks) if b.get("type") == "actions"), len(blocks))
        blocks.insert(where, image)
        return {**payload, "blocks": blocks}
