"""`opsbot run` as in production, driven through the Slack stand-in (Socket Mode and HTTP mode), against
the real task stack.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support.bot import SIGNING_SECRET, BotProcess, stack_env
from tests.support.celery_procs import CeleryWorker, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import HungServer, wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn, block_action_form, sign, slash_command_form

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

    from tests.support.bot import OPSBOT, clean_env

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

    from tests.support.bot import OPSBOT, clean_env

    env = clean_env(stack_env(rabbit, flower, tmp_path))
    green = subprocess.run([OPSBOT, "status"], env=env, capture_output=True, text=True, timeout=30)
    assert green.returncode == 0, green.stdout
    assert "All systems go" in green.stdout
    env["FLOWER_URL"] = "http://127.0.0.1:9"
    red = subprocess.run([OPSBOT, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert red.returncode == 2
    assert json.loads(red.stdout)["flower"]["problem"]["kind"] == "refused"


def buttons_in(payload: dict) -> list[dict]:
    """Every button of a message, in actions blocks and beside sections."""
    found = [b["accessory"] for b in payload.get("blocks", []) if b.get("accessory", {}).get("type") == "button"]
    return found + [e for b in payload.get("blocks", []) if b["type"] == "actions" for e in b["elements"]]


def click_answer(slack: SlackStandIn, button: dict, user_id: str = "U_ADMIN") -> dict:
    """Click a button the bot drew and return what it answered through the response_url."""
    url = slack.new_response_url("C_OPS")
    key = url.rsplit("/", 1)[1]
    slack.wait_ack(slack.send_block_action(button["action_id"], button.get("value"), user_id=user_id,
                                           response_url=url), timeout=SLACK_ACK_LIMIT)
    return slack.wait_for_response(lambda r: r.url_id == key, timeout=15).body


def test_every_payload_of_a_busy_stack_is_accepted_by_the_strict_standin(
        slack: SlackStandIn, socket_bot: Callable[..., BotProcess], rabbit: RabbitNode,
        make_worker: Callable[..., CeleryWorker]) -> None:
    """10 active tasks on two workers, a backlog, 45 finished tasks: every view, page, dialog, notice,
    the Home tab and the alerts, all through `opsbot run`, all accepted as the real Slack would."""
    for _ in range(2):
        make_worker(queues=("busy",), concurrency=5)
    sleepers = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 10, queue="busy", args=(120,))
    publish_tasks(rabbit.amqp_url, "stackapp.add", 3, queue="other", args=(1, 2))  # a backlog: an incident
    socket_bot(OPSBOT_ADMINS="U_ADMIN", OPSBOT_QUEUES="celery,other,busy", OPSBOT_ALERT_CHANNEL="C_ALERTS",
               OPSBOT_AUDIT_CHANNEL="C_AUDIT", OPSBOT_POLL_SECONDS="2", OPSBOT_BACKLOG_THRESHOLD="1",
               OPSBOT_BACKLOG_MINUTES="0")
    publish_tasks(rabbit.amqp_url, "stackapp.add", 45, args=(1, 1))
    assert wait_until(lambda: all(i in text_of(slash(slack, "active")) for i in sleepers), 30)
    finished = re.compile(r"(\d+) finished tasks")
    assert wait_until(lambda: int((finished.search(text_of(slash(slack, "history"))) or [0, 0])[1]) >= 45, 30)

    overview = slash(slack, "")
    assert "All active tasks" in text_of(overview)  # more than 5 running: the button that broke /tasks
    answers = [overview]
    for words in ("workers", "queues", "active", "history", "incidents", "help", "audit", "show " + sleepers[0]):
        answers.append(slash(slack, words))
    # Every list and page: follow each paging button, and the history to its last page and back.
    history = answers[4]
    seen_history_ids: set[str] = set()
    while True:
        pager = {b["text"]["text"]: b for b in buttons_in(history)}
        seen_history_ids |= {b["action_id"] for b in buttons_in(history)}
        if "Older" not in pager:
            break
        history = click_answer(slack, pager["Older"])
        answers.append(history)
    answers.append(click_answer(slack, {b["text"]["text"]: b for b in buttons_in(history)}["Newer"]))
    assert seen_history_ids >= {"history_older", "history_newer"}  # the middle page holds both
    for answer in list(answers[:4]):
        for button in buttons_in(answer):
            if button["action_id"].startswith("page_"):
                answers.append(click_answer(slack, button))
    confirms = [b["confirm"] for a in answers for b in buttons_in(a) if "confirm" in b]
    assert len(confirms) >= 10 + 1  # a Terminate per running task, a Purge for queue other

    # The Home tab.
    slack.send_event({"type": "app_home_opened", "user": "U_ADMIN", "tab": "home", "channel": "D1"})
    published = slack.wait_for_call("views.publish", timeout=15)
    assert published.response["ok"], published.response

    # A notice: terminate one task from the list; the answer names who did it with a live mention.
    terminate = next(b for b in buttons_in(answers[3]) if b["action_id"] == "terminate"
                     and b["value"].endswith(sleepers[0]))
    done = click_answer(slack, terminate)
    assert "by <@U_ADMIN>" in done["blocks"][1]["text"]["text"] and "by <@U_ADMIN>" in done["text"]
    audit = slack.wait_for_message(lambda m: m.channel == "C_AUDIT", timeout=10)
    assert audit.text.startswith("<@U_ADMIN> terminate")

    # The incident, acknowledged: the alert redrawn and the thread line, with a live mention.
    alert = slack.wait_for_message(lambda m: m.channel == "C_ALERTS" and not m.thread_ts, timeout=30)
    ack = next(b for b in buttons_in(alert.as_payload()) if b["action_id"] == "alert_ack")
    slack.wait_ack(slack.send_block_action("alert_ack", ack["value"], message=alert), timeout=SLACK_ACK_LIMIT)
    assert wait_until(lambda: "by <@U_ADMIN> at" in json.dumps(slack.message(alert.channel, alert.ts).blocks), 15)
    assert wait_until(lambda: any(m.text == "Acknowledged by <@U_ADMIN>." for m in slack.messages
                                  if m.thread_ts == alert.ts), 15)

    assert slack.rejections == [], slack.rejections[0]
    assert all(r.status == 200 for r in slack.responses)


def test_a_refused_reply_still_answers_in_plain_text(slack: SlackStandIn,
                                                     socket_bot: Callable[..., BotProcess]) -> None:
    bot = socket_bot(OPSBOT_ADMINS="U_ADMIN")
    slack.reject_next("response_url")
    url = slack.new_response_url("C_OPS")
    slack.wait_ack(slack.send_slash_command("terminate 00000000-0000-0000-0000-000000000000", response_url=url),
                   timeout=SLACK_ACK_LIMIT)
    key = url.rsplit("/", 1)[1]
    assert wait_until(lambda: len([r for r in slack.responses if r.url_id == key]) == 2, 15)
    refused, plain = [r for r in slack.responses if r.url_id == key]
    assert refused.status == 400 and "blocks" in refused.body
    assert plain.status == 200 and "blocks" not in plain.body and "is not running" in plain.body["text"]
    assert "invalid_blocks" in bot.output()

    slack.reject_next("views.publish")  # the Home tab refused: its text still shows there
    slack.send_event({"type": "app_home_opened", "user": "U_ADMIN", "tab": "home", "channel": "D1"})
    assert wait_until(lambda: len(slack.calls_to("views.publish")) == 2, 15)
    first, second = slack.calls_to("views.publish")
    assert first.response["error"] == "invalid_blocks" and second.response["ok"]
    assert "Task status" in json.dumps(slack.home_views["U_ADMIN"])
