"""Celery from the test process (remote control, publishing) and as processes (worker, beat)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Self

from celery import Celery
from celery.utils.nodenames import default_nodename, host_format

from tests.support.net import StackError, wait_until
from tests.support.procs import REPO_ROOT, ManagedProcess, child_pids, group_pids

_control_apps: dict[str, Celery] = {}
_control_lock = threading.Lock()


def control_app(broker_url: str) -> Celery:
    """A Celery app in the test process for remote control and publishing, one per broker."""
    with _control_lock:
        if broker_url not in _control_apps:
            app = Celery(f"stack-control-{len(_control_apps)}", broker=broker_url, set_as_current=False)
            app.conf.update(
                broker_connection_retry_on_startup=False,
                broker_connection_timeout=2,
                broker_connection_max_retries=1,
                task_default_queue="celery",
                # Publisher confirms: publish returns only once the broker has the message (for
                # persistent messages on a durable queue: on disk). Without it, a kill() right
                # after publish_tasks() lost the messages in the restart test.
                broker_transport_options={"confirm_publish": True},
            )
            _control_apps[broker_url] = app
        return _control_apps[broker_url]


def publish_tasks(
    broker_url: str,
    task_name: str,
    count: int,
    queue: str = "celery",
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Send `count` tasks by name (no worker needed); returns their ids."""
    app = control_app(broker_url)
    with app.producer_or_acquire() as producer:
        return [
            app.send_task(task_name, args=list(args), kwargs=kwargs or {}, queue=queue, producer=producer).id
            for _ in range(count)
        ]



def nodename(hostname: str) -> str:
    """The node name Celery derives from -n: 'w1@%h' -> 'w1@<hostname>'; plain 'w1' -> 'celery@w1'."""
    return host_format(default_nodename(hostname))


# --------------------------------------------------------------------------- Celery worker


class CeleryWorker(ManagedProcess):
    """A `celery -A tests.stackapp worker` process, ready once it answers a ping."""

    label = "worker"

    def __init__(
        self,
        broker_url: str,
        hostname: str = "w1@%h",
        queues: Iterable[str] = ("celery",),
        pool: str = "prefork",
        concurrency: int = 2,
        events: bool = True,
        extra_args: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.broker_url = broker_url
        self.hostname = hostname
        self.queues = tuple(queues)
        self.pool = pool
        self.concurrency = concurrency
        self.events = events
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(extra_env or {})  # e.g. STACK_RESULT_BACKEND for tests/stackapp.py

    @property
    def name(self) -> str:
        return nodename(self.hostname)

    def _command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "celery", "-A", "tests.stackapp", "worker",
            "--hostname", self.hostname,
            "--queues", ",".join(self.queues),
            "--pool", self.pool,
            "--concurrency", str(self.concurrency),
            "--loglevel", "INFO",
            # Mingle waits ~1 s for other workers' replies at startup and gossip subscribes to
            # every worker's events: neither is needed by a test worker, both slow it down.
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if self.events:
            cmd.append("--task-events")
        return [*cmd, *self.extra_args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(STACK_BROKER_URL=self.broker_url, STACK_TASK_EVENTS="1" if self.events else "0")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        return env

    def _popen_extra(self) -> dict[str, Any]:
        return {"cwd": REPO_ROOT}

    def answers_ping(self, timeout: float = 0.5) -> bool:
        replies = control_app(self.broker_url).control.ping(destination=[self.name], timeout=timeout, limit=1)
        return any(self.name in reply for reply in replies or [])

    def start(self, timeout: float = 30.0) -> Self:
        self._spawn()
        self._wait_ready(self.answers_ping, timeout, f"answering ping as {self.name}")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM: finish running tasks, send worker-offline), then kill leftovers."""
        self.terminate(timeout=timeout)

    def pool_child_pids(self) -> list[int]:
        """Pids of the pool processes (direct children of the main worker process)."""
        return child_pids(self.pid) if self.is_running() and self.pid else []

    def wait_gone(self, timeout: float = 15.0) -> None:
        """Wait until the main process and every pool child are gone."""
        pgid = self.pid
        if pgid is None:
            return
        gone = wait_until(lambda: not self.is_running() and not group_pids(pgid), timeout, 0.05)
        if not gone:
            raise StackError(f"worker {self.name}: still running after {timeout} s")
        self._forget()

    def restart(self, timeout: float = 30.0) -> Self:
        if self.is_running():
            self.stop()
        return self.start(timeout=timeout)


# --------------------------------------------------------------------------- celery beat


class BeatProcess(ManagedProcess):
    """`celery -A tests.beatapp beat`: sends the schedule's tasks every `every` seconds (issue 14).

    Its schedule file and pid file live in its own temp dir, so a kill leaves them behind exactly as a
    crashed beat leaves them in production, and a restart must cope with them.
    """

    label = "beat"

    def __init__(self, broker_url: str, every: float = 5.0, app: str = "tests.beatapp",
                 path: Sequence[str] = ()) -> None:
        super().__init__()
        self.broker_url = broker_url
        self.every = every
        self.app = app
        self.path = tuple(path)  # where else the app's modules are (a project written by a test)

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app, "beat",
            "--schedule", str(self.workdir / "beat-schedule"),
            "--pidfile", str(self.workdir / "beat.pid"),
            "--loglevel", "INFO",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(STACK_BROKER_URL=self.broker_url, STACK_BEAT_SECONDS=str(self.every))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*self.path, str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        return env

    def _popen_extra(self) -> dict[str, Any]:
        return {"cwd": REPO_ROOT}

    def _starting_lines(self) -> int:
        return self.log_path.read_text(errors="replace").count("beat: Starting") if self.log_path.exists() else 0

    def start(self, timeout: float = 30.0) -> Self:
        before = self._starting_lines()
        self._spawn()
        self._wait_ready(lambda: self._starting_lines() > before, timeout, "starting its scheduler")
        return self

    def restart(self, timeout: float = 30.0) -> Self:
        if self.is_running():
            self.stop()
        return self.start(timeout=timeout)

