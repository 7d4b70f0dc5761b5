"""The daily digest: what finished in the last 24 h and what failed most, posted once a day by the leader."""

from __future__ import annotations

import time
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from bot import markup
from bot.history.store import HistoryStore

MAX_TEXT = 3000  # characters of the post


class DailyDigest:
    """Posts the digest every day at `at` ("09:00", the bot's local time), once whatever the replicas:
    only the leader queues it, under a key of the day (`post(key, payload)`: the alert sink's outbox)."""

    def __init__(self, at: str, store: HistoryStore, post: Callable[[str, dict[str, str]], None],
                 is_leader: Callable[[], bool], clock: Callable[[], float] = time.time) -> None:
        self.hour, self.minute = (int(part) for part in at.split(":"))
        self.store = store
        self.post = post
        self.is_leader = is_leader
        self.clock = clock
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": 30})

    def start(self) -> DailyDigest:
        self.scheduler.add_job(self.post_now, "cron", hour=self.hour, minute=self.minute, id="daily-digest")
        self.scheduler.start()
        return self

    def post_now(self) -> None:
        if self.is_leader():
            now = self.clock()
            self.post(f"digest-{time.strftime('%Y-%m-%d', time.localtime(now))}",
                      {"text": markup.for_slack(digest_text(self.store, now), MAX_TEXT)})

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)


def digest_text(store: HistoryStore, now: float) -> str:
    """The daily digest: tasks by final state over the last 24 h, and the names that failed most."""
    by_state, failing = store.failure_counts(now - 86400)
    if not by_state:
        return "Daily digest: no task finished in the last 24 h."
    states = ", ".join(f"{count} {state}" for state, count in sorted(by_state.items(), key=lambda kv: -kv[1]))
    text = f"Daily digest, last 24 h: {states}."
    if failing:
        text += " Failed most: " + ", ".join(f"{name} ({count})" for name, count in failing) + "."
    return text
