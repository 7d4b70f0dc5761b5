"""Service processes for tests and benchmarks: one process group each, killed at exit.

Plain classes, no pytest dependency, so they also serve ad-hoc scripts and benchmarks. Every
process runs in its own session (process group) so one killpg() takes down a whole service,
including prefork children and Erlang helper programs, and an atexit hook kills whatever is still
running when the interpreter exits (a crashed or interrupted test run leaves no strays).
The machine's own RabbitMQ (5672) and Redis (6379) are never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.net import StackError, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]




def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------- process groups


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is pgid, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = stat_fields(int(entry.name))
        if stat is not None and int(stat[2]) == pgid and stat[0] != "Z":
            pids.append(int(entry.name))
    return pids


def child_pids(ppid: int) -> list[int]:
    """Live direct children of ppid, read from /proc (no psutil)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = stat_fields(int(entry.name))
        if stat is not None and int(stat[1]) == ppid and stat[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces), so the state (field 3 of
    stat) comes first, then ppid and pgrp; None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


_live: set[ManagedProcess] = set()


def _kill_all_at_exit() -> None:
    for service in list(_live):
        with contextlib.suppress(Exception):
            service.kill()


atexit.register(_kill_all_at_exit)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds fixtures and runs atexit, unlike the default action


# A CI timeout or `kill PID` sends SIGTERM, whose default action skips atexit and would strand
# every service. Only take over when nobody else handles it (and only the main thread may).
if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


class ManagedProcess:
    """One service process in its own process group, logging to a file in its own temp dir."""

    label = "process"

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"opsbot-{self.label}-"))
        self.log_path = self.workdir / f"{self.label}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # Subclasses say what to run; start() says when it is ready.
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _popen_extra(self) -> dict[str, Any]:
        return {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        if self.is_running():
            raise StackError(f"{self.label} already running (pid {self.pid})")
        # Append: after a restart the log still shows what happened before the kill.
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {self._command()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # own process group: killpg reaches every child
                **self._popen_extra(),
            )
        _live.add(self)

    def _fail(self, what: str) -> StackError:
        """Kill what was started and build an exception with the log tail."""
        with contextlib.suppress(Exception):
            self.kill()
        return StackError(f"{self.label}: {what}\n--- log tail ({self.log_path}) ---\n{log_tail(self.log_path)}")

    def _wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll check() until true; fail fast (with the log tail) if the process dies meanwhile."""
        deadline = time.monotonic() + timeout
        while not _quietly(check):
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                raise self._fail(f"exited with code {code} before {what}")
            if time.monotonic() >= deadline:
                raise self._fail(f"not {what} after {timeout:.0f} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader."""
        if self._proc is None:
            return
        pgid = self._proc.pid  # session leader: pgid == pid, valid while any member lives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        wait_until(lambda: not group_pids(pgid), timeout=5, interval=0.05)
        self._forget()

    def _forget(self) -> None:
        """Gone for good: the atexit hook need not kill it."""
        _live.discard(self)

    def terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM the leader, wait, then SIGKILL the group whatever happened."""
        if self._proc is None:
            return
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=timeout)
        self.kill()  # leftovers (pool children, helpers) and the atexit bookkeeping

    def cleanup(self) -> None:
        """Kill and remove the temp dir (logs included)."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        self.terminate()


def _quietly(check: Callable[[], bool]) -> bool:
    """A service that is not up yet raises all sorts of errors: they all mean 'not ready'."""
    try:
        return bool(check())
    except Exception:
        return False

