"""What the soak saw, as plain data for the checks: the alert messages as Slack holds them (from the
stand-in's record of every Web API call), the tasks' outcomes in the result backend, the bot's history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis
import sqlalchemy

from tests.support.slack import ApiCall

INCIDENT_ID = re.compile(r"Incident (\S+)@(\d+)")
RESOLVED = "Resolved"
RESOLVED_LINE = "Resolved after"  # the thread line of a resolution (bot.alerts._on_success)


@dataclass(frozen=True)
class AlertMessage:
    """One top-level message in the alert channel and what happened to it."""

    ts: str
    key: str  # the incident's key in the alert engine ("flower", "worker:w2@host"); "" when not an alert
    incident_id: str
    started_at: float  # the incident's first failed poll (from its id)
    posted_at: float
    text: str
    resolved_at: float | None  # the first update that made it read "Resolved"
    after_resolved: tuple[str, ...]  # what was posted or redrawn about it after that, which should not be
    thread: tuple[str, ...]  # every line posted in its thread, in order


def ok(call: ApiCall) -> bool:
    return bool(call.response and call.response.get("ok"))


def incident_of(params: dict) -> tuple[str, str, float]:
    """(incident id, key, started_at) from the footer every alert carries ("Incident flower@1732...")."""
    found = INCIDENT_ID.search(f"{params.get('text') or ''}\n{json.dumps(params.get('blocks') or [])}")
    if found is None:
        return "", "", 0.0
    return f"{found[1]}@{found[2]}", found[1], int(found[2]) / 1000


def alert_messages(calls: Sequence[ApiCall], channel: str) -> list[AlertMessage]:
    """Every top-level message the bot posted in `channel`, followed through its updates and thread."""
    calls = sorted((c for c in calls if ok(c)), key=lambda c: c.time)
    posts = [c for c in calls if c.method == "chat.postMessage" and c.params.get("channel") == channel
             and not c.params.get("thread_ts")]
    return [follow(post, calls) for post in posts]


def follow(post: ApiCall, calls: Iterable[ApiCall]) -> AlertMessage:
    assert post.response is not None
    ts = str(post.response["ts"])
    incident_id, key, started_at = incident_of(post.params)
    resolved_at: float | None = None
    after: list[str] = []
    thread: list[str] = []
    for call in calls:
        if call.time < post.time:
            continue
        text = str(call.params.get("text") or "")
        if call.method == "chat.update" and call.params.get("ts") == ts:
            if resolved_at is None and text.startswith(RESOLVED):
                resolved_at = call.time
            elif resolved_at is not None and not text.startswith(RESOLVED):
                after.append(f"redrawn as {text[:80]!r}")
        elif call.method == "chat.postMessage" and call.params.get("thread_ts") == ts:
            thread.append(text)
            if resolved_at is not None and not (text.startswith(RESOLVED_LINE) and thread.count(text) == 1):
                after.append(f"thread line {text[:80]!r}")
    return AlertMessage(ts, key, incident_id, started_at, post.time, str(post.params.get("text") or ""),
                        resolved_at, tuple(after), tuple(thread))


def backend_states(redis_url: str, task_ids: Sequence[str]) -> dict[str, str]:
    """Each task's state in the Celery result backend (Redis), where the worker wrote it; absent: none."""
    client = redis.Redis.from_url(redis_url)
    states: dict[str, str] = {}
    try:
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start:start + 500]
            for task_id, raw in zip(chunk, client.mget([f"celery-task-meta-{t}" for t in chunk]), strict=True):
                if raw is not None:
                    states[task_id] = str(json.loads(raw)["status"])
    finally:
        client.close()
    return states


def history_states(db_url: str, task_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Each task's state in the bot's history table, with how many rows carry its id."""
    engine = sqlalchemy.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT task_id, min(state), count(*) FROM task_history WHERE task_id = ANY(:ids) GROUP BY task_id"),
                {"ids": list(task_ids)}).all()
    finally:
        engine.dispose()
    return {str(task_id): (str(state), int(count)) for task_id, state, count in rows}
