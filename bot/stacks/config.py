"""The stacks file (`OPSBOT_STACKS_FILE=stacks.toml`): one table per stack, validated at start.

    [prod]
    app = "proj.celery:app"

    [staging]
    broker_url = "amqp://opsbot:secret@mq.staging:5672/staging"
    management_url = "http://mq.staging:15672"
    flower_url = "http://flower:secret@flower.staging:5555"
    queues = ["celery", "reports"]

Each stack becomes a whole `Settings`: its own keys (from the file, else from its Celery app), every other
setting shared from the environment. A problem names the file, the stack and the key, never a secret.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bot.config import ConfigError, Settings
from bot.redact import redact_url

ENV = "OPSBOT_STACKS_FILE"
# Key in the file -> the setting it sets for that stack.
KEYS = {"app": "celery_app", "broker_url": "broker_url", "management_url": "rabbitmq_management_url",
        "flower_url": "flower_url", "queues": "queues", "result_backend": "result_backend"}
NAME = re.compile(r"[a-z][a-z0-9_-]{0,29}")
MAX_STACKS = 20  # one line each in /tasks; far more than two environments of a few services


@dataclass(frozen=True)
class StackConfig:
    """One stack: its name as people type it (`/tasks prod`), and its settings."""

    name: str
    settings: Settings


def problem(path: Path, where: str, message: str) -> ConfigError:
    return ConfigError(f"{ENV}: {path}: {where}{message}")


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise problem(path, "", f"cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib quotes no value in its messages, only where: "Invalid value (at line 3, column 14)".
        raise problem(path, "", f"not valid TOML ({exc})") from None


def reserved_words() -> frozenset[str]:
    """A stack named like a subcommand would make `/tasks active` ambiguous."""
    from bot.commands.grammar import ALIASES
    from bot.slack.buttons import SECTIONS

    return frozenset((*ALIASES, *SECTIONS))


def check_name(path: Path, name: str) -> None:
    if not NAME.fullmatch(name):
        raise problem(path, f"[{name[:40]}]: ", "a stack's name is one simple word: lowercase letters, digits, "
                                                "- and _, starting with a letter, at most 30 characters")
    if name in reserved_words():
        raise problem(path, f"[{name}]: ", f"'{name}' is a /tasks subcommand; name the stack otherwise")


def stack_values(path: Path, name: str, table: object) -> dict[str, Any]:
    """The table's keys as settings, with the app's facts under what the file says."""
    if not isinstance(table, dict):
        raise problem(path, f"{name}: ", "must be a table ([" + name + "]) of keys: " + ", ".join(KEYS))
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise problem(path, f"[{name}]: ", f"unknown key {unknown[0]!r} (known keys: {', '.join(KEYS)})")
    for key, value in table.items():
        if key == "queues":
            if not isinstance(value, list) or not value or not all(isinstance(q, str) and q for q in value):
                raise problem(path, f"[{name}] queues: ", 'must be a list of queue names, like ["celery"]')
        elif not isinstance(value, str):
            raise problem(path, f"[{name}] {key}: ", "must be a string")
    if "app" not in table and "broker_url" not in table:
        raise problem(path, f"[{name}]: ", "give its Celery app (app = \"proj.celery:app\") or its broker_url")
    values = {KEYS[key]: tuple(value) if key == "queues" else value for key, value in table.items()}
    return {**from_app(path, name, values.get("celery_app")), **values}


def from_app(path: Path, name: str, spec: str | None) -> dict[str, Any]:
    if spec is None:
        return {}
    from bot.celeryapp import app_facts

    try:
        facts = app_facts(spec)
    except ConfigError as exc:
        raise problem(path, f"[{name}] app: ", str(exc).removeprefix("OPSBOT_CELERY_APP: ")) from None
    backend = facts.result_backend if (facts.result_backend or "").startswith(("redis://", "rediss://")) else None
    found = {"broker_url": facts.broker_url, "result_backend": backend, "queues": facts.queues}
    return {key: value for key, value in found.items() if value}


def stack_settings(base: Settings, path: Path, name: str, values: dict[str, Any]) -> Settings:
    """The environment's settings with this stack's own: validated as the environment's are."""
    fields = {**base.model_dump(), **values}
    try:
        return Settings.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        key = next((k for k, f in KEYS.items() if f == field), field)
        # The message may quote the value, a URL with a password in it: never echo it back.
        raise problem(path, f"[{name}] {key}: ", redact_url(str(error["msg"]))) from None


def load_stacks(base: Settings) -> tuple[StackConfig, ...]:
    """The stacks of `OPSBOT_STACKS_FILE`; without it, the one stack the environment describes (no name)."""
    if base.stacks_file is None:
        return (StackConfig("", base),)
    path = Path(base.stacks_file)
    if base.celery_app:
        raise ConfigError(f"{ENV} and OPSBOT_CELERY_APP (or -A) are both set: give each stack's app in {path}")
    data = read_file(path)
    if not data:
        raise problem(path, "", "names no stack; add one table per stack, like [prod]")
    if len(data) > MAX_STACKS:
        raise problem(path, "", f"names {len(data)} stacks; at most {MAX_STACKS}")
    stacks = []
    for name, table in data.items():
        check_name(path, name)
        settings = stack_settings(base, path, name, stack_values(path, name, table)).for_stack(name)
        stacks.append(StackConfig(name, settings))
    return tuple(stacks)


def all_secrets(stacks: tuple[StackConfig, ...]) -> list[str]:
    """Every stack's secrets, for the redaction filter."""
    return sorted({secret for stack in stacks for secret in stack.settings.secrets()})
