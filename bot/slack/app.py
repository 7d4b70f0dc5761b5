"""The Slack edge: bolt listeners that turn slash commands and clicks into replies, and the runners.

Everything Slack-specific lives here; what to say comes from `bot.commands` and `bot.status.views`, how it
looks from `bot.slack.blocks`. Every Slack client uses `SLACK_API_URL`, Web API and Socket Mode alike.
"""

from __future__ import annotations

import functools
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
from slack_sdk.webhook import WebhookResponse

from bot import markup
from bot.charts.slack import ChartPoster
from bot.commands.dispatch import Commands, Reply
from bot.commands.grammar import DEFERRED, Command, UsageError, parse
from bot.config import ConfigError, Settings
from bot.control.access import Access, Actor
from bot.slack import blocks, buttons
from bot.status.snapshot import Level
from bot.status.views import Notice, View, message_view

log = logging.getLogger(__name__)

OOPS = "Something went wrong inside opsbot; nothing was changed. The bot's log has the details."
WORKING = "Working on it…"
REJECTED = ("invalid_blocks", "msg_too_long")  # Slack refused the blocks: the text alone still goes


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

    @functools.cache
    def own_team() -> str:
        return str(client.auth_test()["team_id"])

    def is_workspace_admin(user_id: str) -> bool:
        user = client.users_info(user=user_id)["user"]
        # A Slack Connect partner's admin is an admin of their own workspace, not of ours.
        if user.get("team_id") != own_team():
            return False
        return bool(user.get("is_admin") or user.get("is_owner"))

    return Access(settings.admins, settings.admin_group, settings.workspace_admins,
                  group_members=group_members, is_workspace_admin=is_workspace_admin,
                  viewers=settings.viewers, viewer_group=settings.viewer_group)


def audit_announcer(settings: Settings, client: WebClient) -> Callable[[str], None] | None:
    if not settings.audit_channel:
        return None
    channel = settings.audit_channel
    # The audit echoes what users typed: the one escaping rule, as for every message text.
    return lambda text: client.chat_postMessage(channel=channel, text=markup.for_slack(text, blocks.MAX_FALLBACK),
                                                unfurl_links=False)


def actor(user_id: object) -> Actor:
    """Who clicked or typed; a payload without a proper user id is still someone, never a crash."""
    user = user_id[:64] if isinstance(user_id, str) and user_id else "unknown"
    return Actor(user, markup.mention(user))  # a live mention only for a real user id


def safely(build: Callable[[], Reply]) -> Reply:
    """A reply, or a plain apology: no traceback ever reaches Slack."""
    try:
        return build()
    except UsageError as problem:
        return Reply(message_view("opsbot", str(problem), Level.WARN), replace_original=False)
    except Exception:
        log.exception("handler failed")
        return Reply(message_view("opsbot", OOPS, Level.DOWN), replace_original=False)


def message(view: View, include_slack_only: bool = True) -> dict:
    """Blocks and fallback; if the blocks cannot even be built, the text alone."""
    try:
        return blocks.message(view, include_slack_only)
    except Exception:
        log.exception("could not build the blocks of %r; answering with text", view.title)
        return blocks.plain_message(view)


def refused(answer: WebhookResponse | None) -> bool:
    return answer is not None and answer.status_code != 200 and any(e in str(answer.body) for e in REJECTED)


def send(respond: Respond, view: View, **flags: Any) -> None:
    """Through a response_url; when Slack refuses the blocks, the same answer again as plain text."""
    answer = respond(**flags, **message(view))
    if refused(answer):
        log.warning("Slack refused a reply (%s); sent it again as text", str(answer.body)[:300])
        respond(**flags, **blocks.plain_message(view))


def deliver(reply: Reply, respond: Respond) -> None:
    """Through the response_url: replace the clicked message, or answer privately beside it."""
    if reply.replace_original:
        send(respond, reply.view, replace_original=True)
    else:
        send(respond, reply.view, response_type="ephemeral", replace_original=False)


