"""A plain install, as a new user makes it: `pip install .` into a fresh virtual environment with the
runtime dependencies only (no test extras, which used to bring in what the Redis transport needs), then
that install's `opsbot status --json` and `opsbot run` (through the Slack stand-in) against a real
Redis broker (password-protected, and an ACL user) and a real RabbitMQ broker: the worker and its
active task show, and Terminate stops the task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.bot import BotProcess, clean_env, start_socket_mode
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import free_port, wait_until
from tests.support.procs import REPO_ROOT
from tests.support.rabbit import RabbitNode
from tests.support.redis_server import RedisServer
from tests.support.slack import SlackStandIn

pytestmark = pytest.mark.integration

ADMIN = "U_ADMIN"
REDIS_PASSWORD = "redis-secret-9f3"
ACL_USER, ACL_PASSWORD = "user", "password"
INSTALL_TIMEOUT = 900  # a cold pip cache downloads every dependency


@pytest.fixture(scope="session")
def installed_opsbot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `opsbot` script of a fresh venv holding only the project and its runtime dependencies."""
    venv = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                             "--disable-pip-version-check", str(REPO_ROOT)],
                            env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # Runtime dependencies only: nothing from the test extras may hide a missing runtime dependency.
    extras = subprocess.run([str(venv / "bin" / "python"), "-c", "import flower"], capture_output=True, timeout=60)
    assert extras.returncode != 0, "the test extras are installed: this venv proves nothing"
    return venv / "bin" / "opsbot"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    server = RedisServer(requirepass=REDIS_PASSWORD, users={ACL_USER: ACL_PASSWORD})
    try:
        yield server.start()
    finally:
        server.cleanup()


def text_of(payload: dict) -> str:
    return json.dumps(payload.get("blocks", [])) + "\n" + str(payload.get("text", ""))


def terminate_button(payload: dict, task_id: str) -> dict:
    for block in payload.get("blocks", []):
        for element in [block.get("accessory") or {}, *block.get("elements", [])]:
            if element.get("action_id") == "terminate" and element.get("value", "").endswith(f"|{task_id}"):
                return element
    raise AssertionError(f"no Terminate button for {task_id} in {text_of(payload)[:2000]}")


def active_ids(broker_url: str, worker: CeleryWorker) -> set[str]:
    replies = control_app(broker_url).control.inspect(destination=[worker.name], timeout=1, limit=1).active()
    return {task["id"] for task in (replies or {}).get(worker.name, [])}


def check_plain_install(opsbot: Path, broker_url: str, worker: CeleryWorker, env: dict[str, str],
                        slack: SlackStandIn, run_bot: Callable[..., BotProcess]) -> None:
    """Status and /tasks from the installed opsbot show the worker and its task; Terminate stops it."""
    (task_id,) = publish_tasks(broker_url, "stackapp.sleep", 1, args=(120,))
    assert wait_until(lambda: task_id in active_ids(broker_url, worker), 20), "the task never started"

    status = subprocess.run([str(opsbot), "status", "--json"], env=clean_env(env), capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr  # all green: nothing unknown
    snapshot = json.loads(status.stdout)
    assert snapshot["celery"]["state"] == "running", snapshot["celery"]
    (shown,) = [w for w in snapshot["celery"]["workers"] if w["name"] == worker.name]
    assert [t["id"] for t in shown["active"]] == [task_id]

    bot = start_socket_mode(slack, run_bot, env | {"OPSBOT_ADMINS": ADMIN}, str(opsbot))
    overview = slack.wait_ack(slack.send_slash_command("", user_id=ADMIN), timeout=3.0)
    text = text_of(overview)
    assert "All systems go" in text and worker.name in text and task_id in text
    button = terminate_button(overview, task_id)
    before = len(slack.responses)
    slack.send_block_action("terminate", button["value"], user_id=ADMIN)
    assert wait_until(lambda: len(slack.responses) > before, 10), "the bot never answered the click"
    answer = text_of(slack.responses[before].body)
    assert f"Terminated stackapp.sleep `{task_id[:8]}` on {worker.name} (SIGTERM)" in answer, answer
    assert wait_until(lambda: task_id not in active_ids(broker_url, worker), 10), "the task still runs"
    log = bot.output()
    for secret in (REDIS_PASSWORD, ACL_PASSWORD, slack.bot_token):
        assert secret not in log + status.stdout + status.stderr


@pytest.mark.parametrize("credentials", ["password", "acl user"])
def test_redis_broker_with_a_plain_install(credentials: str, installed_opsbot: Path, locked_redis: RedisServer,
                                           make_worker: Callable[..., CeleryWorker],
                                           make_flower: Callable[..., FlowerProcess], slack: SlackStandIn,
                                           run_bot: Callable[..., BotProcess], tmp_path: Path) -> None:
    url = locked_redis.url if credentials == "password" else locked_redis.user_url(ACL_USER)
    worker = make_worker(broker_url=url)
    flower = make_flower(broker_url=url)
    env = {"CELERY_BROKER_URL": url, "FLOWER_URL": flower.url, "OPSBOT_QUEUES": "celery",
           "OPSBOT_DB_URL": f"sqlite:///{tmp_path / 'opsbot.sqlite3'}", "OPSBOT_LOG_LEVEL": "DEBUG"}
    check_plain_install(installed_opsbot, url, worker, env, slack, run_bot)


def test_rabbitmq_broker_with_a_plain_install(installed_opsbot: Path, rabbit: RabbitNode, worker: CeleryWorker,
                                              flower: FlowerProcess, slack: SlackStandIn,
                                              run_bot: Callable[..., BotProcess], tmp_path: Path) -> None:
    env = {"CELERY_BROKER_URL": rabbit.amqp_url, "RABBITMQ_MANAGEMENT_URL": rabbit.management_url,
           "FLOWER_URL": flower.url, "OPSBOT_QUEUES": "celery",
           "OPSBOT_DB_URL": f"sqlite:///{tmp_path / 'opsbot.sqlite3'}", "OPSBOT_LOG_LEVEL": "DEBUG"}
    check_plain_install(installed_opsbot, rabbit.amqp_url, worker, env, slack, run_bot)


def test_a_probe_that_fails_says_why_in_the_status_and_the_log(installed_opsbot: Path, locked_redis: RedisServer,
                                                               tmp_path: Path) -> None:
    """Wrong credentials for the broker: the status and the log name the cause, and no secret."""
    url = f"redis://{ACL_USER}:not-the-password@127.0.0.1:{locked_redis.port}/0"
    env = {"CELERY_BROKER_URL": url, "FLOWER_URL": f"http://127.0.0.1:{free_port()}", "OPSBOT_QUEUES": "celery",
           "OPSBOT_DB_URL": f"sqlite:///{tmp_path / 'opsbot.sqlite3'}"}
    status = subprocess.run([str(installed_opsbot), "status"], env=clean_env(env | {"COLUMNS": "200"}),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 2
    assert f"refuses opsbot's credentials at 127.0.0.1:{locked_redis.port} (check CELERY_BROKER_URL)" in status.stdout
    assert (f"WARNING bot.probes: Redis probe failed at 127.0.0.1:{locked_redis.port}: AuthenticationError: "
            "invalid username-password pair or user is disabled.") in status.stderr
    assert "not-the-password" not in status.stdout + status.stderr
