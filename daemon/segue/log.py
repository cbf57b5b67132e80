"""Logging with structlog: a console renderer on a terminal, JSON lines otherwise, or
journald's native protocol (upper-case field names) when configured.

Journal entries go to journald's socket, and a datagram sent where no journald listens is lost
without an error: a node started by hand, or in a container, with `format = "journald"` would
log nothing at all. So that format is used only when the socket is there; otherwise the lines
go to stderr as JSON, after one warning that says why.

Nothing here logs a token, key or password; request lines carry a hash of the user id.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import stat
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


#: The key of user hashes: a fixed label and the fleet's salt (configure's user_hash_salt).
_user_hash_key = b"segue/v1 log user\x00"
_level = logging.INFO

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


#: Where journald listens for native entries (sd_journal_send writes there, and only there).
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def journal_reachable() -> bool:
    """Whether journald listens on its socket (and python-systemd is there to reach it)."""
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    try:
        return stat.S_ISSOCK(JOURNAL_SOCKET.stat().st_mode)
    except OSError:
        return False


def configure(fmt: str = "auto", level: str = "info", user_hash_salt: bytes = b"") -> None:
    """Set up structlog once for the process: `fmt` is auto, json, console or journald
    (JSON on stderr when no journald listens); `user_hash_salt` keys user_hash (the same on
    every node of a fleet, so that their logs join)."""
    global _user_hash_key, _level
    _user_hash_key = b"segue/v1 log user\x00" + user_hash_salt
    _level = _LEVELS[level]
    no_journal = fmt == "journald" and not journal_reachable()
    if no_journal:
        fmt = "json"
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
    if no_journal:
        structlog.get_logger("segue.log").warning(
            "log.format is journald but no journald listens; logging JSON lines to stderr",
            socket=str(JOURNAL_SOCKET))


def info_enabled() -> bool:
    """Whether info lines are written: a caller that logs every request asks before it
    gathers the line's fields (structlog drops a filtered line, but only once it was built)."""
    return _level <= logging.INFO


def user_hash(user: str) -> str:
    """A short stable hash that lets log lines be joined per user without naming the user.

    An HMAC keyed with the fleet's salt: a plain hash of a user id can be reversed by whoever
    reads the logs and can guess ids (hash every customer number, look the hashes up).
    """
    return _keyed_hash(_user_hash_key, user)


@functools.lru_cache(maxsize=4096)
def _keyed_hash(key: bytes, user: str) -> str:
    """Remembered: every request of a listener hashes the same id (the key is an argument, so
    a new salt never meets an old hash)."""
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()[:16]
