"""Keeping secrets out of everything a person reads: Slack messages, the console and the logs.

Two kinds of secret: credentials written inside URLs (`amqp://user:password@host`), which we can
recognise anywhere by their shape, and configured tokens, which we know by value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"

# scheme://user:password@  or  scheme://token@  — the userinfo part of any URL in free text. The
# scheme is bounded (real ones are short): unbounded, a long word would be rescanned from every
# position (quadratic). A URL glued to the end of another word is still found. Quotes are allowed in
# the userinfo: a password may hold them, and masking a little too much is the safe mistake.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://)(?P<userinfo>[^/@\s]+)@")
# Slack tokens have a recognisable prefix; mask them even when not configured (pasted in args).
_SLACK_TOKEN = re.compile(r"\bxox[abposr]-[A-Za-z0-9-]+|\bxapp-[A-Za-z0-9-]+")


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _password = match.group("userinfo").partition(":")
    kept = f"{user}:{MASK}" if sep else MASK
    return f"{match.group('scheme')}{kept}@"


def redact_url(text: str) -> str:
    """Mask the password (or lone token) in the userinfo of every URL in `text`."""
    return _URL_USERINFO.sub(_mask_userinfo, text)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask URL credentials, Slack-shaped tokens and every known secret value in `text`."""
    text = redact_url(text)
    text = _SLACK_TOKEN.sub(MASK, text)
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def defang(text: str) -> str:
    """User input echoed back can never be markup: Slack reads <@U1>, <!channel> and <url|x> as such."""
    return text.replace("<", "\u2039").replace(">", "\u203a")


class RedactingFilter(logging.Filter):
    """Rewrites each log record so that no secret reaches any handler.

    Installed on handlers (not loggers) so records from every library — kombu logs broker URLs,
    slack_sdk logs request bodies at DEBUG — pass through it.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install_log_redaction(secrets: Iterable[str], level: str = "INFO") -> None:
    """Configure root logging to stderr with every secret masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if level != "DEBUG":
        # The scheduler logs every run of every job, kombu every (re)connection, alembic its plugins and
        # migration context at every start: noise at INFO.
        for chatty in ("apscheduler", "kombu", "celery", "alembic", "slack_bolt.App", "slack_sdk.socket_mode"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
