"""Ports, waiting, and two network fakes: a server that never answers and a relay that can go silent."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A test service could not be started or stopped; the message carries its log tail."""


# --------------------------------------------------------------------------- ports and waiting


def free_port() -> int:
    """A port the kernel considers free right now (ephemeral range; fine for one-shot use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: a killed server leaves its clients' connections in FIN_WAIT,
        # which blocks a plain bind but not a server's, and must not stop a restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def stable_port(lo: int = 10000, hi: int = 12700, extra: Callable[[int], bool] | None = None) -> int:
    """A free port below the ephemeral range (32768+), for services restarted on the same port.

    Ephemeral ports can be grabbed by any outgoing connection while a service is down; ports
    below the range can't. The default range keeps port + 20000 below 32768 as well.
    """
    for _ in range(500):
        port = random.randint(lo, hi)
        if port_is_free(port) and (extra is None or extra(port)):
            return port
    raise StackError(f"no free port found in {lo}-{hi}")


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll check() until it is true or timeout passes; exceptions count as 'not yet'."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)



# --------------------------------------------------------------------------- hung server


class HungServer:
    """Accepts TCP connections on 127.0.0.1 and never answers: models a frozen service."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self.port: int = int(self._listener.getsockname()[1])
        self._accepted: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"hung-{self.port}", daemon=True)
        self._thread.start()

    def url(self, scheme: str = "http", userinfo: str = "") -> str:
        prefix = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{prefix}{LOOPBACK}:{self.port}"

    @property
    def connection_count(self) -> int:
        return len(self._accepted)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            self._accepted.append(conn)  # hold it open, read nothing, send nothing

    def close(self) -> None:
        self._closed.set()
        # shutdown() wakes the blocked accept(); close() alone may not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._accepted:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TcpProxy:
    """A TCP relay to 127.0.0.1:<target> that can go silent: it stops forwarding in both directions
    but keeps every socket open, as a cut-off host or a partitioned network does (no FIN, no RST)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.silent = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []

    def start(self) -> TcpProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    break
                if not self.silent.is_set():  # silent: what arrives is swallowed, nothing is closed
                    sink.sendall(data)
            except OSError:
                break
        if not self.silent.is_set():
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def black_hole(self) -> None:
        self.silent.set()

    def heal(self) -> None:
        """The network is back: connections cut off meanwhile are reset (their bytes are gone), new ones pass."""
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.silent.clear()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()
