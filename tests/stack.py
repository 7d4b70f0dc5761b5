"""Real processes for integration tests: a private RabbitMQ node, Redis, Celery workers, Flower.

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
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests
from celery import Celery
from celery.utils.nodenames import default_nodename, host_format
from kombu import Connection

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
RABBITMQ_HOME = "/var/lib/rabbitmq"  # holds the Erlang cookie shared by server and CLI tools
RABBITMQ_USER = "rabbitmq"
DIST_PORT_OFFSET = 20000  # RabbitMQ's convention: Erlang distribution port = AMQP port + 20000


class StackError(RuntimeError):
    """A test service could not be started or stopped; the message carries its log tail."""


# --------------------------------------------------------------------------- ports and waiting


def free_port() -> int:
    """A port the kernel considers free right now (ephemeral range; fine for one-shot use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: a killed server leaves its clients' connections in FIN_WAIT,
        # which blocks a plain bind but not a server's, and must not stop a restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _stable_port(lo: int = 10000, hi: int = 12700, extra: Callable[[int], bool] | None = None) -> int:
    """A free port below the ephemeral range (32768+), for services restarted on the same port.

    Ephemeral ports can be grabbed by any outgoing connection while a service is down; ports
    below the range can't. The default range keeps port + 20000 below 32768 as well.
    """
    for _ in range(500):
        port = random.randint(lo, hi)
        if _port_is_free(port) and (extra is None or extra(port)):
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
        stat = _read_stat(int(entry.name))
        if stat is not None and int(stat[4]) == pgid and stat[2] != "Z":
            pids.append(int(entry.name))
    return pids


def child_pids(ppid: int) -> list[int]:
    """Live direct children of ppid, read from /proc (no psutil)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None and int(stat[3]) == ppid and stat[2] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat, with the command name (which may hold spaces) as one field."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = raw.rpartition(")")
    return [head.split(" (", 1)[0], head.split(" (", 1)[-1], *rest.split()]


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


# --------------------------------------------------------------------------- RabbitMQ


class RabbitNode(ManagedProcess):
    """A private RabbitMQ node with the management plugin (unless `management=False`, as on a fresh
    Debian install), on its own ports and data dir."""

    label = "rabbit"

    def __init__(self, name_prefix: str = "opsbot-test", management: bool = True) -> None:
        super().__init__()
        self.management = management
        self.port = _stable_port(extra=lambda p: _port_is_free(p + DIST_PORT_OFFSET))
        self.management_port = _stable_port(13000, 15000, extra=lambda p: p != self.port)
        self.node_name = f"{name_prefix}-{self.port}@localhost"
        self._write_config()

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}//"

    @property
    def management_url(self) -> str:
        return f"http://{LOOPBACK}:{self.management_port}"

    def add_vhost(self, name: str) -> str:
        """A virtual host of its own on this node (guest may use it); its AMQP URL."""
        api, auth = f"{self.management_url}/api", ("guest", "guest")
        requests.put(f"{api}/vhosts/{name}", auth=auth, timeout=10).raise_for_status()
        requests.put(f"{api}/permissions/{name}/guest", auth=auth, timeout=10,
                     json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/{name}"

    @property
    def dist_port(self) -> int:
        return self.port + DIST_PORT_OFFSET

    def _write_config(self) -> None:
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_management].\n" if self.management else "[].\n")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {LOOPBACK}:{self.port}\n"
            f"management.tcp.port = {self.management_port}\n"
            f"management.tcp.ip = {LOOPBACK}\n"
            # Tests read counters from the API: sample faster than the default 5 s.
            "collect_statistics_interval = 1000\n"
        )
        for sub in ("mnesia", "log"):
            (self.workdir / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # The node runs as user rabbitmq (like the Debian wrapper does) and owns its tree.
            for path in [self.workdir, *self.workdir.rglob("*")]:
                shutil.chown(path, RABBITMQ_USER, RABBITMQ_USER)

    def _command(self) -> list[str]:
        return [RABBITMQ_SERVER]

    def _env(self) -> dict[str, str]:
        base = self.workdir
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_LOGS="-",  # node log to stdout, i.e. into log_path with everything else
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(base / "feature_flags"),
            RABBITMQ_PID_FILE=str(base / "pid"),
        )
        if os.geteuid() == 0:
            env.update(HOME=RABBITMQ_HOME, USER=RABBITMQ_USER, LOGNAME=RABBITMQ_USER)
        return env

    def _popen_extra(self) -> dict[str, Any]:
        # Run the real server script (not the /usr/sbin wrapper, which goes through `su` and
        # redirects output to /var/log): the beam is then our direct descendant in our group.
        if os.geteuid() == 0:
            return {"user": RABBITMQ_USER, "group": RABBITMQ_USER, "extra_groups": [], "cwd": self.workdir}
        return {"cwd": self.workdir}

    def _amqp_ready(self) -> bool:
        with Connection(self.amqp_url, connect_timeout=1) as conn:
            conn.connect()
            return True

    def _management_ready(self) -> bool:
        resp = requests.get(f"{self.management_url}/api/overview", auth=("guest", "guest"), timeout=1)
        return resp.status_code == 200

    def start(self, timeout: float = 60.0) -> Self:
        """Start and wait until AMQP accepts a login and the management API answers."""
        for port in (self.port, self.dist_port, self.management_port):
            if not _port_is_free(port):
                raise StackError(f"rabbit: port {port} is taken, cannot start {self.node_name}")
        self._spawn()
        # The TCP probe is cheap; only try a full AMQP login once the listener is up.
        self._wait_ready(lambda: port_accepts(self.port) and self._amqp_ready(), timeout, "accepting AMQP")
        if self.management:
            self._wait_ready(self._management_ready, timeout, "answering /api/overview")
        return self

    def kill(self) -> None:
        """SIGKILL the node (beam and its helpers; the shared epmd daemon is not in our group)."""
        super().kill()
        if not wait_until(lambda: not port_accepts(self.port), timeout=10):
            raise StackError(f"rabbit: port {self.port} still open after kill")

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop, falling back to SIGKILL.

        SIGTERM goes to the rabbitmq-server script (our session leader), whose trap forwards it
        to the beam: RabbitMQ treats that as `rabbitmqctl stop` (see the script's comments), but
        it skips booting a CLI Erlang VM, which alone costs a few seconds.
        """
        self.terminate(timeout=timeout)
        if not wait_until(lambda: not port_accepts(self.port), timeout=5):
            raise StackError(f"rabbit: port {self.port} still open after stop")

    def stop_with_ctl(self, timeout: float = 30.0) -> None:
        """Graceful stop through `rabbitmqctl -n NODE stop` (slower; the operator's way)."""
        if self.is_running():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [RABBITMQCTL, "-n", self.node_name, "stop"],
                    env=self._env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=timeout,
                    check=False,
                    **self._popen_extra(),
                )
        self.terminate(timeout=timeout)

    def restart(self, timeout: float = 60.0) -> Self:
        """Start again on the same ports and data dir (durable queues survive); works after kill()."""
        if self.is_running():
            self.stop()
        return self.start(timeout=timeout)


