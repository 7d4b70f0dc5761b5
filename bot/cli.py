"""The `opsbot` command: wiring of settings, probes and one of the edges (Slack, console, one-shot)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict

from rich.console import Console

from bot.celeryapp import with_app
from bot.config import ConfigError, Settings, load_settings
from bot.console import render as terminal
from bot.logs import use_json_lines
from bot.redact import install_log_redaction, redact
from bot.status import assess
from bot.status.views import status_view

log = logging.getLogger("opsbot")

EXIT_CONFIG = 3  # 0, 1 and 2 belong to `opsbot status` (green, amber, red)
SHUTDOWN_SECONDS = 9.0  # after SIGTERM or SIGINT the process is gone within this (docker stop waits 10 s)


class Shutdown(KeyboardInterrupt):
    """SIGTERM (docker stop, systemd) or SIGINT: leave the way Ctrl-C does, through the same cleanup."""


def on_shutdown_signal(signum: int, frame: object) -> None:
    for name in ("SIGTERM", "SIGINT"):  # one shutdown: a second signal must not interrupt the first
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    log.info("%s received: shutting down", signal.Signals(signum).name)
    exit_deadline(SHUTDOWN_SECONDS)
    raise Shutdown()


def exit_deadline(seconds: float) -> None:
    """Work still in flight once the orderly shutdown is done (a Slack call, a database that stopped
    answering) must not keep the process alive past the bound; what must be saved is saved by then."""

    def expire() -> None:
        log.warning("shutdown: exiting with work still in flight after %.0f s", seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opsbot", description="Slack chat-ops for Celery.")
    parser.add_argument("-A", "--app", help="the Celery app, as for `celery -A` (proj or proj.celery:app); "
                                            "sets OPSBOT_CELERY_APP")
    sub = parser.add_subparsers(dest="mode")
    sub.add_parser("run", help="connect to Slack (Socket Mode with SLACK_APP_TOKEN, else HTTP)")
    sub.add_parser("console", help="the /tasks commands in this terminal, no Slack needed")
    status = sub.add_parser("status", help="print the status once; exit 0 green, 1 amber, 2 red")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    return parser.parse_args(argv)


def require_slack(settings: Settings) -> None:
    """Name the missing variable before anything connects."""
    if settings.slack_bot_token is None:
        raise ConfigError("SLACK_BOT_TOKEN is not set: `opsbot run` needs the bot token (xoxb-...). "
                          "Use `opsbot console` to run without Slack.")
    if settings.slack_app_token is None and settings.slack_signing_secret is None:
        raise ConfigError("Set SLACK_APP_TOKEN (xapp-..., Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode).")
    if settings.slack_app_token is not None and not settings.slack_app_token.get_secret_value().startswith("xapp-"):
        raise ConfigError("SLACK_APP_TOKEN must be an app-level token starting with xapp-.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = {"celery_app": args.app} if args.app else {}
        settings = with_app(load_settings(**overrides), **overrides)
        mode = args.mode or ("run" if settings.slack_configured else "console")
        if mode == "run":
            require_slack(settings)
    except ConfigError as problem:
        print(f"opsbot: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    install_log_redaction(settings.secrets(), settings.log_level)
    if settings.log_format == "json":
        use_json_lines()

    from bot.runtime import Runtime  # heavy imports (celery, slack) only once configuration is valid

    runtime = Runtime(settings)
    for name in ("SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), on_shutdown_signal)
    try:
        if mode == "status":
            return print_status(runtime, as_json=args.json)
        if mode == "run":
            runtime.start_metrics()  # console and status never bind the port
        runtime.start_background(lead=mode == "run")
        if mode == "console":
            from bot.console import loop as console

            screen = Console()
            # Alert lines quote queue and worker names: data, never rich markup.
            commands, operator = runtime.console_commands(
                lambda line: screen.print(line, style="bold", markup=False, highlight=False))
            return console.run(commands, operator, screen)
        runtime.run_slack()
        return 0
    except ConfigError as problem:
        print(f"opsbot: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    finally:
        runtime.close()
        log.info("opsbot stopped")


def print_status(runtime: object, as_json: bool) -> int:
    snapshot = runtime.prober.snapshot()  # type: ignore[attr-defined]
    if as_json:
        print(redact(json.dumps(asdict(snapshot), default=str, indent=2)))
    else:
        Console().print(terminal.render(status_view(snapshot)))
    return assess.exit_code(assess.overall_level(snapshot))


if __name__ == "__main__":
    sys.exit(main())
