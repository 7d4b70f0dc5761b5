"""Keeping the metrics fresh in background threads, and serving /metrics, /healthz and /readyz over HTTP."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import make_wsgi_app

from bot.alerting.state import AlertStore
from bot.metrics.collector import Metrics
from bot.metrics.families import read_store_facts
from bot.status.snapshot import Snapshot

log = logging.getLogger(__name__)

METRICS_PATHS = ("/metrics", "/healthz", "/readyz")
STORE_SECONDS = 2.0  # how often the store is read (incidents, outbox) and thereby checked


# --- Background: keep the snapshot and the store facts fresh ----------------------------------


class Every:
    """Run `job` every `seconds` in a named daemon thread (the name is what /healthz looks for)."""

    def __init__(self, name: str, seconds: float, job: Callable[[], None]) -> None:
        self.seconds = seconds
        self.job = job
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.job()
            except Exception:
                log.exception("%s failed", self.thread.name)
            self._stopped.wait(self.seconds)

    def start(self) -> Every:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()


def keep_fresh(metrics: Metrics, take_snapshot: Callable[[], Snapshot], store: AlertStore) -> list[Every]:
    """A snapshot whenever the latest is a poll interval old (alerting usually takes them), and the store read."""

    def poll() -> None:
        latest = metrics.latest_snapshot()
        if latest is None or metrics.clock() - latest.taken_at >= metrics.poll_seconds:
            take_snapshot()  # observed by the caller's wrapper

    def read_store() -> None:
        try:
            facts = read_store_facts(store)
        except Exception as exc:
            metrics.store_read(None, type(exc).__name__)
            return
        metrics.store_read(facts)

    return [Every("metrics-poll", 1.0, poll).start(), Every("metrics-store", STORE_SECONDS, read_store).start()]


# --- HTTP -------------------------------------------------------------------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_app(metrics: Metrics, threads: Callable[[], Iterable[str]]) -> WsgiApp:
    """/metrics, /healthz (the process and its threads) and /readyz, as one WSGI app.

    `threads` names the threads that must be alive (what is expected depends on what was started).
    """
    exposition = make_wsgi_app(metrics.registry)

    def reply(start_response: Callable[..., Any], ok: bool, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body, sort_keys=True).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        ("Cache-Control", "no-store")])
        return [data]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return exposition(environ, start_response)
        if path == "/healthz":
            alive = {t.name for t in threading.enumerate() if t.is_alive()}
            missing = sorted(set(threads()) - alive)
            return reply(start_response, not missing, {"alive": not missing, "dead_threads": missing})
        if path == "/readyz":
            checks = metrics.readiness()
            ready = all(ok for ok, _ in checks.values())
            return reply(start_response, ready,
                         {"ready": ready, "checks": {name: {"ok": ok, "detail": detail}
                                                     for name, (ok, detail) in checks.items()}})
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


def with_health(metrics_app: WsgiApp, other: WsgiApp) -> WsgiApp:
    """Our three paths first, everything else to `other` (the Slack request handler in HTTP mode)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in METRICS_PATHS:
            return metrics_app(environ, start_response)
        return other(environ, start_response)

    return app


class MetricsServer:
    """A small threaded HTTP server (waitress) for the health app, in a daemon thread."""

    def __init__(self, app: WsgiApp, host: str, port: int) -> None:
        from waitress import create_server

        self.server = create_server(app, host=host, port=port, threads=2)
        self.thread = threading.Thread(target=self.server.run, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.close()
