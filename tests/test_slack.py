"""`opsbot run` as in production, driven through the Slack stand-in (Socket Mode and HTTP mode), against
the real task stack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.fixtures_bot import SIGNING_SECRET, BotProcess, stack_env
from tests.slack_standin import SlackStandIn, block_action_form, sign, slash_command_form
from tests.stack import CeleryWorker, FlowerProcess, HungServer, RabbitNode, publish_tasks, wait_until

pytestmark = pytest.mark.integration

SLACK_ACK_LIMIT = 3.0  # Slack shows the user an error past this


def text_of(payload: dict) -> str:
    """Everything a user can read in a message: its blocks and its fallback text."""
    return json.dumps(payload.get("blocks", [])) + "\n" + str(payload.get("text", ""))


def slash(slack: SlackStandIn, text: str, **kwargs: str) -> dict:
    envelope = slack.send_slash_command(text, **kwargs)
    payload = slack.wait_ack(envelope, timeout=SLACK_ACK_LIMIT)
    return payload


def button_values(payload: dict) -> dict[str, str]:
    return {e.get("text", {}).get("text", ""): e.get("value", "")
            for b in payload.get("blocks", []) if b["type"] == "actions" for e in b["elements"]}


def test_overview_over_socket_mode(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                   rabbit: RabbitNode, worker: CeleryWorker, flower: FlowerProcess) -> None:
    socket_bot()
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 2))
    ids = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(20,))
    assert wait_until(lambda: ids[0] in text_of(slash(slack, "active")), 10)

    payload = slash(slack, "")
    assert payload["response_type"] == "ephemeral"
    text = text_of(payload)
    assert payload["text"].startswith("Task status: ")
    assert "3 tasks waiting (other: 3)" in text  # exact, at once
    assert worker.name in text
    assert "stackapp.sleep" in text and ids[0] in text
    assert "Flower" in text and "Running" in text
    assert "Share in channel" in text


def test_subcommands_and_unknown_one(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                     worker: CeleryWorker) -> None:
    socket_bot()
    workers = text_of(slash(slack, "workers"))
    assert worker.name in workers and "prefork x2" in workers
    queues = text_of(slash(slack, "queues"))
    assert "celery" in queues and "consumer" in queues
    assert "/tasks active" in text_of(slash(slack, "help"))
    unknown = text_of(slash(slack, "frobnicate now"))
    assert "Unknown subcommand 'frobnicate'" in unknown and "/tasks workers" in unknown


def test_paging_share_and_forged_buttons(slack: SlackStandIn, socket_bot: Callable[..., BotProcess]) -> None:
    socket_bot()
    slack.send_block_action("page_refresh", "queues:1")
    replaced = slack.wait_for_response(lambda r: r.replace_original)
    assert "Queues" in text_of(replaced.body)

    slack.send_block_action("share", "overview:1", user_id="U_ADMIN")
    shared = slack.wait_for_response(lambda r: r.response_type == "in_channel")
    assert "Shared by <@U_ADMIN>" in text_of(shared.body)

    before = len(slack.responses)
    slack.send_block_action("page_refresh", "overview:../../etc")
    forged = slack.wait_for_response(lambda r: "not one I made" in text_of(r.body))
    assert "Traceback" not in text_of(forged.body)
    assert len(slack.responses) == before + 1


def test_app_home_shows_the_dashboard(slack: SlackStandIn, socket_bot: Callable[..., BotProcess]) -> None:
    socket_bot()
    slack.send_event({"type": "app_home_opened", "user": "U_ADMIN", "tab": "home", "channel": "D1"})
    call = slack.wait_for_call("views.publish")
    assert call.params["user_id"] == "U_ADMIN"
    view = call.params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert view["type"] == "home" and "Services" in json.dumps(view["blocks"])
    assert "Share in channel" not in json.dumps(view["blocks"])


def test_red_states_arrive_within_the_ack_limit(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                make_flower: Callable[..., FlowerProcess],
                                                hung_server: HungServer) -> None:
    own_flower = make_flower()
    socket_bot(FLOWER_URL=own_flower.url)
    assert "Flower* Running" in text_of(slash(slack, ""))
    own_flower.kill()
    assert "Has it been started?" in text_of(slash(slack, ""))

    socket_bot(FLOWER_URL=f"http://127.0.0.1:{hung_server.port}")
    # Two bots share the stand-in now; keep asking until the hung one answers (round robin).
    seen = [text_of(slash(slack, "")) for _ in range(2)]
    assert any("timed out" in text for text in seen)


def test_no_secret_reaches_slack_or_the_log(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                            flower: FlowerProcess) -> None:
    bot = socket_bot()
    slash(slack, "")
    slash(slack, "workers amqp://guest:guest@example//")
    time.sleep(0.5)
    secrets = [slack.bot_token, slack.app_token, flower.auth[1]]
    log = bot.output()
    assert "DEBUG" in log  # the most talkative level, and still nothing leaks
    sent = json.dumps([r.body for r in slack.responses]) + json.dumps(
        [e.ack_payload for e in slack.envelopes.values()])
    for secret in secrets:
        assert secret not in log, f"{secret[:6]}… leaked into the log"
        assert secret not in sent


def test_http_mode_verifies_signatures(http_bot: tuple[BotProcess, str], slack: SlackStandIn) -> None:
    _bot, url = http_bot
    body = slash_command_form("queues", response_url=slack.new_response_url())
    now = int(time.time())
    answer = requests.post(url, data=body, headers=sign(SIGNING_SECRET, body, now), timeout=5)
    assert answer.status_code == 200
    assert "celery" in text_of(answer.json())

    bad = requests.post(url, data=body, headers=sign("not-the-secret", body, now), timeout=5)
    stale = requests.post(url, data=body, headers=sign(SIGNING_SECRET, body, now - 600), timeout=5)
    assert bad.status_code == 401 and stale.status_code == 401

    payload = {"type": "block_actions", "user": {"id": "U_ADMIN"}, "team": {"id": "T_TEST"},
               "api_app_id": "A_TEST", "container": {"type": "message"}, "trigger_id": "1.2",
               "response_url": slack.new_response_url(),
               "actions": [{"action_id": "page_next", "value": "workers:1", "type": "button", "block_id": "b"}]}
    form = block_action_form(payload)
    assert requests.post(url, data=form, headers=sign(SIGNING_SECRET, form, now), timeout=5).status_code == 200
    assert "Workers" in text_of(slack.wait_for_response(lambda r: r.replace_original).body)


def test_console_mode_without_slack(rabbit: RabbitNode, worker: CeleryWorker, flower: FlowerProcess,
                                    tmp_path: Path) -> None:
    """A plain `opsbot` with no Slack settings is the console: same commands, numbered choices."""
    import subprocess

    from tests.fixtures_bot import OPSBOT, clean_env

    publish_tasks(rabbit.amqp_url, "stackapp.add", 2, queue="other", args=(1, 2))
    env = clean_env(stack_env(rabbit, flower, tmp_path) | {"OPSBOT_QUEUES": "celery,other", "COLUMNS": "160"})
    result = subprocess.run([OPSBOT], input="/tasks\nqueues\nbogus\n1\nquit\n", env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 tasks waiting (other: 2)" in out
    assert worker.name in out
    assert "Unknown subcommand 'bogus'" in out
    assert "There is nothing to choose here." in out  # help offers no choices
    assert "flower-secret" not in out and "Traceback" not in out + result.stderr


def test_status_exit_codes(rabbit: RabbitNode, worker: CeleryWorker, flower: FlowerProcess,
                           tmp_path: Path, run_bot: Callable[..., BotProcess]) -> None:
    import subprocess

    from tests.fixtures_bot import OPSBOT, clean_env

    env = clean_env(stack_env(rabbit, flower, tmp_path))
    green = subprocess.run([OPSBOT, "status"], env=env, capture_output=True, text=True, timeout=30)
    assert green.returncode == 0, green.stdout
    assert "All systems go" in green.stdout
    env["FLOWER_URL"] = "http://127.0.0.1:9"
    red = subprocess.run([OPSBOT, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert red.returncode == 2
    assert json.loads(red.stdout)["flower"]["problem"]["kind"] == "refused"
