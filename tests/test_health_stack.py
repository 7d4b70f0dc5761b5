"""Task-level alerts and Retry (issue 13), on the real stack through the strict Slack stand-in:
a failing task, a stuck task, an old head message, harmless waiting-time reads, Retry with and
without a result backend.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from bot.status.assess import time_of_day
from tests.support.bot import BotProcess
from tests.support.celery_procs import CeleryWorker
from tests.support.net import wait_until
from tests.support.rabbit import RabbitNode
from tests.support.redis_server import RedisServer
from tests.support.slack import Message, SlackStandIn
from tests.test_alerting import alerts, thread, wait_alert, wait_resolved

pytestmark = pytest.mark.integration

CHANNEL = "C_ALERTS"
ADMIN = "U_ADMIN"
ALERTING = {"OPSBOT_ALERT_CHANNEL": CHANNEL, "OPSBOT_POLL_SECONDS": "2", "OPSBOT_ADMINS": ADMIN}
_apps: dict[str, Celery] = {}


def producer(broker_url: str) -> Celery:
    """A producer like a real app's, with task_send_sent_event on (opsbot dates waiting tasks by it)."""
    if broker_url not in _apps:
        app = Celery(f"producer-{len(_apps)}", broker=broker_url, set_as_current=False)
        app.conf.update(task_send_sent_event=True, broker_connection_retry_on_startup=False,
                        broker_transport_options={"confirm_publish": True})
        _apps[broker_url] = app
    return _apps[broker_url]


def send(broker_url: str, name: str, args: tuple = (), kwargs: dict | None = None, queue: str = "celery",
         count: int = 1) -> list[str]:
    app = producer(broker_url)
    with app.producer_or_acquire() as pub:
        return [app.send_task(name, args=list(args), kwargs=kwargs or {}, queue=queue, producer=pub).id
                for _ in range(count)]


def text_of(payload: dict) -> str:
    return json.dumps(payload.get("blocks", [])) + "\n" + str(payload.get("text", ""))


def elements(blocks: list[dict] | None) -> list[dict[str, Any]]:
    found = []
    for block in blocks or []:
        if block.get("accessory", {}).get("type") == "button":
            found.append(block["accessory"])
        found += [e for e in block.get("elements", []) if e.get("type") == "button"]
    return found


def current(slack: SlackStandIn, message: Message) -> Message:
    found = slack.message(message.channel, message.ts)
    assert found is not None
    return found


def answer(slack: SlackStandIn, sender: Callable[[], Any]) -> dict:
    """What the bot answered through a response_url after a click or an acted-on command."""
    before = len(slack.responses)
    sender()
    assert wait_until(lambda: len(slack.responses) > before, 20), "the bot never answered"
    record = slack.responses[-1]
    return record.body | {"_replace": record.replace_original}


def slash(slack: SlackStandIn, text: str, user_id: str = ADMIN) -> dict:
    return slack.wait_ack(slack.send_slash_command(text, user_id=user_id), timeout=3.0)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def health_bot(socket_bot: Callable[..., BotProcess]) -> Iterator[Callable[..., BotProcess]]:
    def start(**env: str) -> BotProcess:
        return socket_bot(**(ALERTING | {"OPSBOT_QUEUES": "celery,other,spare"} | env))
    yield start


# --- Failing tasks ----------------------------------------------------------------------------


def test_a_failing_task_opens_one_incident_updated_in_place_then_resolved(
        slack: SlackStandIn, health_bot: Callable[..., BotProcess], rabbit: RabbitNode, worker: CeleryWorker) -> None:
    health_bot(OPSBOT_FAILURE_WINDOW="10s")
    failed = send(rabbit.amqp_url, "stackapp.fail", ("no such report; password=hunter2",), count=3)
    alert = wait_alert(slack, "Task stackapp.fail")
    assert "3 failures in 10 s" in alert.text
    # Under load the history may still lack a detail at the first post: the same message is redrawn with it.
    assert wait_until(lambda: worker.name in json.dumps(current(slack, alert).blocks)
                      and "out of 3 runs" in json.dumps(current(slack, alert).blocks), 20)
    alert = current(slack, alert)
    blocks = json.dumps(alert.blocks)
    assert "ValueError: no such report" in blocks and "hunter2" not in blocks  # the exception, redacted
    shows = {e["value"] for e in elements(alert.blocks) if e["action_id"].startswith("task_show_")}
    assert shows == set(failed)
    assert "Acknowledge" in blocks
    assert not [e for e in elements(alert.blocks) if e["action_id"] == "retry"], "no result backend: no Retry"

    shown = answer(slack, lambda: slack.send_block_action("task_show_1", failed[0], message=alert))
    assert not shown["_replace"] and "ValueError" in text_of(shown)  # its story, beside the alert

    send(rabbit.amqp_url, "stackapp.fail", ("again",), count=2)
    assert wait_until(lambda: "5 failures in 10 s" in (current(slack, alert).text or ""), 20), \
        "the alert was not updated in place"
    assert len(alerts(slack, "Task stackapp.fail")) == 1
    resolved = wait_resolved(slack, alert, timeout=45)  # a whole window without a failure, then resolve_after
    assert "Acknowledge" not in json.dumps(resolved.blocks)
    assert wait_until(lambda: any(line.startswith("Resolved after") for line in thread(slack, alert)), 10)
    assert len(alerts(slack, "Task stackapp.fail")) == 1
    assert not slack.rejections


