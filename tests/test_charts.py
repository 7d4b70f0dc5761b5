"""Charts (issue 19): the series in the store, the PNG a person looks at, the sparklines, and the Slack
upload flow through the strict stand-in. No task stack needed: see test_charts_bot.py for `opsbot run`."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from slack_sdk import WebClient

from bot.charts import draw
from bot.charts.series import Key, SeriesRecorder, SeriesStore, TaskCounter, minute, samples
from bot.charts.service import ChartData, Charts, ChartUsage, Request, incident_subject, parse
from bot.charts.slack import ChartPoster, IncidentCharts
from bot.charts.sparkline import BARS, chart_view, sparkline
from bot.commands.grammar import UsageError
from bot.commands.grammar import parse as parse_command
from bot.db import Database
from bot.markup import mention
from bot.status.snapshot import BrokerStatus, CeleryState, CeleryStatus, FlowerStatus, QueueInfo, Snapshot, WorkerInfo
from tests.support.pictures import decode, horizontal_rows, pixels_of
from tests.support.slack import SlackStandIn
from tests.support.slack.rules import message_error

NOW = 1_800_000_000.0  # a fixed clock, on a minute boundary
BLUE, PURPLE, VERMILLION, GREEN = (draw.OKABE_ITO[c] for c in ("blue", "purple", "vermillion", "green"))


@pytest.fixture
def store(tmp_path: Path) -> SeriesStore:
    return SeriesStore(Database(f"sqlite:///{tmp_path / 'opsbot.sqlite3'}").engine)


def charts(store: SeriesStore, threshold: int = 100) -> Charts:
    return Charts(store, ("celery", "other"), threshold, 7, lambda: NOW)


def snapshot(queues: tuple[QueueInfo, ...] = (), broker_up: bool = True, workers: int = 1) -> Snapshot:
    from bot.status.snapshot import Failure, Problem

    problem = None if broker_up else Problem(Failure.REFUSED, "127.0.0.1:5672")
    celery = CeleryStatus(CeleryState.RUNNING if broker_up else CeleryState.UNKNOWN,
                          tuple(WorkerInfo(f"w{n}@h") for n in range(workers)) if broker_up else ())
    return Snapshot(NOW, BrokerStatus("rabbitmq", "127.0.0.1:5672", problem, queues), celery,
                    FlowerStatus("http://127.0.0.1:5555"))


def rising_backlog(store: SeriesStore, minutes: int = 60, start: float = 20, slope: float = 3) -> None:
    for m in range(minutes):
        at = NOW - (minutes - m) * 60
        store.write({Key("queue", "celery", "waiting"): start + slope * m, Key("queue", "celery", "consumers"): 1},
                    at, {})


# --- The series ---------------------------------------------------------------------------------


def test_a_snapshot_gives_queue_and_stack_gauges_and_nothing_it_cannot_tell() -> None:
    values = samples(snapshot((QueueInfo("celery", 7, 2), QueueInfo("other", 3, None)), workers=2))
    assert values == {Key("queue", "celery", "waiting"): 7, Key("queue", "celery", "consumers"): 2,
                      Key("queue", "other", "waiting"): 3,  # no consumer count (Redis): no zero either
                      Key("stack", "", "workers"): 2, Key("stack", "", "active"): 0}
    assert samples(snapshot(broker_up=False)) == {}  # the broker is down: no news, not "0 waiting"


def test_a_waiting_age_is_recorded_when_the_snapshot_has_one() -> None:
    taken = snapshot((QueueInfo("celery", 5, 1),))
    aged = replace(taken.broker.queues[0], oldest_sent_at=taken.taken_at - 42.0)
    values = samples(replace(taken, broker=replace(taken.broker, queues=(aged,))))
    assert values[Key("queue", "celery", "waiting_age")] == 42.0


def test_finished_tasks_are_counted_by_name_and_minute_though_their_events_carry_no_name() -> None:
    counter = TaskCounter()
    counter.on_event({"type": "task-received", "uuid": "a", "name": "reports.export", "timestamp": NOW + 1})
    counter.on_event({"type": "task-failed", "uuid": "a", "timestamp": NOW + 5})
    counter.on_event({"type": "task-received", "uuid": "b", "name": "reports.export", "timestamp": NOW + 2})
    counter.on_event({"type": "task-retried", "uuid": "b", "timestamp": NOW + 6})
    counter.on_event({"type": "task-succeeded", "uuid": "b", "timestamp": NOW + 65})
    counter.on_event({"type": "task-succeeded", "uuid": "old", "timestamp": NOW + 70})  # received before we started
    counted = counter.take(lambda ids: {"old": "mail.send"} if ids == {"old"} else {})
    assert counted == {(Key("task", "reports.export", "failed"), NOW): 1,
                       (Key("task", "reports.export", "retried"), NOW): 1,
                       (Key("task", "reports.export", "succeeded"), NOW + 60): 1,
                       (Key("task", "mail.send", "succeeded"), NOW + 60): 1}
    assert counter.take(lambda ids: {}) == {}  # taken once


def test_gauges_keep_the_minutes_last_value_counters_add_up(store: SeriesStore) -> None:
    waiting, failed = Key("queue", "celery", "waiting"), Key("task", "x", "failed")
    store.write({waiting: 5}, NOW + 10, {(failed, minute(NOW)): 2})
    store.write({waiting: 9}, NOW + 40, {(failed, minute(NOW)): 3})
    assert store.read([waiting, failed], NOW - 60) == {waiting: [(NOW, 9.0)], failed: [(NOW, 5.0)]}


def test_the_series_are_pruned_as_they_are_written(store: SeriesStore) -> None:
    calls: list[int] = []
    recorder = SeriesRecorder(store, days=1, take_snapshot=lambda: calls.append(1) or snapshot((QueueInfo("q", 4),)))
    old = Key("queue", "q", "waiting")
    store.write({old: 1}, time.time() - 2 * 86400, {})
    recorder.write_once()
    read = store.read([old], 0)[old]
    assert [v for _, v in read] == [4.0] and calls == [1]  # the two-day-old point is gone, the new one there


def test_a_standby_replica_writes_nothing(store: SeriesStore) -> None:
    recorder = SeriesRecorder(store, days=7, take_snapshot=lambda: snapshot((QueueInfo("q", 4),)),
                              should_record=lambda: False)
    recorder.on_task_event({"type": "task-received", "uuid": "a", "name": "t", "timestamp": NOW})
    recorder.on_task_event({"type": "task-failed", "uuid": "a", "timestamp": NOW})
    recorder.offer(snapshot((QueueInfo("q", 4),)))
    recorder.write_once()
    assert store.read([Key("queue", "q", "waiting"), Key("task", "t", "failed")], 0) == {}


# --- What a chart shows ---------------------------------------------------------------------------


def test_chart_requests_are_read_in_either_order_and_bad_ones_refused() -> None:
    assert parse([]) == Request("queues", "1h")
    assert parse(["24h", "reports.export"]) == Request("reports.export", "24h")
    with pytest.raises(ChartUsage, match="Usage: /tasks chart"):
        parse(["1h", "6h"])
    with pytest.raises(UsageError, match="Usage: /tasks chart"):
        parse_command("chart celery other")
    assert parse_command("chart celery 7d").target == "celery 7d"


def test_an_unknown_series_is_named_and_nothing_is_drawn(store: SeriesStore) -> None:
    rising_backlog(store)
    answer = charts(store).data(Request("reports.exp0rt"))
    assert isinstance(answer, str) and "no series called 'reports.exp0rt'" in answer
    empty = charts(SeriesStore(store.engine)).data(Request("workers"))
    assert empty == "Nothing measured for workers in the last hour yet."


def test_incidents_about_a_queue_or_a_task_name_their_series() -> None:
    assert incident_subject("queue:celery:backlog") == "celery"
    assert incident_subject("queue:a:b:wait") == "a:b"
    assert incident_subject("task:failing:reports.export") == "reports.export"
    assert incident_subject("task:stuck:6f1c") is None
    assert incident_subject("worker:w1@h") is None and incident_subject("broker") is None


# --- The picture ----------------------------------------------------------------------------------


def queue_chart(store: SeriesStore) -> ChartData:
    rising_backlog(store)  # 20 → 197 tasks waiting over the hour, threshold 100
    chart = charts(store).data(Request("celery", "1h"))
    assert isinstance(chart, ChartData)
    return chart


def test_a_queue_chart_shows_its_backlog_crossing_the_threshold(store: SeriesStore) -> None:
    image = decode(draw.png(queue_chart(store)))
    assert image.width == 800 and 500 <= image.height <= 700  # Slack's preview halves it: still readable
    threshold_rows = horizontal_rows(pixels_of(image, PURPLE), min_width=500)  # dashed, across the plot
    assert threshold_rows, "no threshold line"
    line = [p for p in pixels_of(image, BLUE) if p[0] > 100]  # the legend swatch is at the far left
    assert len(line) > 500, "no waiting-tasks line"
    ys = [y for _, y in line]
    # The backlog starts below the threshold and ends above it (rows grow downwards).
    assert min(ys) < min(threshold_rows) and max(ys) > max(threshold_rows)
    assert not pixels_of(image, VERMILLION)  # no failure series on a queue chart


def test_a_task_chart_draws_failures_in_their_own_colour(store: SeriesStore) -> None:
    failed, ok = Key("task", "reports.export", "failed"), Key("task", "reports.export", "succeeded")
    store.write({}, NOW, {(failed, minute(NOW - 600 + 60 * n)): n for n in range(10)}
                | {(ok, minute(NOW - 600 + 60 * n)): 5 for n in range(10)})
    chart = charts(store).data(Request("reports.export"))
    assert isinstance(chart, ChartData) and chart.panels[0].unit == "tasks per minute"
    image = decode(draw.png(chart))
    assert len(pixels_of(image, VERMILLION)) > 200 and len(pixels_of(image, GREEN)) > 200
    assert not horizontal_rows(pixels_of(image, PURPLE), 300)  # no alert threshold for task rates
    assert "failed: now 0, max 9 tasks per minute" in chart.alt_text


def test_names_with_dollar_signs_are_drawn_as_written_not_as_math(store: SeriesStore) -> None:
    store.write({Key("queue", "$x^2$_{q}", "waiting"): 3}, NOW - 60, {})
    chart = charts(store).data(Request("$x^2$_{q}"))
    assert isinstance(chart, ChartData)
    assert decode(draw.png(chart)).width == 800  # a math parse error would have raised


def test_the_console_draws_the_same_series_as_sparklines(store: SeriesStore) -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], width=8) == BARS
    assert sparkline([1, float("nan"), 1], width=3) == "█ █"  # a gap where nothing was measured
    view = chart_view(queue_chart(store))
    waiting = view.sections[0].items[0]
    assert waiting.title == "waiting" and waiting.text.endswith("now 197, max 197")
    assert view.sections[0].note == "alert threshold 100"
    spark = waiting.text.split()[0]
    assert spark[0] < spark[-1] and spark[-1] == "█"  # rising


# --- Slack: the upload flow and image blocks -----------------------------------------------------


@pytest.fixture
def standin() -> SlackStandIn:
    with SlackStandIn() as slack:
        yield slack


def client(slack: SlackStandIn) -> WebClient:
    return WebClient(token=slack.bot_token, base_url=slack.base_url)


def test_a_chart_is_posted_in_the_channel_and_the_answer_says_where(standin: SlackStandIn,
                                                                     store: SeriesStore) -> None:
    rising_backlog(store)
    view = ChartPoster(client(standin), charts(store)).post("celery 1h", "C_OPS", mention("U_ADMIN"))
    assert view.summary == "Chart posted in <#C_OPS>."
    (upload,) = standin.uploaded()
    assert upload.channels == ("C_OPS",) and upload.title == "Queue celery, last hour"
    image = decode(upload.content or b"")
    assert image.size[0] == 800 and pixels_of(image, BLUE) and horizontal_rows(pixels_of(image, PURPLE), 500)
    shared = standin.wait_for_message(lambda m: m.channel == "C_OPS" and bool(m.files))
    assert shared.text == "Queue celery, last hour (asked by <@U_ADMIN>)"
    assert not standin.rejections


def test_outside_the_bots_channels_the_answer_says_how_to_invite_it(standin: SlackStandIn,
                                                                    store: SeriesStore) -> None:
    rising_backlog(store)
    standin.add_channel("C_ELSEWHERE", "elsewhere", bot_member=False)
    poster = ChartPoster(client(standin), charts(store))
    assert "/invite @opsbot" in poster.post("celery", "C_ELSEWHERE", "<@U_ADMIN>").summary
    assert "direct message" in poster.post("celery", "D_SOMEONE", "<@U_ADMIN>").summary
    assert poster.post("nothing-like-it", "C_OPS", "<@U_ADMIN>").summary.startswith("I have no series")
    assert not standin.uploaded() and not [m for m in standin.messages if m.files]


def test_the_standin_refuses_what_slack_refuses_in_the_upload_flow(standin: SlackStandIn) -> None:
    api = client(standin)
    url = api.files_getUploadURLExternal(filename="a.png", length=10)
    from urllib.error import HTTPError
    from urllib.request import Request as HttpRequest
    from urllib.request import urlopen

    with pytest.raises(HTTPError):  # 9 bytes where 10 were announced
        urlopen(HttpRequest(url["upload_url"], data=b"123456789", method="POST"), timeout=5)
    from slack_sdk.errors import SlackApiError

    with pytest.raises(SlackApiError, match="file_not_found"):
        api.files_completeUploadExternal(files=[{"id": url["file_id"], "title": "a"}], channel_id="C_OPS")
    with pytest.raises(SlackApiError, match="file_not_found"):
        api.files_completeUploadExternal(files=[{"id": "F0000000000", "title": "a"}])


def image_block(**fields: object) -> dict:
    return {"type": "image", **fields}


def test_image_blocks_follow_slacks_rules() -> None:
    def files(ref: dict) -> str | None:
        return None if ref.get("id") == "F0123456789" else "invalid slack file"

    def error(block: dict) -> str:
        answer = message_error({"text": "t", "blocks": [block]}, files=files)
        return "" if answer is None else " ".join(answer["errors"])

    assert error(image_block(slack_file={"id": "F0123456789"}, alt_text="a chart")) == ""
    assert error(image_block(image_url="https://x.test/a.png", alt_text="a", title={"type": "plain_text",
                                                                                     "text": "t"})) == ""
    assert "alt_text" in error(image_block(slack_file={"id": "F0123456789"}))
    assert "alt_text" in error(image_block(slack_file={"id": "F0123456789"}, alt_text="x" * 2001))
    assert "exactly one of image_url" in error(image_block(slack_file={"id": "F0123456789"}, alt_text="a",
                                                           image_url="https://x.test/a.png"))
    assert "exactly one of url and id" in error(image_block(slack_file={"id": "F0123456789", "url": "u"},
                                                            alt_text="a"))
    assert "regex pattern" in error(image_block(slack_file={"id": "f123"}, alt_text="a"))
    assert "invalid slack file" in error(image_block(slack_file={"id": "F9999999999"}, alt_text="a"))
    assert "plain_text" in error(image_block(slack_file={"id": "F0123456789"}, alt_text="a",
                                             title={"type": "mrkdwn", "text": "t"}))


def test_an_alert_carries_its_chart_as_an_upload_shared_nowhere(standin: SlackStandIn,
                                                               store: SeriesStore) -> None:
    rising_backlog(store)
    api = client(standin)
    attach = IncidentCharts(api, charts(store)).attach
    payload = {"text": "Alert", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Alert"}},
                                           {"type": "actions", "elements": [{"type": "button", "action_id": "a",
                                                                             "text": {"type": "plain_text",
                                                                                      "text": "Ack"}}]}]}
    attached = attach(f"queue:celery:backlog@{int(NOW * 1000)}", payload)
    assert [b["type"] for b in attached["blocks"]] == ["section", "image", "actions"]
    image = attached["blocks"][1]
    (upload,) = standin.uploaded()
    assert image["slack_file"] == {"id": upload.id} and upload.channels == ()  # no post of its own
    assert "celery" in image["alt_text"] and "now 197" in image["alt_text"]
    api.chat_postMessage(channel="C_ALERTS", **attached)
    assert not standin.rejections and len(standin.messages) == 1
    # An alert about a worker has no series: the payload goes as it was, nothing is uploaded.
    assert attach(f"worker:w1@h@{int(NOW * 1000)}", payload) is payload and len(standin.uploaded()) == 1
    # A file never completed is refused in a block, as Slack refuses it.
    pending = api.files_getUploadURLExternal(filename="b.png", length=3)["file_id"]
    with pytest.raises(Exception, match="invalid_blocks"):
        api.chat_postMessage(channel="C_ALERTS", text="x", blocks=[image_block(slack_file={"id": pending},
                                                                               alt_text="a")])
