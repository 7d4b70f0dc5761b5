"""Terminate and purge, for admins only, confirmed and audited: driven through the Socket Mode stand-in
(and the console) against real workers on a real broker.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.bot import OPSBOT, BotProcess, clean_env, stack_env
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import wait_until
from tests.support.rabbit import RabbitNode, queue_counts
from tests.support.slack import SlackStandIn

pytestmark = pytest.mark.integration

ADMIN, USER, OWNER = "U_ADMIN", "U_USER", "U_OWNER"


def text_of(payload: dict) -> str:
    return json.dumps(payload.get("blocks", [])) + "\n" + str(payload.get("text", ""))


def buttons(payload: dict) -> list[dict[str, Any]]:
    found = []
    for block in payload.get("blocks", []):
        if block.get("accessory", {}).get("type") == "button":
            found.append(block["accessory"])
        found += [e for e in block.get("elements", []) if e.get("type") == "button"]
    return found


def button(payload: dict, action_id: str, target: str) -> dict[str, Any]:
    for candidate in buttons(payload):
        if candidate["action_id"] == action_id and candidate["value"].endswith(f"|{target}"):
            return candidate
    raise AssertionError(f"no {action_id} button for {target} in {text_of(payload)[:2000]}")


def slash(slack: SlackStandIn, text: str, user_id: str = ADMIN) -> dict:
    return slack.wait_ack(slack.send_slash_command(text, user_id=user_id), timeout=3.0)


def click(slack: SlackStandIn, action_id: str, value: str, user_id: str = ADMIN) -> dict:
    """Click and return the bot's answer through the response_url."""
    before = len(slack.responses)
    slack.send_block_action(action_id, value, user_id=user_id)
    # A terminate answers once the process is seen gone, or after up to 7 s of watching it.
    assert wait_until(lambda: len(slack.responses) > before, 20), "the bot never answered the click"
    return slack.responses[before].body | {"_replace": slack.responses[before].replace_original}


def running(slack: SlackStandIn, task_id: str) -> bool:
    return task_id in text_of(slash(slack, "active"))


def start_sleeper(rabbit: RabbitNode, slack: SlackStandIn, seconds: float = 60, name: str = "stackapp.sleep",
                  queue: str = "celery") -> str:
    (task_id,) = publish_tasks(rabbit.amqp_url, name, 1, args=(seconds,), queue=queue)
    assert wait_until(lambda: running(slack, task_id), 15), "the task never started"
    return task_id


