"""A private RabbitMQ node, and exact queue counts read over AMQP."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Any, Self

import requests
from kombu import Connection

from tests.support.net import LOOPBACK, StackError, port_accepts, port_is_free, stable_port, wait_until
from tests.support.procs import ManagedProcess

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
RABBITMQ_HOME = "/var/lib/rabbitmq"  # holds the Erlang cookie shared by server and CLI tools
RABBITMQ_USER = "rabbitmq"
DIST_PORT_OFFSET = 20000  # RabbitMQ's convention: Erlang distribution port = AMQP port + 20000


class RabbitNode(ManagedProcess):
    """A private RabbitMQ node with the management plugin (unless `management=False`, as on a fresh
    Debian install), on its own ports and data dir."""

    label = "rabbit"

    def __init__(self, name_prefix: str = "opsbot-test", management: bool = True) -> None:
        super().__init__()
        self.management = management
        self.port = stable_port(extra=lambda p: port_is_free(p + DIST_PORT_OFFSET))
        self.management_port = stable_port(13000, 15000, extra=lambda p: p != self.port)
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
            if not port_is_free(port):
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

