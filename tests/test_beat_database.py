"""django-celery-beat's DatabaseScheduler, for real: a Django project written here on a fresh PostgreSQL
database, its PeriodicTask rows, a real `celery beat` with the database scheduler, and opsbot reading the
schedule through django-celery-beat's models. Killing beat makes the 5-second entry late while the nightly
one is not: one incident for that entry, resolved when beat runs again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.bot import BotProcess
from tests.support.celery_procs import BeatProcess
from tests.support.net import wait_until
from tests.support.procs import REPO_ROOT
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

pytestmark = pytest.mark.integration

CHANNEL = "C_ALERTS"
POSTGRES = "host=127.0.0.1 user=root dbname=test"

SETTINGS = '''
SECRET_KEY = "test-only"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.postgresql", "NAME": {name!r}, "HOST": "127.0.0.1",
                          "USER": "root"}}}}
'''
CELERY = '''
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
app = Celery("djproj", broker=os.environ.get("STACK_BROKER_URL"))
app.conf.update(beat_scheduler="django_celery_beat.schedulers:DatabaseScheduler", task_send_sent_event=True,
                timezone="UTC", result_backend=None)
'''
ROWS = '''
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
every5 = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.SECONDS)
nightly = CrontabSchedule.objects.create(minute="0", hour="2")
PeriodicTask.objects.create(name="db-add", task="stackapp.add", interval=every5, args="[3, 4]")
PeriodicTask.objects.create(name="db-nightly", task="stackapp.add", crontab=nightly, args="[5, 6]")
PeriodicTask.objects.create(name="db-disabled", task="stackapp.add", interval=every5, args="[0, 0]", enabled=False)
'''


@pytest.fixture
def database() -> Iterator[str]:
    name = f"opsbot_beat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def project(tmp_path: Path, database: str) -> Path:
    package = tmp_path / "djproj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(SETTINGS.format(name=database))
    (package / "celery.py").write_text(CELERY)
    subprocess.run([sys.executable, "-c", ROWS], cwd=tmp_path, check=True, timeout=120,
                   env={"DJANGO_SETTINGS_MODULE": "djproj.settings", "PYTHONPATH": str(tmp_path),
                        "PATH": "/usr/bin:/bin"})
    return tmp_path


@pytest.fixture
def beat(rabbit: RabbitNode, project: Path) -> Iterator[BeatProcess]:
    process = BeatProcess(rabbit.amqp_url, app="djproj", path=(str(project),))
    try:
        yield process
    finally:
        process.cleanup()


def say(slack: SlackStandIn, text: str) -> str:
    payload = slack.request("slash_command", text, timeout=3.0)
    return json.dumps(payload.get("blocks", [])) + str(payload.get("text", ""))


def test_database_schedule_is_read_and_watched(slack: SlackStandIn, socket_bot: Callable[..., BotProcess],
                                               project: Path, beat: BeatProcess) -> None:
    socket_bot(OPSBOT_CELERY_APP="djproj", PYTHONPATH=f"{project}:{REPO_ROOT}", OPSBOT_BEAT_GRACE="2s",
               OPSBOT_POLL_SECONDS="1", OPSBOT_ALERT_CHANNEL=CHANNEL)
    beat.start()
    assert wait_until(lambda: "db-add" in say(slack, "beat") and "last run today" in say(slack, "beat"), 40), \
        say(slack, "beat")
    listing = say(slack, "beat")
    assert "django-celery-beat database" in listing and "every 5 seconds" in listing
    assert "db-nightly" in listing and "every day at 02:00" in listing and "db-disabled" not in listing

    beat.kill()
    assert wait_until(lambda: any("Periodic task db-add did not run at" in (m.text or "")
                                  for m in slack.messages if m.channel == CHANNEL), 60), say(slack, "beat")
    time.sleep(2)
    top = [m for m in slack.messages if m.channel == CHANNEL and not m.thread_ts]
    assert len(top) == 1 and "every 5 seconds" in (top[0].text or "")  # the nightly entry is not late
    assert "Celery beat is down" not in (top[0].text or "")

    beat.start()
    assert wait_until(lambda: (slack.message(CHANNEL, top[0].ts).text or "").startswith("Resolved"), 60)
    assert not slack.rejections
