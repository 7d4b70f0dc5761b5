"""The running bot: one place that builds the long-lived parts and starts the chosen edge."""

from __future__ import annotations

import contextlib
import getpass
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bot.alerting.service import AlertService
from bot.alerting.sinks import ConsoleSink, Sink, SlackSink
from bot.alerting.state import AlertStore, MemoryAlertState
from bot.beat.watch import BeatWatch, watch_for
from bot.celeryapp import app_facts
from bot.celeryapp.events import EventEnabler
from bot.charts.series import SeriesRecorder, SeriesStore
from bot.charts.service import Charts
from bot.commands.dispatch import Commands, CommandSet
from bot.config import ConfigError, Settings
from bot.control.access import Access, Actor
from bot.control.audit import AuditLog
from bot.control.tasks import Stack, TaskControl
from bot.db import BoundedRead, Database
from bot.health import TaskHealth
from bot.health.retry import Retrier
from bot.health.waiting import WaitingTime
from bot.history.digest import DailyDigest
from bot.history.read import History
from bot.history.record import HistoryRecorder
from bot.history.store import HistoryStore
from bot.leader import LeaderRecord, Leadership, default_replica_id
from bot.metrics.collector import Metrics
from bot.metrics.serve import Every, MetricsServer, WsgiApp, health_app, keep_fresh
from bot.probes.celery_probe import CeleryProbe
from bot.probes.prober import Prober
from bot.redact import redact
from bot.status.heartbeats import HeartbeatMonitor
from bot.status.snapshot import Snapshot
from bot.workers.actions import WorkerControl, WorkerStack, enrich
from bot.workers.store import PauseStore

if TYPE_CHECKING:
    from slack_sdk import WebClient

    from bot.charts.slack import ChartPoster

log = logging.getLogger(__name__)

STORE_READ_SECONDS = 1.0  # the status waits this long for the store's lines, well inside Slack's 3-s ack
SERIES_ALONE_AFTER = 60.0  # seconds since a bot last said it leads, before the console records the series
STORE_UNAVAILABLE = "Store unavailable: mutes, incidents and history cannot be read right now"


def open_store(settings: Settings) -> Database:
    try:
        return Database(settings.db_url)
    except Exception as exc:
        raise ConfigError(f"OPSBOT_DB_URL: cannot open the store: {redact(str(exc))[:200]}") from None


