"""The test stack's app with a beat schedule: `celery -A tests.beatapp beat` sends stackapp tasks.

Two entries share one task and differ only in their arguments, so opsbot has to tell their runs apart.
The period comes from STACK_BEAT_SECONDS, the broker (like tests.stackapp) from STACK_BROKER_URL; the
bot loads this same module (OPSBOT_CELERY_APP) to learn the schedule.
"""

from __future__ import annotations

import os

from tests.stackapp import app

EVERY = float(os.environ.get("STACK_BEAT_SECONDS", "5"))

app.conf.beat_schedule = {
    "add-small": {"task": "stackapp.add", "schedule": EVERY, "args": (1, 2)},
    "add-big": {"task": "stackapp.add", "schedule": EVERY, "args": (100, 200)},
}

__all__ = ["app"]