# --------------------------------------------------------------------------- Redis


class RedisServer(ManagedProcess):
    """A private redis-server on its own port, without persistence.

    `requirepass` sets the default user's password (`redis://:secret@host`); `users` adds ACL users
    with every right (`redis://user:password@host`).
    """

    label = "redis"

    def __init__(self, requirepass: str | None = None, users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.port = _stable_port(15000, 17000)
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


# --------------------------------------------------------------------------- Celery helpers

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


def purge_queue(amqp_url: str, name: str) -> int:
    """Drop the ready messages of one queue; returns how many. A missing queue counts as empty."""
    with Connection(amqp_url, connect_timeout=2) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(name, passive=True)  # no side effect if the queue is absent
        except conn.channel_errors:
            return 0  # 404 NOT_FOUND closes the channel; nothing to purge
        return int(channel.queue_purge(name) or 0)


def queue_counts(amqp_url: str, name: str) -> tuple[int, int] | None:
    """(ready messages, consumers) from a passive declare: exact, unlike the sampled API counters."""
    with Connection(amqp_url, connect_timeout=2) as conn:
        try:
            ok = conn.channel().queue_declare(name, passive=True)
        except conn.channel_errors:
            return None
        return int(ok.message_count), int(ok.consumer_count)


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
        _live.discard(self)

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


# --------------------------------------------------------------------------- Flower


class FlowerProcess(ManagedProcess):
    """`celery -A tests.stackapp flower` with basic auth (so its API refuses anonymous calls).

    Finding (Flower 2.2 source and test_stack): /healthcheck does NOT need auth even with
    --basic-auth set; its handler is not @authenticated. Everything under /api/ and the UI do.
    """

    label = "flower"

    def __init__(self, broker_url: str, port: int | None = None, basic_auth: str = "opsbot:flower-secret") -> None:
        super().__init__()
        self.broker_url = broker_url
        self.port = port if port is not None else _stable_port(17000, 19000)
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
