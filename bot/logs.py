"""Log lines as JSON objects (OPSBOT_LOG_FORMAT=json), one a line, for log collectors.

The redaction filter sits on the handler and rewrites each record before any formatter sees it,
so a JSON line carries exactly the masked message a text line would.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_text:  # set, and redacted, by the filter
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def use_json_lines() -> None:
    """Switch every handler on the root logger to JSON lines."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())
