"""Worker control through the Slack stand-in against real workers on a real broker: every effect is
read back through Celery's own inspect (stats, active_queues, registered), never from the bot's words.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bot import BotProcess
from tests.support.celery_procs import CeleryWorker, control_app, publish_tasks
from tests.support.net import wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

pytestmark = pytest.mark.integration

ADMIN, USER = "U_ADMIN", "U_USER"


def text_of(payload: dict) -> str:
    return json.dumps(payload.get("blocks", []), ensure_ascii=False) + "\n" + str(payload.get("text", ""))


def all_buttons(payload: dict) -> list[dict[str, Any]]:
    found = []
    for block in payload.get("blocks", []):
        if block.get("accessory", {}).get("type") == "button":
            found.append(block["accessory"])
        found += [e for e in block.get("elements", []) if e.get("type") == "button"]
    return found


def slash(slack: SlackStandIn, text: str, user_id: str = ADMIN) -> dict:
    return slack.wait_ack(slack.send_slash_command(text, user_id=user_id), timeout=3.0)


def act(slack: SlackStandIn, text: str, user_id: str = ADMIN, timeout: float = 20) -> str:
    """A typed action or worker read: acknowledged at once ("Working on it"), answered through the response_url."""
    before = len(slack.responses)
    assert "Working on it" in text_of(slash(slack, text, user_id))
    assert wait_until(lambda: len(slack.responses) > before, timeout), f"no answer to {text}"
    return text_of(slack.responses[before].body)


def click(slack: SlackStandIn, button: dict, user_id: str = ADMIN) -> dict:
    before = len(slack.responses)
    slack.send_block_action(button["action_id"], button["value"], user_id=user_id)
    assert wait_until(lambda: len(slack.responses) > before, 20), "the bot never answered the click"
    return slack.responses[before].body | {"_replace": slack.responses[before].replace_original}


def inspect(rabbit: RabbitNode, worker: CeleryWorker, method: str, *args: Any) -> Any:
    inspector = control_app(rabbit.amqp_url).control.inspect(destination=[worker.name], timeout=2, limit=1)
    return (getattr(inspector, method)(*args) or {}).get(worker.name)


def processes(rabbit: RabbitNode, worker: CeleryWorker) -> list[int]:
    return (inspect(rabbit, worker, "stats") or {}).get("pool", {}).get("processes", [])


def consumes(rabbit: RabbitNode, worker: CeleryWorker) -> set[str]:
    return {q["name"] for q in inspect(rabbit, worker, "active_queues") or []}


def audit_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select user_id, action, target, outcome from audit order by id").fetchall()


@pytest.fixture
def admin_bot(socket_bot: Callable[..., BotProcess]) -> Callable[..., BotProcess]:
    def start(**env: str) -> BotProcess:
        return socket_bot(**({"OPSBOT_ADMINS": ADMIN, "OPSBOT_QUEUES": "celery,other,spare"} | env))
    return start


@pytest.fixture(autouse=True)
def _no_rejections(slack: SlackStandIn) -> Iterator[None]:
    yield
    assert not slack.rejections, f"Slack refused: {slack.rejections}"


def test_pool_grows_and_shrinks_for_admins_only(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                                rabbit: RabbitNode, make_worker: Callable[..., CeleryWorker],
                                                tmp_path: Path) -> None:
    w = make_worker(queues=("spare",), concurrency=1)
    admin_bot()
    answer = act(slack, f"pool {w.name} +2")
    assert f"Pool grown by 2 on 1 of 1 worker by <@{ADMIN}> at" in answer and "pool 1 → 3 processes" in answer
    assert len(processes(rabbit, w)) == 3

    short = w.name.split("@")[0]  # the part before "@" is enough when it is unique
    assert "pool 3 → 2 processes" in act(slack, f"pool {short} -1")
    assert wait_until(lambda: len(processes(rabbit, w)) == 2, 10)

    denied = act(slack, f"pool {w.name} +1", user_id=USER)
    assert "not allowed" in denied and "Nothing was done" in denied
    assert "cannot shrink by 5" in act(slack, f"pool {w.name} -5")
    assert "No worker named 'nobody@nowhere' answered" in act(slack, "pool nobody@nowhere +1")
    assert "is not a change of pool size" in text_of(slash(slack, f"pool {w.name} 2"))  # refused at once
    assert len(processes(rabbit, w)) == 2

    rows = audit_rows(tmp_path / "opsbot.sqlite3")
    assert (ADMIN, "pool", w.name, "done") in rows and (USER, "pool", w.name, "denied") in rows
    assert (ADMIN, "pool", w.name, "invalid") in rows


def test_pause_from_the_worker_detail_and_resume_typed(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                                       rabbit: RabbitNode, make_worker: Callable[..., CeleryWorker],
                                                       tmp_path: Path) -> None:
    w = make_worker(queues=("spare", "other"))
    admin_bot()
    workers = slash(slack, "workers")
    assert "consumes other, spare" in text_of(workers) or "consumes spare, other" in text_of(workers)
    detail_button = next(b for b in all_buttons(workers) if b["action_id"] == "worker_detail"
                         and b["value"] == w.name)
    detail = click(slack, detail_button)
    assert f"Worker {w.name}" in text_of(detail) and "prefork pool, 2 processes" in text_of(detail)
    pause = next(b for b in all_buttons(detail) if b["action_id"] == "worker_pause" and b["value"].startswith("spare|"))
    assert "stops taking tasks from spare" in json.dumps(pause["confirm"])

    denied = click(slack, pause, user_id=USER)
    assert "not allowed" in text_of(denied) and not denied["_replace"]
    assert consumes(rabbit, w) == {"other", "spare"}

    paused = click(slack, pause)
    assert paused["_replace"] and f"Paused spare on 1 of 1 worker by <@{ADMIN}> at" in text_of(paused)
    assert "no longer consumes spare" in text_of(paused)
    assert consumes(rabbit, w) == {"other"}

    queues = text_of(slash(slack, "queues"))
    assert f"paused on 1 of 1 worker by <@{ADMIN}> at" in queues and ":large_yellow_circle: *spare*" in queues
    publish_tasks(rabbit.amqp_url, "stackapp.add", 1, queue="spare", args=(1, 1))
    assert "is not consumed by" in act(slack, "pause spare")  # nobody consumes it now: nothing to pause
    assert "'nosuch' is neither a watched queue" in act(slack, "pause nosuch")

    assert "consumes spare again" in act(slack, "resume spare")
    assert consumes(rabbit, w) == {"other", "spare"}
    assert "paused on" not in text_of(slash(slack, "queues"))
    rows = audit_rows(tmp_path / "opsbot.sqlite3")
    assert (ADMIN, "pause", f"spare on {w.name}", "done") in rows
    assert (ADMIN, "resume", f"spare on {w.name}", "done") in rows
    assert (USER, "pause", f"spare on {w.name}", "denied") in rows


def test_a_queue_paused_too_long_is_posted_in_the_alert_channel(slack: SlackStandIn,
                                                                admin_bot: Callable[..., BotProcess],
                                                                rabbit: RabbitNode,
                                                                make_worker: Callable[..., CeleryWorker]) -> None:
    w = make_worker(queues=("spare",))
    admin_bot(OPSBOT_ALERT_CHANNEL="C_ALERTS", OPSBOT_PAUSE_REMIND="3s", OPSBOT_POLL_SECONDS="1",
              OPSBOT_RESOLVE_AFTER="1")
    assert "no longer consumes spare" in act(slack, f"pause spare {w.name}")
    posted = slack.wait_for_call("chat.postMessage", lambda c: c.params.get("channel") == "C_ALERTS"
                                 and "Queue spare is paused on 1 of 1 workers" in str(c.params), timeout=30)
    assert f"(by {ADMIN})" in str(posted.params) and "/tasks resume spare" in str(posted.params)
    assert "consumes spare again" in act(slack, "resume spare")
    assert slack.wait_for_call("chat.update", lambda c: c.params.get("channel") == "C_ALERTS"
                               and "Resolved" in str(c.params), timeout=30)


def test_rate_and_time_limits_on_every_worker(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                              rabbit: RabbitNode, worker: CeleryWorker,
                                              make_worker: Callable[..., CeleryWorker]) -> None:
    w = make_worker(queues=("spare",))
    admin_bot()
    try:
        answer = act(slack, "ratelimit stackapp.add 10/m")
        assert "Rate limit of stackapp.add set to 10/m on 2 of 2 workers" in answer
        for each in (worker, w):
            assert "stackapp.add [rate_limit=10/m]" in inspect(rabbit, each, "registered", "rate_limit")
        assert "stackapp.add rate 10/m" in text_of(slash(slack, "workers"))

        assert "set to soft 20 s, hard 30 s on 2 of 2 workers" in act(slack, "timelimit stackapp.add 20 30")
        limits = inspect(rabbit, w, "registered", "soft_time_limit", "time_limit")
        assert "stackapp.add [soft_time_limit=20.0 time_limit=30.0]" in limits
        assert "rate 10/m; time limits soft 20 s, hard 30 s" in act(slack, "registered")

        assert "not a rate" in text_of(slash(slack, "ratelimit stackapp.add fast"))
        assert "No worker has a task named 'nosuch.task'" in act(slack, "ratelimit nosuch.task 1/s")
        assert "stackapp.add [rate_limit=10/m]" in inspect(rabbit, w, "registered", "rate_limit")
    finally:  # the session worker is shared: leave it as it was
        act(slack, "ratelimit stackapp.add off")
        act(slack, "timelimit stackapp.add off off")
    assert "stackapp.add" in inspect(rabbit, worker, "registered", "rate_limit")


def test_shutdown_stops_the_worker_after_its_active_task(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                                         rabbit: RabbitNode,
                                                         make_worker: Callable[..., CeleryWorker]) -> None:
    w = make_worker(queues=("spare",))
    admin_bot()
    (task_id,) = publish_tasks(rabbit.amqp_url, "stackapp.sleep", 1, args=(10,), queue="spare")
    assert wait_until(lambda: inspect(rabbit, w, "active"), 15)
    assert "Working on it" in text_of(slash(slack, f"workers {w.name}"))
    detail = slack.wait_for_response(lambda r: f"Worker {w.name}" in text_of(r.body), timeout=10).body
    shutdown = next(b for b in all_buttons(detail) if b["action_id"] == "worker_shutdown")
    assert f"stackapp.sleep ({task_id[:8]})" in json.dumps(shutdown["confirm"]) and shutdown["style"] == "danger"

    answer = text_of(click(slack, shutdown))
    assert f"Warm shutdown on 1 of 1 worker by <@{ADMIN}>" in answer
    assert f"exits after its 1 active task: stackapp.sleep ({task_id[:8]})" in answer
    assert w.is_running(), "a warm shutdown waits for the running task"
    assert wait_until(lambda: not w.is_running(), 30), "the worker never exited"
    assert f"Task stackapp.sleep[{task_id}] succeeded" in w.log_path.read_text()


def test_pools_that_cannot_and_restart_where_allowed(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                                     rabbit: RabbitNode,
                                                     make_worker: Callable[..., CeleryWorker]) -> None:
    threads = make_worker(pool="threads", queues=("spare",))
    plain = make_worker(queues=("spare",))
    restartable = make_worker(queues=("spare",), extra_args=("--", "worker_pool_restarts=true"))
    admin_bot()
    answer = act(slack, f"pool {threads.name} +1")
    assert "threads pool, which cannot grow or shrink" in answer and "Nothing was changed" in answer
    assert inspect(rabbit, threads, "stats")["pool"]["max-concurrency"] == 2
    assert "does not allow pool restarts" in act(slack, f"restart-pool {plain.name}")

    before = set(processes(rabbit, restartable))
    assert "pool restarting: " in act(slack, f"restart-pool {restartable.name}")
    assert set(processes(rabbit, restartable)) - before, "no pool process was replaced"


def test_autoscale_bounds(slack: SlackStandIn, admin_bot: Callable[..., BotProcess], rabbit: RabbitNode,
                          make_worker: Callable[..., CeleryWorker]) -> None:
    w = make_worker(queues=("spare",), extra_args=("--autoscale=3,1",))
    admin_bot()
    assert "autoscale 1 to 3" in act(slack, f"workers {w.name}")
    assert "pool_grow and pool_shrink" in act(slack, f"pool {w.name} +1")
    assert "autoscale 2 to 4" in act(slack, f"autoscale {w.name} 4 2")
    scaler = inspect(rabbit, w, "stats")["autoscaler"]
    assert (scaler["max"], scaler["min"]) == (4, 2)


def test_scheduled_reserved_revoked_registered(slack: SlackStandIn, admin_bot: Callable[..., BotProcess],
                                               rabbit: RabbitNode, make_worker: Callable[..., CeleryWorker]) -> None:
    w = make_worker(queues=("spare",))
    admin_bot()
    app = control_app(rabbit.amqp_url)
    later = app.send_task("stackapp.add", args=(1, 2), queue="spare", countdown=300).id
    assert wait_until(lambda: inspect(rabbit, w, "scheduled"), 15)
    scheduled = act(slack, "scheduled")
    assert "stackapp.add" in scheduled and later[:8] in scheduled and "ETA" in scheduled
    app.control.revoke(later)
    assert wait_until(lambda: later in (inspect(rabbit, w, "revoked") or []), 10)
    assert later in act(slack, "revoked")
    assert "Reserved tasks" in act(slack, "reserved")
    registered = act(slack, f"registered {w.name}")
    assert "stackapp.sleep" in registered and "on 1 of 1 workers" in registered


def test_console_pauses_and_resumes(rabbit: RabbitNode, worker: CeleryWorker, flower: Any,
                                    make_worker: Callable[..., CeleryWorker], tmp_path: Path) -> None:
    """The console shares the command language: the operator at the terminal may act."""
    import subprocess

    from tests.support.bot import OPSBOT, clean_env, stack_env

    w = make_worker(queues=("spare", "other"))
    env = clean_env(stack_env(rabbit, flower, tmp_path) | {"COLUMNS": "250", "OPSBOT_QUEUES": "celery,other,spare"})
    script = f"pause spare {w.name}\nqueues\nresume spare {w.name}\nquit\n"
    result = subprocess.run([OPSBOT, "console"], input=script, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Paused spare on 1 of 1 worker by" in out and "no longer consumes spare" in out, out[-3000:]
    assert "paused on 1 of 1 worker by console:" in out
    assert "consumes spare again" in out and consumes(rabbit, w) == {"other", "spare"}
