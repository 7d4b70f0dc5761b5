"""The bot exactly as in production: the `opsbot` console script in its own process, talking to the
Slack stand-in (Socket Mode or HTTP) and to the real task stack.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.flower import FlowerProcess
from tests.support.net import free_port, wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

OPSBOT = str(Path(sys.executable).parent / "opsbot")
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


_running: set[BotProcess] = set()


class BotProcess:
    """`opsbot <mode>` in its own process group, output captured to a file for secret checks.

    Whatever is still running when the interpreter exits is stopped (a benchmark interrupted with
    Ctrl-C leaves no bot behind)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, program: str = OPSBOT) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [program, *args], env=clean_env(env), cwd=log_path.parent, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _running.add(self)

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL the whole group if it lingers."""
        if self.running():
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._log.close()
        _running.discard(self)


@atexit.register
def _stop_bots() -> None:
    for bot in list(_running):
        with contextlib.suppress(Exception):
            bot.stop()


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
