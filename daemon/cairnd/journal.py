"""The daemon's own diagnostics: one line per event on stderr, each prefixed with its
syslog priority (`<6>`), which journald reads as the line's level (sd-daemon(3))."""

from __future__ import annotations

import logging
import sys

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

log = logging.getLogger("cairnd")


class PriorityFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        fields = []
        for key in ("request", "session"):
            value = getattr(record, key, None)
            if value:
                fields.append(f"{key}={value}")
        message = record.getMessage()
        if fields:
            message = f"{message} [{' '.join(fields)}]"
        if record.exc_info:
            # One event, one line: journald keeps it together and grep finds it.
            message += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return f"<{priority}>{message}"


def setup(level: int = logging.INFO, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(PriorityFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def event(level: int, message: str, *, request: str | None = None, session: str | None = None,
          exc_info: bool = False) -> None:
    log.log(level, message, extra={"request": request, "session": session}, exc_info=exc_info)
