"""Logging with structlog: a console renderer on a terminal, JSON lines otherwise.

Nothing here logs a token, key or password; request lines carry a hash of the user id.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Set up structlog once for the process: `fmt` is auto, json or console."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def user_hash(user: str) -> str:
    """A short stable hash that lets log lines be joined per user without naming the user."""
    return hashlib.sha256(b"segue/v1 log user\x00" + user.encode()).hexdigest()[:16]
