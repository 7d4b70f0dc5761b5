"""Configuration from the environment and an optional `.env`, validated once at start-up.

Every setting has the environment variable name users set; a bad value stops the bot with a message
that names that variable (see `load_settings`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.durations import parse_duration
from bot.redact import redact_url

DEFAULT_DB_PATH = Path.home() / ".opsbot" / "opsbot.sqlite3"


MAX_PAUSE_REMIND = 30 * 86400


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the environment variable."""


CommaList = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    """All settings, by the environment variable that sets them."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    slack_bot_token: SecretStr | None = Field(None, validation_alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(None, validation_alias="SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, validation_alias="SLACK_SIGNING_SECRET")
    slack_api_url: str = Field("https://slack.com/api/", validation_alias="SLACK_API_URL")
    http_port: int = Field(3000, ge=1, le=65535, validation_alias="OPSBOT_HTTP_PORT")

    broker_url: str = Field(
        "amqp://guest:guest@localhost:5672//", validation_alias="CELERY_BROKER_URL"
    )
    rabbitmq_management_url: str = Field(
        "http://localhost:15672", validation_alias="RABBITMQ_MANAGEMENT_URL"
    )
    flower_url: str = Field("http://localhost:5555", validation_alias="FLOWER_URL")
    queues: CommaList = Field(("celery",), validation_alias="OPSBOT_QUEUES")
    probe_timeout: float = Field(2.0, gt=0, le=2.5, validation_alias="OPSBOT_PROBE_TIMEOUT")

    alert_channel: str | None = Field(None, validation_alias="OPSBOT_ALERT_CHANNEL")
    admins: CommaList = Field((), validation_alias="OPSBOT_ADMINS")
    admin_group: str | None = Field(None, validation_alias="OPSBOT_ADMIN_GROUP")
    viewers: CommaList = Field((), validation_alias="OPSBOT_VIEWERS")
    viewer_group: str | None = Field(None, validation_alias="OPSBOT_VIEWER_GROUP")
    workspace_admins: bool = Field(False, validation_alias="OPSBOT_WORKSPACE_ADMINS")
    audit_channel: str | None = Field(None, validation_alias="OPSBOT_AUDIT_CHANNEL")
    kill_after: float = Field(10.0, ge=0, le=3600, validation_alias="OPSBOT_KILL_AFTER")
    poll_seconds: float = Field(10.0, ge=1, validation_alias="OPSBOT_POLL_SECONDS")
    alert_after: int = Field(2, ge=1, le=100, validation_alias="OPSBOT_ALERT_AFTER")
    resolve_after: int = Field(2, ge=1, le=100, validation_alias="OPSBOT_RESOLVE_AFTER")
    remind_minutes: float = Field(60.0, gt=0, validation_alias="OPSBOT_REMIND_MINUTES")
    backlog_threshold: int = Field(100, ge=0, validation_alias="OPSBOT_BACKLOG_THRESHOLD")
    backlog_minutes: float = Field(10.0, ge=0, validation_alias="OPSBOT_BACKLOG_MINUTES")
    db_url: str = Field(f"sqlite:///{DEFAULT_DB_PATH}", validation_alias="OPSBOT_DB_URL")
    log_level: str = Field("INFO", validation_alias="OPSBOT_LOG_LEVEL")
    history_days: float = Field(7.0, gt=0, le=3650, validation_alias="OPSBOT_HISTORY_DAYS")
    history_max_rows: int = Field(100_000, ge=10, validation_alias="OPSBOT_HISTORY_MAX_ROWS")
    digest_at: str | None = Field(None, validation_alias="OPSBOT_DIGEST_AT")
    replica_id: str | None = Field(None, max_length=100, validation_alias="OPSBOT_REPLICA_ID")
    # Monitoring: /metrics, /healthz and /readyz (off when the port is unset), links, log format.
    metrics_port: int | None = Field(None, ge=1, le=65535, validation_alias="OPSBOT_METRICS_PORT")
    metrics_host: str = Field("0.0.0.0", min_length=1, validation_alias="OPSBOT_METRICS_HOST")
    flower_public_url: str | None = Field(None, validation_alias="FLOWER_PUBLIC_URL")
    runbook_url: str | None = Field(None, validation_alias="OPSBOT_RUNBOOK_URL")
    log_format: str = Field("text", validation_alias="OPSBOT_LOG_FORMAT")

    # --- issue 13: task-level alerts and retry (durations like 30s, 10m, 1h, 1d) ---
    failure_threshold: int = Field(3, ge=1, le=100_000, validation_alias="OPSBOT_FAILURE_THRESHOLD")
    failure_window: str = Field("10m", validation_alias="OPSBOT_FAILURE_WINDOW")
    failure_ratio: float = Field(0.5, gt=0, le=1, validation_alias="OPSBOT_FAILURE_RATIO")
    failure_rules: str = Field("", validation_alias="OPSBOT_FAILURE_RULES")
    failure_ignore: CommaList = Field((), validation_alias="OPSBOT_FAILURE_IGNORE")
    task_max_runtime: str = Field("30m", validation_alias="OPSBOT_TASK_MAX_RUNTIME")
    runtime_rules: str = Field("", validation_alias="OPSBOT_RUNTIME_RULES")
    queue_max_wait: str = Field("5m", validation_alias="OPSBOT_QUEUE_MAX_WAIT")
    result_backend: str | None = Field(None, validation_alias="CELERY_RESULT_BACKEND")

    @field_validator("failure_window", "task_max_runtime", "queue_max_wait")
    @classmethod
    def _duration(cls, value: str) -> str:

        if parse_duration(value) <= 0:
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("failure_rules")
    @classmethod
    def _failure_rules(cls, value: str) -> str:
        from bot.health.rules import parse_failure_rules

        parse_failure_rules(value)
        return value

    @field_validator("runtime_rules")
    @classmethod
    def _runtime_rules(cls, value: str) -> str:
        from bot.health.rules import parse_runtime_rules

        parse_runtime_rules(value)
        return value

    @field_validator("failure_ignore", mode="before")
    @classmethod
    def _split_globs(cls, value: object) -> object:
        return cls._split_commas(value)

    @field_validator("result_backend")
    @classmethod
    def _result_backend(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss"):
            raise ValueError("opsbot reads results from a Redis result backend (redis:// or rediss://)")
        return value

    # issue 19: charts. How long the one-minute time series are kept.
    series_days: float = Field(7.0, gt=0, le=366, validation_alias="OPSBOT_SERIES_DAYS")

    # --- issue 15: worker control ---
    # A queue an admin paused is reminded in the alert channel once paused this long (30m, 1h, 1d).
    pause_remind: str = Field("1h", validation_alias="OPSBOT_PAUSE_REMIND")

    @field_validator("pause_remind")
    @classmethod
    def _pause_remind(cls, value: str) -> str:
        if not 0 < parse_duration(value) <= MAX_PAUSE_REMIND:
            raise ValueError("must be a duration like 30m, 1h or 1d (at most 30 days)")
        return value.strip().lower()

    @property
    def pause_remind_seconds(self) -> float:
        return float(parse_duration(self.pause_remind))

    @field_validator("slack_bot_token", "slack_app_token", "slack_signing_secret")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # Set but empty is a mistake, never "off": an empty signing secret would turn request
        # verification off in HTTP mode.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty; give its value, or remove the variable")
        return value

    @field_validator("queues", "admins", "viewers", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("admins", "viewers")
    @classmethod
    def _slack_user_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for user_id in value:
            if not re.fullmatch(r"[UW][A-Z0-9_]{1,30}", user_id):
                raise ValueError(f"{user_id[:20]!r} is not a Slack user ID (like U012AB3CD)")
        return value

    @field_validator("admin_group", "viewer_group")
    @classmethod
    def _slack_group_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"S[A-Z0-9_]{1,30}", value):
            raise ValueError("must be a Slack user group ID (like S0614TZR7)")
        return value

    @field_validator("queues")
    @classmethod
    def _at_least_one_queue(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one queue")
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in BROKER_KINDS:
            raise ValueError(f"scheme {scheme!r} is not supported; use one of {', '.join(BROKER_KINDS)}")
        return value

    @field_validator("rabbitmq_management_url", "flower_url", "slack_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("flower_public_url", "runbook_url")
    @classmethod
    def _public_link(cls, value: str | None) -> str | None:
        # Shown to people as a link: a bare http(s) URL, never one carrying credentials.
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: it is shown to people as a link")
        if re.search(r"[\s<>|]", value):
            raise ValueError("must not contain spaces or the characters < > |")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.lower() not in ("text", "json"):
            raise ValueError("must be text or json")
        return value.lower()

    @field_validator("digest_at")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError("must be a time of day like 09:00")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @property
    def broker_kind(self) -> str:
        return BROKER_KINDS[urlsplit(self.broker_url).scheme]

    @property
    def slack_configured(self) -> bool:
        return self.slack_bot_token is not None

    def management_credentials(self) -> tuple[str, str]:
        """Credentials for the management API: its own userinfo, else the broker's, else guest."""
        for url in (self.rabbitmq_management_url, self.broker_url):
            user, password = url_credentials(url)
            if user:
                return user, password or ""
        return "guest", "guest"

    def secrets(self) -> list[str]:
        """Every secret value this configuration holds, for the redaction filter."""
        values = [s.get_secret_value() for s in (self.slack_bot_token, self.slack_app_token,
                                                 self.slack_signing_secret) if s]
        for url in (self.broker_url, self.rabbitmq_management_url, self.flower_url, self.db_url,
                    self.result_backend or ""):
            _, password = url_credentials(url)
            if password:
                values.append(password)
        return values

    # --- issue 14: the Celery app, task events, periodic-task health ---
    celery_app: str | None = Field(None, max_length=200, validation_alias="OPSBOT_CELERY_APP")
    enable_events: bool = Field(True, validation_alias="OPSBOT_ENABLE_EVENTS")
    beat_grace: float | None = Field(None, gt=0, validation_alias="OPSBOT_BEAT_GRACE")
    # --- issue 20: /tasks from live event state; uncertain workers asked in the background at most this often
    reconcile_seconds: float = Field(30.0, ge=1, le=3600, validation_alias="OPSBOT_RECONCILE_SECONDS")

    @field_validator("celery_app")
    @classmethod
    def _app_spec(cls, value: str | None) -> str | None:
        # What `celery -A` takes: a module, or module:attribute.
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?", value):
            raise ValueError("must name the Celery app like `celery -A` does: proj, or proj.celery:app")
        return value

    @field_validator("beat_grace", mode="before")
    @classmethod
    def _grace_duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value


BROKER_KINDS = {"amqp": "rabbitmq", "pyamqp": "rabbitmq", "amqps": "rabbitmq",
                "redis": "redis", "rediss": "redis"}

ENV_NAMES = {
    name: str(field.validation_alias)
    for name, field in Settings.model_fields.items()
}


def url_credentials(url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return user, password


def strip_credentials(url: str) -> str:
    """The URL without its userinfo, for making requests with auth passed separately."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def http_endpoint(url: str) -> tuple[str, tuple[str, str] | None]:
    """An HTTP service's base URL without credentials or trailing slash, and the basic auth they gave."""
    user, password = url_credentials(url)
    return strip_credentials(url).rstrip("/"), ((user, password or "") if user else None)


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; any problem becomes one ConfigError naming the variables."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            env_name = ENV_NAMES.get(field, field)
            # The input may be a URL with a password in it: never echo it back.
            problems.append(f"{env_name}: {redact_url(str(error['msg']))}")
        raise ConfigError("Invalid configuration:\n  " + "\n  ".join(problems)) from None
