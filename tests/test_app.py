"""The Celery app, for real: queues discovered from an app module written here (`opsbot -A`), task events
switched on in a worker started without -E, and a real `celery beat` killed mid-schedule (the alert comes
within one interval + grace + one poll, and resolves when beat runs again)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.bot import BotProcess, stack_env
from tests.support.celery_procs import BeatProcess, CeleryWorker, publish_tasks
from tests.support.net import wait_until
from tests.support.procs import REPO_ROOT
from tests.support.rabbit import RabbitNode
from tests.support.slack import Message, SlackStandIn

pytestmark = pytest.mark.integration

CHANNEL = "C_ALERTS"
EVERY, GRACE, POLL = 5.0, 2.0, 1.0


def say(slack: SlackStandIn, text: str) -> str:
    payload = slack.request("slash_command", text, timeout=3.0)
    return json.dumps(payload.get("blocks", [])) + str(payload.get("text", ""))


def test_queues_come_from_the_app(rabbit: RabbitNode, run_bot: Callable[..., BotProcess], tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "celery.py").write_text(
        "from celery import Celery\nfrom kombu import Queue\n"
        f"app = Celery('shop', broker={rabbit.amqp_url!r})\n"
        "app.conf.task_queues = [Queue('orders'), Queue('emails')]\n"
        "app.conf.task_default_queue = 'orders'\n"
        "app.conf.task_routes = {'shop.reports.*': {'queue': 'reports'}}\n")
    publish_tasks(rabbit.amqp_url, "shop.orders.place", 2, queue="emails")  # declared, two waiting
    env = stack_env(rabbit, None, tmp_path)
    for taken_from_the_app in ("CELERY_BROKER_URL", "OPSBOT_QUEUES"):
        del env[taken_from_the_app]
    bot = run_bot(["-A", "shop", "status", "--json"], {**env, "OPSBOT_LOG_LEVEL": "ERROR"})
    bot.process.wait(timeout=30)
    snapshot = json.loads(bot.output()[bot.output().index("{"):])
    assert snapshot["broker"]["target"] == f"127.0.0.1:{rabbit.port}"
    queues = {q["name"]: q for q in snapshot["broker"]["queues"]}
    assert list(queues) == ["orders", "emails", "reports"]
    assert queues["emails"]["ready"] == 2 and not queues["reports"]["exists"]

    env["OPSBOT_QUEUES"] = "emails"  # the environment still wins
    bot = run_bot(["-A", "shop", "status", "--json"], {**env, "OPSBOT_LOG_LEVEL": "ERROR"})
    bot.process.wait(timeout=30)
    assert [q["name"] for q in json.loads(bot.output()[bot.output().index("{"):])["broker"]["queues"]] == ["emails"]


def test_task_events_are_switched_on_in_a_worker_without_e(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], rabbit: RabbitNode,
        make_worker: Callable[..., CeleryWorker]) -> None:
    # A virtual host of its own: no Flower of another test watches it (Flower switches events on too).
    broker = rabbit.add_vhost("no-events")
    quiet = make_worker(broker_url=broker, queues=("other",), events=False)  # no -E, task events off
    bot = socket_bot(OPSBOT_ENABLE_EVENTS="false", CELERY_BROKER_URL=broker)
    time.sleep(1.5)
    (unseen,) = publish_tasks(broker, "stackapp.add", 1, queue="other", args=(1, 1))
    time.sleep(4)  # it ran (the worker is idle) and sent no event: the history cannot know it
    assert unseen[:8] not in say(slack, "history")
    bot.stop()

    socket_bot(CELERY_BROKER_URL=broker)  # OPSBOT_ENABLE_EVENTS defaults to true
    (seen,) = publish_tasks(broker, "stackapp.add", 1, queue="other", args=(2, 2))
    assert wait_until(lambda: seen[:8] in say(slack, "history"), 30), "the worker never sent task events"
    assert quiet.is_running() and not slack.rejections


@pytest.fixture
def beat(rabbit: RabbitNode) -> Iterator[BeatProcess]:
    process = BeatProcess(rabbit.amqp_url, every=EVERY)
    try:
        yield process
    finally:
        process.cleanup()


def alerts(slack: SlackStandIn, about: str) -> list[Message]:
    return [m for m in slack.messages if m.channel == CHANNEL and not m.thread_ts and about in (m.text or "")]


def test_beat_killed_mid_schedule_alerts_and_resolves(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], beat: BeatProcess) -> None:
    socket_bot(OPSBOT_CELERY_APP="tests.beatapp", PYTHONPATH=str(REPO_ROOT), STACK_BEAT_SECONDS=str(EVERY),
               OPSBOT_BEAT_GRACE=f"{GRACE:.0f}s", OPSBOT_POLL_SECONDS=f"{POLL:.0f}", OPSBOT_ALERT_CHANNEL=CHANNEL)
    beat.start()

    def both_ran() -> bool:
        listing = say(slack, "beat")
        return listing.count("last run today") == 2 and "LATE" not in listing

    assert wait_until(both_ran, 40), say(slack, "beat")
    listing = say(slack, "beat")
    assert "add-small" in listing and "add-big" in listing and "every 5 seconds" in listing
    assert "2 periodic tasks, all on time" in listing and "next run today" in listing
    assert wait_until(lambda: "(SUCCESS)" in say(slack, "beat"), 20)  # the worker ran them
    assert not alerts(slack, "beat")

    beat.kill()
    killed = time.monotonic()
    assert wait_until(lambda: alerts(slack, "Celery beat is down"), 60), say(slack, "beat")
    took = time.monotonic() - killed
    # One interval + grace + one poll, plus the engine's confirming poll and slack for a busy machine.
    assert took <= EVERY + GRACE + POLL + 12, f"alerted {took:.1f} s after the kill"
    (alert,) = alerts(slack, "Celery beat is down")
    assert "none of its 2 periodic tasks ran on time" in (alert.text or "")
    assert "No periodic task is being sent" in json.dumps(alert.blocks)
    assert "LATE" in say(slack, "beat")

    beat.start()  # its schedule and pid files are left from the kill

    def resolved() -> bool:
        current = slack.message(alert.channel, alert.ts)
        return current is not None and (current.text or "").startswith("Resolved")

    assert wait_until(resolved, 60), say(slack, "beat")
    assert len(alerts(slack, "Celery beat is down")) == 1
    assert not slack.rejections
