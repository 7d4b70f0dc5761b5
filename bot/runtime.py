"""The running bot: one place that builds the long-lived parts and starts the chosen edge."""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from bot import markup
from bot.access import Access, Actor
from bot.alerting import AlertService, ConsoleSink, Sink
from bot.beat.watch import BeatWatch, watch_for
from bot.celeryapp import app_facts
from bot.celeryapp.events import EventEnabler
from bot.commands import Commands
from bot.config import ConfigError, Settings
from bot.control import Stack, TaskControl
from bot.heartbeats import HeartbeatMonitor
from bot.history import History, HistoryRecorder, digest_text
from bot.leader import Leadership, default_replica_id
from bot.probes import CeleryProbe, Prober
from bot.redact import redact
from bot.snapshot import Snapshot
from bot.store import Store

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> Store:
    try:
        return Store(settings.db_url)
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
                                        heartbeat_details=self._heartbeat_details)
        self.prober = Prober(settings, self.celery_probe)
        self.store: Store | None = None
        self.alerts: AlertService | None = None
        self.recorder: HistoryRecorder | None = None
        self.replica = settings.replica_id or default_replica_id()
        self.leadership: Leadership | None = None
        # Issue 14: the app's beat schedule, watched in task events; task events switched on.
        self.facts = app_facts(settings.celery_app) if settings.celery_app else None
        self.beat: BeatWatch | None = None
        self.events: EventEnabler | None = None

    def snapshot(self) -> Snapshot:
        """The probes' snapshot, with what the task events told about the beat schedule."""
        snapshot = self.prober.snapshot()
        return replace(snapshot, beat=self.beat.report()) if self.beat else snapshot

    def _on_task_event(self, event: dict) -> None:
        if self.recorder is not None:
            self.recorder.on_event(event)
        if self.beat is not None:
            self.beat.on_event(event)

    def _heartbeat_details(self) -> dict[str, dict]:
        return self.heartbeats.worker_details() if self.heartbeats else {}

    def _alive_workers(self) -> set[str] | None:
        return self.heartbeats.alive_workers() if self.heartbeats else None

    def _on_workers_changed(self) -> None:
        if self.alerts is not None:
            self.alerts.poll_soon()

    def _on_leadership(self, leading: bool) -> None:
        if leading and self.alerts is not None:
            self.alerts.poll_soon()  # take over at once: the incidents are in the shared store

    def _is_leader(self) -> bool:
        return self.leadership is not None and self.leadership.is_leader()

    def _notes(self) -> list[str]:
        notes = [self.alerts.muted_note()] if self.alerts else []
        store = self._store()
        if store.shared:
            leader = store.leader()
            notes.append(f"answered by {self.replica}, leader {leader[0] if leader else 'none'}")
        return notes

    def start_background(self) -> None:
        """Long-running modes follow worker heartbeats and record task history; a one-shot status does not."""
        self.leadership = Leadership(self._store(), self.replica, self._on_leadership).start()
        self.recorder = HistoryRecorder(self._store(), self.settings.history_days, self.settings.history_max_rows,
                                        should_record=self._is_leader).start()
        self.heartbeats = HeartbeatMonitor(self.celery_probe.app, on_change=self._on_workers_changed,
                                           on_task_event=self._on_task_event)
        heartbeats = self.heartbeats
        self.beat = watch_for(self.facts, self.settings.beat_grace, lambda: heartbeats.connected_since)
        heartbeats.start()
        if self.settings.enable_events:
            self.events = EventEnabler(self.celery_probe.app).start()

    def _store(self) -> Store:
        if self.store is None:
            self.store = open_store(self.settings)
        return self.store

    def start_alerts(self, sink: Sink) -> AlertService:
        self.alerts = AlertService(self.settings, self._store(), self.snapshot, sink,
                                   is_leader=self._is_leader)
        self.alerts.start()
        return self.alerts

    def commands(self, access: Access, announce: Callable[[str], None] | None = None) -> Commands:
        """The command set with task control, for one edge's idea of who may act."""
        stack = Stack(self.settings, self.celery_probe.app, self.celery_probe.expected)
        control = TaskControl(self.settings, stack, self._store(), access, announce)
        history = History(self.settings, self._store(), self.recorder)
        return Commands(self.snapshot, control, self.alerts, history, self._notes)

    def console_commands(self, print_line: Callable[[str], None]) -> tuple[Commands, Actor]:
        # The operator at the console already holds the broker's credentials: they may act.
        operator = console_actor()
        self.start_alerts(ConsoleSink(print_line))
        return self.commands(Access(admins=(operator.id,))), operator

    def run_slack(self) -> None:
        from bot import slack_app
        from bot.alerting import SlackSink

        client = slack_app.make_client(self.settings)
        if self.settings.alert_channel:
            alerts = self.start_alerts(SlackSink(self._store(), client, self.settings.alert_channel, self.replica))
            if self.settings.digest_at:
                channel = self.settings.alert_channel
                alerts.daily(self.settings.digest_at, lambda: client.chat_postMessage(
                    channel=channel, text=markup.for_slack(digest_text(self._store(), time.time()), 3000)))
        else:
            log.info("alerting is off: set OPSBOT_ALERT_CHANNEL to the channel for alerts")
        commands = self.commands(slack_app.slack_access(self.settings, client),
                                 slack_app.audit_announcer(self.settings, client))
        app = slack_app.build_app(self.settings, commands, client)
        if self.settings.slack_app_token is not None:
            slack_app.run_socket_mode(app, self.settings)
        else:
            slack_app.run_http(app, self.settings)

    def close(self) -> None:
        if self.alerts is not None:
            self.alerts.stop()
        if self.heartbeats is not None:
            self.heartbeats.stop()
        if self.events is not None:
            self.events.stop()
        if self.beat is not None:
            self.beat.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self.leadership is not None:
            self.leadership.stop()
        self.prober.close()
        if self.store is not None:
            self.store.close()
