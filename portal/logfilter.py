"""Keep secret tokens in URL paths out of every log line (docs/reliability.md M3).

werkzeug's request log, gunicorn's access log and Flask's "Exception on <path>" all print the
path, and some paths are secrets: a lab's page (`/lab/<token>`) and a set-password link
(`/set-password/<token>`). A blueprint that serves such paths registers its prefix with
`install(app, prefix)`; one filter per logger rewrites `<prefix><token>` to `<prefix>[redacted]`
in the formatted message before any handler sees it.
"""
from __future__ import annotations

import logging
import re

LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error", "flask_limiter")
TOKEN = r"[A-Za-z0-9_\-%.~]{6,}"
_prefixes: set[str] = set()


def redact(text: str) -> str:
    for prefix in _prefixes:
        if prefix in text:
            text = re.sub(f"({re.escape(prefix)}){TOKEN}", r"\1[redacted]", text)
    return text


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install(app, prefix: str) -> None:
    """Redact `<prefix><token>` on the loggers that print request paths (one filter per logger)."""
    _prefixes.add(prefix)
    for name in (*LOGGERS, app.logger.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
