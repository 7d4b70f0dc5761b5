"""Two stacks in one `opsbot run` (two virtual hosts of the test node, each with its worker and Flower),
driven through the Slack stand-in: both lines in `/tasks`, `/tasks <stack>` targets one, Terminate on one
leaves the other alone, a stack that goes down alerts under its name while the other stays green; and a
hung stack never holds back the other's answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from bot.config import load_settings
from bot.stacks.config import load_stacks
from bot.stacks.runtime import StacksRuntime
from tests.support.bot import BotProcess, start_socket_mode
from tests.support.celery_procs import CeleryWorker, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import HungServer, free_port, wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn
from tests.test_slack import buttons_in, click_answer, slash, text_of

pytestmark = pytest.mark.integration


def stacks_file(tmp_path: Path, stacks: dict[str, tuple[str, str, str]]) -> Path:
    """[name] broker_url, management_url, flower_url for each stack."""
    lines = []
    for name, (broker, management, flower) in stacks.items():
        lines += [f"[{name}]", f'broker_url = "{broker}"', f'management_url = "{management}"',
                  f'flower_url = "{flower}"', 'queues = ["celery"]', ""]
    path = tmp_path / "stacks.toml"
    path.write_text("\n".join(lines))
    return path


def test_two_stacks_in_one_bot(slack: SlackStandIn, rabbit: RabbitNode, run_bot: Callable[..., BotProcess],
                               make_worker: Callable[..., CeleryWorker], make_flower: Callable[..., FlowerProcess],
                               tmp_path: Path) -> None:
    suffix, port = os.getpid(), free_port()
    prod_url, staging_url = rabbit.add_vhost(f"prod{suffix}"), rabbit.add_vhost(f"staging{suffix}")
    make_worker(broker_url=prod_url, hostname="wprod@%h")
    make_worker(broker_url=staging_url, hostname="wstaging@%h")
    flowers = {url: make_flower(broker_url=url).url for url in (prod_url, staging_url)}
    path = stacks_file(tmp_path, {"prod": (prod_url, rabbit.management_url, flowers[prod_url]),
                                  "staging": (staging_url, rabbit.management_url, flowers[staging_url])})
    bot = start_socket_mode(slack, run_bot, {"OPSBOT_STACKS_FILE": str(path), "OPSBOT_ADMINS": "U_ADMIN",
                                             "OPSBOT_ALERT_CHANNEL": "C_ALERTS", "OPSBOT_POLL_SECONDS": "2",
                                             "OPSBOT_AUDIT_CHANNEL": "C_AUDIT", "OPSBOT_METRICS_PORT": str(port),
                                             "OPSBOT_DB_URL": f"sqlite:///{tmp_path / 'opsbot.sqlite3'}"})
    assert wait_until(lambda: "All 2 stacks go" in text_of(slash(slack, "")), 30)
    assert wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).ok, 30)
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'opsbot_probe_up{service="broker",stack="prod"} 1.0' in metrics
    assert 'celery_worker_up{hostname="' in metrics and 'stack="staging"} 1.0' in metrics
    assert "guest" not in metrics and "flower-secret" not in metrics
    overview = text_of(slash(slack, ""))
    assert "prod" in overview and "staging" in overview and "All systems go" in overview

    # /tasks <stack> active: each stack's own tasks only.
    (prod_task,) = publish_tasks(prod_url, "stackapp.sleep", 1, args=(120,))
    (staging_task,) = publish_tasks(staging_url, "stackapp.sleep", 1, args=(120,))
    assert wait_until(lambda: staging_task in text_of(slash(slack, "staging active")), 20)
    staging_active = slash(slack, "staging active")
    assert prod_task not in text_of(staging_active) and "Active tasks · staging" in text_of(staging_active)
    assert wait_until(lambda: prod_task in text_of(slash(slack, "prod active")), 20)

    # A forged stack is refused; Terminate on staging stops staging's task and leaves prod's running.
    refused = click_answer(slack, {"action_id": "terminate", "value": f"nosuch>active|{prod_task}"})
    assert "names no stack I watch; nothing was done" in text_of(refused)
    terminate = next(b for b in buttons_in(staging_active) if b["action_id"] == "terminate")
    assert terminate["value"] == f"staging>active|{staging_task}"
    done = text_of(click_answer(slack, terminate))
    assert "Terminated" in done and "staging" in done
    assert wait_until(lambda: staging_task not in text_of(slash(slack, "staging active")), 20)
    assert prod_task in text_of(slash(slack, "prod active"))

    # History and audit are each stack's own.
    assert wait_until(lambda: staging_task[:8] in text_of(slash(slack, "staging history")), 20)
    assert staging_task[:8] not in text_of(slash(slack, "prod history"))
    assert staging_task in text_of(slash(slack, "staging audit"))
    assert wait_until(lambda: any(m.text.startswith(f"<@U_ADMIN> terminate {staging_task} on staging: done")
                                  for m in slack.messages if m.channel == "C_AUDIT"), 10)
    prod_audit = text_of(slash(slack, "prod audit"))
    assert staging_task not in prod_audit and "names no stack" in prod_audit  # the forged click, refused

    # A mute is one stack's: the overview's footer says whose.
    assert "muted until" in text_of(slash(slack, "prod mute 30m flower", user_id="U_ADMIN"))
    assert "prod: Alerts muted: flower until" in text_of(slash(slack, ""))

    # The Home tab names both stacks.
    slack.send_event({"type": "app_home_opened", "user": "U_ADMIN", "tab": "home", "channel": "D1"})
    home = json.dumps(slack.wait_for_call("views.publish", timeout=15).params["view"])
    assert "prod" in home and "staging" in home

    # Staging goes down (its virtual host is gone): its alert names it, prod stays green.
    requests.delete(f"{rabbit.management_url}/api/vhosts/staging{suffix}", auth=("guest", "guest"),
                    timeout=10).raise_for_status()
    alert = slack.wait_for_message(lambda m: m.channel == "C_ALERTS" and not m.thread_ts, timeout=60)
    assert alert.text.startswith("Alert: staging: RabbitMQ") or "staging: RabbitMQ" in alert.text, alert.text
    assert all("prod" not in m.text for m in slack.messages if m.channel == "C_ALERTS")
    lines = slash(slack, "")
    first = next(b for b in lines["blocks"] if b["type"] == "section" and "prod" in json.dumps(b))
    assert "All systems go" in json.dumps(first)
    assert "staging · Services" in json.dumps(lines["blocks"], ensure_ascii=False)  # its details follow
    incidents = json.dumps(slash(slack, "incidents")["blocks"], ensure_ascii=False)
    assert "staging · " in incidents and "staging: RabbitMQ" in incidents
    assert slack.rejections == [], slack.rejections[0]
    assert "guest:guest" not in bot.output() and "flower-secret" not in bot.output()


def test_a_hung_stack_never_delays_the_other(rabbit: RabbitNode, hung_server: HungServer, tmp_path: Path) -> None:
    path = stacks_file(tmp_path, {
        "prod": (rabbit.amqp_url, rabbit.management_url, f"http://127.0.0.1:{free_port()}"),
        "hung": (hung_server.url("amqp", "guest:guest") + "//", hung_server.url(), hung_server.url()),
    })
    settings = load_settings(OPSBOT_STACKS_FILE=str(path), OPSBOT_DB_URL=f"sqlite:///{tmp_path / 'o.sqlite3'}",
                             OPSBOT_PROBE_TIMEOUT="1")
    runtime = StacksRuntime(settings, load_stacks(settings))
    try:
        prod, hung = runtime.snapshots()
    finally:
        runtime.close()
    assert prod.snapshot.broker.up and [q.name for q in prod.snapshot.broker.queues] == ["celery"]
    assert hung.snapshot.broker.problem is not None and hung.snapshot.broker.problem.kind.value == "timeout"
    assert hung_server.connection_count >= 1  # it was asked, and never answered


def test_the_console_shows_every_stack_and_targets_one(rabbit: RabbitNode, hung_server: HungServer,
                                                       tmp_path: Path) -> None:
    import subprocess

    from tests.support.bot import OPSBOT, clean_env

    path = stacks_file(tmp_path, {
        "prod": (rabbit.amqp_url, rabbit.management_url, f"http://127.0.0.1:{free_port()}"),
        "hung": (hung_server.url("amqp", "guest:guest") + "//", hung_server.url(), hung_server.url()),
    })
    env = clean_env({"OPSBOT_STACKS_FILE": str(path), "OPSBOT_DB_URL": f"sqlite:///{tmp_path / 'c.sqlite3'}",
                     "OPSBOT_PROBE_TIMEOUT": "1", "COLUMNS": "200"})
    result = subprocess.run([OPSBOT, "console"], input="/tasks\nprod queues\nqueues\nhung chart\nquit\n", env=env,
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.index("/tasks <stack> [subcommand]") < out.index("opsbot> ")  # the first help names the stacks
    assert "Probed 2 stacks in" in out  # the hung one did not hold the answer back
    assert "hung  RabbitMQ: Not running: timed out" in out and "hung · Services" in out
    assert "prod · Queues" in out and "Queues · prod" in out
    assert "Name the stack: /tasks <stack> queues (stacks: prod, hung)" in out
    assert "Charts are not available" not in out and "opsbot · hung" in out  # the stack's own series: none yet
    assert "guest:guest" not in out + result.stderr
    status = subprocess.run([OPSBOT, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 2  # red: the worst stack's
    stacks = json.loads(status.stdout)
    assert list(stacks) == ["prod", "hung"] and stacks["hung"]["broker"]["problem"]["kind"] == "timeout"
    assert "guest:guest" not in status.stdout
