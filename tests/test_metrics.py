"""Prometheus metrics, /healthz and /readyz: the pure parts with plain data, then a real `opsbot run`
scraped on the real stack, a PostgreSQL store that goes away and comes back, and the systemd unit.
"""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import shlex
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from configparser import ConfigParser
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics.collector import Metrics
from bot.metrics.families import celery_families, exception_class, host_of, opsbot_snapshot_families
from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    Failure,
    FlowerStatus,
    Problem,
    QueueInfo,
    Snapshot,
    TaskInfo,
    WorkerInfo,
)
from tests.support.bot import OPSBOT, BotProcess, clean_env, stack_env
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import free_port, port_accepts, wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

DOCS = Path(__file__).resolve().parent.parent / "docs"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --------------------------------------------------------------------------- helpers


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels; raises if prometheus_client cannot parse it."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The sum of the samples called `name` whose labels include `labels`; None when there is none."""
    found = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= ls]
    return sum(found) if found else None


def scrape(port: int) -> Samples:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def status(port: int, path: str) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code
    except requests.ConnectionError:
        return -1


def snapshot(workers: tuple[WorkerInfo, ...] = (), lost: tuple[WorkerInfo, ...] = (),
             state: CeleryState = CeleryState.RUNNING, broker_problem: Problem | None = None,
             taken_at: float = 1000.0) -> Snapshot:
    queues = (QueueInfo("celery", ready=7, consumers=2), QueueInfo("other", ready=0, consumers=0, exists=False))
    return Snapshot(taken_at=taken_at,
                    broker=BrokerStatus("rabbitmq", "h:5672", problem=broker_problem,
                                        queues=() if broker_problem else queues),
                    celery=CeleryStatus(state, workers=workers, lost=lost),
                    flower=FlowerStatus("http://h:5555", Problem(Failure.REFUSED, "http://h:5555")),
                    durations={"broker": 0.01, "celery": 0.02, "flower": 0.001})


def families_text(families: list) -> Samples:
    """Pure families through the same exposition and parser a scrape uses."""
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self) -> list:
            return families

    registry = CollectorRegistry()
    registry.register(Fixed())
    return parse(generate_latest(registry).decode())


# --------------------------------------------------------------------------- pure parts


def test_celery_exporter_label_values() -> None:
    assert host_of("w1@box-1") == "box-1"
    assert host_of("gen4242@box-1") == "box-1"  # producers: one series per host, not per process
    assert exception_class("ValueError('boom')") == "ValueError"
    assert exception_class("billiard.exceptions.WorkerLostError('x')") == "UnknownException"
    assert exception_class("") == "UnknownException"


def test_gauges_from_a_snapshot_per_host_and_queue() -> None:
    task = TaskInfo("t1", "stackapp.sleep", "w1@a", None)
    workers = (WorkerInfo("w1@a", concurrency=4, active=(task, task), queues=("celery",)),
               WorkerInfo("w2@a", concurrency=2, queues=("celery", "other")),
               WorkerInfo("w3@b", answered=False))
    samples = families_text(celery_families(snapshot(workers)))
    assert value(samples, "celery_queue_length", queue_name="celery") == 7
    assert value(samples, "celery_queue_length", queue_name="other") == 0  # not declared yet: nothing waits
    assert value(samples, "celery_active_consumer_count", queue_name="celery") == 2
    assert value(samples, "celery_active_worker_count", queue_name="celery") == 2
    assert value(samples, "celery_active_worker_count", queue_name="other") == 1
    assert value(samples, "celery_active_process_count", queue_name="celery") == 6
    assert value(samples, "celery_worker_up", hostname="a") == 1
    assert value(samples, "celery_worker_up", hostname="b") == 0  # heartbeats, but no answer
    assert value(samples, "celery_worker_tasks_active", hostname="a") == 2


