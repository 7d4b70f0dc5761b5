"""Misconfiguration stops the bot at start-up with a message naming the variable, and leaks nothing."""

from __future__ import annotations

import logging
import subprocess

import pytest

from bot.config import ConfigError, load_settings
from bot.redact import RedactingFilter, redact
from tests.support.bot import OPSBOT, clean_env


def opsbot(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPSBOT, *args], env=clean_env(env), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("variable, value", [
    ("OPSBOT_PROBE_TIMEOUT", "soon"),
    ("OPSBOT_PROBE_TIMEOUT", "10"),  # past Slack's 3-second ack
    ("CELERY_BROKER_URL", "kafka://user:hunter2secret@host:9092"),
    ("FLOWER_URL", "localhost:5555"),
    ("OPSBOT_QUEUES", " , "),
    ("OPSBOT_HTTP_PORT", "99999"),
])
def test_bad_value_names_the_variable_and_hides_secrets(variable: str, value: str) -> None:
    result = opsbot(["status"], {variable: value})
    assert result.returncode == 3
    assert variable in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_run_without_slack_tokens_names_them() -> None:
    result = opsbot(["run"], {})
    assert result.returncode == 3 and "SLACK_BOT_TOKEN" in result.stderr
    result = opsbot(["run"], {"SLACK_BOT_TOKEN": "xoxb-1-2"})
    assert result.returncode == 3 and "SLACK_APP_TOKEN" in result.stderr and "SLACK_SIGNING_SECRET" in result.stderr
    result = opsbot(["run"], {"SLACK_BOT_TOKEN": "xoxb-1-2", "SLACK_APP_TOKEN": "xoxb-wrong-kind"})
    assert result.returncode == 3 and "xapp-" in result.stderr
    assert "xoxb-wrong-kind" not in result.stderr


def test_management_credentials_come_from_its_url_else_the_broker() -> None:
    settings = load_settings(CELERY_BROKER_URL="amqp://ops:brokerpw@h:5672/prod")
    assert settings.management_credentials() == ("ops", "brokerpw")
    settings = load_settings(CELERY_BROKER_URL="amqp://ops:brokerpw@h//",
                             RABBITMQ_MANAGEMENT_URL="http://admin:mgmtpw@h:15672")
    assert settings.management_credentials() == ("admin", "mgmtpw")
    assert settings.broker_kind == "rabbitmq"
    assert load_settings(CELERY_BROKER_URL="redis://:pw@h:6379/1").broker_kind == "redis"


def test_config_error_is_one_readable_message() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(OPSBOT_QUEUES="", OPSBOT_POLL_SECONDS="0")
    assert "OPSBOT_QUEUES" in str(raised.value) and "OPSBOT_POLL_SECONDS" in str(raised.value)


def test_redaction_masks_url_passwords_tokens_and_known_secrets() -> None:
    text = "amqp://guest:s3cret@h:5672// redis://:pw2@h/0 xoxb-1-abc xapp-1-A-b signing=topsecretvalue"
    shown = redact(text, ["topsecretvalue"])
    for secret in ("s3cret", "pw2", "xoxb-1-abc", "xapp-1-A-b", "topsecretvalue"):
        assert secret not in shown
    assert "amqp://guest:***@h:5672//" in shown


def test_log_records_are_redacted_including_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("kombu", logging.ERROR, __file__, 1, "connecting to %s", ("amqp://u:pw9@h//",), None)
    try:
        raise RuntimeError("failed with token xoxb-9-9")
    except RuntimeError:
        import sys
        record.exc_info = sys.exc_info()
    RedactingFilter(["pw9"]).filter(record)
    assert "pw9" not in record.getMessage() and "xoxb-9-9" not in (record.exc_text or "")


@pytest.mark.parametrize("variable, env", [
    # The reproduced hole: set but empty, no app token, so HTTP mode with verification off.
    ("SLACK_SIGNING_SECRET", {"SLACK_BOT_TOKEN": "xoxb-1-2", "SLACK_SIGNING_SECRET": ""}),
    ("SLACK_SIGNING_SECRET", {"SLACK_BOT_TOKEN": "xoxb-1-2", "SLACK_SIGNING_SECRET": "  "}),
    ("SLACK_BOT_TOKEN", {"SLACK_BOT_TOKEN": "", "SLACK_SIGNING_SECRET": "s3cret-signing"}),
    ("SLACK_APP_TOKEN", {"SLACK_BOT_TOKEN": "xoxb-1-2", "SLACK_APP_TOKEN": "",
                         "SLACK_SIGNING_SECRET": "s3cret-signing"}),
])
def test_an_empty_secret_is_a_configuration_error(variable: str, env: dict[str, str]) -> None:
    result = opsbot(["run"], env)
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"{variable}: Value error, is set but empty" in result.stderr
    assert "s3cret-signing" not in result.stderr and "Traceback" not in result.stderr
    # Whatever the mode: an empty secret is a mistake to fix, not a feature switched off.
    assert opsbot(["status"], env).returncode == 3


def test_viewers_must_be_slack_ids() -> None:
    settings = load_settings(OPSBOT_VIEWERS="U1, W2", OPSBOT_VIEWER_GROUP="S0614TZR7")
    assert settings.viewers == ("U1", "W2") and settings.viewer_group == "S0614TZR7"
    with pytest.raises(ConfigError, match="OPSBOT_VIEWERS"):
        load_settings(OPSBOT_VIEWERS="alice")
    with pytest.raises(ConfigError, match="OPSBOT_VIEWER_GROUP"):
        load_settings(OPSBOT_VIEWER_GROUP="U123")
