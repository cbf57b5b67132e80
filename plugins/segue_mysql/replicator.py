"""One shard's replication into the local catalogue: snapshot, then follow the binlog.

Runs in a worker thread (PyMySQL and mysql-replication block). Every source transaction and the
binlog position after it are written to the local catalogue in one SQLite transaction, so a
restart resumes exactly: the library's own reconnects are never trusted (they can replay from
an old position); after any error the reader is rebuilt from the stored position.
"""

from __future__ import annotations

import json
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent, RotateEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

import segue
from segue_mysql import rows
from segue_mysql.schema import COLUMNS, DATABASE

# Server settings without which row events lose changes or column names.
REQUIRED_SETTINGS = {
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
}
ERROR_BINLOG_PURGED = 1236
# Catching up, source transactions are applied together until one of these is reached.
BATCH_ROWS = 5000
BATCH_S = 0.25


class SettingsError(Exception):
    """The server's settings would lose changes; the message names the variable."""


class BinlogPurged(Exception):
    """The stored position is no longer in the server's binlogs: take a fresh snapshot."""


@dataclass
class Shard:
    """A shard's connection settings and what the node knows of its replication."""

    name: str
    host: str
    port: int
    user: str
    password: str
    server_id: int
    heartbeat_s: float = 2.0
    tls: ssl.SSLContext | None = None  # required and verified when set ([plugins.mysql] tls)
    connected: bool = False
    last_error: str = ""
    source_time: float = field(default_factory=time.time)  # source time of the last change seen
    rows_applied: int = 0

    def connection_settings(self) -> dict:
        """pymysql.connect's keywords for the binlog reader."""
        return {"host": self.host, "port": self.port, "user": self.user,
                "password": self.password, "connect_timeout": 5,
                "read_timeout": max(3 * self.heartbeat_s, 5), **self._tls()}

    def connect(self) -> pymysql.Connection:
        return pymysql.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password, connect_timeout=5,
                               read_timeout=30, autocommit=True, **self._tls())

    def _tls(self) -> dict:
        """An SSLContext makes PyMySQL require TLS; without one it keeps its default."""
        return {} if self.tls is None else {"ssl": self.tls}

    @property
    def lag_s(self) -> float:
        return max(0.0, time.time() - self.source_time)


def check_settings(shard: Shard) -> None:
    """Raise SettingsError naming the first server variable that would lose changes."""
    conn = shard.connect()
    try:
        with conn.cursor() as cur:
            for variable, wanted in REQUIRED_SETTINGS.items():
                cur.execute(f"SELECT @@global.{variable}")  # constant names, not input
                (value,) = cur.fetchone()
                if str(value).upper() != wanted:
                    raise SettingsError(
                        f"shard {shard.name}: server variable {variable} is {value}; "
                        f"replication needs {variable}={wanted}")
    finally:
        conn.close()


class _Changes:
    """Rows changed in the binlog, the last change of each track winning: a track deleted and
    written again (REPLACE INTO) is there afterwards, not gone."""

    def __init__(self) -> None:
        self.rows: dict[str, segue.TrackRecord | None] = {}  # None: deleted

    def change(self, track_id: str, record: segue.TrackRecord | None) -> None:
        self.rows.pop(track_id, None)  # the order is that of each track's last change
        self.rows[track_id] = record