def test_oldest_waiting_age_per_queue_and_whether_it_is_exact() -> None:
    taken = snapshot()
    aged = (replace(taken.broker.queues[0], oldest_sent_at=760.0, oldest_age=240.0, oldest_exact=False),
            taken.broker.queues[1])
    samples = families_text(opsbot_snapshot_families(replace(taken, broker=replace(taken.broker, queues=aged)),
                                                     now=1001.0))
    assert value(samples, "opsbot_oldest_waiting_task_age_seconds", queue_name="celery", exact="0") == 240.0
    assert value(samples, "opsbot_oldest_waiting_task_age_seconds", queue_name="other") is None  # nothing waits
    plain = families_text(opsbot_snapshot_families(taken, now=1001.0))
    assert value(plain, "opsbot_oldest_waiting_task_age_seconds") is None  # not measured: absent, not zero


def test_unknown_is_absent_not_zero() -> None:
    down = snapshot(state=CeleryState.UNKNOWN, broker_problem=Problem(Failure.REFUSED, "h:5672"))
    samples = families_text(celery_families(down) + opsbot_snapshot_families(down, now=1003.0))
    assert value(samples, "celery_queue_length") is None
    assert value(samples, "celery_active_worker_count") is None
    assert value(samples, "opsbot_probe_up", service="broker") == 0
    assert value(samples, "opsbot_probe_up", service="celery") is None  # nobody can tell
    assert value(samples, "opsbot_probe_up", service="flower") == 0
    assert value(samples, "opsbot_snapshot_age_seconds") == 3


def test_task_events_feed_counters_and_histogram_only_on_the_leader() -> None:
    leading = [True]
    metrics = Metrics(poll_seconds=10, is_leader=lambda: leading[0])
    base = {"uuid": "u1", "hostname": "w1@box", "name": "app.job"}
    metrics.on_task_event({**base, "type": "task-sent", "queue": "other", "hostname": "gen1@box"})
    metrics.on_task_event({**base, "type": "task-started"})
    metrics.on_task_event({**base, "type": "task-failed", "exception": "KeyError('k')"})
    metrics.on_task_event({**base, "type": "task-succeeded", "runtime": 0.3, "uuid": "u2"})
    leading[0] = False
    metrics.on_task_event({**base, "type": "task-failed", "exception": "KeyError('k')"})
    assert value(parse_registry(metrics), "celery_task_failed_total") == 1  # a standby counts nothing
    leading[0] = True
    samples = parse_registry(metrics)
    labels = {"name": "app.job", "hostname": "box"}
    assert value(samples, "celery_task_sent_total", queue_name="other", **labels) == 1
    assert value(samples, "celery_task_failed_total", exception="KeyError", **labels) == 1
    assert value(samples, "celery_task_failed_total", exception="", **labels) == 0  # visible before any failure
    assert value(samples, "celery_task_retried_total", **labels) == 0
    assert value(samples, "celery_task_runtime_count", **labels) == 1
    assert value(samples, "celery_task_runtime_bucket", le="0.5", **labels) == 1
    assert value(samples, "celery_task_runtime_bucket", le="0.25", **labels) == 0
    assert value(samples, "opsbot_leader") == 1


def parse_registry(metrics: Metrics) -> Samples:
    from prometheus_client import generate_latest

    return parse(generate_latest(metrics.registry).decode())


def test_readiness_says_which_check_failed() -> None:
    now = [2000.0]
    metrics = Metrics(poll_seconds=10, clock=lambda: now[0])
    checks = metrics.readiness()
    assert not any(ok for ok, _ in checks.values())
    metrics.slack_connected = lambda: True
    metrics.observe_snapshot(snapshot(taken_at=1995.0))
    metrics.store_read(None, "OperationalError")
    checks = metrics.readiness()
    assert checks["slack"][0] and checks["poll"][0]
    assert checks["store"] == (False, "not reachable: OperationalError")
    now[0] = 2040.0  # the last snapshot is 45 s old, past 3 poll intervals
    assert not metrics.readiness()["poll"][0]


