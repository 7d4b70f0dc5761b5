"""Charts through the real `opsbot run` against the real task stack (issue 19): `/tasks chart` posts a
PNG into the command's channel, a backlog alert carries its chart and redraws it in place, and the
strict Slack stand-in refuses nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from bot.charts import draw
from tests.support.bot import BotProcess
from tests.support.celery_procs import publish_tasks
from tests.support.net import wait_until
from tests.support.pictures import decode, horizontal_rows, pixels_of
from tests.support.rabbit import RabbitNode
from tests.support.slack import Message, ResponseRecord, SlackStandIn

pytestmark = pytest.mark.integration

BLUE, PURPLE, VERMILLION = (draw.OKABE_ITO[c] for c in ("blue", "purple", "vermillion"))


def chart_answer(slack: SlackStandIn, words: str, channel_id: str = "C_OPS") -> str:
    """The private answer to `/tasks chart ...`: the ack is empty, the answer comes through response_url."""
    url = slack.new_response_url(channel_id)
    envelope = slack.send_slash_command(f"chart {words}", channel_id=channel_id, response_url=url)
    assert slack.wait_ack(envelope, timeout=3.0) == {}  # nothing to show yet: no "Working on it"
    url_id = url.rsplit("/", 1)[1]
    answer: ResponseRecord = slack.wait_for_response(lambda r: r.url_id == url_id, timeout=20)
    assert answer.response_type == "ephemeral" and answer.status == 200
    return answer.body["text"]


def image_of(message: Message) -> dict | None:
    return next((b for b in message.blocks or [] if b["type"] == "image"), None)


def test_charts_in_slack_from_the_real_bot(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                           rabbit: RabbitNode) -> None:
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 2))  # nothing consumes it
    socket_bot(OPSBOT_ADMINS="U_ADMIN", OPSBOT_ALERT_CHANNEL="C_ALERTS", OPSBOT_POLL_SECONDS="2",
               OPSBOT_BACKLOG_THRESHOLD="1", OPSBOT_BACKLOG_MINUTES="0")
    publish_tasks(rabbit.amqp_url, "stackapp.fail", 3, args=("boom",))

    # The backlog alert carries the chart of the queue's last hour, uploaded and shared nowhere.
    assert wait_until(lambda: any("more than 1 tasks waiting" in (m.text or "") for m in slack.messages
                                  if m.channel == "C_ALERTS" and not m.thread_ts), 40)
    alert = next(m for m in slack.messages if m.channel == "C_ALERTS" and "more than 1" in (m.text or ""))
    image = image_of(alert)
    assert image is not None, json.dumps(alert.blocks)
    (upload,) = slack.uploaded(lambda f: f.id == image["slack_file"]["id"])
    assert upload.channels == ()  # no post of its own in the channel
    picture = decode(upload.content or b"")
    assert picture.width == 800 and pixels_of(picture, BLUE) and horizontal_rows(pixels_of(picture, PURPLE), 500)
    assert "other" in image["alt_text"] and "now 3" in image["alt_text"]

    # Acknowledged: the same message redrawn with a fresh chart; no new post.
    ack = next(e for b in alert.blocks or [] if b["type"] == "actions" for e in b["elements"]
               if e["action_id"] == "alert_ack")
    slack.wait_ack(slack.send_block_action("alert_ack", ack["value"], message=alert), timeout=3.0)
    assert wait_until(lambda: "by <@U_ADMIN> at" in json.dumps(slack.message(alert.channel, alert.ts).blocks), 20)
    redrawn = slack.message(alert.channel, alert.ts)
    assert redrawn is not None and image_of(redrawn) is not None
    assert image_of(redrawn)["slack_file"]["id"] != upload.id
    backlog_posts = [m for m in slack.messages if m.channel == "C_ALERTS" and not m.thread_ts
                     and "more than 1" in (m.text or "")]
    assert len(backlog_posts) == 1

    # /tasks chart: the PNG goes into the channel the command came from.
    assert chart_answer(slack, "other 1h") == "opsbot: Chart posted in <#C_OPS>."
    shared = [f for f in slack.uploaded() if f.channels == ("C_OPS",)]
    assert len(shared) == 1 and shared[0].title == "Queue other, last hour"
    picture = decode(shared[0].content or b"")
    assert pixels_of(picture, BLUE) and horizontal_rows(pixels_of(picture, PURPLE), 500)

    # Failures per minute, counted from the task events: the failed series in its own colour.
    posted = "Chart posted in <#C_OPS>."
    assert wait_until(lambda: chart_answer(slack, "stackapp.fail").endswith(posted), 30, interval=3)
    failing = next(f for f in slack.uploaded() if f.title == "Task stackapp.fail, last hour")
    assert len(pixels_of(decode(failing.content or b""), VERMILLION)) > 100

    # Where the bot is not a member, the answer explains how to invite it, and nothing is posted.
    slack.add_channel("C_QUIET", "quiet", bot_member=False)
    before = len(slack.uploaded())
    assert "/invite @opsbot" in chart_answer(slack, "other", channel_id="C_QUIET")
    assert "no series called 'nope'" in chart_answer(slack, "nope")
    assert len(slack.uploaded()) == before and not [m for m in slack.messages if m.channel == "C_QUIET"]

    assert not slack.rejections, slack.rejections


def test_the_console_draws_the_series_as_sparklines(rabbit: RabbitNode, worker: object, flower: object,
                                                    tmp_path: object) -> None:
    import subprocess
    from pathlib import Path

    from sqlalchemy import create_engine, text

    from tests.support.bot import OPSBOT, clean_env, stack_env

    assert isinstance(tmp_path, Path)
    publish_tasks(rabbit.amqp_url, "stackapp.add", 4, queue="other", args=(1, 2))
    env = clean_env(stack_env(rabbit, flower, tmp_path) | {"OPSBOT_BACKLOG_THRESHOLD": "2", "COLUMNS": "160"})
    log = tmp_path / "console.log"
    with log.open("w") as errors:  # DEBUG logs: a pipe nobody reads would fill up and block the bot
        console = subprocess.Popen([OPSBOT, "console"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, text=True)
    try:
        engine = create_engine(f"sqlite:///{tmp_path / 'opsbot.sqlite3'}")
        query = text("SELECT count(*) FROM series WHERE name = 'other' AND metric = 'waiting'")

        def recorded() -> bool:
            with engine.connect() as conn:
                return conn.execute(query).scalar() > 0

        assert wait_until(recorded, 30)
        out, _ = console.communicate("chart other\nchart bogus-name\nquit\n", timeout=60)
    finally:
        if console.poll() is None:
            console.kill()
    err = log.read_text()
    assert console.returncode == 0, err
    assert "Queue other, last hour" in out and "Tasks waiting  (alert threshold 2)" in out
    line = next(row for row in out.splitlines() if "waiting" in row and "now 4" in row)
    assert "█" in line  # the sparkline, at its top: 4 waiting all along
    assert "no series called 'bogus-name'" in out and "Traceback" not in out + err
