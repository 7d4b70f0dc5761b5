"""The user's Celery app (`OPSBOT_CELERY_APP`, `opsbot -A`): loaded as `celery -A` loads it, and read into
plain data (broker, result backend, queues, beat schedule) so the rest of opsbot never needs the app.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.config import ConfigError, Settings, load_settings
from bot.redact import redact

DJANGO_SCHEDULER = "django_celery_beat"  # in beat_scheduler: the entries live in the database


@dataclass(frozen=True)
class BeatEntry:
    """One entry of the beat schedule: which task, when, with which arguments."""

    name: str
    task: str
    schedule: Any  # a celery.schedules schedule, crontab or solar: it knows the next run time
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    last_run_at: float | None = None  # what the scheduler itself recorded (database scheduler only)


@dataclass(frozen=True)
class AppFacts:
    spec: str
    broker_url: str | None
    result_backend: str | None
    queues: tuple[str, ...]
    scheduler: str  # beat_scheduler, e.g. "celery.beat:PersistentScheduler"
    beat_schedule: tuple[BeatEntry, ...] = ()

    @property
    def database_scheduler(self) -> bool:
        return DJANGO_SCHEDULER in self.scheduler


@functools.cache
def load_app(spec: str) -> Any:
    """Import the app as `celery -A spec` does: the working directory on the path, celery's own finder."""
    from celery.app.utils import find_app
    from celery.utils.imports import import_from_cwd

    try:
        return find_app(spec, imp=import_from_cwd)
    except Exception as exc:
        raise ConfigError(f"OPSBOT_CELERY_APP: cannot load the Celery app {spec!r} "
                          f"({type(exc).__name__}: {redact(str(exc))[:200]})") from None


def first_url(value: Any) -> str | None:
    """Celery takes a list or a ';'-separated string of failover URLs: the first one is the broker."""
    if not value:
        return None
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else None
    return str(value).split(";")[0].strip() or None


def _queue_name(queue: Any) -> str | None:
    name = getattr(queue, "name", queue)
    return name if isinstance(name, str) and name else None


def route_queues(routes: Any) -> list[str]:
    """Queue names that task_routes names: {pattern: {"queue": ...}} or {pattern: "queue"}, or a list of those.
    Router functions decide at send time; nothing can be read from them."""
    if isinstance(routes, Mapping):
        routes = [routes]
    if not isinstance(routes, (list, tuple)):
        return []
    found = []
    for router in routes:
        if isinstance(router, Mapping):
            pairs: Iterable = router.values()
        elif isinstance(router, (list, tuple)):  # ((pattern, route), ...)
            pairs = (pair[1] for pair in router if isinstance(pair, (list, tuple)) and len(pair) == 2)
        else:
            continue
        for route in pairs:
            queue = route.get("queue") if isinstance(route, Mapping) else route
            if (name := _queue_name(queue)) is not None:
                found.append(name)
    return found


def app_queues(conf: Any) -> tuple[str, ...]:
    """The default queue, then task_queues, then the queues task_routes names; each once."""
    names = [conf.task_default_queue]
    names += [_queue_name(q) for q in (conf.task_queues or ())]
    names += route_queues(conf.task_routes)
    return tuple(dict.fromkeys(n for n in names if n))


def beat_entries(app: Any) -> tuple[BeatEntry, ...]:
    from celery.schedules import maybe_schedule

    entries = []
    for name, entry in sorted((app.conf.beat_schedule or {}).items()):
        if not isinstance(entry, Mapping) or not entry.get("task") or entry.get("schedule") is None:
            continue
        entries.append(BeatEntry(name=str(name), task=str(entry["task"]),
                                 schedule=maybe_schedule(entry["schedule"], app=app),
                                 args=tuple(entry.get("args") or ()), kwargs=dict(entry.get("kwargs") or {})))
    return tuple(entries)


def facts_of(app: Any, spec: str) -> AppFacts:
    conf = app.conf
    return AppFacts(spec=spec, broker_url=first_url(conf.broker_url), result_backend=first_url(conf.result_backend),
                    queues=app_queues(conf), scheduler=str(conf.beat_scheduler or ""),
                    beat_schedule=beat_entries(app))


@functools.cache
def app_facts(spec: str) -> AppFacts:
    app = load_app(spec)
    try:
        return facts_of(app, spec)
    except Exception as exc:  # a broken schedule entry, a bad setting: name the app, not a traceback
        raise ConfigError(f"OPSBOT_CELERY_APP: cannot read the app {spec!r} "
                          f"({type(exc).__name__}: {redact(str(exc))[:200]})") from None


def with_app(settings: Settings, **overrides: object) -> Settings:
    """Settings completed from the app; whatever the environment (or .env) sets wins."""
    if not settings.celery_app:
        return settings
    facts = app_facts(settings.celery_app)
    # Retry reads exact arguments from a Redis result backend only: another backend the app uses is left out
    # (Retry then says why) rather than refused at start.
    backend = facts.result_backend
    if backend and not backend.startswith(("redis://", "rediss://")):
        backend = None
    from_app = {"broker_url": facts.broker_url, "result_backend": backend, "queues": facts.queues}
    fill = {name: value for name, value in from_app.items() if value and name not in settings.model_fields_set}
    if not fill:
        return settings
    try:
        return load_settings(**overrides, **fill)
    except ConfigError as problem:
        raise ConfigError(f"{problem} (taken from the Celery app {settings.celery_app!r})") from None
