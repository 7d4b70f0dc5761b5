"""Proactive alerts from `opsbot run`, through the Slack stand-in, on real faults: Flower killed, a worker
killed, the broker node killed; Slack failing; the bot restarted mid-incident.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.bot import OPSBOT, BotProcess, clean_env, stack_env
from tests.support.celery_procs import CeleryWorker
from tests.support.flower import FlowerProcess
from tests.support.net import wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import Message, SlackStandIn

pytestmark = pytest.mark.integration

CHANNEL = "C_ALERTS"
ALERTING = {"OPSBOT_ALERT_CHANNEL": CHANNEL, "OPSBOT_POLL_SECONDS": "2", "OPSBOT_ADMINS": "U_ADMIN"}


def alerts(slack: SlackStandIn, about: str) -> list[Message]:
    """Top-level messages in the alert channel about one thing (thread replies are not alerts)."""
    return [m for m in slack.messages if m.channel == CHANNEL and not m.thread_ts and about in (m.text or "")]


def thread(slack: SlackStandIn, message: Message) -> list[str]:
    return [m.text or "" for m in slack.messages if m.thread_ts == message.ts]


def wait_alert(slack: SlackStandIn, about: str, timeout: float = 30) -> Message:
    assert wait_until(lambda: alerts(slack, about), timeout), f"no alert about {about}"
    return alerts(slack, about)[0]


def wait_resolved(slack: SlackStandIn, message: Message, timeout: float = 30) -> Message:
    def resolved() -> bool:
        current = slack.message(message.channel, message.ts)
        return current is not None and (current.text or "").startswith("Resolved")

    assert wait_until(resolved, timeout), f"alert {message.text!r} never resolved"
    return slack.message(message.channel, message.ts)


def test_flower_killed_alerts_once_and_resolves(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                make_flower: Callable[..., FlowerProcess]) -> None:
    flower = make_flower()
    socket_bot(FLOWER_URL=flower.url, **ALERTING)
    time.sleep(3)
    assert not alerts(slack, "Flower")
    flower.kill()
    alert = wait_alert(slack, "Flower")
    blocks = json.dumps(alert.blocks)
    assert "Acknowledge" in blocks and "Snooze 1 h" in blocks and "Show status" in blocks
    assert "Monitoring only" in blocks  # what it means for users
    time.sleep(5)  # more failing polls: still one message
    assert len(alerts(slack, "Flower")) == 1
    flower.restart()
    resolved = wait_resolved(slack, alert)
    assert "Acknowledge" not in json.dumps(resolved.blocks)
    # The thread line follows the redraw through the outbox, a moment later.
    assert wait_until(lambda: any(line.startswith("Resolved after") for line in thread(slack, alert)), 10)
    assert len(alerts(slack, "Flower")) == 1


def test_worker_killed_is_its_own_incident(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                           make_worker: Callable[..., CeleryWorker], worker: CeleryWorker) -> None:
    doomed = make_worker()
    socket_bot(**ALERTING)
    assert wait_until(lambda: doomed.name in json.dumps(slack.request("slash_command", "workers")), 10)
    time.sleep(3)  # the alert engine has seen it
    doomed.kill()
    alert = wait_alert(slack, doomed.name)
    # First it stops answering; once its heartbeats are overdue it is gone: the same alert, redrawn.
    assert wait_until(lambda: "is gone" in (slack.message(alert.channel, alert.ts).text or ""), 15)
    assert not alerts(slack, worker.name) and not alerts(slack, "Not running")  # the others carry on
    doomed.start()
    wait_resolved(slack, alert)
    assert len(alerts(slack, doomed.name)) == 1


@pytest.mark.slow
def test_broker_killed_alerts_once_and_resolves(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                make_rabbit: Callable[..., RabbitNode],
                                                make_worker: Callable[..., CeleryWorker]) -> None:
    node = make_rabbit()
    make_worker(broker_url=node.amqp_url)
    socket_bot(CELERY_BROKER_URL=node.amqp_url, RABBITMQ_MANAGEMENT_URL=node.management_url, **ALERTING)
    time.sleep(3)
    node.kill()
    alert = wait_alert(slack, "RabbitMQ")
    assert "No task can be queued or processed" in json.dumps(alert.blocks)
    node.restart()
    wait_resolved(slack, alert, timeout=40)
    assert len(alerts(slack, "RabbitMQ")) == 1


@pytest.mark.parametrize("status, count", [(429, 1), (500, 4)])
def test_slack_failures_delay_the_alert_but_never_lose_or_double_it(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], make_flower: Callable[..., FlowerProcess],
        status: int, count: int) -> None:
    flower = make_flower()
    socket_bot(FLOWER_URL=flower.url, **ALERTING)
    time.sleep(2)
    slack.fail_next("chat.postMessage", status=status, retry_after=1, count=count)
    flower.kill()
    wait_alert(slack, "Flower", timeout=40)
    assert [c for c in slack.calls_to("chat.postMessage") if c.faulted], "the fault was never hit"
    time.sleep(4)
    assert len(alerts(slack, "Flower")) == 1


def test_bot_restart_mid_incident_posts_nothing_new(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                    make_flower: Callable[..., FlowerProcess]) -> None:
    flower = make_flower()
    first = socket_bot(FLOWER_URL=flower.url, **ALERTING)
    flower.kill()
    alert = wait_alert(slack, "Flower")
    first.stop()
    socket_bot(FLOWER_URL=flower.url, **ALERTING)
    time.sleep(6)  # several polls of the new process, Flower still down
    assert len(alerts(slack, "Flower")) == 1
    flower.restart()
    wait_resolved(slack, alert)
    assert len(alerts(slack, "Flower")) == 1


def test_recovery_while_the_bot_was_down_resolves_on_start(slack: SlackStandIn,
                                                           socket_bot: Callable[..., BotProcess],
                                                           make_flower: Callable[..., FlowerProcess]) -> None:
    flower = make_flower()
    first = socket_bot(FLOWER_URL=flower.url, **ALERTING)
    flower.kill()
    alert = wait_alert(slack, "Flower")
    first.stop()
    flower.restart()
    socket_bot(FLOWER_URL=flower.url, **ALERTING)
    wait_resolved(slack, alert)
    assert len(alerts(slack, "Flower")) == 1


def test_acknowledge_mute_and_incidents(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                        make_flower: Callable[..., FlowerProcess]) -> None:
    flower = make_flower()
    socket_bot(FLOWER_URL=flower.url, **ALERTING)
    flower.kill()
    alert = wait_alert(slack, "Flower")
    assert "Flower" in json.dumps(slack.request("slash_command", "incidents"))

    (ack,) = [e for b in alert.blocks or [] if b["type"] == "actions" for e in b["elements"]
              if e["action_id"] == "alert_ack"]
    slack.send_block_action("alert_ack", ack["value"], user_id="U_USER", message=alert)
    assert wait_until(lambda: "Acknowledged" in json.dumps(slack.message(alert.channel, alert.ts).blocks), 10)
    assert any("Acknowledged by <@U_USER>" in line for line in thread(slack, alert))

    not_allowed = json.dumps(slack.request("slash_command", "mute 30m flower", user_id="U_USER"))
    assert "not allowed" in not_allowed and "only opsbot admins can mute and unmute alerts" in not_allowed
    flower.restart()
    wait_resolved(slack, alert)
    muted = json.dumps(slack.request("slash_command", "mute 30m flower"))
    assert "muted until" in muted
    assert "Alerts muted: flower until" in json.dumps(slack.request("slash_command", ""))
    flower.kill()
    time.sleep(7)
    assert len(alerts(slack, "Flower")) == 1  # the muted failure was not posted
    slack.request("slash_command", "unmute")
    assert wait_until(lambda: len(alerts(slack, "Flower")) == 2, 15), "the failure was not posted after unmute"
    assert "not a duration" in json.dumps(slack.request("slash_command", "mute soon"))


def test_console_prints_alerts(rabbit: RabbitNode, worker: CeleryWorker,
                               make_flower: Callable[..., FlowerProcess], tmp_path: Path) -> None:
    flower = make_flower()
    env = clean_env(stack_env(rabbit, flower, tmp_path) | {"OPSBOT_POLL_SECONDS": "1", "COLUMNS": "200"})
    console = subprocess.Popen([OPSBOT, "console"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        flower.kill()
        time.sleep(6)
        flower.restart()
        time.sleep(6)
        out, _ = console.communicate("quit\n", timeout=20)
    finally:
        if console.poll() is None:
            console.kill()
    assert "ALERT" in out and "Flower: Not running" in out
    assert "RESOLVED" in out


def test_a_refused_alert_still_arrives_as_text(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                               make_flower: Callable[..., FlowerProcess]) -> None:
    """Slack refuses the alert's blocks (forced): the same alert arrives as plain text, and the log says why."""
    flower = make_flower()
    slack.reject_next("chat.postMessage")  # the next message with blocks: the alert
    bot = socket_bot(FLOWER_URL=flower.url, **ALERTING)
    flower.kill()
    alert = wait_alert(slack, "Flower")
    assert not alert.blocks
    assert alert.text.startswith("Alert: Flower") and "Monitoring only" in alert.text  # its essentials
    assert [r.where for r in slack.rejections] == ["chat.postMessage"]
    assert "invalid_blocks" in bot.output()
    flower.restart()
    resolved = wait_resolved(slack, alert)  # later redraws of the same message carry their blocks again
    assert resolved.blocks and len(alerts(slack, "Flower")) == 1
