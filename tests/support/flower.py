"""Flower as a process, with basic auth."""

from __future__ import annotations

import os
import sys
from typing import Any, Self

import requests

from tests.support.net import LOOPBACK, port_accepts, stable_port, wait_until
from tests.support.procs import REPO_ROOT, ManagedProcess


class FlowerProcess(ManagedProcess):
    """`celery -A tests.stackapp flower` with basic auth (so its API refuses anonymous calls).

    Finding (Flower 2.2 source and test_stack): /healthcheck does NOT need auth even with
    --basic-auth set; its handler is not @authenticated. Everything under /api/ and the UI do.
    """

    label = "flower"

    def __init__(self, broker_url: str, port: int | None = None, basic_auth: str = "opsbot:flower-secret") -> None:
        super().__init__()
        self.broker_url = broker_url
        self.port = port if port is not None else stable_port(17000, 19000)
        self.basic_auth = basic_auth

    @property
    def url(self) -> str:
        return f"http://{self.basic_auth}@{LOOPBACK}:{self.port}"

    @property
    def bare_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        user, _, password = self.basic_auth.partition(":")
        return user, password

    def _command(self) -> list[str]:
        # Flower 2.x options go after the `flower` subcommand; tornado accepts - or _ spellings.
        return [
            sys.executable, "-m", "celery", "-A", "tests.stackapp", "flower",
            f"--port={self.port}",
            f"--address={LOOPBACK}",
            f"--basic-auth={self.basic_auth}",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("FLOWER_UNAUTHENTICATED_API", None)  # the API must demand credentials
        env["STACK_BROKER_URL"] = self.broker_url
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        return env

    def _popen_extra(self) -> dict[str, Any]:
        return {"cwd": REPO_ROOT}

    def _healthy(self) -> bool:
        resp = requests.get(f"{self.bare_url}/healthcheck", timeout=1)
        return resp.status_code == 200 and resp.text == "OK"

    def start(self, timeout: float = 30.0) -> Self:
        self._spawn()
        self._wait_ready(self._healthy, timeout, "answering /healthcheck")
        return self

    def kill(self) -> None:
        super().kill()
        wait_until(lambda: not port_accepts(self.port), timeout=5)

    def restart(self, timeout: float = 30.0) -> Self:
        if self.is_running():
            self.stop()
        return self.start(timeout=timeout)