def test_json_log_lines_stay_redacted(capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    from bot.logs import use_json_lines
    from bot.redact import install_log_redaction

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    install_log_redaction(["hunter2-secret"], "INFO")
    use_json_lines()
    try:
        try:
            raise RuntimeError("cannot reach amqp://ops:hunter2-secret@mq:5672//")
        except RuntimeError:
            logging.getLogger("bot.test").exception("broker %s failed", "amqp://ops:hunter2-secret@mq:5672//")
        logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1  # one record, one line: the traceback is inside it, alembic is quiet
    record = json.loads(lines[0])
    assert record["level"] == "ERROR" and record["logger"] == "bot.test"
    assert record["message"] == "broker amqp://ops:***@mq:5672// failed"
    assert "RuntimeError" in record["exception"] and "hunter2" not in lines[0]


def test_healthz_names_a_dead_thread() -> None:
    from bot.metrics.serve import health_app

    expected = ["MainThread"]
    app = health_app(Metrics(poll_seconds=10), lambda: expected)

    def get(path: str) -> tuple[str, dict]:
        answer: list[str] = []
        body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda line, _: answer.append(line)))
        return answer[0], json.loads(body)

    assert get("/healthz") == ("200 OK", {"alive": True, "dead_threads": []})
    expected.append("history")  # expected, and not running in this process
    assert get("/healthz") == ("503 Service Unavailable", {"alive": False, "dead_threads": ["history"]})
    status_line, body = get("/readyz")
    assert status_line.startswith("503") and body["checks"]["poll"] == {"ok": False, "detail": "no snapshot taken yet"}


# --------------------------------------------------------------------------- the real bot


