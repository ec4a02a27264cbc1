"""Keep set-password tokens out of log lines, as portal.ack.logfilter does for lab links: the
request log prints the path, and the path of /set-password/<token> is the key to an account."""
from __future__ import annotations

import logging
import re

PATH = re.compile(r"(/set-password/)[A-Za-z0-9_\-%.~]{6,}")
LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error", "flask_limiter")


def redact(text: str) -> str:
    return PATH.sub(r"\1[redacted]", text)


class RedactPasswordTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's problem, not ours
            return True
        if "/set-password/" in message:
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def install(app) -> None:
    for name in (*LOGGERS, app.logger.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactPasswordTokens) for f in logger.filters):
            logger.addFilter(RedactPasswordTokens())