def console_actor() -> Actor:
    name = getpass.getuser()
    return Actor(f"console:{name}", name)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.heartbeats: HeartbeatMonitor | None = None
        self.celery_probe = CeleryProbe(settings, alive_workers=self._alive_workers,
                                        heartbeat_details=self._heartbeat_details,
                                        heartbeat_quiet=self._heartbeat_quiet)
        self.prober = Prober(settings, self.celery_probe)
        self.waiting = WaitingTime(settings, self._store)
        self.retrier: Retrier | None = None
        self.worker_stack = WorkerStack(self.celery_probe.app, self.celery_probe.expected)
        self.store: Database | None = None
        self.alerts: AlertService | None = None
        self.digest: DailyDigest | None = None
        self.recorder: HistoryRecorder | None = None
        self.replica = settings.replica_id or default_replica_id()
        self.leadership: Leadership | None = None
        self.metrics: Metrics | None = None  # only `opsbot run` with OPSBOT_METRICS_PORT
        self._metrics_parts: list[Every | MetricsServer] = []  # to stop on the way out
        self.socket_mode: Any = None  # the Socket Mode handler, closed first on the way out
        self._store_reads = BoundedRead(STORE_READ_SECONDS)
        self.series: SeriesRecorder | None = None
        # Issue 14: the app's beat schedule, watched in task events; task events switched on.
        self.facts = app_facts(settings.celery_app) if settings.celery_app else None
        self.beat: BeatWatch | None = None
        self.events: EventEnabler | None = None
        # Several stacks (bot.stacks): the host runtime of the stacks records no series of its own.
        self.record_series = True

    def take_snapshot(self) -> Snapshot:
        """Every snapshot the bot takes (alert polls, commands): with each queue's oldest waiting task
        (bot.health.waiting), the beat schedule's runs (bot.beat) and the queue pauses admins made
        (bot.workers). It also feeds the metrics and
        the time series (which then need no probe of their own)."""
        probed = self.prober.snapshot()
        # The oldest waiting task's age is read from the history: like every store read on the way to an
        # answer, bounded (a silent store held /tasks past Slack's 3 s with tasks waiting; bench/soak found it).
        snapshot = self._store_reads(lambda: self.waiting.enrich(probed)) or probed
        if self.beat is not None:  # what the task events told about the beat schedule
            snapshot = replace(snapshot, beat=self.beat.report())
        # Pauses are on record only where a long-running mode opened the store; it never holds up an answer.
        pauses = self._store_reads(PauseStore(self.store).load) if self.store is not None else None
        if pauses:
            # A pause holds while its worker does not consume the queue: ask the workers only when one is on record.
            snapshot = enrich(self.worker_stack, replace(snapshot, pauses=pauses))
        if self.metrics is not None:
            self.metrics.observe_snapshot(snapshot)
        if self.series is not None:
            self.series.offer(snapshot)
        return snapshot

    def _on_task_event(self, event: dict) -> None:
        if self.recorder is not None:
            self.recorder.on_event(event)
        if self.beat is not None:
            self.beat.on_event(event)
        if self.metrics is not None and self.heartbeats is not None:
            self.metrics.on_task_event(event, self.heartbeats.state.tasks.get(event.get("uuid")))

    def _expected_threads(self) -> list[str]:
        names = ["heartbeats", "heartbeat-watch", "history", "metrics-poll", "metrics-store"]
        if self.alerts is not None:
            names.append("APScheduler")  # the alert scheduler's thread
        return names + (["leadership"] if self.store is not None and self.store.shared else [])

    def _metrics_on_slack_port(self) -> bool:
        """HTTP mode answers the health paths itself; with the same port there is no second server."""
        return self.settings.slack_app_token is None and self.settings.metrics_port == self.settings.http_port

    def start_metrics(self) -> None:
        """`opsbot run` only: /metrics, /healthz and /readyz on OPSBOT_METRICS_PORT, kept fresh in the background."""
        port = self.settings.metrics_port
        if port is None:
            return
        store = self._store()  # opened here, once: migrations must not run from two threads at a time
        self.metrics = self._make_metrics()
        if not self._metrics_on_slack_port():
            try:
                server = MetricsServer(self.health_app(), self.settings.metrics_host, port).start()
            except OSError as exc:
                raise ConfigError(f"OPSBOT_METRICS_PORT: cannot listen on {self.settings.metrics_host}:{port} "
                                  f"({exc.strerror or exc})") from None
            self._metrics_parts.append(server)
            log.info("serving /metrics, /healthz and /readyz on port %d", port)
        self._metrics_parts += keep_fresh(self.metrics, self.take_snapshot, AlertStore(store))

    def _make_metrics(self) -> Metrics:
        return Metrics(self.settings.poll_seconds, is_leader=self._is_leader)

    def health_app(self) -> WsgiApp:
        assert self.metrics is not None
        return health_app(self.metrics, self._expected_threads)

    def _heartbeat_details(self) -> dict[str, dict]:
        return self.heartbeats.worker_details() if self.heartbeats else {}

    def _heartbeat_quiet(self) -> float | None:
        return self.heartbeats.quiet_seconds() if self.heartbeats else None

    def _alive_workers(self) -> set[str] | None:
        return self.heartbeats.alive_workers() if self.heartbeats else None

    def _on_workers_changed(self) -> None:
        if self.alerts is not None:
            self.alerts.poll_soon()

    def _on_leadership(self, leading: bool) -> None:
        if leading and self.alerts is not None:
            self.alerts.poll_soon()  # take over at once: the incidents are in the shared store

    def _series_store(self) -> SeriesStore:
        if self.settings.stack:  # several stacks: each one's series apart (bot.stacks)
            from bot.stacks.series import StackSeriesStore

            return StackSeriesStore(self._store().engine, self.settings.stack)
        return SeriesStore(self._store().engine)

    def charts(self) -> Charts:
        kind: type[Charts] = Charts
        if self.settings.stack:
            from bot.stacks.series import StackCharts

            kind = StackCharts  # titled with the stack's name
        return kind(self._series_store(), self.settings.queues, self.settings.backlog_threshold,
                    self.settings.series_days, time.time)

    def chart_posters(self, client: WebClient) -> dict[str, ChartPoster]:
        """Who draws `/tasks chart` in Slack, by stack ("" for the single stack)."""
        from bot.charts.slack import ChartPoster

        return {"": ChartPoster(client, self.charts())}

    def incident_charts(self, client: WebClient) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
        """What adds an alert's chart to its message."""
        from bot.charts.slack import IncidentCharts

        return IncidentCharts(client, self.charts()).attach

    def _is_leader(self) -> bool:
        return self.leadership is not None and self.leadership.is_leader()

    def _notes(self) -> list[str]:
        """The status footer's lines from the store, if it answers in time: the status itself comes
        from the probes and must not wait for (or fail with) the database."""
        notes = self._store_reads(self._store_notes)
        if notes is None:
            notes = [STORE_UNAVAILABLE]
        return [*notes, *self._slack_problems()]

    def _store_notes(self) -> list[str]:
        notes = [self.alerts.muted_note()] if self.alerts else []
        store = self._store()
        if store.shared:
            leader = LeaderRecord(store).current()
            notes.append(f"answered by {self.replica}, leader {leader.replica if leader else 'none'}")
        return notes

    def _slack_problems(self) -> list[str]:
        sink = self.alerts.sink if self.alerts is not None else None
        return [sink.problem] if isinstance(sink, SlackSink) and sink.problem else []

    def start_background(self, lead: bool = True) -> None:
        """Long-running modes follow worker heartbeats and record task history; a one-shot status does not.
        Every replica records (the writes are idempotent), so a failover leaves no gap; only a `lead`ing
        mode (`opsbot run`) takes part in the election for alerting."""
        if lead:
            self.leadership = Leadership(self._store(), self.replica, self._on_leadership).start()
        if self.record_series:  # several stacks: each stack records its own, the host none
            self.series = SeriesRecorder(self._series_store(), self.settings.series_days,
                                         self.take_snapshot, should_record=self._records_series).start()
        self.recorder = HistoryRecorder(HistoryStore(self._store()), self.settings.history_days,
                                        self.settings.history_max_rows,
                                        on_recorded=self.series.on_task_event if self.series else None,
                                        stack=self.settings.stack).start()
        self.heartbeats = HeartbeatMonitor(self.celery_probe.app, on_change=self._on_workers_changed,
                                           on_task_event=self._on_task_event)
        heartbeats = self.heartbeats
        self.beat = watch_for(self.facts, self.settings.beat_grace, lambda: heartbeats.connected_since)
        heartbeats.start()
        if self.settings.enable_events:
            self.events = EventEnabler(self.celery_probe.app).start()

    def _records_series(self) -> bool:
        """One writer of the time series (counters add up): the leader; the console, which never leads, only
        on a store of its own that no bot has led on for a minute."""
        if self.leadership is not None:
            return self._is_leader()
        store = self._store()
        leader = None if store.shared else LeaderRecord(store).current()
        return not store.shared and (leader is None or time.time() - leader.seen_at > SERIES_ALONE_AFTER)

    def _retryable(self, task_ids: list[str]) -> set[str]:
        return self.retrier.retryable(task_ids) if self.retrier else set()

    def _store(self) -> Database:
        if self.store is None:
            self.store = open_store(self.settings)
        return self.store

    def start_alerts(self, sink: Sink) -> AlertService:
        health = TaskHealth(self.settings, self._store, self._retryable)
        self.alerts = AlertService(self.settings, AlertStore(self._store()), self.take_snapshot, sink,
                                   is_leader=self._is_leader, extra_findings=health.findings)
        self.alerts.start()
        return self.alerts

    def start_console_alerts(self, sink: Sink) -> AlertService:
        """The console watches on its own: its alert state lives in memory, never in the store, so it
        can neither take alerting from a Slack-connected bot nor consume the transitions it posts."""
        self.alerts = AlertService(self.settings, MemoryAlertState(), self.take_snapshot, sink)
        self.alerts.start()
        return self.alerts

    def commands(self, access: Access, announce: Callable[[str], None] | None = None) -> CommandSet:
        """The command set with task control, for one edge's idea of who may act."""
        stack = Stack(self.settings, self.celery_probe.app, self.celery_probe.expected)
        control = TaskControl(self.settings, stack, AuditLog(self._store()), access, announce)
        self.retrier = Retrier(self.settings, self._store, control)
        history = History(self.settings, HistoryStore(self._store()), self.recorder)
        history.retryable = self._retryable
        workers = WorkerControl(self.settings, self.worker_stack, control, PauseStore(self._store()))
        return Commands(self.take_snapshot, control, self.alerts, history, self._notes, self.retrier, self.charts(),
                        workers)

    def console_commands(self, print_line: Callable[[str], None]) -> tuple[CommandSet, Actor]:
        # The operator at the console already holds the broker's credentials: they may act.
        operator = console_actor()
        self.start_console_alerts(ConsoleSink(print_line))
        return self.commands(Access(admins=(operator.id,))), operator

    def run_slack(self) -> None:
        from bot.links import Links
        from bot.slack import app as slack_app
        from bot.slack import blocks

        blocks.use_links(Links.from_settings(self.settings))
        client = slack_app.make_client(self.settings)
        if self.metrics is not None:
            client.retry_handlers.insert(0, self.metrics.slack_observer)  # bolt copies them per request
        if self.settings.alert_channel:
            sink = SlackSink(AlertStore(self._store()), client, self.settings.alert_channel, self.replica,
                             attach=self.incident_charts(client))
            self.start_alerts(sink)
            if self.settings.digest_at:
                self.digest = DailyDigest(self.settings.digest_at, HistoryStore(self._store()),
                                          lambda key, payload: sink.enqueue(key, "post", payload),
                                          self._is_leader).start()
        else:
            log.info("alerting is off: set OPSBOT_ALERT_CHANNEL to the channel for alerts")
        commands = self.commands(slack_app.slack_access(self.settings, client),
                                 slack_app.audit_announcer(self.settings, client))
        app = slack_app.build_app(self.settings, commands, client, self.chart_posters(client))
        if self.settings.log_level != "DEBUG":
            app.logger.setLevel(logging.WARNING)  # bolt resets its logger to the root's level: quiet it again
        if self.settings.slack_app_token is not None:
            self.socket_mode = slack_app.socket_mode_handler(app, self.settings)
            self._watch_socket(self.socket_mode)
            slack_app.run_socket_mode(self.socket_mode, self.settings)
        else:
            slack_app.run_http(app, self.settings, health=self.health_app() if self.metrics else None)

    def _watch_socket(self, handler: Any) -> None:  # a SocketModeHandler
        if self.metrics is not None:
            self.metrics.slack_connected = handler.client.is_connected

    def close(self) -> None:
        """Stop taking work (Socket Mode first), then save what is in flight: the history's queue,
        the outbox claims (freed for the other replicas at once), the leadership."""
        if self.socket_mode is not None:
            with contextlib.suppress(Exception):
                self.socket_mode.close()
        for part in self._metrics_parts:
            part.stop()
        if self.alerts is not None:
            self.alerts.stop()
        if self.digest is not None:
            self.digest.stop()
        if self.heartbeats is not None:
            self.heartbeats.stop()
        if self.events is not None:
            self.events.stop()
        if self.beat is not None:
            self.beat.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self.series is not None:
            self.series.stop()
        if self.leadership is not None:
            self.leadership.stop()
        self.prober.close()
        if self.store is not None:
            self.store.close()