def test_scrape_of_a_running_bot(slack: SlackStandIn, socket_bot: Callable[..., BotProcess], rabbit: RabbitNode,
                                 worker: CeleryWorker, flower: FlowerProcess) -> None:
    port = free_port()
    bot = socket_bot(OPSBOT_METRICS_PORT=str(port), OPSBOT_METRICS_HOST="127.0.0.1", OPSBOT_POLL_SECONDS="1",
                     OPSBOT_LOG_FORMAT="json", OPSBOT_LOG_LEVEL="INFO", OPSBOT_ALERT_CHANNEL="C_ALERTS")
    assert wait_until(lambda: status(port, "/readyz") == 200, 30), requests.get(f"http://127.0.0.1:{port}/readyz").text
    assert status(port, "/healthz") == 200
    assert status(port, "/nothing") == 404

    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 2))  # nothing consumes "other"
    app = control_app(rabbit.amqp_url)
    failing = app.send_task("stackapp.fail", args=["boom"], queue="celery")
    adds = [app.send_task("stackapp.add", args=[i, 1], queue="celery") for i in range(2)]
    host = host_of(worker.name)
    task_labels = {"hostname": host, "queue_name": "celery"}

    def settled() -> bool:
        samples = scrape(port)
        return (value(samples, "celery_task_runtime_count", name="stackapp.add", **task_labels) == 2
                and value(samples, "celery_task_failed_total", name="stackapp.fail", **task_labels) == 1
                and value(samples, "celery_queue_length", queue_name="other") == 3)

    assert wait_until(settled, 30), sorted(k for k in scrape(port) if k[0].startswith("celery_task"))
    samples = scrape(port)
    assert value(samples, "celery_task_failed_total", name="stackapp.fail", exception="ValueError",
                 **task_labels) == 1
    assert value(samples, "celery_task_succeeded_total", name="stackapp.add", **task_labels) == 2
    assert value(samples, "celery_queue_length", queue_name="other") == 3  # exact: the passive declare
    assert value(samples, "celery_queue_length", queue_name="celery") == 0
    assert value(samples, "celery_active_consumer_count", queue_name="celery") == 1
    assert value(samples, "celery_active_worker_count", queue_name="celery") == 1
    assert value(samples, "celery_active_process_count", queue_name="celery") == 2
    assert value(samples, "celery_worker_up", hostname=host) == 1
    assert value(samples, "opsbot_worker_up", worker=worker.name) == 1
    assert value(samples, "opsbot_probe_up", service="flower") == 1
    assert value(samples, "opsbot_leader") == 1
    assert value(samples, "opsbot_store_up") == 1
    assert value(samples, "opsbot_outbox_depth") == 0
    assert value(samples, "opsbot_snapshot_age_seconds") < 10
    assert value(samples, "opsbot_probe_duration_seconds_count", service="broker") >= 1
    assert all(t.id for t in [failing, *adds])

    # A Slack API error in a listener's own client (bolt builds one per request) is counted by method.
    slack.fail_next("views.publish", status=200, error="not_enabled")
    slack.send_event({"type": "app_home_opened", "user": "U_ADMIN", "tab": "home", "channel": "D1"})
    assert wait_until(lambda: value(scrape(port), "opsbot_slack_api_errors_total", method="views.publish",
                                     error="not_enabled") == 1, 15)

    # Logs: one JSON object a line, secrets masked, no third-party chatter at INFO.
    lines = [line for line in bot.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert not [r for r in records if r["level"] == "INFO" and not r["logger"].startswith("bot")], records
    assert slack.bot_token not in bot.output() and slack.app_token not in bot.output()


def test_health_paths_on_the_http_mode_port(slack: SlackStandIn, rabbit: RabbitNode, flower: FlowerProcess,
                                            worker: CeleryWorker, run_bot: Callable[..., BotProcess],
                                            tmp_path: Path) -> None:
    port = free_port()
    env = stack_env(rabbit, flower, tmp_path) | {
        "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_SIGNING_SECRET": "s" * 32, "SLACK_API_URL": slack.base_url,
        "OPSBOT_HTTP_PORT": str(port), "OPSBOT_METRICS_PORT": str(port), "OPSBOT_POLL_SECONDS": "1"}
    bot = run_bot(["run"], env)
    assert wait_until(lambda: port_accepts(port) or bot.process.poll() is not None, 30), bot.output()[-2000:]
    assert wait_until(lambda: status(port, "/readyz") == 200, 30), bot.output()[-2000:]
    assert value(scrape(port), "celery_worker_up", hostname=host_of(worker.name)) == 1
    assert status(port, "/healthz") == 200
    # Everything else still goes to bolt, which refuses an unsigned request.
    unsigned = requests.post(f"http://127.0.0.1:{port}/slack/events", data="command=/tasks", timeout=5)
    assert unsigned.status_code == 401


def test_console_and_status_never_bind_the_port(rabbit: RabbitNode, flower: FlowerProcess,
                                                worker: CeleryWorker, tmp_path: Path) -> None:
    """The port is held: binding it would fail. `run` says so; `console` and `status` never try."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = clean_env(stack_env(rabbit, flower, tmp_path) | {
            "OPSBOT_METRICS_PORT": str(port), "OPSBOT_METRICS_HOST": "127.0.0.1", "COLUMNS": "200"})
        console = subprocess.run([OPSBOT, "console"], input="status\nquit\n", env=env, capture_output=True,
                                 text=True, timeout=60)
        assert console.returncode == 0, console.stderr[-2000:]
        assert "RabbitMQ" in console.stdout and "OPSBOT_METRICS_PORT" not in console.stderr
        one_shot = subprocess.run([OPSBOT, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert one_shot.returncode in (0, 1, 2), one_shot.stderr[-2000:]
        assert "OPSBOT_METRICS_PORT" not in one_shot.stderr
        env |= {"SLACK_BOT_TOKEN": "xoxb-1-2-3", "SLACK_APP_TOKEN": "xapp-1-2-3",
                "SLACK_API_URL": f"http://127.0.0.1:{free_port()}/api/"}
        run = subprocess.run([OPSBOT, "run"], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 3
        assert f"OPSBOT_METRICS_PORT: cannot listen on 127.0.0.1:{port}" in run.stderr


# --------------------------------------------------------------------------- the store goes away


class TcpProxy:
    """Forwards a local port to PostgreSQL; stop() closes the port and cuts every connection through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(self.target, timeout=5)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                s.close()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): close() alone does not
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    yield proxy
    proxy.stop()


