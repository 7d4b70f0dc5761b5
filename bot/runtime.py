"""The running bot: one place that builds the long-lived parts and starts the chosen edge."""

from __future__ import annotations

import logging

from bot.commands import Commands
from bot.config import Settings
from bot.heartbeats import HeartbeatMonitor
from bot.probes import CeleryProbe, Prober

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.heartbeats: HeartbeatMonitor | None = None
        celery_probe = CeleryProbe(settings, alive_workers=self._alive_workers)
        self.prober = Prober(settings, celery_probe)
        self.commands = Commands(self.prober.snapshot)

    def _alive_workers(self) -> set[str] | None:
        return self.heartbeats.alive_workers() if self.heartbeats else None

    def start_background(self) -> None:
        """Long-running modes follow worker heartbeats; a one-shot status does not need to."""
        self.heartbeats = HeartbeatMonitor(self.prober.celery.app).start()

    def run_slack(self) -> None:
        from bot import slack_app

        app = slack_app.build_app(self.settings, self.commands)
        if self.settings.slack_app_token is not None:
            slack_app.run_socket_mode(app, self.settings)
        else:
            slack_app.run_http(app, self.settings)

    def close(self) -> None:
        if self.heartbeats is not None:
            self.heartbeats.stop()
        self.prober.close()
