"""Short, redacted one-line summaries of a task's arguments.

Arguments are user data: they may hold passwords, tokens or URLs with credentials. We show enough
to recognise a task ("export(report_id=42)") and nothing that should stay private.
"""

from __future__ import annotations

import ast
from typing import Any

from bot.markup import cut
from bot.redact import MASK, SECRET_KEY, redact_details

MAX_SUMMARY = 80
MAX_VALUE = 24
# Celery cuts each repr at about 1,024 characters; anything longer is not from Celery, and only the
# first MAX_SUMMARY characters are ever shown.
MAX_REPR = 4_096


def _short(value: Any) -> str:
    text = redact_details(repr(value))
    return cut(text, MAX_VALUE)


def _scrub(value: Any) -> Any:
    """Mask values of secret-looking keys at any depth of dicts and lists."""
    if isinstance(value, dict):
        return {k: MASK if SECRET_KEY.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def summarize_call(args: Any, kwargs: Any) -> str:
    """`(1, 'a', user=…, password=***)`, cut to a sane length."""
    if isinstance(args, str):  # some Celery versions send reprs instead of values
        args = [args] if args not in ("()", "[]", "") else []
    if isinstance(kwargs, str):
        kwargs = {} if kwargs in ("{}", "") else {"kwargs": kwargs}
    parts = [_short(_scrub(a)) for a in (args or [])]
    for key, value in (kwargs or {}).items():
        shown = MASK if SECRET_KEY.search(str(key)) else _short(_scrub(value))
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    return f"({cut(text, MAX_SUMMARY)})"


def _literal(text: Any) -> Any:
    if isinstance(text, str) and len(text) > MAX_REPR:
        return _UNPARSED  # not from Celery; not worth parsing
    try:
        return ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return _UNPARSED


_UNPARSED = object()


def summarize_repr(args: Any, kwargs: Any) -> str:
    """Like `summarize_call`, for the reprs that Celery's events carry ("(1, 'a')", "{'k': 1}")."""
    parsed_args, parsed_kwargs = _literal(args), _literal(kwargs)
    if isinstance(parsed_args, (list, tuple)) and isinstance(parsed_kwargs, dict | None):
        return summarize_call(list(parsed_args), parsed_kwargs or {})
    # Not a literal (a datetime, a UUID, a cut-short repr): mask 'password': 'value' and the like by shape.
    text = redact_details(f"{args or ''} {kwargs or ''}".strip(), MAX_REPR)
    return f"({cut(text, MAX_SUMMARY)})"