def test_readyz_follows_the_store(socket_bot: Callable[..., BotProcess], pg_url: str,
                                  pg_proxy: TcpProxy) -> None:
    port = free_port()
    proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}")
    bot = socket_bot(OPSBOT_DB_URL=proxied, OPSBOT_METRICS_PORT=str(port), OPSBOT_METRICS_HOST="127.0.0.1",
                     OPSBOT_POLL_SECONDS="1")
    assert wait_until(lambda: status(port, "/readyz") == 200, 30), bot.output()[-2000:]
    assert value(scrape(port), "opsbot_leader") == 1

    pg_proxy.stop()  # the database is gone: refused, and every open connection cut
    assert wait_until(lambda: status(port, "/readyz") == 503, 20)
    body = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    assert body["checks"]["store"]["ok"] is False and body["checks"]["slack"]["ok"] is True
    health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert health.status_code == 200, health.text  # alive: restarting it would not bring the database back
    samples = scrape(port)
    assert value(samples, "opsbot_store_up") == 0
    assert wait_until(lambda: value(scrape(port), "opsbot_leader") == 0, 10)  # its lock went with the connection

    pg_proxy.start()
    assert wait_until(lambda: status(port, "/readyz") == 200, 30), requests.get(
        f"http://127.0.0.1:{port}/readyz", timeout=5).text
    assert wait_until(lambda: value(scrape(port), "opsbot_leader") == 1, 15)


# --------------------------------------------------------------------------- docs


def exported_names() -> set[str]:
    """Every metric name opsbot can export (with histogram and counter suffixes), from a fed registry."""
    metrics = Metrics(poll_seconds=10)
    metrics.on_task_event({"type": "task-succeeded", "uuid": "u", "hostname": "w@h", "name": "n", "runtime": 1})
    from bot.metrics.families import StoreFacts

    metrics.store_read(StoreFacts({"flower": 1}, 0))
    fed = snapshot((WorkerInfo("w@h", queues=("celery",)),))
    aged = (replace(fed.broker.queues[0], oldest_sent_at=999.0, oldest_age=1.0), *fed.broker.queues[1:])
    metrics.observe_snapshot(replace(fed, broker=replace(fed.broker, queues=aged)))
    metrics.slack_errors.labels(method="m", error="e").inc()
    return {name for name, _ in parse_registry(metrics)}


def metric_names_in(expr: str) -> set[str]:
    words = set(re.findall(r"\b(celery_[a-z_]+|opsbot_[a-z_]+)\b", expr))
    return words