# --- Stuck tasks ------------------------------------------------------------------------------


def test_a_task_past_its_limit_alerts_and_terminate_from_the_alert_works(
        slack: SlackStandIn, health_bot: Callable[..., BotProcess], rabbit: RabbitNode, worker: CeleryWorker) -> None:
    health_bot(OPSBOT_TASK_MAX_RUNTIME="1h", OPSBOT_RUNTIME_RULES="stackapp.sl*=3s")
    (task_id,) = send(rabbit.amqp_url, "stackapp.sleep", (120,))
    alert = wait_alert(slack, "Task stackapp.sleep")
    blocks = json.dumps(alert.blocks)
    assert task_id[:8] in alert.text and worker.name in alert.text and "pid " in alert.text
    assert "longer than 3 s" in alert.text
    by_id = {e["action_id"]: e for e in elements(alert.blocks)}
    assert {"terminate", "kill", "alert_ack"} <= set(by_id) and "Kill this task?" in blocks

    denied = answer(slack, lambda: slack.send_block_action("terminate", by_id["terminate"]["value"],
                                                           user_id="U_USER", message=alert))
    assert "not allowed" in text_of(denied)
    done = answer(slack, lambda: slack.send_block_action("terminate", by_id["terminate"]["value"], message=alert))
    assert f"Terminated stackapp.sleep `{task_id[:8]}` on {worker.name} (SIGTERM), by <@{ADMIN}>" in text_of(done)
    assert not done["_replace"], "the alert message belongs to the incident: the answer goes beside it"
    wait_resolved(slack, alert, timeout=30)
    assert len(alerts(slack, "Task stackapp.sleep")) == 1
    assert not slack.rejections


# --- Waiting time -----------------------------------------------------------------------------

AGE = re.compile(r"oldest waiting (?:(\d+) min )?(\d+) s")


def test_an_old_head_message_alerts_with_its_age_to_the_second(
        slack: SlackStandIn, health_bot: Callable[..., BotProcess], rabbit: RabbitNode, worker: CeleryWorker) -> None:
    health_bot(OPSBOT_QUEUE_MAX_WAIT="4s")
    before = time.time()
    send(rabbit.amqp_url, "stackapp.add", (1, 2), queue="spare")  # nothing consumes spare
    after = time.time()
    send(rabbit.amqp_url, "stackapp.add", (3, 4), queue="spare")  # a later one: the head stays the first
    alert = wait_alert(slack, "a task has waited since")
    assert alert.text and any(f"Queue spare: a task has waited since {time_of_day(t)}," in alert.text
                              for t in (before, after)), alert.text
    assert "longer than 4 s" in alert.text

    time.sleep(2)
    for section in ("queues", ""):
        asked = time.time()
        shown = text_of(slash(slack, section))
        match = AGE.search(shown)
        assert match, shown[:2000]
        age = int(match[1] or 0) * 60 + int(match[2])
        assert asked - after - 1 <= age <= asked - before + 1, (age, asked - before)
    assert len(alerts(slack, "a task has waited since")) == 1
    assert not slack.rejections


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_reading_the_waiting_time_never_reorders_duplicates_or_loses_a_message(
        broker: str, slack: SlackStandIn, socket_bot: Callable[..., BotProcess], rabbit: RabbitNode,
        redis_server: RedisServer, make_worker: Callable[..., CeleryWorker], tmp_path: Path) -> None:
    url, queue = (redis_server.url, "celery") if broker == "redis" else (rabbit.amqp_url, "spare")
    out = tmp_path / "delivered.jsonl"
    socket_bot(CELERY_BROKER_URL=url, OPSBOT_QUEUES=queue)
    make_worker(broker_url=url, queues=(queue,), pool="solo", concurrency=1)
    total, sent, reads, seen = 120, [], [0], [0]
    stop = threading.Event()

    def reader() -> None:  # looks at the head as often as it can while producer and consumer run
        while not stop.is_set():
            text = text_of(slash(slack, "queues"))
            reads[0] += 1
            seen[0] += bool(AGE.search(text))

    looking = threading.Thread(target=reader, daemon=True)
    looking.start()
    try:
        for n in range(total):
            sent += send(url, "stackapp.record", (str(out), n), {"pause": 0.03}, queue=queue)
            time.sleep(0.005)
        assert wait_until(lambda: len(records(out)) >= total, 90), f"{len(records(out))} of {total} delivered"
        time.sleep(1)  # anything delivered twice would show up by now
    finally:
        stop.set()
        looking.join(timeout=10)
    delivered = records(out)
    assert [r["args"][0] for r in delivered] == list(range(total))  # every one, once, in order
    assert [r["id"] for r in delivered] == sent
    assert reads[0] >= 10 and seen[0] >= 3, (reads, seen)  # the head was read, many times, while tasks waited
    assert not slack.rejections


