"""Proves the Slack stand-in speaks the wire formats the real libraries (slack-bolt, slack-sdk) expect.

Everything runs in-process: a minimal bolt App is pointed at the stand-in with
``WebClient(base_url=slack.base_url)`` and driven over Socket Mode (bolt's default built-in
client) or over HTTP (bolt's WSGI adapter), exactly as the opsbot process will be.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from slack_bolt import Ack, App, Respond
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from tests.support.slack import (
    Rejected,
    SlackStandIn,
    block_action_form,
    block_action_payload,
    sign,
    slash_command_form,
)
from tests.test_slack_rules import VIOLATIONS, a_section

SIGNING_SECRET = "test-signing-secret"

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------------- fixtures


def make_app(slack: SlackStandIn) -> App:
    """A minimal bolt app with one command, one action and one event, like opsbot's shape."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    app = App(client=client, signing_secret=SIGNING_SECRET)

    @app.command("/tasks")
    def tasks(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f"tasks: {command['text']}"}}]
        ack(text=f"tasks: {command['text']}", blocks=blocks)
        if command["text"] == "later":
            respond(text="done later", response_type="in_channel")

    @app.action("retry_task")
    def retry(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        respond(text=f"retried {body['actions'][0]['value']}", replace_original=True)

    @app.event("app_home_opened")
    def home(event: dict[str, Any], client: WebClient) -> None:
        view = {"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]}
        client.views_publish(user_id=event["user"], view=view)

    return app


@pytest.fixture
def bolt_app(slack: SlackStandIn) -> App:
    """The bolt app wired to the stand-in (its constructor already calls auth.test)."""
    return make_app(slack)


def close_handlers(slack: SlackStandIn, handlers: list[SocketModeHandler]) -> None:
    """Close bolt's built-in clients quickly.

    Their receive thread sits in a blocking recv (3 s socket timeout on non-TLS connections), so
    ``close()`` alone takes ~3 s; closing the server side too wakes it at once.  Auto-reconnect is
    switched off first so the server-side close is not taken for a network failure.
    """
    for handler in handlers:
        handler.client.auto_reconnect_enabled = False
    closers = [threading.Thread(target=h.close, daemon=True) for h in handlers]
    for closer in closers:
        closer.start()
    slack.close_all()
    for closer in closers:
        closer.join(10)


@pytest.fixture
def connect(slack: SlackStandIn, bolt_app: App) -> Iterator[Callable[[], SocketModeHandler]]:
    """Factory: connect one more SocketModeHandler (bolt's default, built-in client, plain ws://)."""
    handlers: list[SocketModeHandler] = []

    def _connect() -> SocketModeHandler:
        handler = SocketModeHandler(bolt_app, app_token=slack.app_token)
        handler.connect()
        handlers.append(handler)
        return handler

    yield _connect
    close_handlers(slack, handlers)


@pytest.fixture
def socket_mode(slack: SlackStandIn, connect: Callable[[], SocketModeHandler]) -> SocketModeHandler:
    """The app connected once over Socket Mode."""
    handler = connect()
    slack.wait_connected()
    return handler


@pytest.fixture
def http_app(bolt_app: App) -> Iterator[str]:
    """The app in HTTP mode behind bolt's WSGI adapter on a free port; yields the events URL."""

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output clean."""

    server: WSGIServer = make_server("127.0.0.1", 0, SlackRequestHandler(bolt_app), handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/slack/events"
    server.shutdown()
    server.server_close()


def post(url: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
    """POST like Slack does; returns (status, body) for error statuses too."""
    req = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# ------------------------------------------------------------------------------ Socket Mode


def test_bolt_startup_calls_auth_test_and_connects(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """bolt verifies its token and fetches the ws:// URL with the app token, then connects."""
    assert slack.calls_to("auth.test")[0].token == slack.bot_token
    assert slack.calls_to("apps.connections.open")[0].token == slack.app_token
    assert slack.connections == 1


def test_slash_command_roundtrip(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """The ack payload bolt sends back is what the stand-in returns."""
    envelope_id = slack.send_slash_command("status")
    payload = slack.wait_ack(envelope_id)
    assert payload["text"] == "tasks: status"
    assert payload["blocks"][0]["text"]["text"] == "tasks: status"
    latency = slack.ack_latency(envelope_id)
    assert latency is not None and 0 <= latency < 3


def test_request_helper(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """request() is send + wait_ack."""
    assert slack.request("slash_command", "list")["text"] == "tasks: list"


def test_respond_lands_in_responses(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """respond() POSTs JSON to the recorded response_url; in_channel posts into the channel."""
    slack.request("slash_command", "later")
    record = slack.wait_for_response()
    assert record.body["text"] == "done later"
    assert record.response_type == "in_channel"
    assert slack.wait_for_message(lambda m: m.text == "done later").channel == "C_OPS"


def test_block_action_roundtrip(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """A click on a posted message is acked; replace_original rewrites that message."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    button = {"type": "button", "action_id": "retry_task", "text": {"type": "plain_text", "text": "Retry"}}
    posted = client.chat_postMessage(
        channel="C_OPS", text="task failed", blocks=[{"type": "actions", "elements": [button]}]
    )
    original = slack.message("C_OPS", posted["ts"])
    assert original is not None
    assert slack.request("block_action", "retry_task", "task-1", message=original) == {}
    record = slack.wait_for_response(lambda r: r.replace_original)
    assert record.body["text"] == "retried task-1"
    assert original.text == "retried task-1" and original.updates == 1
    assert len(slack.messages) == 1


def test_events_api_app_home(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """An events_api envelope is acked bare and the listener's views.publish is recorded."""
    envelope_id = slack.send_event({"type": "app_home_opened", "user": "U_ADMIN", "tab": "home"})
    assert slack.wait_ack(envelope_id) == {}
    call = slack.wait_for_call("views.publish")
    assert call.params["view"]["type"] == "home"
    assert slack.home_views["U_ADMIN"]["blocks"][0]["text"]["text"] == "hi"


def test_disconnect_and_reconnect(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """After Slack's disconnect message the bot opens a new connection and keeps working."""
    before = slack.total_connections
    assert slack.disconnect_all() == 1
    slack.wait_reconnected(before, timeout=15)
    assert len(slack.calls_to("apps.connections.open")) >= 2
    assert slack.request("slash_command", "again", timeout=10)["text"] == "tasks: again"


def test_several_connections_share_envelopes(slack: SlackStandIn, connect: Callable[[], SocketModeHandler]) -> None:
    """With two bot connections each envelope goes to one of them, and all get acked."""
    connect()
    connect()
    slack.wait_connected(count=2)
    ids = [slack.send_slash_command(f"n{i}") for i in range(4)]
    assert [slack.wait_ack(i)["text"] for i in ids] == [f"tasks: n{i}" for i in range(4)]
    assert len({slack.envelopes[i].connection_id for i in ids}) == 2
    assert not slack.stray_acks


# ---------------------------------------------------------------------------------- Web API


def test_rate_limited_post_is_retried_and_stored_once(slack: SlackStandIn) -> None:
    """429 + Retry-After is honoured by slack_sdk's retry handler; the faulted call stores nothing."""
    client = WebClient(
        token=slack.bot_token,
        base_url=slack.base_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    started = time.monotonic()
    resp = client.chat_postMessage(channel="C_OPS", text="hello")
    assert resp["ok"] and time.monotonic() - started >= 0.9
    calls = slack.calls_to("chat.postMessage")
    assert [c.faulted for c in calls] == ["http_429", None]
    assert [m.text for m in slack.messages] == ["hello"]


def test_rate_limit_without_retry_raises(slack: SlackStandIn) -> None:
    """Without a retry handler the bot sees SlackApiError(ratelimited) with the Retry-After header."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    slack.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C_OPS", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response["error"] == "ratelimited"
    assert err.value.response.headers["Retry-After"] == "7"
    assert slack.messages == []


def test_server_error_is_not_stored(slack: SlackStandIn) -> None:
    """An injected 503 is an HTTP error to slack_sdk and leaves no message behind."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    slack.fail_next("chat.postMessage", status=503)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C_OPS", text="x")
    assert err.value.response.status_code == 503
    assert slack.messages == [] and slack.calls_to("chat.postMessage")[0].faulted == "http_503"


def test_hang_makes_the_client_time_out(slack: SlackStandIn) -> None:
    """A hung answer trips the client timeout; Slack still posts it afterwards (process=True)."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url, timeout=0.5)
    slack.hang_next("chat.postMessage", 1.5)
    with pytest.raises(TimeoutError):
        client.chat_postMessage(channel="C_OPS", text="slow")
    assert slack.wait_for_message(lambda m: m.text == "slow", timeout=5).channel == "C_OPS"
    assert slack.calls_to("chat.postMessage")[0].delayed == 1.5


def test_auth_errors(slack: SlackStandIn) -> None:
    """Wrong token → invalid_auth, none → not_authed, other token type, unknown method."""
    cases = [
        ("xoxb-wrong", "auth.test", "invalid_auth"),
        (None, "auth.test", "not_authed"),
        (slack.app_token, "chat.postMessage", "not_allowed_token_type"),
        (slack.bot_token, "apps.connections.open", "not_allowed_token_type"),
        (slack.bot_token, "no.such.method", "unknown_method"),
    ]
    for token, method, error in cases:
        client = WebClient(token=token, base_url=slack.base_url)
        with pytest.raises(SlackApiError) as err:
            client.api_call(method, params={"channel": "C_OPS", "text": "x"})
        assert err.value.response.status_code == 200
        assert err.value.response["error"] == error, (token, method)


def test_chat_update_and_thread_replies(slack: SlackStandIn) -> None:
    """chat.update needs an existing channel+ts; a reply is stored with its thread_ts."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    parent = client.chat_postMessage(channel="C_OPS", text="parent")
    client.chat_postMessage(channel="C_OPS", text="reply", thread_ts=parent["ts"])
    updated = client.chat_update(channel="C_OPS", ts=parent["ts"], text="edited")
    assert updated["message"]["text"] == "edited"
    with pytest.raises(SlackApiError, match="message_not_found"):
        client.chat_update(channel="C_OPS", ts="1.000000", text="nope")
    assert [(m.text, m.thread_ts, m.updates) for m in slack.messages] == [
        ("edited", None, 1), ("reply", parent["ts"], 0)]


def test_form_encoded_json_params_are_decoded(slack: SlackStandIn) -> None:
    """Slack accepts blocks as a JSON string in a form body; the record holds the decoded list."""
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "b"}}]
    body = f"channel=C_OPS&blocks={urllib.parse.quote(json.dumps(blocks))}"
    headers = {**FORM, "Authorization": f"Bearer {slack.bot_token}"}
    status, text = post(slack.base_url + "chat.postMessage", body, headers)
    assert status == 200 and json.loads(text)["ok"]
    assert slack.calls_to("chat.postMessage")[0].params["blocks"] == blocks
    assert slack.messages[0].blocks == blocks


def test_users_and_usergroups(slack: SlackStandIn) -> None:
    """users.info/usergroups.users.list come from configuration."""
    slack.usergroups["S_OPS"] = ["U_ADMIN"]
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    assert client.users_info(user="U_ADMIN")["user"]["is_admin"] is True
    assert client.users_info(user="U_USER")["user"]["is_admin"] is False
    with pytest.raises(SlackApiError, match="user_not_found"):
        client.users_info(user="U_NOBODY")
    assert client.usergroups_users_list(usergroup="S_OPS")["users"] == ["U_ADMIN"]
    with pytest.raises(SlackApiError, match="no_such_subteam"):
        client.usergroups_users_list(usergroup="S_NONE")


# -------------------------------------------------------------------------------- HTTP mode


def test_http_mode_signed_slash_command(slack: SlackStandIn, http_app: str) -> None:
    """A correctly signed slash command is answered 200 with the ack body; respond() is recorded."""
    body = slash_command_form("later", response_url=slack.new_response_url())
    status, text = post(http_app, body, {**FORM, **sign(SIGNING_SECRET, body, int(time.time()))})
    assert status == 200
    assert json.loads(text)["text"] == "tasks: later"
    assert slack.wait_for_response().body["text"] == "done later"


def test_http_mode_block_action(slack: SlackStandIn, http_app: str) -> None:
    """An interactive payload=<json> body is dispatched to the action listener."""
    payload = block_action_payload("retry_task", "t-9", response_url=slack.new_response_url())
    body = block_action_form(payload)
    status, _ = post(http_app, body, {**FORM, **sign(SIGNING_SECRET, body, int(time.time()))})
    assert status == 200
    assert slack.wait_for_response().body["text"] == "retried t-9"


@pytest.mark.parametrize(
    ("secret", "age"),
    [("wrong-secret", 0), (SIGNING_SECRET, 10 * 60)],
    ids=["bad-signature", "stale-timestamp"],
)
def test_http_mode_rejects_bad_requests(http_app: str, secret: str, age: int) -> None:
    """bolt answers 401 to a bad signature and to a timestamp older than five minutes."""
    body = slash_command_form("status")
    status, _ = post(http_app, body, {**FORM, **sign(secret, body, int(time.time()) - age)})
    assert status == 401


# ------------------------------------------------------------------------- Block Kit rules


def test_every_surface_is_checked(slack: SlackStandIn, socket_mode: SocketModeHandler) -> None:
    """chat.update, views.publish (100 blocks), response_url and acks too."""
    client = WebClient(token=slack.bot_token, base_url=slack.base_url)
    bad = VIOLATIONS["two action_ids alike in a block"]
    posted = client.chat_postMessage(channel="C_OPS", text="ok", blocks=[a_section()])
    for call in (lambda: client.chat_update(channel="C_OPS", ts=posted["ts"], text="x", blocks=bad),
                 lambda: client.views_publish(user_id="U_USER", view={"type": "home", "blocks": bad})):
        with pytest.raises(SlackApiError, match="invalid_blocks"):
            call()
    home = {"type": "home", "blocks": [a_section() for _ in range(100)]}
    client.views_publish(user_id="U_USER", view=home)  # a Home tab holds 100 blocks
    with pytest.raises(SlackApiError, match="invalid_blocks"):
        client.views_publish(user_id="U_USER", view={"type": "home", "blocks": [a_section() for _ in range(101)]})
    with pytest.raises(SlackApiError, match="msg_too_long"):
        client.chat_postMessage(channel="C_OPS", text="x" * 40_001)

    url = slack.new_response_url()
    status, answer = post(url, json.dumps({"text": "x", "blocks": bad}), {"Content-Type": "application/json"})
    assert status == 400 and json.loads(answer)["error"] == "invalid_blocks"
    assert [r.where for r in slack.rejections] == ["chat.update", "views.publish", "views.publish",
                                                     "chat.postMessage", "response_url"]
    assert slack.message("C_OPS", posted["ts"]).blocks == [a_section()]  # nothing refused was applied

    slack.reject_next("ack")  # the ack of /tasks carries blocks: refused as Slack would show an error
    with pytest.raises(Rejected, match="invalid_blocks"):
        slack.request("slash_command", "status")
    assert slack.request("slash_command", "status")["text"] == "tasks: status"
