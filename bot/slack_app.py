"""The Slack edge: bolt listeners that turn slash commands and clicks into replies, and the runners.

Everything Slack-specific lives here; what to say comes from `bot.commands` and `bot.views`, how it
looks from `bot.blocks`. Every Slack client uses `SLACK_API_URL`, Web API and Socket Mode alike.
"""

from __future__ import annotations

import logging
import re
import threading
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
from bot.access import Access, Actor
from bot.commands import TARGETED, Command, Commands, Reply, UsageError, parse
from bot.config import Settings
from bot.snapshot import Level
from bot.views import Notice, View, message_view

log = logging.getLogger(__name__)

OOPS = "Something went wrong inside opsbot; nothing was changed. The bot's log has the details."
WORKING = "Working on it…"


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


def slack_access(settings: Settings, client: WebClient) -> Access:
    """The admin policy, with Slack's user groups and user profiles as its directory."""

    def group_members(group_id: str) -> set[str]:
        return set(client.usergroups_users_list(usergroup=group_id)["users"])

    def is_workspace_admin(user_id: str) -> bool:
        user = client.users_info(user=user_id)["user"]
        return bool(user.get("is_admin") or user.get("is_owner"))

    return Access(settings.admins, settings.admin_group, settings.workspace_admins,
                  group_members=group_members, is_workspace_admin=is_workspace_admin)


def audit_announcer(settings: Settings, client: WebClient) -> Callable[[str], None] | None:
    if not settings.audit_channel:
        return None
    channel = settings.audit_channel
    return lambda text: client.chat_postMessage(channel=channel, text=text, unfurl_links=False)


def actor(user_id: object) -> Actor:
    """Who clicked or typed; a payload without a proper user id is still someone, never a crash."""
    user = user_id if isinstance(user_id, str) and user_id else "unknown"
    return Actor(user[:64], f"<@{user[:64]}>")


def safely(build: Callable[[], Reply]) -> Reply:
    """A reply, or a plain apology: no traceback ever reaches Slack."""
    try:
        return build()
    except UsageError as problem:
        return Reply(message_view("opsbot", str(problem), Level.WARN), replace_original=False)
    except Exception:
        log.exception("handler failed")
        return Reply(message_view("opsbot", OOPS, Level.DOWN), replace_original=False)


def deliver(reply: Reply, respond: Respond) -> None:
    """Through the response_url: replace the clicked message, or answer privately beside it."""
    if reply.replace_original:
        respond(replace_original=True, **blocks.message(reply.view))
    else:
        respond(response_type="ephemeral", replace_original=False, **blocks.message(reply.view))


def publish_home(client: WebClient, user_id: str, view: View) -> None:
    """The App Home tab: the same dashboard, minus what only makes sense in a channel."""
    home = {"type": "home", "blocks": blocks.to_dicts(blocks.render(view, include_slack_only=False))}
    client.views_publish(user_id=user_id, view=home)


def home_view(reply: Reply, commands: Commands) -> View:
    if reply.replace_original and reply.view.notice is None:
        return reply.view  # paging: the page asked for
    # After an action, the dashboard again, with the outcome on top.
    notice = reply.view.notice or Notice(reply.view.level, reply.view.summary)
    return commands.home().with_notice(notice)


def schedule_follow_up(reply: Reply, redraw: Callable[[View], None]) -> None:
    """After a signal a process may linger: look again later and redraw the same message."""
    follow_up = reply.follow_up
    if follow_up is None:
        return

    def later() -> None:
        try:
            redraw(follow_up())
        except Exception:
            log.exception("follow-up after terminate failed")

    timer = threading.Timer(reply.follow_up_after, later)
    timer.daemon = True
    timer.start()


