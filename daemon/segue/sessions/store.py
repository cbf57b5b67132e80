"""Sessions on disk: the node's own SQLite database (not the catalogue's), one row a listener.

Written behind the changes (the service flushes what changed every half second in a worker
thread), so a burst of commands costs one write per listener, and read whole at start-up.
Blocking: call from worker threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from segue.sessions.state import SessionState, StateError

log = structlog.get_logger("segue.sessions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    user TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


class SessionStore:
    """The sessions table of one node."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

    def load(self) -> dict[str, SessionState]:
        """Every listener's state; a row that does not parse is logged and left out."""
        with self._lock:
            rows = self._conn.execute("SELECT user, state FROM sessions").fetchall()
        states: dict[str, SessionState] = {}
        for user, text in rows:
            try:
                states[user] = SessionState.from_json(json.loads(text))
            except (ValueError, StateError) as e:
                log.error("unreadable session row left out", path=str(self.path), error=str(e))
        return states

    def save(self, states: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Write these listeners' states (JSON forms) in one transaction."""
        now = time.time()
        rows = [(user, json.dumps(doc, separators=(",", ":")), now) for user, doc in states]
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT INTO sessions (user, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(user) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at", rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