class _Pending(_Changes):
    """Whole source transactions not yet applied to the catalogue.

    Live, each source transaction is applied at its commit, so the catalogue lags by
    milliseconds. Catching up (more of the binlog is already waiting on the socket), several go
    into one catalogue transaction, with the position after the last: a commit and an FTS
    flush per source transaction were most of the catch-up time. The position moves with the
    rows, so a restart still resumes exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.transactions = 0
        self.position = ""
        self.timestamp = 0.0  # the source's time of the last commit taken
        self.since = 0.0  # time.monotonic() of the first transaction taken

    def take(self, txn: _Changes, position: str, timestamp: float) -> None:
        if not self.transactions:
            self.since = time.monotonic()
        for track_id, record in txn.rows.items():
            self.change(track_id, record)
        self.transactions += 1
        self.position, self.timestamp = position, timestamp

    def due(self, behind: bool) -> bool:
        return (not behind or len(self.rows) >= BATCH_ROWS
                or time.monotonic() - self.since >= BATCH_S)

    def apply(self, shard: Shard, node: segue.NodeView) -> None:
        node.replication.apply_replicated(
            shard.name, [r for r in self.rows.values() if r is not None],
            [track_id for track_id, r in self.rows.items() if r is None], self.position)
        shard.rows_applied += len(self.rows)
        shard.source_time = self.timestamp if self.rows else time.time()
        self.rows, self.transactions = {}, 0


def _behind(reader: BinLogStreamReader) -> bool:
    """Whether more of the binlog has already arrived (unread bytes on the reader's socket).

    The socket is the library's private attribute: without it this says False, and every
    source transaction is applied at its commit, as when live.
    """
    sock = getattr(getattr(reader, "_stream_connection", None), "_sock", None)
    if sock is None:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def snapshot(shard: Shard, node: segue.NodeView) -> None:
    """All of the shard's tracks and the binlog position they correspond to, applied at once.

    MariaDB reports the binlog position of a consistent snapshot (binlog_snapshot_file and
    _position) inside the snapshot's own transaction, with no global lock. The rows stream
    from an unbuffered cursor straight into the catalogue's transaction: a shard of a million
    tracks is never held in memory.
    """
    conn = shard.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {str(name).lower(): value for name, value in cur.fetchall()}
        if "binlog_snapshot_file" not in status:
            raise SettingsError(f"shard {shard.name}: the server reports no "
                                "Binlog_snapshot_file status; consistent snapshots need "
                                "MariaDB (docs/catalogue.md)")
        position = json.dumps({"file": status["binlog_snapshot_file"],
                               "pos": int(status["binlog_snapshot_position"])})
        read = 0

        def records(cur: pymysql.cursors.SSCursor) -> Iterator[segue.TrackRecord]:
            nonlocal read
            while batch := cur.fetchmany(1000):
                read += len(batch)
                yield from (segue.TrackRecord(*row) for row in batch)

        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {DATABASE}.tracks")  # noqa: S608
            node.replication.apply_replicated(shard.name, records(cur), [], position,
                                              replace=True)
    finally:
        conn.close()
    shard.rows_applied += read
    shard.source_time = time.time()


def stream(shard: Shard, node: segue.NodeView, stop: threading.Event,
           on_progress: Callable[[], None] = lambda: None) -> None:
    """Follow the binlog from the stored position until `stop` is set or an error."""
    position = json.loads(node.replication.replication_position(shard.name) or "null")
    if position is None:
        raise BinlogPurged("no stored position")
    reader = BinLogStreamReader(
        connection_settings=shard.connection_settings(),
        server_id=shard.server_id,
        resume_stream=True,
        log_file=position["file"],
        log_pos=position["pos"],
        blocking=True,
        slave_heartbeat=shard.heartbeat_s,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent,
                     RotateEvent, HeartbeatLogEvent],
        enable_logging=False,
        # Decoding every transaction's table map again was ~0.9 ms of ~1.8 ms per source
        # transaction here; a schema change gets a new table id anyway, and the reader is
        # rebuilt after every DDL statement (below), so nothing stale survives one.
        freeze_schema=True,
    )
    decoders: dict[int, rows.RowDecoder | None] = {}  # by table id, for this reader only
    txn = _Changes()  # the source transaction being read
    pending = _Pending()  # whole source transactions read but not yet applied
    ddl = False
    try:
        for event in reader:
            shard.connected = True
            shard.last_error = ""
            if stop.is_set():
                return
            if isinstance(event, HeartbeatLogEvent):  # the source is idle: nothing to wait for
                if pending.transactions:
                    pending.apply(shard, node)
                    on_progress()
                else:
                    shard.source_time = time.time()
                continue
            if isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent) \
                    and getattr(event, "schema", None) == DATABASE and event.table == "tracks":
                # Images are tuples in COLUMNS order, which is TrackRecord's: [0] is track_id.
                for before, after in rows.images(event, COLUMNS, decoders):
                    if after is None:
                        txn.change(before[0], None)  # type: ignore[index]
                        continue
                    record = segue.TrackRecord(*after)
                    if before is not None and before[0] != record.track_id:
                        txn.change(before[0], None)  # an UPDATE of the key moves the row
                    txn.change(record.track_id, record)
            elif isinstance(event, XidEvent) or (ddl := (
                    isinstance(event, QueryEvent) and event.query.strip().upper() != "BEGIN")):
                # A commit (XidEvent) or a statement of its own (DDL, which MariaDB logs with
                # no XidEvent): the group ends here, with the position after it.
                pending.take(txn, json.dumps({"file": reader.log_file, "pos": reader.log_pos}),
                             float(event.timestamp))
                txn = _Changes()
                if ddl or pending.due(_behind(reader)):
                    pending.apply(shard, node)
                    on_progress()
                if ddl:
                    return  # the caller rebuilds the reader, which reads the new schema
    except pymysql.err.OperationalError as e:
        if e.args and e.args[0] == ERROR_BINLOG_PURGED:
            raise BinlogPurged(str(e.args[1] if len(e.args) > 1 else e)) from None
        raise
    finally:
        shard.connected = False
        reader.close()
