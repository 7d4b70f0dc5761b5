"""Keeping secrets out of everything a person reads: Slack messages, the console and the logs.

Three kinds of secret: credentials written inside URLs (`amqp://user:password@host`) and tokens with a
known prefix (`xoxb-`, `ghp_`, `AKIA…`, `Bearer …`), which we recognise anywhere by their shape;
values of secret-looking keys (`'api_key': '…'`, `password=…`) in data from the task stack; and
configured tokens, which we know by value.

Every pattern here runs in time linear in its input: they scan text an attacker can shape (task
arguments, results, tracebacks) while holding the GIL. No pattern has a quantifier that can be retried
from many positions over the same characters: runs are possessive (`++`), and where a match may start
is pinned by a one-character look-behind.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from types import TracebackType

MASK = "***"
MAX_SCAN = 16_384  # characters of task data scanned and kept; more is cut (at whitespace) first

# ://user:password@  or  ://token@ after a scheme: the userinfo part of any URL in free text. A match
# starts only at "://" (one look-behind character says a scheme precedes), never at every letter of
# a long word. A URL glued to the end of another word is still found. Quotes are allowed in the
# userinfo: a password may hold them, and masking a little too much is the safe mistake.
_URL_USERINFO = re.compile(r"(?<=[a-zA-Z0-9+.\-])(?P<scheme>://)(?P<userinfo>[^/@\s]++)@")
# Tokens with a recognisable prefix: masked even when not configured (pasted in arguments, results).
_KNOWN_TOKEN = re.compile(
    r"\bxox[abposre]-[A-Za-z0-9-]++"  # Slack bot, user and other tokens
    r"|\bxapp-[A-Za-z0-9-]++"  # Slack app-level tokens
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}+|\bgithub_pat_\w{20,}+"  # GitHub
    r"|\bsk-[A-Za-z0-9_-]{16,}+|\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,}+"  # OpenAI/Anthropic style, Stripe
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")  # AWS access key ids
# An HTTP Authorization credential: the scheme stays readable, the credential does not.
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic)\s++[A-Za-z0-9._~+/-]++=*+", re.IGNORECASE)
# Words that make a key secret: its value is masked wherever the key appears.
SECRET_WORDS = "pass|secret|token|key|auth|credential|cookie|session|signature"
SECRET_KEY = re.compile(SECRET_WORDS, re.IGNORECASE)
# "KeyError: 'x'", "AuthError: refused": an exception's class and message, not a key and its value.
_NOT_AN_EXCEPTION = "(?<!Error)(?<!Exception)(?<!Warning)"
# 'password': 'value'  or  password=value  or  "api_key": "value": a secret-looking key (whole word,
# optionally quoted), ':' or '=', and its value: a quoted string (to its closing quote, or to the end
# when the text was cut inside it) or a bare run up to the next separator. `(?<!\w)` lets a key start
# only where a word starts, and the look-ahead scans that one word once.
_SECRET_PAIR = re.compile(
    rf"""(?<!\w)(?P<key>['"]?(?=\w*?(?:{SECRET_WORDS}))\w++{_NOT_AN_EXCEPTION}['"]?\s*+[:=]\s*+)"""
    r"""(?:'[^']*+(?:'|\Z)|"[^"]*+(?:"|\Z)|[^,)}\s]++)""",
    re.IGNORECASE)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _password = match.group("userinfo").partition(":")
    kept = f"{user}:{MASK}" if sep else MASK
    return f"{match.group('scheme')}{kept}@"


def redact_url(text: str) -> str:
    """Mask the password (or lone token) in the userinfo of every URL in `text`."""
    return _URL_USERINFO.sub(_mask_userinfo, text)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask URL credentials, tokens of known shapes and every known secret value in `text`."""
    text = redact_url(text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group('scheme')} {MASK}", text)
    text = _KNOWN_TOKEN.sub(MASK, text)
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_secret_pairs(text: str) -> str:
    """Mask the value of every secret-looking key: `{'api_key': ***}`, `password=***`."""
    return _SECRET_PAIR.sub(lambda m: m.group("key") + MASK, text)


def clip(text: str, limit: int = MAX_SCAN, from_end: bool = False) -> str:
    """At most `limit` characters of `text` (its start, or its end), cut at whitespace: the token
    torn by the cut is dropped, so no half of a URL or token escapes its pattern."""
    if len(text) <= limit:
        return text
    if from_end:
        part = text[-limit:]
        cut = min((i for i in (part.find(" "), part.find("\n")) if i >= 0), default=len(part))
        return part[cut + 1:]
    part = text[:limit]
    return part[:max(part.rfind(" "), part.rfind("\n"), 0)]


def redact_details(text: str, limit: int = MAX_SCAN, from_end: bool = False) -> str:
    """Data from the task stack (arguments, results, exceptions, tracebacks), clipped and masked:
    URL credentials, known tokens and the values of secret-looking keys."""
    return mask_secret_pairs(redact(clip(text, limit, from_end)))


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
        if record.exc_text:  # a traceback quotes code and exception text: mask key=value pairs too
            record.exc_text = mask_secret_pairs(redact(record.exc_text, self.secrets))
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def _log_uncaught(where: str, exc_type: type[BaseException], exc: BaseException | None,
                  tb: TracebackType | None) -> None:
    logging.getLogger("opsbot").critical("uncaught exception in %s", where, exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):  # as the default hook: a thread may end itself this way
        return
    where = f"thread {args.thread.name}" if args.thread is not None else "a thread"
    _log_uncaught(where, args.exc_type, args.exc_value, args.exc_traceback)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _log_uncaught("the main thread", exc_type, exc, tb)


def install_exception_hooks() -> None:
    """Uncaught exceptions, in any thread, go through the logging handlers (and so their redaction)
    instead of Python's default hooks, which print the raw traceback to stderr."""
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


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
    install_exception_hooks()
    if level != "DEBUG":
        # The scheduler logs every run of every job, kombu every (re)connection, alembic its plugins and
        # migration context at every start: noise at INFO.
        for chatty in ("apscheduler", "kombu", "celery", "alembic", "slack_bolt.App", "slack_sdk.socket_mode"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
