"""The Celery app as opsbot reads it: an app module written here, loaded as `celery -A` loads it (from the
working directory), its broker, result backend, queues and beat schedule; the environment still wins."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bot.celeryapp import app_facts, route_queues, with_app
from bot.config import ConfigError, load_settings

_numbers = itertools.count()

APP_MODULE = '''
from celery import Celery
from celery.schedules import crontab
from kombu import Queue

app = Celery("proj", broker="amqp://ops:app-secret@10.0.0.5:5672/prod", backend="redis://10.0.0.6:6379/1")
app.conf.task_queues = [Queue("alpha"), Queue("beta")]
app.conf.task_default_queue = "alpha"
app.conf.task_routes = {"proj.reports.*": {"queue": "reports"}, "proj.mail.*": "mail", "proj.x": {"priority": 5}}
app.conf.beat_schedule = {
    "reports.nightly": {"task": "proj.reports.nightly", "schedule": crontab(minute=0, hour=2)},
    "tick": {"task": "proj.tick", "schedule": 30.0, "args": (1,)},
}
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package `projN/celery.py` in the working directory, like a Django or Flask project; its name."""
    name = f"proj{next(_numbers)}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "celery.py").write_text(APP_MODULE)
    monkeypatch.chdir(tmp_path)
    for variable in ("CELERY_BROKER_URL", "OPSBOT_QUEUES", "CELERY_RESULT_BACKEND", "OPSBOT_CELERY_APP"):
        monkeypatch.delenv(variable, raising=False)
    return name


def test_the_app_gives_broker_backend_queues_and_schedule(project: str) -> None:
    facts = app_facts(project)  # `-A proj`: celery finds proj.celery:app
    assert facts.broker_url == "amqp://ops:app-secret@10.0.0.5:5672/prod"
    assert facts.result_backend == "redis://10.0.0.6:6379/1"
    assert facts.queues == ("alpha", "beta", "reports", "mail")
    assert [(e.name, e.task, e.args) for e in facts.beat_schedule] == [
        ("reports.nightly", "proj.reports.nightly", ()), ("tick", "proj.tick", (1,))]
    assert not facts.database_scheduler
    settings = with_app(load_settings(celery_app=f"{project}.celery:app"), celery_app=f"{project}.celery:app")
    assert settings.broker_url == facts.broker_url and settings.queues == facts.queues
    assert settings.result_backend == facts.result_backend
    assert "app-secret" in settings.secrets()  # the app's broker password is redacted like any other


def test_the_environment_overrides_the_app(project: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_QUEUES", "celery,urgent")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    settings = with_app(load_settings(celery_app=project), celery_app=project)
    assert settings.queues == ("celery", "urgent") and settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.result_backend == "redis://10.0.0.6:6379/1"  # not set in the environment: from the app


def test_an_app_that_cannot_be_loaded_is_a_clear_config_error(project: str) -> None:
    with pytest.raises(ConfigError, match=r"OPSBOT_CELERY_APP: cannot load the Celery app 'nosuchproj'"):
        with_app(load_settings(celery_app="nosuchproj"))
    with pytest.raises(ConfigError, match="OPSBOT_CELERY_APP"):
        load_settings(celery_app="proj; rm -rf /")


def test_routes_in_every_form() -> None:
    assert route_queues({"a.*": {"queue": "q1"}, "b": "q2"}) == ["q1", "q2"]
    assert route_queues([{"a": {"queue": "q3"}}, "proj.routers.route"]) == ["q3"]  # a router function: unknowable
    assert route_queues(((("a", {"queue": "q4"}),),)) == ["q4"]
    assert route_queues(None) == []
