"""The local catalogue: an SQLite database (WAL) of the tracks this node can serve.

`segue pack` fills it (replication will too); the server looks tracks up and searches them with
FTS5 over title, artist and album, accents folded and the last word matched as a prefix so that
results come as one types. It also remembers the newest manifest version accepted per track,
which is what lets an edge refuse a rolled-back manifest after a restart.

Connections are per thread: the server calls in from worker threads.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segue.seal.manifest import Manifest

# The search index. Its prefix indexes serve what a user types as the last word: FTS5 answers
# a prefix it has no index for by reading and merging the doclists of every term it begins, all
# of a common word's rows. With 4-letter prefixes too, two-word queries on a synthetic million
# tracks went from p99 74 ms to 30 ms for 7 % more database (bench/analysis/replication.md).
_SEARCH_INDEX = """CREATE VIRTUAL TABLE IF NOT EXISTS tracks_fts USING fts5(
    title, artist, album,
    content='tracks', content_rowid='rowid',
    tokenize='unicode61 remove_diacritics 2',
    prefix='2 3 4'
)"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    track_id   TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    artist     TEXT NOT NULL DEFAULT '',
    album      TEXT NOT NULL DEFAULT '',
    duration_s REAL NOT NULL DEFAULT 0,
    mime       TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    chunks     INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS tracks_ai AFTER INSERT ON tracks BEGIN
    INSERT INTO tracks_fts(rowid, title, artist, album)
    VALUES (new.rowid, new.title, new.artist, new.album);
END;
CREATE TRIGGER IF NOT EXISTS tracks_ad AFTER DELETE ON tracks BEGIN
    INSERT INTO tracks_fts(tracks_fts, rowid, title, artist, album)
    VALUES ('delete', old.rowid, old.title, old.artist, old.album);
END;
CREATE TRIGGER IF NOT EXISTS tracks_au AFTER UPDATE ON tracks BEGIN
    INSERT INTO tracks_fts(tracks_fts, rowid, title, artist, album)
    VALUES ('delete', old.rowid, old.title, old.artist, old.album);
    INSERT INTO tracks_fts(rowid, title, artist, album)
    VALUES (new.rowid, new.title, new.artist, new.album);
