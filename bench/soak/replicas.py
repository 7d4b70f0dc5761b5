"""The bot replicas of the soak: `opsbot run` processes on one PostgreSQL database, each through a TCP
relay of its own (so one replica's database connection can be black-holed), and what we watch of them:
the leader row, their resident memory, the threads their /healthz reports dead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.common import rss_bytes
from tests.support.bot import BotProcess, stack_env
from tests.support.flower import FlowerProcess
from tests.support.net import TcpProxy, free_port, wait_until
from tests.support.postgres import PG_PORT, LeaderRow
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

CHANNEL = "C_ALERTS"
POLL_SECONDS = 2  # OPSBOT_POLL_SECONDS: faults are seconds long, so alerts must come in seconds
ALERT_AFTER = 2  # OPSBOT_ALERT_AFTER's default, kept
FAILING_TASK = "stackapp.fail"  # the load's planned failures are not what the soak alerts about
CONNECT_TIMEOUT = 60.0


@dataclass
class Life:
    """One process of one replica, from its start to its kill (or the end of the soak)."""

    replica: str
    index: int
    bot: BotProcess
    started: float  # wall clock
    ended: float | None = None
    rss: list[tuple[float, int]] = field(default_factory=list)  # (wall clock, bytes)
    dead_threads: set[str] = field(default_factory=set)  # named dead by its /healthz once it had them all
    whole: bool = False  # its /healthz said every thread was alive once (at its start some are not yet)

    @property
    def name(self) -> str:
        return f"{self.replica}#{self.index}"


class Replicas:
    """Replicas r1, r2, ... on `db_url`; `lives` keeps every process ever started, for the checks."""

    def __init__(self, ids: tuple[str, ...], db_url: str, slack: SlackStandIn, rabbit: RabbitNode,
                 flower: FlowerProcess, tmp: Path) -> None:
        self.ids = ids
        self.db_url = db_url
        self.slack = slack
        self.base_env = stack_env(rabbit, flower, tmp)
        self.tmp = tmp
        self.proxies = {replica: TcpProxy(PG_PORT).start() for replica in ids}
        self.ports = {replica: free_port() for replica in ids}
        self.live: dict[str, Life] = {}
        self.lives: list[Life] = []
        self.leader_row = LeaderRow(db_url)
        self._lock = threading.Lock()

    def env(self, replica: str) -> dict[str, str]:
        proxied = self.db_url.replace(f":{PG_PORT}/", f":{self.proxies[replica].port}/")
        return self.base_env | {
            "SLACK_BOT_TOKEN": self.slack.bot_token, "SLACK_APP_TOKEN": self.slack.app_token,
            "SLACK_API_URL": self.slack.base_url, "OPSBOT_DB_URL": proxied, "OPSBOT_REPLICA_ID": replica,
            "OPSBOT_ALERT_CHANNEL": CHANNEL, "OPSBOT_POLL_SECONDS": str(POLL_SECONDS),
            "OPSBOT_ALERT_AFTER": str(ALERT_AFTER), "OPSBOT_QUEUES": "celery",
            "OPSBOT_FAILURE_IGNORE": FAILING_TASK, "OPSBOT_LOG_LEVEL": "INFO",
            "OPSBOT_METRICS_PORT": str(self.ports[replica]), "OPSBOT_METRICS_HOST": "127.0.0.1",
        }  # fmt: skip

    def start(self, replica: str) -> Life:
        """Start the replica's next process and wait until it holds a Socket Mode connection of its own."""
        before = self.slack.total_connections
        index = sum(1 for life in self.lives if life.replica == replica)
        bot = BotProcess(["run"], self.env(replica), self.tmp / f"{replica}-{index}.log")
        life = Life(replica, index, bot, time.time())
        with self._lock:
            self.lives.append(life)
            self.live[replica] = life
        if not wait_until(lambda: self.slack.total_connections > before or not bot.running(), CONNECT_TIMEOUT):
            raise RuntimeError(f"replica {life.name} never connected over Socket Mode:\n{bot.output_tail()}")
        if not bot.running():
            raise RuntimeError(f"replica {life.name} exited with {bot.process.returncode}:\n{bot.output_tail()}")
        return life

    def kill(self, replica: str) -> Life:
        """SIGKILL the replica's process group: no goodbye, its lock goes with its connection."""
        with self._lock:
            life = self.live.pop(replica)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(life.bot.process.pid, signal.SIGKILL)
        life.bot.process.wait(timeout=10)
        life.ended = time.time()
        return life

    def leader(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.leader_row.current()
        return None

    def sample(self) -> None:
        """Resident memory and /healthz of every live replica (the samplers call this every few seconds)."""
        with self._lock:
            lives = list(self.live.values())
        for life in lives:
            rss = rss_bytes(life.bot.process.pid)
            if rss is not None and life.bot.running():
                life.rss.append((time.time(), rss))
            with contextlib.suppress(requests.RequestException, ValueError):
                answer = requests.get(f"http://127.0.0.1:{self.ports[life.replica]}/healthz", timeout=2).json()
                dead = set(answer.get("dead_threads") or [])
                if life.whole:
                    life.dead_threads |= dead
                life.whole = life.whole or not dead

    def healthy(self, replica: str) -> bool:
        """The replica's /healthz answers and names no dead thread."""
        try:
            answer = requests.get(f"http://127.0.0.1:{self.ports[replica]}/healthz", timeout=2)
        except requests.RequestException:
            return False
        return answer.status_code == 200

    def stop_all(self) -> None:
        with self._lock:
            lives, self.live = list(self.live.values()), {}
        for life in lives:
            with contextlib.suppress(Exception):
                life.bot.stop()
            life.ended = life.ended or time.time()

    def close(self) -> None:
        self.stop_all()
        for proxy in self.proxies.values():
            proxy.close()
        self.leader_row.close()


def thread_deaths(log_text: str) -> list[str]:
    """Log lines that say a thread died of an exception (the bot's hook, or Python's default one)."""
    markers = ("uncaught exception in thread", "Exception in thread")
    return [line.strip() for line in log_text.splitlines() if any(m in line for m in markers)]
