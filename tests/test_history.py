"""Task history recorded by the bot from Celery's events: real tasks that succeed, fail and are terminated,
kept across Flower and bot restarts, bounded; `/tasks show`, worker details, App Home, the digest.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.db import Database
from bot.history.digest import digest_text
from bot.history.record import fold
from bot.history.store import HistoryStore
from tests.support.bot import BotProcess
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

pytestmark = pytest.mark.integration


def say(slack: SlackStandIn, text: str) -> str:
    payload = slack.request("slash_command", text, timeout=3.0)
    return json.dumps(payload.get("blocks", [])) + str(payload.get("text", ""))


def finished(rabbit: RabbitNode, task_ids: list[str]) -> None:
    """Wait until the worker no longer holds any of these tasks."""
    inspect = control_app(rabbit.amqp_url).control.inspect(timeout=1)

    def idle() -> bool:
        held = json.dumps([inspect.active(), inspect.reserved()])
        return not any(task_id in held for task_id in task_ids)

    assert wait_until(idle, 20)


@pytest.fixture
def tasks_done(slack: SlackStandIn, socket_bot: Callable[..., BotProcess], rabbit: RabbitNode,
               worker: CeleryWorker) -> tuple[BotProcess, dict[str, str]]:
    """A bot that watched one task succeed, one fail and one be terminated."""
    bot = socket_bot(OPSBOT_ADMINS="U_ADMIN")
    time.sleep(1)  # the bot's event receiver is connected
    (ok,) = publish_tasks(rabbit.amqp_url, "stackapp.add", 1, args=(2, 3))
    (bad,) = publish_tasks(rabbit.amqp_url, "stackapp.fail", 1, args=("disk full on /var/export",))
    (slow,) = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(60,))
    assert wait_until(lambda: slow in say(slack, "active"), 15)
    slack.send_slash_command(f"terminate {slow}")
    assert wait_until(lambda: any("Terminated" in json.dumps(r.body) for r in slack.responses), 15)
    finished(rabbit, [ok, bad, slow])
    ids = {"ok": ok, "bad": bad, "slow": slow}
    assert wait_until(lambda: all(i[:8] in say(slack, "history") for i in ids.values()), 10)
    return bot, ids


def test_history_shows_final_states_and_names(slack: SlackStandIn, tasks_done: tuple[BotProcess, dict]) -> None:
    _, ids = tasks_done
    history = say(slack, "history")
    blocks = json.loads(history[: history.rindex("]") + 1])
    lines = "\n".join(b.get("text", {}).get("text", "") for b in blocks if b["type"] == "section")
    expected = {"ok": ("SUCCESS", "stackapp.add"), "bad": ("FAILURE", "stackapp.fail"),
                "slow": ("REVOKED", "stackapp.sleep")}
    for key, (state, name) in expected.items():
        (line,) = [line for line in lines.splitlines() if ids[key][:8] in line]
        assert state in line and name in line
    failed_only = say(slack, "history failed")
    assert ids["bad"][:8] in failed_only and ids["ok"][:8] not in failed_only
    assert ids["slow"][:8] in say(slack, "history revoked sleep")
    assert ids["ok"][:8] not in say(slack, "history revoked sleep")


def test_show_tells_why_a_task_failed(slack: SlackStandIn, tasks_done: tuple[BotProcess, dict]) -> None:
    _, ids = tasks_done
    story = say(slack, f"show {ids['bad']}")
    assert "FAILURE" in story and "stackapp.fail" in story
    assert "ValueError" in story and "disk full on /var/export" in story
    assert "Traceback" in story
    assert "not a valid task id" in say(slack, "show <script>")
    assert "No task" in say(slack, "show 00000000-0000-0000-0000-000000000000")


def test_history_survives_flower_and_bot_restarts(slack: SlackStandIn, tasks_done: tuple[BotProcess, dict],
                                                  socket_bot: Callable[..., BotProcess], flower: FlowerProcess) -> None:
    bot, ids = tasks_done
    flower.kill()
    flower.restart()
    bot.stop()
    socket_bot(OPSBOT_ADMINS="U_ADMIN")
    history = say(slack, "history")
    assert all(task_id[:8] in history for task_id in ids.values())


def test_history_stays_within_its_bounds(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                         rabbit: RabbitNode, worker: CeleryWorker, tmp_path: Path) -> None:
    socket_bot(OPSBOT_HISTORY_MAX_ROWS="25")
    time.sleep(1)
    ids = publish_tasks(rabbit.amqp_url, "stackapp.add", 80, args=(1, 1))
    finished(rabbit, ids)
    time.sleep(2)  # the writer flushes every half second
    with sqlite3.connect(tmp_path / "opsbot.sqlite3") as conn:
        (count,) = conn.execute("select count(*) from task_history").fetchone()
    assert 0 < count <= 25
    assert ids[-1][:8] in say(slack, "history add")  # the newest are the ones kept


def test_worker_details_and_app_home(slack: SlackStandIn, tasks_done: tuple[BotProcess, dict],
                                     worker: CeleryWorker) -> None:
    workers = say(slack, "workers")
    assert worker.name in workers and "processed" in workers and "up " in workers and "load " in workers
    slack.send_event({"type": "app_home_opened", "user": "U_ADMIN", "tab": "home", "channel": "D1"})
    home = json.dumps(slack.wait_for_call("views.publish").params["view"])
    assert "Recent failures" in home and "stackapp.fail" in home


@pytest.mark.slow
def test_without_task_events_it_says_how_to_turn_them_on(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                        make_rabbit: Callable[..., RabbitNode],
                                                        make_worker: Callable[..., CeleryWorker]) -> None:
    node = make_rabbit()
    make_worker(broker_url=node.amqp_url, events=False)
    socket_bot(CELERY_BROKER_URL=node.amqp_url, RABBITMQ_MANAGEMENT_URL=node.management_url,
               OPSBOT_ENABLE_EVENTS="false")  # opsbot would switch them on itself (bot.celeryapp.events)
    ids = publish_tasks(node.amqp_url, "stackapp.add", 2, args=(1, 1))
    finished(node, ids)
    history = say(slack, "history")
    assert "start workers with -E" in history and "worker_send_task_events" in history
    assert "OPSBOT_ENABLE_EVENTS" in history


def test_digest_counts_final_states_and_top_failures(tmp_path: Path) -> None:
    store = HistoryStore(Database(f"sqlite:///{tmp_path / 'digest.sqlite3'}"))
    now = time.time()
    events = [{"type": "task-succeeded", "uuid": f"ok-{n}", "timestamp": now - 60} for n in range(3)]
    events += [{"type": "task-received", "uuid": f"bad-{n}", "name": "reports.export", "timestamp": now - 70}
               for n in range(2)]
    events += [{"type": "task-failed", "uuid": f"bad-{n}", "exception": "E", "timestamp": now - 60} for n in range(2)]
    events += [{"type": "task-succeeded", "uuid": "old", "timestamp": now - 3 * 86400}]
    store.record_task_events(events, fold)
    text = digest_text(store, now)
    assert "3 SUCCESS" in text and "2 FAILURE" in text and "reports.export (2)" in text
    assert "4 SUCCESS" not in text  # three days ago is not in the last 24 h
