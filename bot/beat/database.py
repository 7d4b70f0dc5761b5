"""django-celery-beat's DatabaseScheduler: the schedule lives in its `PeriodicTask` table, read through
its own models (the app's Django settings say where the database is)."""

from __future__ import annotations

import json
from typing import Any

from bot.celeryapp import BeatEntry


def _django_ready() -> None:
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()  # DJANGO_SETTINGS_MODULE: set by the app's celery module, as Django projects do


def entry_of(task: Any) -> BeatEntry | None:
    """A PeriodicTask as a schedule entry; None for what is not periodic (clocked, a one-off already run)."""
    if getattr(task, "clocked_id", None) or (task.one_off and task.last_run_at):
        return None
    return BeatEntry(name=task.name, task=task.task, schedule=task.schedule,
                     args=tuple(json.loads(task.args or "[]")), kwargs=dict(json.loads(task.kwargs or "{}")),
                     last_run_at=task.last_run_at.timestamp() if task.last_run_at else None)


def database_entries() -> tuple[BeatEntry, ...]:
    _django_ready()
    from django.db import connection
    from django_celery_beat.models import PeriodicTask

    try:
        tasks = PeriodicTask.objects.filter(enabled=True).order_by("name")
        return tuple(entry for entry in map(entry_of, tasks) if entry is not None)
    finally:
        connection.close()  # read from a background thread now and then: hold no connection in between