def test_alert_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_names()
    rules = yaml.safe_load((DOCS / "prometheus-rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    # One rule per kind of opsbot alert, and each says what it is about.
    assert {"OpsbotBrokerDown", "OpsbotBrokerManagementDown", "OpsbotQueueWithoutConsumers",
            "OpsbotQueueBacklog", "OpsbotCeleryNotRunning", "OpsbotWorkerNotAnswering",
            "OpsbotFlowerDown", "OpsbotQueueWaitTooLong"} <= alerts
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert used and used <= exported, used - exported


def unit_exec_start() -> tuple[list[str], dict[str, str]]:
    unit = ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DOCS / "opsbot.service")
    service = unit["Service"]
    environment: dict[str, str] = {}
    for line in service.get("Environment", "").splitlines():
        for assignment in shlex.split(line):
            key, _, val = assignment.partition("=")
            environment[key] = val
    return shlex.split(service["ExecStart"]), environment


def test_systemd_unit_starts_the_bot(slack: SlackStandIn, rabbit: RabbitNode, flower: FlowerProcess,
                                     worker: CeleryWorker, tmp_path: Path) -> None:
    command, unit_env = unit_exec_start()
    assert command[1:] == ["run"] and command[0].endswith("/bin/opsbot")
    # systemd itself accepts the unit (with the install path pointing at a real opsbot).
    unit = tmp_path / "opsbot.service"
    unit.write_text((DOCS / "opsbot.service").read_text().replace(command[0], OPSBOT))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    command[0] = OPSBOT  # the unit's install path, here the test's virtualenv
    port = free_port()
    env = clean_env(unit_env | stack_env(rabbit, flower, tmp_path) | {
        "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token, "SLACK_API_URL": slack.base_url,
        "OPSBOT_METRICS_PORT": str(port), "OPSBOT_METRICS_HOST": "127.0.0.1"})
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        assert wait_until(lambda: status(port, "/healthz") == 200 or process.poll() is not None, 30)
        assert process.poll() is None
        assert status(port, "/healthz") == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert process.returncode in (0, -15), output.decode()[-2000:]


# --------------------------------------------------------------------------- links


@pytest.fixture
def links() -> Iterator[Callable[..., None]]:
    from bot.links import NO_LINKS, Links
    from bot.slack import blocks

    yield lambda **kwargs: blocks.use_links(Links(**kwargs))
    blocks.use_links(NO_LINKS)


def test_links_are_bot_markup_with_encoded_values(links: Callable[..., None]) -> None:
    from bot.alerting.engine import Incident
    from bot.alerting.views import incident_view
    from bot.slack import blocks
    from bot.status.views import status_view

    hostile_id = "x>|<!channel>&y"
    task = TaskInfo(hostile_id, "app.job", "w1@box", 990.0)
    view = status_view(snapshot((WorkerInfo("w1@box", active=(task,)),)), "active")
    incident = Incident("flower@1", "flower", 3, "Flower: down", "Monitoring only", 900.0, 900.0)
    unlinked = json.dumps(blocks.message(view)) + json.dumps(blocks.message(incident_view(incident, 1000.0)))
    assert "flower.example" not in unlinked and '"runbook"' not in unlinked  # nothing configured: no links

    links(flower="https://flower.example/f", runbook="https://wiki.example/run?c={check}&a=1")
    text = json.dumps(blocks.message(view))
    assert "<https://flower.example/f/task/x%3E%7C%3C%21channel%3E%26y|x&gt;|&lt;!channel&gt;&amp;y>" in text
    assert "<!channel>" not in text
    workers = json.dumps(blocks.message(status_view(snapshot((WorkerInfo("w1@box"),)), "workers")))
    assert "<https://flower.example/f/worker/w1%40box|w1@box>" in workers
    alert = blocks.message(incident_view(incident, 1000.0))
    (runbook,) = [e for b in alert["blocks"] if b["type"] == "actions" for e in b["elements"]
                  if e["action_id"] == "runbook"]
    assert runbook["url"] == "https://wiki.example/run?c=flower&a=1" and "value" not in runbook


@pytest.mark.parametrize("setting", ["FLOWER_PUBLIC_URL", "OPSBOT_RUNBOOK_URL"])
@pytest.mark.parametrize("bad", ["ftp://flower", "https://user:pw@flower.example", "https://x.example/a b",
                                 "https://x.example/<!channel>"])
def test_link_settings_are_validated(setting: str, bad: str) -> None:
    from bot.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as problem:
        load_settings(**{setting: bad})
    assert setting in str(problem.value) and "pw" not in str(problem.value)


def test_alerts_carry_a_runbook_button_and_tasks_link_to_flower(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], make_flower: Callable[..., FlowerProcess],
        rabbit: RabbitNode, worker: CeleryWorker) -> None:
    flower = make_flower()
    socket_bot(FLOWER_URL=flower.url, FLOWER_PUBLIC_URL="https://flower.example.com/",
               OPSBOT_RUNBOOK_URL="https://wiki.example.com/runbooks/{check}?from=opsbot",
               OPSBOT_ALERT_CHANNEL="C_ALERTS", OPSBOT_POLL_SECONDS="1")
    (task_id,) = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(20,))
    task_link = f"<https://flower.example.com/task/{task_id}|{task_id}>"
    assert wait_until(lambda: task_link in json.dumps(slack.request("slash_command", "active")), 15)
    workers = json.dumps(slack.request("slash_command", "workers"))
    assert f"https://flower.example.com/worker/{worker.name.replace('@', '%40')}" in workers

    flower.kill()
    assert wait_until(lambda: [m for m in slack.messages if m.channel == "C_ALERTS" and "Flower" in (m.text or "")],
                      20)
    alert = next(m for m in slack.messages if m.channel == "C_ALERTS" and "Flower" in (m.text or ""))
    buttons = {e["action_id"]: e for b in alert.blocks or [] if b["type"] == "actions" for e in b["elements"]}
    assert buttons["runbook"]["url"] == "https://wiki.example.com/runbooks/flower?from=opsbot"
    # Slack still sends a click on a link button: acknowledged, and nothing else happens.
    before = len(slack.messages)
    ack = slack.request("block_action", "runbook", message=alert, channel_id="C_ALERTS")
    assert ack == {} or "text" not in ack
    assert len(slack.messages) == before
