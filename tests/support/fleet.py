"""The synthetic Celery fleet, from the benchmark's side: fake workers (tests/support/fleet_workers.py)
hosted by a few processes, started, awaited until every one answers ping, and stopped."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.fleet_workers import fleet_app, hostnames
from tests.support.procs import REPO_ROOT


@dataclass(frozen=True)
class FleetSpec:
    workers: int
    tasks: int = 10  # active tasks per worker
    reserved: int = 2  # prefetched, waiting in the worker
    concurrency: int | None = None  # pool size; default: `tasks` (every slot busy)
    heartbeats: bool = True
    without_heartbeat: int = 0  # the last ones send no events (`celery worker --without-heartbeat`)
    task_events: bool = True  # task-received/started/revoked, as workers started with -E send them
    processes: int = 2  # fleet processes hosting the nodes

    @property
    def pool_size(self) -> int:
        return self.concurrency or max(1, self.tasks)


_fleets: set[Fleet] = set()


class Fleet:
    """`spec.workers` fake workers in `spec.processes` processes, each in its own process group."""

    def __init__(self, broker_url: str, spec: FleetSpec, log_dir: Path) -> None:
        self.broker_url = broker_url
        self.spec = spec
        self.log_dir = log_dir
        self.names = hostnames(spec.workers)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self, timeout: float = 60.0) -> Self:
        spec = self.spec
        processes = max(1, min(spec.processes, spec.workers))
        share, extra = divmod(spec.workers, processes)
        first = 0
        _fleets.add(self)
        for i in range(processes):
            count = share + (1 if i < extra else 0)
            command = [sys.executable, "-m", "tests.support.fleet_workers", "--broker", self.broker_url,
                       "--first", str(first), "--count", str(count), "--tasks", str(spec.tasks),
                       "--reserved", str(spec.reserved), "--concurrency", str(spec.pool_size)]
            if not spec.heartbeats:
                command.append("--no-heartbeats")
            if not spec.task_events:
                command.append("--no-task-events")
            if spec.without_heartbeat:
                command += ["--silent-from", str(spec.workers - spec.without_heartbeat)]
            with (self.log_dir / f"fleet-{spec.workers}-{i}.log").open("wb") as out:
                self.procs.append(subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
            first += count
        missing = self.wait_answering(timeout)
        if missing:
            self.stop()
            raise RuntimeError(f"{len(missing)} of {spec.workers} fake workers never answered ping "
                               f"(first: {sorted(missing)[:3]}); logs in {self.log_dir}")
        return self

    def wait_answering(self, timeout: float) -> set[str]:
        """Ping until every fake worker answered; the ones that did not, at the deadline."""
        app = fleet_app(self.broker_url)
        missing = set(self.names)
        deadline = time.monotonic() + timeout
        while missing and time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a fleet process exited; logs in {self.log_dir}")
            # A ping expires after its timeout: a fleet process busy bringing its workers online (task events)
            # may reach its last nodes later than 1 s, so a big fleet gets longer (5 s at 2,000).
            wait = min(5.0, max(1.0, len(self.names) / 400))
            with contextlib.suppress(Exception):
                replies = app.control.ping(timeout=wait, limit=len(self.names))
                missing -= {name for reply in replies or [] for name in reply}
        return missing

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (each process sends worker-offline for its nodes), then SIGKILL what lingers."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _fleets.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@atexit.register
def _kill_fleets() -> None:
    for fleet in list(_fleets):
        with contextlib.suppress(Exception):
            fleet.stop(timeout=2)
