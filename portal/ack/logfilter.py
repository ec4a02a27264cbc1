"""Keep lab-link tokens out of every log line (RELIABILITY.md M3).

werkzeug's request log, gunicorn's access log and Flask's "Exception on <path>" all print the
path, and the path of a lab's page is its secret. The filter rewrites `/lab/<token>` to
`/lab/[redacted]` in the formatted message before any handler sees it.
"""
from __future__ import annotations

import logging
import re

LAB_PATH = re.compile(r"(/lab/)[A-Za-z0-9_\-%.~]{6,}")
REDACTED = r"\1[redacted]"
LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error", "flask_limiter")


def redact(text: str) -> str:
    return LAB_PATH.sub(REDACTED, text)


class RedactLabTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's problem, not ours
            return True
        if "/lab/" in message:
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def install(app) -> None:
    """Attach the filter to the loggers that print request paths (once per logger)."""
    for name in (*LOGGERS, app.logger.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactLabTokens) for f in logger.filters):
            logger.addFilter(RedactLabTokens())
