"""The Slack edge: bolt listeners that turn slash commands and clicks into views, and the runners.

Everything Slack-specific lives here; what to say comes from `bot.commands` and `bot.views`, how it
looks from `bot.blocks`. Every Slack client uses `SLACK_API_URL`, Web API and Socket Mode alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot import blocks
from bot.commands import Command, Commands, UsageError, parse_section_value
from bot.config import Settings
from bot.snapshot import Level
from bot.views import View, message_view

log = logging.getLogger(__name__)

OOPS = "Something went wrong inside opsbot; nothing was changed. The bot's log has the details."


def make_client(settings: Settings) -> WebClient:
    """A Web API client on `SLACK_API_URL` that retries rate limits, 5xx and dropped connections."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    return WebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=10,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def safely(build: Callable[[], View]) -> View:
    """A view, or a plain apology: no traceback ever reaches Slack."""
    try:
        return build()
    except UsageError as problem:
        return message_view("opsbot", str(problem), Level.WARN)
    except Exception:
        log.exception("handler failed")
        return message_view("opsbot", OOPS, Level.DOWN)


def publish_home(client: WebClient, user_id: str, view: View) -> None:
    """The App Home tab: the same dashboard, minus what only makes sense in a channel."""
    home = {"type": "home", "blocks": blocks.to_dicts(blocks.render(view, include_slack_only=False))}
    client.views_publish(user_id=user_id, view=home)


def build_app(settings: Settings, commands: Commands) -> App:
    signing_secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    app = App(client=make_client(settings), signing_secret=signing_secret,
              # Socket Mode has no signatures to check; HTTP mode refuses to start without a secret.
              request_verification_enabled=bool(signing_secret))

    @app.command("/tasks")
    def on_tasks(ack: Ack, command: dict[str, Any]) -> None:
        # Answering in the ack itself saves a round trip; probes are bounded well inside 3 s.
        view = safely(lambda: commands.run_text(command.get("text") or ""))
        ack(response_type="ephemeral", **blocks.message(view))

    @app.action("page")
    def on_page(ack: Ack, action: dict[str, Any], body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        view = safely(lambda: commands.run_action("page", action.get("value", "")))
        if body.get("container", {}).get("type") == "view":  # clicked in the App Home tab
            publish_home(client, body.get("user", {}).get("id", ""), view)
        else:
            respond(replace_original=True, **blocks.message(view))

    @app.event("app_home_opened")
    def on_home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab") == "home":
            publish_home(client, event.get("user", ""), safely(lambda: commands.run(Command("overview"))))

    @app.action("share")
    def on_share(ack: Ack, action: dict[str, Any], body: dict[str, Any], respond: Respond) -> None:
        ack()
        try:
            view = commands.run(parse_section_value(action.get("value", "")))
        except UsageError as problem:
            respond(replace_original=False, **blocks.message(message_view("opsbot", str(problem), Level.WARN)))
            return
        user = body.get("user", {}).get("id", "")
        shared = View(view.title, view.summary, view.level, view.sections, (), f"Shared by <@{user}> · {view.footer}")
        respond(response_type="in_channel", replace_original=False, **blocks.message(shared))

    @app.error
    def on_error(error: Exception) -> None:
        log.error("Slack listener failed: %s", type(error).__name__)

    return app


def run_socket_mode(app: App, settings: Settings) -> None:
    assert settings.slack_app_token is not None
    handler = SocketModeHandler(app, settings.slack_app_token.get_secret_value())
    log.info("connecting to Slack in Socket Mode via %s", settings.slack_api_url)
    handler.start()


def run_http(app: App, settings: Settings) -> None:
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    from waitress import serve

    log.info("serving Slack requests over HTTP on port %d (path /slack/events)", settings.http_port)
    serve(SlackRequestHandler(app), host="0.0.0.0", port=settings.http_port, threads=8, _quiet=True)
