"""Fixtures that run the bot exactly as in production: the `opsbot` console script in its own process,
talking to the Slack stand-in (Socket Mode or HTTP) and to the real task stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.slack_standin import SlackStandIn
from tests.stack import FlowerProcess, RabbitNode, free_port, port_accepts, wait_until

OPSBOT = str(Path(sys.executable).parent / "opsbot")
REPO = Path(__file__).resolve().parent.parent
SIGNING_SECRET = "test-signing-secret-0123456789"


def stack_env(rabbit: RabbitNode, flower: FlowerProcess | None, tmp: Path) -> dict[str, str]:
    """Settings that point the bot at a test stack; Slack settings are added by the caller."""
    env = {
        "CELERY_BROKER_URL": rabbit.amqp_url,
        "RABBITMQ_MANAGEMENT_URL": rabbit.management_url,
        "FLOWER_URL": flower.url if flower else f"http://127.0.0.1:{free_port()}",
        "OPSBOT_DB_URL": f"sqlite:///{tmp / 'opsbot.sqlite3'}",
        "OPSBOT_QUEUES": "celery,other",
        "OPSBOT_LOG_LEVEL": "DEBUG",
    }
    return env


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment without any opsbot or Slack setting, plus `extra`."""
    prefixes = ("SLACK_", "OPSBOT_", "CELERY_", "RABBITMQ_MANAGEMENT", "FLOWER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


class BotProcess:
    """`opsbot <mode>` in its own process group, output captured to a file for secret checks."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, program: str = OPSBOT) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [program, *args], env=clean_env(env), cwd=log_path.parent,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn() as standin:
        yield standin


@pytest.fixture
def run_bot(tmp_path: Path) -> Iterator[Callable[..., BotProcess]]:
    """Start `opsbot` (or `program`, another install of it) with the given arguments and environment;
    stopped after the test."""
    started: list[BotProcess] = []

    def start(args: list[str], env: dict[str, str], program: str = OPSBOT) -> BotProcess:
        bot = BotProcess(args, env, tmp_path / f"bot-{len(started)}.log", program)
        started.append(bot)
        return bot

    yield start
    for bot in started:
        bot.stop()


@pytest.fixture
def socket_bot(slack: SlackStandIn, rabbit: RabbitNode, flower: FlowerProcess, worker: Any,
               run_bot: Callable[..., BotProcess], tmp_path: Path) -> Callable[..., BotProcess]:
    """A factory: `opsbot run` in Socket Mode against the session stack, connected before it returns."""

    def start(**overrides: str) -> BotProcess:
        return start_socket_mode(slack, run_bot, stack_env(rabbit, flower, tmp_path) | overrides)

    return start


def start_socket_mode(slack: SlackStandIn, run_bot: Callable[..., BotProcess], env: dict[str, str],
                      program: str = OPSBOT) -> BotProcess:
    """`opsbot run` in Socket Mode with the stand-in's tokens added to `env`; connected before it returns."""
    env = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token,
           "SLACK_API_URL": slack.base_url} | env
    before = slack.total_connections
    bot = run_bot(["run"], env, program)
    if not wait_until(lambda: slack.total_connections > before or bot.process.poll() is not None, 30):
        raise AssertionError(f"the bot never connected over Socket Mode:\n{bot.output()[-3000:]}")
    if bot.process.poll() is not None:
        raise AssertionError(f"the bot exited with {bot.process.returncode}:\n{bot.output()[-3000:]}")
    return bot


@pytest.fixture
def http_bot(slack: SlackStandIn, rabbit: RabbitNode, flower: FlowerProcess, worker: Any,
             run_bot: Callable[..., BotProcess], tmp_path: Path) -> tuple[BotProcess, str]:
    """`opsbot run` in HTTP mode; returns the process and its events URL."""
    port = free_port()
    env = stack_env(rabbit, flower, tmp_path)
    env.update(SLACK_BOT_TOKEN=slack.bot_token, SLACK_SIGNING_SECRET=SIGNING_SECRET,
               SLACK_API_URL=slack.base_url, OPSBOT_HTTP_PORT=str(port))
    bot = run_bot(["run"], env)
    if not wait_until(lambda: port_accepts(port) or bot.process.poll() is not None, 30):
        raise AssertionError(f"the bot never listened on {port}:\n{bot.output()[-3000:]}")
    time.sleep(0.2)
    return bot, f"http://127.0.0.1:{port}/slack/events"
