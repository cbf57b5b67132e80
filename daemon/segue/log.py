"""Logging with structlog: a console renderer on a terminal, JSON lines otherwise, or
journald's native protocol (upper-case field names) when configured.

Nothing here logs a token, key or password; request lines carry a hash of the user id.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
_FIELD_CHARS = re.compile(r"[^A-Z0-9_]")


def journal_field(name: str) -> str:
    """A journal field name: upper case, letters, digits and underscores, not leading "_"."""
    field = _FIELD_CHARS.sub("_", name.upper()).lstrip("_")
    return field or "FIELD"


def send_to_journal(_logger: object, method: str, event: MutableMapping[str, Any]) -> Any:
    """The last processor in journald mode: one journal entry per event, fields upper-cased."""
    from systemd import journal

    message = str(event.pop("event", ""))
    level = str(event.pop("level", method))
    fields = {journal_field(k): str(v) for k, v in event.items() if k != "timestamp"}
    fields.setdefault("SYSLOG_IDENTIFIER", "segued")
    journal.send(message, PRIORITY=str(_PRIORITY.get(level, 6)), **fields)
    raise structlog.DropEvent


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Set up structlog once for the process: `fmt` is auto, json, console or journald."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor
    if fmt == "journald":
        renderer = send_to_journal
    elif use_console:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per line (print() makes two): workers share the main process's stderr,
        # and two lines written at once must not interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def user_hash(user: str) -> str:
    """A short stable hash that lets log lines be joined per user without naming the user."""
    return hashlib.sha256(b"segue/v1 log user\x00" + user.encode()).hexdigest()[:16]