def build_app(settings: Settings, commands: Commands, client: WebClient) -> App:
    signing_secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    app = App(client=client, signing_secret=signing_secret,
              # Socket Mode has no signatures to check; HTTP mode refuses to start without a secret.
              request_verification_enabled=bool(signing_secret))

    @app.command("/tasks")
    def on_tasks(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        text = str(command.get("text") or "")
        who = actor(command.get("user_id"))
        try:
            parsed: Command | None = parse(text)
        except Exception:  # the answer below explains; parsing must never cost us the ack
            parsed = None
        if parsed is not None and parsed.name in TARGETED:
            # Acting takes longer than Slack's 3 s: acknowledge now, answer through response_url.
            ack(response_type="ephemeral", text=WORKING)
            reply = safely(lambda: commands.run(parsed, who))
            respond(response_type="ephemeral", replace_original=False, **blocks.message(reply.view))
            schedule_follow_up(reply, lambda view: respond(response_type="ephemeral", replace_original=False,
                                                           **blocks.message(view)))
            return
        # Answering in the ack itself saves a round trip; probes are bounded well inside 3 s.
        reply = safely(lambda: commands.run_text(text, who))
        ack(response_type="ephemeral", **blocks.message(reply.view))

    def on_button(ack: Ack, action: dict[str, Any], body: dict[str, Any], respond: Respond,
                  client: WebClient) -> None:
        ack()
        who = actor((body.get("user") or {}).get("id"))
        action_id, value = str(action.get("action_id", "")), str(action.get("value", ""))
        reply = safely(lambda: commands.run_button(action_id, value, who))
        if body.get("container", {}).get("type") == "view":  # clicked in the App Home tab
            publish_home(client, who.id, home_view(reply, commands))
            schedule_follow_up(reply, lambda view: publish_home(client, who.id, view))
            return
        deliver(reply, respond)
        schedule_follow_up(reply, lambda view: respond(replace_original=True, **blocks.message(view)))

    for action_id in ("page", "terminate", "kill", "purge", "history_page"):
        app.action(action_id)(on_button)

    @app.action("share")
    def on_share(ack: Ack, action: dict[str, Any], body: dict[str, Any], respond: Respond) -> None:
        ack()
        who = actor((body.get("user") or {}).get("id"))
        reply = safely(lambda: commands.run_button("share", str(action.get("value", "")), who))
        if not reply.replace_original:
            deliver(reply, respond)
            return
        view = reply.view
        shared = View(view.title, view.summary, view.level, view.sections, (),
                      f"Shared by {who.mention} · {view.footer}")
        respond(response_type="in_channel", replace_original=False, **blocks.message(shared))

    def on_alert_button(ack: Ack, action: dict[str, Any], body: dict[str, Any], respond: Respond) -> None:
        ack()
        who = actor((body.get("user") or {}).get("id"))
        try:
            reply = commands.run_alert_button(str(action.get("action_id", "")), str(action.get("value", "")), who)
        except Exception:
            log.exception("alert button failed")
            reply = Reply(message_view("opsbot", OOPS, Level.DOWN), replace_original=False)
        if reply is not None:  # None: the alert message is redrawn through the outbox
            deliver(reply, respond)

    app.action(re.compile(r"^alert_(ack|status|snooze_\w+)$"))(on_alert_button)

    # Last, so it only sees what no listener above claimed: buttons that are not ours.
    app.action(re.compile(".*"))(on_button)

    @app.event("app_home_opened")
    def on_home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab") == "home":
            user = event.get("user", "")
            publish_home(client, user, safely(lambda: Reply(commands.home())).view)

    @app.error
    def on_error(error: Exception) -> None:
        log.error("Slack listener failed: %s", type(error).__name__)

    return app


def socket_mode_handler(app: App, settings: Settings) -> SocketModeHandler:
    assert settings.slack_app_token is not None
    return SocketModeHandler(app, settings.slack_app_token.get_secret_value())


def run_socket_mode(handler: SocketModeHandler, settings: Settings) -> None:
    """Connect and wait; a shutdown signal ends the wait (see `bot.cli`), the caller closes `handler`."""
    log.info("connecting to Slack in Socket Mode via %s", settings.slack_api_url)
    handler.connect()
    threading.Event().wait()


def run_http(app: App, settings: Settings) -> None:
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    from waitress import serve

    log.info("serving Slack requests over HTTP on port %d (path /slack/events)", settings.http_port)
    serve(SlackRequestHandler(app), host="0.0.0.0", port=settings.http_port, threads=8, _quiet=True)
