"""A private redis-server."""

from __future__ import annotations

import socket
from typing import Self

from tests.support.net import LOOPBACK, port_accepts, stable_port, wait_until
from tests.support.procs import ManagedProcess


class RedisServer(ManagedProcess):
    """A private redis-server on its own port, without persistence.

    `requirepass` sets the default user's password (`redis://:secret@host`); `users` adds ACL users
    with every right (`redis://user:password@host`).
    """

    label = "redis"

    def __init__(self, requirepass: str | None = None, users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.port = stable_port(15000, 17000)
        self.requirepass = requirepass
        self.users = dict(users or {})

    @property
    def url(self) -> str:
        auth = f":{self.requirepass}@" if self.requirepass else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def user_url(self, user: str) -> str:
        return f"redis://{user}:{self.users[user]}@{LOOPBACK}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            "redis-server",
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            "--logfile", "",
            *(["--requirepass", self.requirepass] if self.requirepass else []),
            *[arg for user, password in self.users.items()
              for arg in ("--user", user, "on", f">{password}", "~*", "&*", "+@all")],
        ]  # fmt: skip

    def _ping(self) -> bool:
        with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
            if self.requirepass:
                sock.sendall(f"AUTH {self.requirepass}\r\n".encode())
                if not sock.recv(16).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def start(self, timeout: float = 15.0) -> Self:
        self._spawn()
        self._wait_ready(self._ping, timeout, "answering PING")
        return self

    def kill(self) -> None:
        super().kill()
        wait_until(lambda: not port_accepts(self.port), timeout=5)

    def restart(self, timeout: float = 15.0) -> Self:
        if self.is_running():
            self.stop()
        return self.start(timeout=timeout)

