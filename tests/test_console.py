"""What a newcomer reads: `opsbot console` in a real terminal (a tmux pane) against a RabbitMQ node
without the management plugin, no worker and no Flower; then the same states through Slack.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.bot import OPSBOT, BotProcess, clean_env, start_socket_mode
from tests.support.net import free_port, wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

pytestmark = pytest.mark.integration

WIDTH = 250  # wide enough that no line a test checks is wrapped
_sessions = itertools.count()


class Terminal:
    """A command running in a tmux pane: keys go in as typed, the screen comes out as a user sees it."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"opsbot-test-{os.getpid()}-{next(_sessions)}"
        self._tmux("new-session", "-d", "-s", "t", "-x", str(WIDTH), "-y", "60", shlex.join(command), env=env)

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], env=env,
                                capture_output=True, text=True, timeout=10, check=True)
        return result.stdout

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)

    def enter(self) -> None:
        self._tmux("send-keys", "-t", "t", "Enter")

    def lines(self) -> list[str]:
        """Every line on the screen and in its scrollback, without trailing blanks."""
        text = self._tmux("capture-pane", "-p", "-t", "t", "-S", "-1000")
        lines = [line.rstrip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10, check=False)


@pytest.fixture
def terminal() -> Iterator[Callable[[list[str], dict[str, str]], Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(command: list[str], env: dict[str, str]) -> Terminal:
        opened.append(Terminal(command, env))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


@pytest.fixture
def bare_stack(make_rabbit: Callable[..., RabbitNode], tmp_path: Path) -> tuple[RabbitNode, int, dict[str, str]]:
    """A node as Debian installs it (no management plugin), no worker, no Flower; the settings for it."""
    node = make_rabbit(management=False)
    flower_port = free_port()
    env = {"CELERY_BROKER_URL": node.amqp_url, "RABBITMQ_MANAGEMENT_URL": node.management_url,
           "FLOWER_URL": f"http://127.0.0.1:{flower_port}", "OPSBOT_QUEUES": "celery",
           "OPSBOT_DB_URL": f"sqlite:///{tmp_path / 'opsbot.sqlite3'}",
           "OPSBOT_POLL_SECONDS": "2", "OPSBOT_ALERT_AFTER": "3"}
    return node, flower_port, env


def expected_states(node: RabbitNode, flower_port: int) -> dict[str, str]:
    management = f"http://127.0.0.1:{node.management_port}"
    no_plugin = f"management API not reachable at {management}: is the rabbitmq_management plugin enabled?"
    return {
        "headline": "Celery: Not running: no worker answered, and none is sending heartbeats (and 2 more problems)",
        "RabbitMQ": f"Running, no tasks waiting; {no_plugin}",
        "Celery": "Not running: no worker answered, and none is sending heartbeats",
        "Flower": f"Not running: not reachable at http://127.0.0.1:{flower_port} (connection refused). "
                  "Has it been started?",
        "alert RabbitMQ": f"RabbitMQ: {no_plugin} — Waiting counts are still exact; consumers, unacknowledged "
                          "tasks and resource alarms are unknown.",
        "alert Celery": "Celery: Not running: no worker answered, and none is sending heartbeats — "
                        "No worker would process a task sent now.",
        "alert Flower": f"Flower: Not running: not reachable at http://127.0.0.1:{flower_port} (connection refused). "
                        "Has it been started? — Monitoring only: tasks still run, but Flower's dashboards are "
                        "unavailable.",
    }


CLOCK = re.compile(r"\b\d\d:\d\d:\d\d\b")


def test_a_newcomers_console_session(bare_stack: tuple[RabbitNode, int, dict[str, str]],
                                     terminal: Callable[[list[str], dict[str, str]], Terminal]) -> None:
    node, flower_port, env = bare_stack
    states = expected_states(node, flower_port)
    term = terminal([OPSBOT, "console"], clean_env(env))
    assert wait_until(lambda: term.lines()[-1:] == ["opsbot>"], 30), "\n".join(term.lines())
    term.type("/tas")  # half typed when the alerts arrive

    def alerts() -> list[str]:
        return [CLOCK.sub("HH:MM:SS", line) for line in term.lines() if line.startswith("ALERT")]

    assert wait_until(lambda: len(alerts()) == 3, 30), "\n".join(term.lines())
    assert sorted(alerts()) == sorted(f"ALERT   HH:MM:SS  {states[k]}" for k in
                                      ("alert RabbitMQ", "alert Celery", "alert Flower"))
    screen = term.lines()
    # Printed above the prompt, which is drawn again below them with what was typed so far.
    assert screen[-1] == "opsbot> /tas", "\n".join(screen)
    assert not any("opsbot> " in line and "ALERT" in line for line in screen)
    # At start: no alembic (or other INFO) chatter before the prompt.
    assert not [line for line in screen if " INFO " in line or "alembic" in line.lower()], "\n".join(screen)

    term.type("ks")
    term.enter()
    assert wait_until(lambda: any(line.startswith("Probed in") for line in term.lines()), 20)
    screen = term.lines()
    start = max(i for i, line in enumerate(screen) if line.startswith("Task status"))
    status = screen[start:]
    assert status[1] == f"✖ {states['headline']}"
    assert f"▲  RabbitMQ  {states['RabbitMQ']}" in status
    assert f"✖  Celery    {states['Celery']}" in status
    assert f"✖  Flower    {states['Flower']}" in status
    assert "●  celery  not declared yet: no worker has consumed it and nothing was sent to it" in status
    assert status[-1] == "opsbot>"
    # No worker has sent a heartbeat for longer than the interval: no waiting for the 1 s discovery.
    (footer,) = [line for line in status if line.startswith("Probed in")]
    assert int(footer.split()[2]) < 1000, footer

    term.type("quit")
    term.enter()


def test_the_same_states_in_slack_say_the_same(bare_stack: tuple[RabbitNode, int, dict[str, str]],
                                               slack: SlackStandIn, run_bot: Callable[..., BotProcess]) -> None:
    node, flower_port, env = bare_stack
    states = expected_states(node, flower_port)
    bot = start_socket_mode(slack, run_bot, env | {"OPSBOT_ALERT_CHANNEL": "C_ALERTS"})

    def posted() -> str:
        return json.dumps([call.params for call in slack.calls_to("chat.postMessage")], ensure_ascii=False)

    assert wait_until(lambda: all(states[k].split(" — ")[0] in posted() for k in
                                  ("alert RabbitMQ", "alert Celery", "alert Flower")), 30), posted()
    alerts = posted()
    for key in ("alert RabbitMQ", "alert Celery", "alert Flower"):
        text, impact = states[key].split(" — ")
        assert text in alerts and impact in alerts, key

    overview = slack.wait_ack(slack.send_slash_command(""), timeout=3.0)
    shown = json.dumps(overview.get("blocks", []), ensure_ascii=False)
    assert states["headline"] in shown
    for service in ("RabbitMQ", "Celery", "Flower"):
        assert f"*{service}* {states[service]}" in shown, service
    assert "alembic" not in bot.output().lower()