def publish_home(client: WebClient, user_id: str, view: View) -> None:
    """The App Home tab: the same dashboard, minus what only makes sense in a channel."""
    try:
        home = {"type": "home", "blocks": blocks.to_dicts(blocks.render(view, include_slack_only=False))}
        client.views_publish(user_id=user_id, view=home)
    except Exception as problem:  # refused (invalid_blocks) or unbuildable: the text, in one block
        log.warning("the Home tab was refused (%s); publishing it as text", getattr(problem, "response", problem))
        text = blocks.plain_message(view)["text"]
        client.views_publish(user_id=user_id, view={"type": "home", "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}}]})


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


def build_app(settings: Settings, commands: Commands, client: WebClient, charts: ChartPoster | None = None) -> App:
    signing_secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    http_mode = settings.slack_app_token is None
    if http_mode and not signing_secret:
        raise ConfigError("SLACK_SIGNING_SECRET is not set: HTTP mode never runs without request verification.")
    # Socket Mode has no signatures to check; in HTTP mode every request is verified, always.
    app = App(client=client, signing_secret=signing_secret, request_verification_enabled=http_mode)
    listen_to_command(app, commands, charts)
    listen_to_buttons(app, commands)
    listen_to_home(app, commands)

    @app.error
    def on_error(error: Exception) -> None:
        log.error("Slack listener failed: %s", type(error).__name__)

    return app


def listen_to_command(app: App, commands: Commands, charts: ChartPoster | None) -> None:
    """/tasks: answered in the ack when quick, through response_url when acting, a chart in the channel."""

    @app.command("/tasks")
    def on_tasks(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        text = str(command.get("text") or "")
        who = actor(command.get("user_id"))
        try:
            parsed: Command | None = parse(text)
        except Exception:  # the answer below explains; parsing must never cost us the ack
            parsed = None
        if parsed is not None and parsed.name == "chart" and charts is not None:
            # A file cannot ride on an ephemeral answer: it goes into the channel, and we say so privately.
            ack()
            channel = str(command.get("channel_id") or "")
            reply = safely(lambda: Reply(charts.post(parsed.target, channel, who.mention), replace_original=False))
            send(respond, reply.view, response_type="ephemeral", replace_original=False)
            return
        if parsed is not None and parsed.name in DEFERRED:
            # Acting takes longer than Slack's 3 s: acknowledge now, answer through response_url.
            ack(response_type="ephemeral", text=WORKING)
            reply = safely(lambda: commands.run(parsed, who))
            send(respond, reply.view, response_type="ephemeral", replace_original=False)
            schedule_follow_up(reply, lambda view: send(respond, view, response_type="ephemeral",
                                                        replace_original=False))
            return
        # Answering in the ack itself saves a round trip; probes are bounded well inside 3 s.
        reply = safely(lambda: commands.run_text(text, who))
        ack(response_type="ephemeral", **message(reply.view))


def listen_to_buttons(app: App, commands: Commands) -> None:
    """Clicks: the views' buttons, Share, the alerts' buttons, the runbook link, and anything not ours."""

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
        schedule_follow_up(reply, lambda view: send(respond, view, replace_original=True))

    app.action(buttons.VIEW_BUTTONS)(on_button)

    @app.action(buttons.SHARE)
    def on_share(ack: Ack, action: dict[str, Any], body: dict[str, Any], respond: Respond) -> None:
        ack()
        who = actor((body.get("user") or {}).get("id"))
        reply = safely(lambda: commands.run_button(buttons.SHARE, str(action.get("value", "")), who))
        if not reply.replace_original:
            deliver(reply, respond)
            return
        view = reply.view
        shared = View(view.title, view.summary, view.level, view.sections, (),
                      markup.phrase("Shared by {} · {}", who.mention, view.footer))
        send(respond, shared, response_type="in_channel", replace_original=False)

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

    app.action(buttons.ALERT_BUTTONS)(on_alert_button)
    app.action(buttons.RUNBOOK)(lambda ack: ack())  # a link button: Slack opened the page

    # Last, so it only sees what no listener above claimed: buttons that are not ours.
    app.action(re.compile(".*"))(on_button)


def listen_to_home(app: App, commands: Commands) -> None:
    """The App Home tab, drawn afresh each time it is opened."""

    @app.event("app_home_opened")
    def on_home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab") == "home":
            user = event.get("user", "")
            publish_home(client, user, safely(lambda: Reply(commands.home())).view)


def socket_mode_handler(app: App, settings: Settings) -> SocketModeHandler:
    assert settings.slack_app_token is not None
    return SocketModeHandler(app, settings.slack_app_token.get_secret_value())


def run_socket_mode(handler: SocketModeHandler, settings: Settings) -> None:
    """Connect and wait; a shutdown signal ends the wait (see `bot.cli`), the caller closes `handler`."""
    log.info("connecting to Slack in Socket Mode via %s", settings.slack_api_url)
    handler.connect()  # not start(): it prints a banner to stdout, outside the logs (and their format)
    threading.Event().wait()


MAX_BODY = 1024 * 1024  # Slack's largest payloads (a click in a 100-block Home tab) stay far below this


def capped(wsgi_app: Callable[..., Any], limit: int = MAX_BODY) -> Callable[..., Any]:
    """WSGI middleware: a body over `limit` bytes is answered 413 before it is read, let alone verified."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= limit:
            start_response("413 Payload Too Large", [("Content-Type", "text/plain")])
            return [b"Payload Too Large"]
        return wsgi_app(environ, start_response)

    return app


def run_http(app: App, settings: Settings, health: Callable[..., Any] | None = None) -> None:
    """`health`: the WSGI app for /metrics, /healthz and /readyz, answered before bolt sees a request."""
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    from waitress import serve

    from bot.metrics.serve import with_health

    log.info("serving Slack requests over HTTP on port %d (path /slack/events)", settings.http_port)
    # waitress buffers a whole body before calling the app: its own limit keeps it from reading more.
    handler = SlackRequestHandler(app)
    serve(capped(with_health(health, handler) if health else handler), host="0.0.0.0", port=settings.http_port,
          threads=8, _quiet=True, max_request_body_size=MAX_BODY)
