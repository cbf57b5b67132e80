"""Where this node got to in each listener's delta subject: the last JetStream sequence it
merged, kept in a small SQLite file of the plugin's own.

After a restart (or a reconnect) a node follows a listener again from the sequence after this
one, so it neither replays the listener's whole history nor merges a delta twice. The file is
written behind the merges; losing the last second of it costs a few deltas merged again, which
the merge rules make harmless.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


class Positions:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._applied: dict[str, int] = {}
        self._dirty: set[str] = set()

    def load(self) -> None:
        """Blocks (SQLite): call it in a worker thread."""
        with closing(self._connect()) as db:
            self._applied = dict(db.execute("SELECT subject_key, seq FROM positions"))

    def get(self, key: str) -> int:
        return self._applied.get(key, 0)

    def advance(self, key: str, seq: int) -> None:
        if seq > self._applied.get(key, 0):
            self._applied[key] = seq
            self._dirty.add(key)

    def take_dirty(self) -> list[tuple[str, int]]:
        rows = [(key, self._applied[key]) for key in self._dirty]
        self._dirty.clear()
        return rows

    def write(self, rows: list[tuple[str, int]]) -> None:
        """Blocks (SQLite): call it in a worker thread."""
        if not rows:
            return
        with closing(self._connect()) as db, db:
            db.executemany("INSERT INTO positions (subject_key, seq) VALUES (?, ?) "
                           "ON CONFLICT (subject_key) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                           rows)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5)
        db.execute("CREATE TABLE IF NOT EXISTS positions "
                   "(subject_key TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
        return db