def audit_rows(db: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("select user_id, action, target, outcome from audit order by id").fetchall()


@pytest.fixture
def admin_bot(socket_bot: Callable[..., BotProcess]) -> Callable[..., BotProcess]:
    def start(**env: str) -> BotProcess:
        return socket_bot(**({"OPSBOT_ADMINS": ADMIN, "OPSBOT_QUEUES": "celery,other,spare"} | env))
    return start


def test_admin_terminates_a_running_task(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                         rabbit: RabbitNode, worker: CeleryWorker, tmp_path: Path) -> None:
    admin_bot()
    children_before = set(worker.pool_child_pids())
    task_id = start_sleeper(rabbit, slack)
    terminate = button(slash(slack, "active"), "terminate", task_id)
    assert terminate["style"] == "danger"
    confirm = json.dumps(terminate["confirm"])
    assert "stackapp.sleep" in confirm and task_id[:8] in confirm and worker.name in confirm and "running" in confirm

    answer = click(slack, "terminate", terminate["value"])
    assert answer["_replace"], "the clicked message is updated in place"
    assert f"Terminated stackapp.sleep `{task_id[:8]}` on {worker.name} (SIGTERM), by <@{ADMIN}>" in text_of(answer)

    revoked = control_app(rabbit.amqp_url).control.inspect(destination=[worker.name], timeout=1).revoked()
    assert task_id in revoked[worker.name]
    assert wait_until(lambda: set(worker.pool_child_pids()) != children_before, 10), "the pool child was not replaced"
    assert not running(slack, task_id)

    again = click(slack, "terminate", terminate["value"])
    assert f"Already terminated by <@{ADMIN}> at" in text_of(again) and not again["_replace"]

    rows = audit_rows(tmp_path / "opsbot.sqlite3")
    assert (ADMIN, "terminate", task_id, "done") in rows and (ADMIN, "terminate", task_id, "already") in rows


def test_non_admins_and_forged_payloads_change_nothing(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                                       rabbit: RabbitNode, worker: CeleryWorker,
                                                       tmp_path: Path) -> None:
    admin_bot()
    task_id = start_sleeper(rabbit, slack)
    publish_tasks(rabbit.amqp_url, "stackapp.add", 2, queue="spare", args=(1, 1))
    value = f"active|{task_id}"

    denied = click(slack, "terminate", value, user_id=USER)
    assert "not allowed" in text_of(denied) and not denied["_replace"]
    assert "not allowed" in text_of(slash(slack, f"terminate {task_id}", user_id=USER)) or wait_until(
        lambda: any("not allowed" in text_of(r.body) for r in slack.responses[-1:]), 5)
    assert "not allowed" in text_of(click(slack, "purge", "queues|spare", user_id=USER))

    never_shown = str(uuid.uuid4())
    assert "is not running" in text_of(click(slack, "terminate", f"active|{never_shown}"))
    assert "not a valid task id" in text_of(click(slack, "terminate", "active|bad id; rm -rf /"))
    assert "not one I made" in text_of(click(slack, "terminate", task_id))  # no section: not our shape
    assert "not one I made" in text_of(click(slack, "kill", "nowhere|" + task_id))
    assert "not a watched queue" in text_of(click(slack, "purge", "queues|celery.pidbox"))
    assert "not one I made" in text_of(click(slack, "reboot", "active|x"))  # unknown action id

    assert running(slack, task_id)
    assert queue_counts(rabbit.amqp_url, "spare") == (2, 0)
    outcomes = [(row[0], row[1], row[3]) for row in audit_rows(tmp_path / "opsbot.sqlite3")]
    assert outcomes.count((USER, "terminate", "denied")) == 2
    assert (USER, "purge", "denied") in outcomes
    assert (ADMIN, "terminate", "not_running") in outcomes and (ADMIN, "terminate", "invalid") in outcomes
    assert (ADMIN, "terminate", "forged") in outcomes and (ADMIN, "purge", "invalid") in outcomes


def test_purge_empties_exactly_that_queue(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                          rabbit: RabbitNode) -> None:
    admin_bot(OPSBOT_AUDIT_CHANNEL="C_AUDIT")
    publish_tasks(rabbit.amqp_url, "stackapp.add", 4, queue="other", args=(1, 1))
    publish_tasks(rabbit.amqp_url, "stackapp.add", 2, queue="spare", args=(1, 1))
    purge = button(slash(slack, "queues"), "purge", "other")
    confirm = json.dumps(purge["confirm"])
    assert "other" in confirm and "4 waiting tasks" in confirm

    answer = click(slack, "purge", purge["value"])
    assert "Purged 4 waiting tasks from other" in text_of(answer) and answer["_replace"]
    assert queue_counts(rabbit.amqp_url, "other") == (0, 0)
    assert queue_counts(rabbit.amqp_url, "spare") == (2, 0)

    typed = slack.send_slash_command("purge spare")
    assert "Working on it" in text_of(slack.wait_ack(typed, timeout=3.0))
    assert wait_until(lambda: any("Purged 2 waiting tasks from spare" in text_of(r.body) for r in slack.responses), 10)
    posted = slack.wait_for_call("chat.postMessage", lambda c: c.params.get("channel") == "C_AUDIT")
    assert "purge" in posted.params["text"]


def test_a_task_that_ignores_sigterm_is_reported_plainly(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                                          rabbit: RabbitNode,
                                                          make_worker: Callable[..., CeleryWorker]) -> None:
    """Celery forgets a task once it is signalled; opsbot checks the process itself and says what is left."""
    stubborn_worker = make_worker(queues=("spare",))
    admin_bot(OPSBOT_KILL_AFTER="1")
    task_id = start_sleeper(rabbit, slack, name="stackapp.stubborn", queue="spare")
    answer = click(slack, "terminate", f"active|{task_id}")
    assert "has not left the pool yet" in text_of(answer) and answer["_replace"]
    later = slack.wait_for_response(lambda r: "ignores the signal" in text_of(r.body), timeout=15)
    (pid,) = [p for p in stubborn_worker.pool_child_pids() if f"kill -9 {p}" in text_of(later.body)]
    assert later.replace_original
    again = click(slack, "terminate", f"active|{task_id}")
    assert f"kill -9 {pid}" in text_of(again) and not again["_replace"]


def test_kill_stops_a_task_that_ignores_sigterm(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                                rabbit: RabbitNode, make_worker: Callable[..., CeleryWorker]) -> None:
    stubborn_worker = make_worker(queues=("spare",))
    admin_bot()
    children_before = set(stubborn_worker.pool_child_pids())
    task_id = start_sleeper(rabbit, slack, name="stackapp.stubborn", queue="spare")
    slack.send_slash_command(f"kill {task_id}")
    done = slack.wait_for_response(lambda r: "(SIGKILL)" in text_of(r.body), timeout=10)
    assert f"Terminated stackapp.stubborn `{task_id[:8]}`" in text_of(done.body)
    assert set(stubborn_worker.pool_child_pids()) != children_before
    assert not running(slack, task_id)


def test_threads_pool_says_it_cannot_terminate(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                               rabbit: RabbitNode, make_worker: Callable[..., CeleryWorker]) -> None:
    # (A solo worker cannot even answer while it runs a task; a threads worker answers, but has no child.)
    make_worker(pool="threads", queues=("spare",), concurrency=2)
    admin_bot()
    task_id = start_sleeper(rabbit, slack, seconds=8, queue="spare")
    answer = click(slack, "terminate", f"active|{task_id}")
    assert "threads pool, which cannot terminate a single task" in text_of(answer)
    assert running(slack, task_id)


@pytest.mark.slow
def test_click_while_the_broker_is_down(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                        make_rabbit: Callable[..., RabbitNode], tmp_path: Path) -> None:
    node = make_rabbit()
    socket_bot(CELERY_BROKER_URL=node.amqp_url, RABBITMQ_MANAGEMENT_URL=node.management_url, OPSBOT_ADMINS=ADMIN)
    node.kill()
    answer = click(slack, "terminate", f"active|{uuid.uuid4()}")
    assert "broker is unreachable" in text_of(answer) and "nothing was done" in text_of(answer)
    assert "broker is unreachable" in text_of(click(slack, "purge", "queues|celery"))


def test_admins_from_a_user_group_and_workspace_admins(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                                       rabbit: RabbitNode) -> None:
    slack.usergroups["S_OPS"] = [USER]
    socket_bot(OPSBOT_ADMIN_GROUP="S_OPS", OPSBOT_WORKSPACE_ADMINS="true", OPSBOT_QUEUES="other")
    publish_tasks(rabbit.amqp_url, "stackapp.add", 1, queue="other", args=(1, 1))
    assert "Purged 1 waiting task from other" in text_of(click(slack, "purge", "queues|other", user_id=USER))
    publish_tasks(rabbit.amqp_url, "stackapp.add", 1, queue="other", args=(1, 1))
    assert "Purged 1 waiting task" in text_of(click(slack, "purge", "queues|other", user_id=OWNER))
    slack.usergroups["S_OPS"] = []
    assert "Purged" in text_of(click(slack, "purge", "queues|other", user_id=USER))  # cached for a minute
    assert slack.calls_to("usergroups.users.list") and slack.calls_to("users.info")


def test_without_admins_nobody_can_act(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                       rabbit: RabbitNode, worker: CeleryWorker) -> None:
    socket_bot()
    task_id = start_sleeper(rabbit, slack)
    status = slash(slack, "active")
    assert "Task control is off" in text_of(status) and "OPSBOT_ADMINS" in text_of(status)
    assert not [b for b in buttons(status) if b["action_id"] in ("terminate", "purge")]
    assert "OPSBOT_ADMINS" in text_of(click(slack, "terminate", f"active|{task_id}"))
    assert running(slack, task_id)


def test_audit_command(slack: SlackStandIn, admin_bot: Callable[..., BotProcess]) -> None:
    admin_bot()
    click(slack, "purge", "queues|nope")
    click(slack, "terminate", f"active|{uuid.uuid4()}", user_id=USER)
    audit = text_of(slash(slack, "audit"))
    assert "purge nope" in audit and "denied" in audit and "Task-control audit" in audit
    refused = text_of(slash(slack, "audit", user_id=USER))
    assert "not allowed" in refused and "only opsbot admins can read the task-control audit" in refused


def test_console_terminates_with_confirmation(rabbit: RabbitNode, worker: CeleryWorker, flower: FlowerProcess,
                                              tmp_path: Path) -> None:
    (task_id,) = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(60,))
    (other_id,) = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(60,))
    inspect = control_app(rabbit.amqp_url).control.inspect(destination=[worker.name], timeout=1)
    assert wait_until(lambda: len((inspect.active() or {}).get(worker.name, [])) == 2, 15)
    env = clean_env(stack_env(rabbit, flower, tmp_path) | {"COLUMNS": "200"})
    # "active" lists both tasks oldest first, choices 1 and 2 terminate them; "n" cancels the first.
    script = f"active\n1\nn\n/tasks terminate {other_id}\nactive\nquit\n"
    result = subprocess.run([OPSBOT, "console"], input=script, env=env, capture_output=True, text=True, timeout=60)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "Terminate this task?" in out and "Cancelled; nothing was done." in out
    assert f"Terminated stackapp.sleep `{other_id[:8]}`" in out, out[-4000:]
    active_ids = {t["id"] for t in (inspect.active() or {}).get(worker.name, [])}
    assert task_id in active_ids and other_id not in active_ids
