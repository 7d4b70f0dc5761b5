"""The running bot: one place that builds the long-lived parts and starts the chosen edge."""

from __future__ import annotations

import logging

from bot.commands import Commands
from bot.config import Settings
from bot.probes import CeleryProbe, Prober

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prober = Prober(settings, CeleryProbe(settings))
        self.commands = Commands(self.prober.snapshot)

    def run_slack(self) -> None:
        from bot import slack_app

        app = slack_app.build_app(self.settings, self.commands)
        if self.settings.slack_app_token is not None:
            slack_app.run_socket_mode(app, self.settings)
        else:
            slack_app.run_http(app, self.settings)

    def close(self) -> None:
        self.prober.close()