# --- Retry ------------------------------------------------------------------------------------

EXACT_ARGS = ("x" * 3000, {"when": "2026-01-01T00:00:00", "n": [1, 2.5, None, True]}, "ünïcode ☃ <!channel>")
EXACT_KWARGS = {"nested": {"a": [1, {"b": "c"}]}, "fail": True}


def history_buttons(slack: SlackStandIn, task_id: str) -> list[dict[str, Any]]:
    return [e for e in elements(slash(slack, "history failed").get("blocks")) if e["value"].endswith(task_id)]


def test_retry_resends_the_exact_arguments_from_a_redis_result_backend(
        slack: SlackStandIn, health_bot: Callable[..., BotProcess], rabbit: RabbitNode,
        redis_server: RedisServer, make_worker: Callable[..., CeleryWorker], tmp_path: Path) -> None:
    backend = redis_server.url.rsplit("/", 1)[0] + "/3"
    out = tmp_path / "received.jsonl"
    make_worker(queues=("other",), extra_env={"STACK_RESULT_BACKEND": backend, "STACK_RESULT_EXTENDED": "1"})
    health_bot(CELERY_RESULT_BACKEND=backend, OPSBOT_FAILURE_THRESHOLD="100")
    (original,) = send(rabbit.amqp_url, "stackapp.record", (str(out), *EXACT_ARGS), EXACT_KWARGS, queue="other")
    assert wait_until(lambda: history_buttons(slack, original), 20), "no Retry on the failed task"
    (retry,) = history_buttons(slack, original)
    assert retry["action_id"] == "retry" and "same arguments" in json.dumps(retry["confirm"])

    assert "not allowed" in text_of(answer(slack, lambda: slack.send_block_action("retry", retry["value"],
                                                                                  user_id="U_USER")))
    done = answer(slack, lambda: slack.send_block_action("retry", retry["value"]))
    match = re.search(r"as `([0-9a-f-]{36})` on other", text_of(done))
    assert match and f"Retried stackapp.record `{original[:8]}`" in text_of(done), text_of(done)
    new_id = match[1]
    assert wait_until(lambda: len(records(out)) == 2, 20)
    first, second = records(out)
    assert second["id"] == new_id and first["id"] == original
    assert second["args"] == first["args"] == json.loads(json.dumps(EXACT_ARGS))  # the 3000 characters too
    assert second["kwargs"] == first["kwargs"] == {"nested": EXACT_KWARGS["nested"]}

    assert wait_until(lambda: "retried as" in text_of(slash(slack, "history failed"))
                      and "retry of" in text_of(slash(slack, "history failed")), 20)
    assert f"retry of {original[:4]}" in text_of(slash(slack, f"show {new_id}"))
    again = answer(slack, lambda: slack.send_slash_command(f"retry {original}"))
    assert "already retried" in text_of(again)

    # Bulk: every failed stackapp.record since an hour ago, after a confirmation that says how many.
    assert wait_until(lambda: f"`{new_id[:8]}`" in text_of(slash(slack, "history failed")), 20)
    confirm = slash(slack, "retry failed stackapp.record 1h")
    (bulk,) = [e for e in elements(confirm.get("blocks")) if e["action_id"] == "retry_failed"]
    assert bulk["text"]["text"] == "Retry 1"  # the original is retried already: only the retry's own failure
    assert "Retried 1 of 1" in text_of(answer(slack, lambda: slack.send_block_action("retry_failed", bulk["value"])))
    assert wait_until(lambda: len(records(out)) == 3, 20)
    assert records(out)[2]["args"] == first["args"]
    assert not slack.rejections


def test_retry_refuses_with_a_reason_without_a_result_backend(
        slack: SlackStandIn, health_bot: Callable[..., BotProcess], rabbit: RabbitNode, worker: CeleryWorker,
        tmp_path: Path) -> None:
    health_bot(OPSBOT_FAILURE_THRESHOLD="100")
    (failed,) = send(rabbit.amqp_url, "stackapp.fail", ("boom",))
    assert wait_until(lambda: failed[:8] in text_of(slash(slack, "history failed")), 20)
    assert not [e for e in elements(slash(slack, "history failed").get("blocks")) if e["action_id"] == "retry"]
    refused = text_of(answer(slack, lambda: slack.send_slash_command(f"retry {failed}")))
    assert "CELERY_RESULT_BACKEND" in refused and "result_extended=True" in refused and "Nothing was done" in refused
    assert "CELERY_RESULT_BACKEND" in text_of(slash(slack, "retry failed stackapp.fail"))
    assert not slack.rejections


def test_the_redis_head_is_read_never_taken(redis_server: RedisServer) -> None:
    """LINDEX on the list's right end names the next task to be delivered, and leaves it there."""
    import redis

    from bot.config import load_settings
    from bot.health.waiting import head_ids

    settings = load_settings(_env_file=None, broker_url=redis_server.url)
    ids = send(redis_server.url, "stackapp.add", (1, 2), queue="headq", count=3)
    for _ in range(50):
        assert head_ids(settings, ["headq"]) == {"headq": [ids[0]]}
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen("headq") == 3
    client.delete("headq")