END;
CREATE TABLE IF NOT EXISTS replication_positions (
    source     TEXT PRIMARY KEY,
    position   TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS accepted_manifests (
    track_id TEXT PRIMARY KEY,
    version  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS packed_versions (
    track_id  TEXT PRIMARY KEY,
    version   INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
"""

_WORD = re.compile(r"\w+", re.UNICODE)
_COLUMNS = "track_id, title, artist, album, duration_s, mime, bytes, chunks"
# Statements built once from the constant column list above (never from input).
_UPSERT = (
    f"INSERT INTO tracks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
    "ON CONFLICT(track_id) DO UPDATE SET title=excluded.title, "
    "artist=excluded.artist, album=excluded.album, duration_s=excluded.duration_s, "
    "mime=excluded.mime, bytes=excluded.bytes, chunks=excluded.chunks"
)
# Many replicated rows go through a per-connection temporary table and reach `tracks` in ONE
# statement. The FTS triggers cost about 40 us a row when each row is its own statement (FTS5
# settles its pending terms at every statement's end) and about 6 us a row in one statement:
# 200,000 rows took 8.1 s row by row and 1.6 s staged, here. A few rows go straight in: the
# staging's own statements cost more than they save (a one-row transaction took 390 us staged
# and 129 us straight).
STAGE_FROM_ROWS = 64
_UPSERT_FROM = (
    f"INSERT INTO tracks ({_COLUMNS}, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
    "ON CONFLICT(track_id) DO UPDATE SET title=excluded.title, "
    "artist=excluded.artist, album=excluded.album, duration_s=excluded.duration_s, "
    "mime=excluded.mime, bytes=excluded.bytes, chunks=excluded.chunks, source=excluded.source"
)
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS replicated_rows ("
    "track_id TEXT, title TEXT, artist TEXT, album TEXT, duration_s REAL, mime TEXT, "
    "bytes INTEGER, chunks INTEGER)"
)
_STAGE = f"INSERT INTO temp.replicated_rows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_UPSERT_STAGED = (
    f"INSERT INTO tracks ({_COLUMNS}, source) "  # noqa: S608
    f"SELECT {_COLUMNS}, ? FROM temp.replicated_rows WHERE true ORDER BY rowid "
    "ON CONFLICT(track_id) DO UPDATE SET title=excluded.title, "
    "artist=excluded.artist, album=excluded.album, duration_s=excluded.duration_s, "
    "mime=excluded.mime, bytes=excluded.bytes, chunks=excluded.chunks, source=excluded.source"
)
_GET = f"SELECT {_COLUMNS} FROM tracks WHERE track_id = ?"  # noqa: S608
_SEARCH = (
    f"SELECT {', '.join('t.' + c for c in _COLUMNS.split(', '))} "  # noqa: S608
    "FROM tracks_fts JOIN tracks t ON t.rowid = tracks_fts.rowid "
    "WHERE tracks_fts MATCH ? ORDER BY bm25(tracks_fts, 10.0, 4.0, 1.0) LIMIT ? OFFSET ?"
)  # bm25 column weights: a title match counts most, then artist, then album.
# Ranking scores every match: fine for hundreds, hundreds of milliseconds for a common word in a
# million tracks. Past RANK_AT_MOST matches the answer comes unranked (newest rows first).
RANK_AT_MOST = 2000
_MATCHES = "SELECT count(*) FROM (SELECT 1 FROM tracks_fts WHERE tracks_fts MATCH ? LIMIT ?)"
_SEARCH_UNRANKED = (
    f"SELECT {', '.join('t.' + c for c in _COLUMNS.split(', '))} "  # noqa: S608
    "FROM tracks_fts JOIN tracks t ON t.rowid = tracks_fts.rowid "
    "WHERE tracks_fts MATCH ? ORDER BY tracks_fts.rowid DESC LIMIT ? OFFSET ?"
)
_BROWSE = (f"SELECT {_COLUMNS} FROM tracks "  # noqa: S608
           "ORDER BY title COLLATE NOCASE, track_id LIMIT ? OFFSET ?")


@dataclass(frozen=True)
class TrackRecord:
    """One track as the catalogue, /meta and /v1/search describe it."""

    track_id: str
    title: str
    artist: str
    album: str
    duration_s: float
    mime: str
    bytes: int
    chunks: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_manifest(cls, manifest: Manifest) -> TrackRecord:
        """The row a verified manifest describes (its signed metadata)."""
        meta = manifest.meta
        return cls(track_id=manifest.track_id, title=meta.title, artist=meta.artist,
                   album=meta.album, duration_s=meta.duration_s, mime=meta.mime,
                   bytes=manifest.size, chunks=manifest.chunk_count)


def _values(r: TrackRecord) -> tuple[Any, ...]:
    return (r.track_id, r.title, r.artist, r.album, r.duration_s, r.mime, r.bytes, r.chunks)


class CatalogueError(Exception):
    """The catalogue database cannot be opened or is not a Segue catalogue."""


def fts_query(text: str) -> str | None:
    """Turn what a user typed into an FTS5 query: every word must match, the last as a prefix.

    Words are quoted, so FTS5 operators in the input are plain text. None when there is no word.
    """
    words = _WORD.findall(text)
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


def _renew_search_index(conn: sqlite3.Connection) -> None:
    """Remake the search index of a catalogue made with other index options (older prefix
    indexes), from the tracks table: a few seconds a million tracks, once."""
    (made_with,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'tracks_fts'").fetchone()
    if made_with == _SEARCH_INDEX.replace(" IF NOT EXISTS", ""):
        return
    conn.execute("DROP TABLE tracks_fts")
    conn.execute(_SEARCH_INDEX)
    conn.execute("INSERT INTO tracks_fts(tracks_fts) VALUES ('rebuild')")


class Catalogue:
    """The local catalogue at one path, with a connection for each thread that uses it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @classmethod
    def create(cls, path: Path) -> Catalogue:
        """Open the catalogue at `path`, creating the file and its schema if needed."""
        catalogue = cls(path)
        conn = catalogue._conn(create=True)
        with conn:
            conn.execute(_SEARCH_INDEX)
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(tracks)")}
            if "source" not in columns:  # catalogues made before replication existed
                conn.execute("ALTER TABLE tracks ADD COLUMN source TEXT")
            _renew_search_index(conn)
        return catalogue

    def _conn(self, create: bool = False) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not create and not self.path.exists():
                raise CatalogueError(
                    f"catalogue {self.path} does not exist; `segue init` or `segue pack` makes it"
                )
            try:
                conn = sqlite3.connect(self.path, timeout=10.0)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as e:
                raise CatalogueError(f"cannot open catalogue {self.path}: {e}") from None
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (other threads' close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def put(self, record: TrackRecord) -> None:
        """Insert or replace one track."""
        conn = self._conn()
        with conn:
            conn.execute(
                _UPSERT,
                (
                    record.track_id,
                    record.title,
                    record.artist,
                    record.album,
                    record.duration_s,
                    record.mime,
                    record.bytes,
                    record.chunks,
                ),
            )

    def get(self, track_id: str) -> TrackRecord | None:
        row = self._conn().execute(_GET, (track_id,)).fetchone()
        return TrackRecord(*row) if row else None

    def search(self, text: str, limit: int, offset: int = 0) -> list[TrackRecord]:
        """Tracks matching `text`, best first (FTS5 bm25, title before artist before album),
        from the `offset`-th; unranked when more than RANK_AT_MOST tracks match (type more to
        get a ranking)."""
        query = fts_query(text)
        if query is None:
            return []
        conn = self._conn()
        (matches,) = conn.execute(_MATCHES, (query, RANK_AT_MOST + 1)).fetchone()
        statement = _SEARCH if matches <= RANK_AT_MOST else _SEARCH_UNRANKED
        rows = conn.execute(statement, (query, limit, offset)).fetchall()
        return [TrackRecord(*row) for row in rows]

    def browse(self, limit: int, offset: int = 0) -> list[TrackRecord]:
        """Every track, by title (then id, so pages never overlap), from the `offset`-th."""
        return [TrackRecord(*row) for row in self._conn().execute(_BROWSE, (limit, offset))]

    def remove(self, track_id: str) -> bool:
        """Forget a track (whether it was here). The version accepted for it is kept: packed
        again, it must still be numbered above anything an edge has seen."""
        conn = self._conn()
        with conn:
            gone = conn.execute("DELETE FROM tracks WHERE track_id = ?", (track_id,)).rowcount
            conn.execute("DELETE FROM packed_versions WHERE track_id = ?", (track_id,))
        return bool(gone)

    def apply_replicated(
        self,
        source: str,
        upserts: Iterable[TrackRecord],
        deletes: Iterable[str],
        position: str,
        *,
        replace: bool = False,
    ) -> None:
        """Apply one replicated transaction and its new position in ONE SQLite transaction.

        A restart resumes from the stored position with no duplicate and no gap. With
        `replace`, every track of `source` is dropped first (a fresh snapshot). Blocking: call
        it from a worker thread. `upserts` may be a generator: it is consumed once, inside the
        transaction, so a snapshot can stream from its source without being held in memory.
        """
        conn = self._conn()
        few = isinstance(upserts, Sized) and len(upserts) < STAGE_FROM_ROWS
        with conn:
            if replace:
                conn.execute("DELETE FROM tracks WHERE source = ?", (source,))
            if few:
                conn.executemany(_UPSERT_FROM, ((*_values(r), source) for r in upserts))
            else:
                conn.execute(_STAGING)
                conn.executemany(_STAGE, (_values(r) for r in upserts))
                conn.execute(_UPSERT_STAGED, (source,))
                conn.execute("DELETE FROM temp.replicated_rows")
            conn.executemany("DELETE FROM tracks WHERE track_id = ? AND source = ?",
                             ((track_id, source) for track_id in deletes))
            conn.execute(
                "INSERT INTO replication_positions (source, position, updated_at) "
                "VALUES (?, ?, ?) ON CONFLICT(source) DO UPDATE SET "
                "position = excluded.position, updated_at = excluded.updated_at",
                (source, position, time.time()),
            )
        if replace:
            # A snapshot's one-statement load leaves the full-text index in many segments,
            # which the following small transactions would merge bit by bit (a one-row
            # transaction took 480 us after a 200,000-row snapshot, not 130): merged now,
            # once (about 0.2 s for 200,000 rows).
            with conn:
                conn.execute("INSERT INTO tracks_fts(tracks_fts) VALUES ('optimize')")

    def replication_position(self, source: str) -> str | None:
        """The position stored with the last transaction applied from `source`."""
        row = self._conn().execute(
            "SELECT position FROM replication_positions WHERE source = ?", (source,)
        ).fetchone()
        return row[0] if row else None

    def track_ids(self) -> list[str]:
        """Every catalogued track's id, in id order."""
        return [row[0] for row in
                self._conn().execute("SELECT track_id FROM tracks ORDER BY track_id")]

    def count(self, source: str | None = None) -> int:
        if source is None:
            return self._conn().execute("SELECT count(*) FROM tracks").fetchone()[0]
        return self._conn().execute(
            "SELECT count(*) FROM tracks WHERE source = ?", (source,)).fetchone()[0]

    def accepted_version(self, track_id: str) -> int | None:
        row = (
            self._conn()
            .execute("SELECT version FROM accepted_manifests WHERE track_id = ?", (track_id,))
            .fetchone()
        )
        return row[0] if row else None

    def record_packed(self, track_id: str, version: int) -> None:
        """`segue pack` sealed this version of the track here; the central catalogue does not
        have it yet (mark_published says when it does)."""
        conn = self._conn()
        with conn:
            conn.execute(
                "INSERT INTO packed_versions (track_id, version, published) VALUES (?, ?, 0) "
                "ON CONFLICT(track_id) DO UPDATE SET version = excluded.version, published = 0",
                (track_id, version))

    def mark_published(self, track_id: str, version: int) -> None:
        conn = self._conn()
        with conn:
            conn.execute("UPDATE packed_versions SET published = 1 "
                         "WHERE track_id = ? AND version = ?", (track_id, version))

    def packed_version(self, track_id: str) -> tuple[int, bool] | None:
        """(version packed here, whether it was published), or None for a track packed
        before this was recorded (or not packed here)."""
        row = self._conn().execute("SELECT version, published FROM packed_versions "
                                   "WHERE track_id = ?", (track_id,)).fetchone()
        return None if row is None else (row[0], bool(row[1]))

    def unpublished(self) -> list[str]:
        """The tracks packed here that the central catalogue does not have yet."""
        return [row[0] for row in self._conn().execute(
            "SELECT track_id FROM packed_versions WHERE published = 0 ORDER BY track_id")]

    def packed_here(self) -> list[str]:
        """Every catalogued track that did not come from replication (so was packed here)."""
        return [row[0] for row in self._conn().execute(
            "SELECT track_id FROM tracks WHERE source IS NULL ORDER BY track_id")]

    def accept_version(self, track_id: str, version: int) -> None:
        """Record that `version` of the track's manifest was accepted (never lowers it)."""
        conn = self._conn()
        with conn:
            conn.execute(
                "INSERT INTO accepted_manifests (track_id, version) VALUES (?, ?) "
                "ON CONFLICT(track_id) DO UPDATE SET version = max(version, excluded.version)",
                (track_id, version),
            )


class ReplicationView:
    """The catalogue as replication plugins get it (segue.api.ReplicationSink): rows in, with
    their position, and the position back; not the catalogue's other methods."""

    __slots__ = ("_catalogue",)

    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue

    def apply_replicated(self, source: str, upserts: Iterable[TrackRecord],
                         deletes: Iterable[str], position: str, *,
                         replace: bool = False) -> None:
        self._catalogue.apply_replicated(source, upserts, deletes, position, replace=replace)

    def replication_position(self, source: str) -> str | None:
        return self._catalogue.replication_position(source)
