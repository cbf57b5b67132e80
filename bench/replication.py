"""Benchmark: catalogue replication from MariaDB into the local catalogue, and local search.

This prints figures; it judges nothing. The targets are printed next to the figures. One run,
against one mariadbd that the script starts itself in a temp dir, on a free loopback port, with
the binlog settings replication needs (ROW, FULL row image, FULL row metadata):

1. snapshot: N rows are inserted into segue_catalogue.tracks with 1,000-row INSERTs, then
   segue_mysql.replicator.snapshot() copies them into a fresh local catalogue (SQLite).
2. catch-up: with the stream stopped (an outage), M rows are inserted in transactions of
   --txn-rows rows and K single-row autocommit UPDATEs are made. Then replicator.stream() runs
   in a thread, from the position the snapshot stored, until that stored position equals
   SHOW MASTER STATUS on the source.
3. lag: the stream runs while a writer process makes single-row UPDATEs at --rate per second for
   --seconds, each setting a title "lag-<time.time() of the write>". A reader polls the local
   catalogue every 2 ms and takes (time seen - time written) for each row.
4. search: a local catalogue of --search-rows synthetic tracks is built with
   Catalogue.apply_replicated in batches of 10,000 (words drawn from a seeded vocabulary with a
   Zipf distribution), then Catalogue.search(query, 20) is timed for --queries queries: common,
   mid and rare words, two words, and 3-letter prefixes. This part needs no MariaDB.

Run it with the project's interpreter:

    .venv/bin/python bench/replication.py [--quick] [--json] [--parts snapshot,catchup,lag,search]

Needs the Debian package mariadb-server (mariadbd and mariadb-install-db) for parts 1-3.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from common import BenchError, log, machine, run_in_temp_dir, stop
from segue.catalogue import Catalogue, ReplicationView, TrackRecord
from segue_mysql import replicator
from segue_mysql.schema import DATABASE, TRACKS_DDL, keyspace_id

PARTS = ("snapshot", "catchup", "lag", "search")
TARGETS = {
    "snapshot": ">= 50,000 rows/s",
    "catchup": ">= 20,000 rows/s",
    "lag": "p99 < 1 s at 1,000 writes/s",
    "search": "p99 < 20 ms at 1,000,000 tracks",
}
FULL = {"rows": 200_000, "catchup_rows": 100_000, "txn_rows": 1_000, "updates": 10_000,
        "rate": 1_000.0, "seconds": 10.0, "search_rows": 1_000_000, "queries": 300}
QUICK = {"rows": 20_000, "catchup_rows": 10_000, "txn_rows": 1_000, "updates": 1_000,
         "rate": 1_000.0, "seconds": 3.0, "search_rows": 50_000, "queries": 100}

SHARD = "bench"
SERVER_ID = 1  # the source's; the replica reads with REPLICA_ID
REPLICA_ID = 7001
HEARTBEAT_S = 0.5
INSERT_BATCH = 1_000  # rows per multi-row INSERT when loading the source
SEARCH_BATCH = 10_000
SEARCH_LIMIT = 20
VOCABULARY = 4_000
ZIPF_S = 1.0
LAG_BASE = 10**15  # track numbers of the rows the lag writer updates (apart from the others)
LAG_POLL_S = 0.002
LAG_WINDOW = 5_000  # rows the reader looks at past the first one it has not seen
LAG_DRAIN_S = 60.0  # how long the reader waits for the last writes once the writer is done
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
MIME = "audio/mpeg"
COLUMNS = "track_id, keyspace_id, title, artist, album, duration_s, mime, bytes, chunks"
SOURCE_FLAGS = [
    "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
    # The source's own durability is not what is measured: without an fsync per commit the
    # lag writer is not held back by the disk.
    "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0",
    "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=256M",
    "--max-allowed-packet=64M",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread_ms(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(seconds, 50) * 1e3, 3),
            "p99_ms": round(percentile(seconds, 99) * 1e3, 3),
            "max_ms": round(max(seconds) * 1e3, 3),
            "count": len(seconds)}


def track_id(n: int) -> str:
    return f"{n:032x}"


# --- the source: one mariadbd in the temp dir ------------------------------------------------


class Source:
    """mariadbd with binary logging, user root without a password, on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = "unknown"

    def start(self) -> None:
        install = shutil.which("mariadb-install-db")
        mariadbd = shutil.which("mariadbd") or (
            "/usr/sbin/mariadbd" if os.access("/usr/sbin/mariadbd", os.X_OK) else None)
        if install is None or mariadbd is None:
            raise BenchError("mariadbd or mariadb-install-db not found: "
                             "apt-get install mariadb-server")
        self.root.mkdir(parents=True, exist_ok=True)
        user = ["--user=root"] if os.geteuid() == 0 else []
        try:
            done = subprocess.run(
                [install, "--no-defaults", f"--datadir={self.root}/data",
                 "--auth-root-authentication-method=normal", "--skip-test-db",
                 "--skip-name-resolve", *user],
                capture_output=True, text=True, timeout=180, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError("mariadb-install-db took longer than 180 s") from None
        if done.returncode != 0:
            raise BenchError(f"mariadb-install-db exited {done.returncode}:\n"
                             f"{(done.stderr or done.stdout)[-2000:]}")
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={self.root}/data",
             f"--socket={self.root}/mysqld.sock", f"--port={self.port}",
             "--bind-address=127.0.0.1", *user, f"--pid-file={self.root}/mysqld.pid",
             f"--log-error={self.root}/error.log", "--skip-name-resolve",
             f"--server-id={SERVER_ID}", f"--log-bin={self.root}/binlog", *SOURCE_FLAGS],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"mariadbd exited with {self.proc.returncode}:\n"
                                 f"{tail(self.root / 'error.log')}")
            try:
                conn = connect_source(self.port, database=None)
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise BenchError(f"mariadbd not answering after {START_TIMEOUT_S:.0f} s:\n"
                                     f"{tail(self.root / 'error.log')}") from None
                time.sleep(0.1)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                self.version = str(cur.fetchone()[0])
                cur.execute(f"CREATE DATABASE {DATABASE}")
                cur.execute(TRACKS_DDL)
        finally:
            conn.close()

    def connect(self) -> pymysql.Connection:
        return connect_source(self.port)

    def master_status(self) -> tuple[str, int]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
        finally:
            conn.close()
        if row is None:
            raise BenchError("SHOW MASTER STATUS is empty: binary logging is off")
        return Path(str(row[0])).name, int(row[1])

    def query(self, sql: str, *args: object) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                return list(cur.fetchall())
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM (a clean shutdown); SIGKILL to its process group if it lingers."""
        proc, self.proc = self.proc, None
        stop(proc, signal.SIGTERM, STOP_TIMEOUT_S)  # InnoDB may take a while to shut down


def connect_source(port: int, database: str | None = DATABASE) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user="root", password="",
                           database=database, autocommit=True, connect_timeout=10,
                           read_timeout=300, write_timeout=300)


def source_row(n: int) -> tuple:
    tid = track_id(n)
    return (tid, keyspace_id(tid), f"Track {n}", f"Artist {n % 997}", f"Album {n % 5003}",
            120.0 + n % 300, MIME, 3_000_000 + n % 5_000_000, 12 + n % 20)


def insert_rows(port: int, numbers: range, per_statement: int,
                title: Callable[[int], str] | None = None) -> int:
    """Insert tracks `numbers` with multi-row INSERTs of `per_statement` rows, each its own
    (autocommit) transaction. Returns the number of statements."""
    conn = connect_source(port)
    statements = 0
    try:
        with conn.cursor() as cur:
            for start in range(numbers.start, numbers.stop, per_statement):
                rows = [source_row(n) for n in range(start, min(start + per_statement,
                                                                numbers.stop))]
                if title is not None:
                    rows = [(r[0], r[1], title(start + i), *r[3:]) for i, r in enumerate(rows)]
                values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
                cur.execute(f"INSERT INTO tracks ({COLUMNS}) VALUES {values}",  # noqa: S608
                            [v for row in rows for v in row])
                statements += 1
    finally:
        conn.close()
    return statements


# --- the replica side -----------------------------------------------------------------------


@dataclass
class LocalNode:
    """All that replicator.snapshot and replicator.stream need of a node."""

    catalogue: Catalogue

    @property
    def replication(self) -> ReplicationView:
        """What the plugin writes through (`node.replication`, plugin API 2)."""
        return ReplicationView(self.catalogue)


def make_shard(port: int) -> replicator.Shard:
    return replicator.Shard(name=SHARD, host="127.0.0.1", port=port, user="root", password="",
                            server_id=REPLICA_ID, heartbeat_s=HEARTBEAT_S)


class Streamer:
    """replicator.stream in a thread, stopped with its Event."""

    def __init__(self, shard: replicator.Shard, node: LocalNode) -> None:
        self.shard = shard
        self.node = node
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def _run(self) -> None:
        try:
            replicator.stream(self.shard, self.node, self.stop_event)
        except BaseException as e:
            self.error = e
        finally:
            self.node.catalogue.close()

    def start(self) -> Streamer:
        self.thread.start()
        return self

    def check(self) -> None:
        if self.error is not None:
            raise BenchError(f"replicator.stream failed: {type(self.error).__name__}: "
                             f"{self.error}")
        if not self.thread.is_alive():
            raise BenchError("replicator.stream returned before it was stopped")

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=max(15.0, 6 * HEARTBEAT_S))
        if self.thread.is_alive():
            log("the stream thread did not stop in time (left behind, it is a daemon thread)")


def stored_position(catalogue: Catalogue) -> tuple[str, int] | None:
    raw = catalogue.replication_position(SHARD)
    if raw is None:
        return None
    position = json.loads(raw)
    return Path(position["file"]).name, int(position["pos"])


def wait_caught_up(catalogue: Catalogue, target: tuple[str, int], streamer: Streamer,
                   timeout: float) -> float:
    """perf_counter() when the stored position first equals `target`."""
    deadline = time.monotonic() + timeout
    while True:
        if stored_position(catalogue) == target:
            return time.perf_counter()
        streamer.check()
        if time.monotonic() > deadline:
            raise BenchError(f"the stream had not reached {target} after {timeout:.0f} s "
                             f"(stored: {stored_position(catalogue)})")
        time.sleep(0.005)


# --- parts 1-3 ------------------------------------------------------------------------------


def part_snapshot(src: Source, node: LocalNode, rows: int) -> dict[str, Any]:
    log(f"snapshot: inserting {rows:,} rows on the source")
    t0 = time.perf_counter()
    insert_rows(src.port, range(rows), INSERT_BATCH)
    insert_s = time.perf_counter() - t0
    shard = make_shard(src.port)
    replicator.check_settings(shard)
    log("snapshot: replicator.snapshot into a fresh local catalogue")
    t0 = time.perf_counter()
    replicator.snapshot(shard, node)
    snapshot_s = time.perf_counter() - t0
    local = node.catalogue.count(SHARD)
    if local != rows:
        raise BenchError(f"the snapshot holds {local:,} rows, the source {rows:,}")
    return {"rows": rows, "seconds": round(snapshot_s, 3),
            "rows_per_s": round(rows / snapshot_s, 1),
            "source_insert_rows_per_s": round(rows / insert_s, 1),
            "position": stored_position(node.catalogue)}


def part_catchup(src: Source, node: LocalNode, first: int, rows: int, txn_rows: int,
                 updates: int, seed: int) -> dict[str, Any]:
    log(f"catch-up: stream stopped; {rows:,} rows in {txn_rows:,}-row transactions and "
        f"{updates:,} single-row UPDATE transactions on the source")
    t0 = time.perf_counter()
    txns = insert_rows(src.port, range(first, first + rows), txn_rows)
    existing = first + rows
    targets = random.Random(seed).sample(range(existing), min(updates, existing))
    conn = connect_source(src.port)
    try:
        with conn.cursor() as cur:
            for k, n in enumerate(targets):
                cur.execute("UPDATE tracks SET title = %s WHERE track_id = %s",
                            (f"upd-{k}", track_id(n)))
    finally:
        conn.close()
    write_s = time.perf_counter() - t0
    txns += len(targets)
    changed = rows + len(targets)
    target = src.master_status()
    shard = make_shard(src.port)
    log(f"catch-up: streaming from {stored_position(node.catalogue)} to {target}")
    before = shard.rows_applied
    t0 = time.perf_counter()
    streamer = Streamer(shard, node).start()
    try:
        t1 = wait_caught_up(node.catalogue, target, streamer, timeout=max(300.0, changed / 200))
    finally:
        streamer.close()
    seconds = t1 - t0
    local_rows = node.catalogue.count(SHARD)
    check = sqlite3.connect(node.catalogue.path)
    try:
        local_upd = check.execute(
            "SELECT count(*) FROM tracks WHERE title LIKE 'upd-%'").fetchone()[0]
    finally:
        check.close()
    source_upd = src.query("SELECT count(*) FROM tracks WHERE title LIKE 'upd-%'")[0][0]
    verified = local_rows == existing and local_upd == source_upd == len(targets)
    if not verified:
        log(f"catch-up: MISMATCH local rows {local_rows:,} (source {existing:,}), "
            f"updated titles local {local_upd:,} source {source_upd:,}")
    return {"rows_inserted": rows, "insert_transactions": txns - len(targets),
            "updates": len(targets), "rows_changed": changed, "transactions": txns,
            "rows_applied": shard.rows_applied - before,
            "seconds": round(seconds, 3), "rows_per_s": round(changed / seconds, 1),
            "transactions_per_s": round(txns / seconds, 1),
            "source_write_s": round(write_s, 3), "verified": verified}


def lag_writer(port: int, total: int, rate: float, out: Any) -> None:
    """In its own process: `total` single-row UPDATEs paced at `rate` per second."""
    result: dict[str, Any] = {"written": 0, "errors": 0}
    try:
        conn = connect_source(port)
        try:
            with conn.cursor() as cur:
                start = time.perf_counter()
                result["start"] = time.time()
                for i in range(total):
                    wait = start + i / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    try:
                        cur.execute("UPDATE tracks SET title = %s WHERE track_id = %s",
                                    (f"lag-{time.time():.6f}", track_id(LAG_BASE + i)))
                        result["written"] = i + 1
                    except pymysql.err.MySQLError:
                        result["errors"] += 1
                result["seconds"] = time.perf_counter() - start
        finally:
            conn.close()
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    out.send(result)
    out.close()


def part_lag(src: Source, node: LocalNode, rate: float, seconds: float) -> dict[str, Any]:
    total = max(1, round(rate * seconds))
    log(f"lag: preparing {total:,} rows for the writer and catching up")
    insert_rows(src.port, range(LAG_BASE, LAG_BASE + total), INSERT_BATCH,
                title=lambda n: f"Pending {n}")
    target = src.master_status()
    shard = make_shard(src.port)
    streamer = Streamer(shard, node).start()
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    writer = ctx.Process(target=lag_writer, args=(src.port, total, rate, send), daemon=True,
                         name="lag-writer")
    try:
        wait_caught_up(node.catalogue, target, streamer, timeout=max(300.0, total / 200))
        log(f"lag: {total:,} single-row UPDATEs at {rate:,.0f}/s while the stream runs")
        reader = sqlite3.connect(f"file:{node.catalogue.path}?mode=ro", uri=True, timeout=10)
        lags: list[float] = []
        next_row = 0  # the first lag row not seen yet (rows are applied in write order)
        result: dict[str, Any] | None = None
        done_at = 0.0
        deadline = time.monotonic() + seconds + 300
        writer.start()
        send.close()
        try:
            while next_row < total:
                if result is None and receive.poll():
                    result = receive.recv()
                    done_at = time.monotonic()
                elif result is None and not writer.is_alive():
                    raise BenchError(f"the lag writer exited with {writer.exitcode} and no "
                                     f"result")
                if result is not None and (next_row >= result["written"]
                                           or time.monotonic() > done_at + LAG_DRAIN_S):
                    break
                if time.monotonic() > deadline:
                    log("lag: giving up waiting for the last rows")
                    break
                streamer.check()
                found = reader.execute(
                    "SELECT track_id, title FROM tracks WHERE track_id >= ? AND track_id < ? "
                    "AND title LIKE 'lag-%' ORDER BY track_id",
                    (track_id(LAG_BASE + next_row),
                     track_id(LAG_BASE + min(next_row + LAG_WINDOW, total)))).fetchall()
                seen = time.time()
                for tid, title in found:
                    lags.append(seen - float(title[4:]))
                    next_row = int(tid, 16) - LAG_BASE + 1
                time.sleep(LAG_POLL_S)
        finally:
            reader.close()
        if result is None:
            result = receive.recv() if receive.poll(30) else {"error": "no result"}
        writer.join(timeout=30)
    finally:
        if writer.is_alive():
            writer.terminate()
            writer.join(timeout=10)
        streamer.close()
    if "error" in result:
        raise BenchError(f"the lag writer failed: {result['error']}")
    if not lags:
        raise BenchError("no lag row reached the local catalogue")
    written = result["written"]
    return {"target_rate": rate, "seconds": seconds, "writes": written,
            "write_errors": result["errors"],
            "achieved_rate": round(written / result["seconds"], 1),
            "seen": len(lags), "not_seen": written - len(lags),
            **spread_ms(lags), "poll_ms": LAG_POLL_S * 1e3}


# --- part 4: search -------------------------------------------------------------------------


def vocabulary(rng: random.Random, size: int) -> list[str]:
    """`size` distinct pronounceable words of 2-4 syllables, in Zipf rank order."""
    syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choices(syllables, k=rng.choice((2, 2, 3, 3, 3, 4))))] = None
    return list(words)


def search_records(rng: random.Random, words: list[str], cum: list[float],
                   first: int, count: int) -> list[TrackRecord]:
    drawn = iter(rng.choices(words, cum_weights=cum, k=count * 9))

    def phrase(lo: int, hi: int) -> str:
        return " ".join(next(drawn).capitalize() for _ in range(rng.randint(lo, hi)))

    return [TrackRecord(track_id(n), phrase(1, 4), phrase(1, 2), phrase(1, 3),
                        round(rng.uniform(60, 600), 1), MIME, rng.randint(10**6, 2 * 10**7),
                        rng.randint(4, 80)) for n in range(first, first + count)]


def search_queries(rng: random.Random, words: list[str], cum: list[float],
                   count: int) -> dict[str, list[str]]:
    per_kind = max(1, count // 5)
    mid = words[200:1_000] if len(words) > 1_000 else words
    return {
        "common word": [rng.choice(words[:50]) for _ in range(per_kind)],
        "mid word": [rng.choice(mid) for _ in range(per_kind)],
        "rare word": [rng.choice(words[-1_000:]) for _ in range(per_kind)],
        "two words": [" ".join(rng.choices(words, cum_weights=cum, k=2))
                      for _ in range(per_kind)],
        "3-letter prefix": [rng.choice(words)[:3] for _ in range(per_kind)],
    }


def part_search(t: Path, rows: int, queries: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    words = vocabulary(rng, VOCABULARY)
    cum = list(itertools.accumulate(1 / (rank + 1) ** ZIPF_S for rank in range(len(words))))
    catalogue = Catalogue.create(t / "search.sqlite")
    log(f"search: building a {rows:,}-track catalogue with apply_replicated "
        f"({SEARCH_BATCH:,} per batch)")
    apply_s = 0.0
    t_build = time.perf_counter()
    for first in range(0, rows, SEARCH_BATCH):
        batch = search_records(rng, words, cum, first, min(SEARCH_BATCH, rows - first))
        t0 = time.perf_counter()
        catalogue.apply_replicated("synthetic", batch, [],
                                   json.dumps({"file": "synthetic", "pos": first}))
        apply_s += time.perf_counter() - t0
    build_s = time.perf_counter() - t_build
    if catalogue.count() != rows:
        raise BenchError(f"the search catalogue holds {catalogue.count():,} rows, not {rows:,}")
    kinds = search_queries(rng, words, cum, queries)
    everything = [(kind, q) for kind, qs in kinds.items() for q in qs]
    rng.shuffle(everything)
    log(f"search: timing {len(everything)} queries (limit {SEARCH_LIMIT})")
    for _, q in everything[:10]:  # warm-up, not timed
        catalogue.search(q, SEARCH_LIMIT)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    hits: dict[str, list[int]] = {kind: [] for kind in kinds}
    for kind, q in everything:
        t0 = time.perf_counter()
        found = catalogue.search(q, SEARCH_LIMIT)
        times[kind].append(time.perf_counter() - t0)
        hits[kind].append(len(found))
    catalogue.close()
    overall = [x for xs in times.values() for x in xs]
    return {"rows": rows, "vocabulary": len(words), "zipf_s": ZIPF_S,
            "build_s": round(build_s, 2), "apply_s": round(apply_s, 2),
            "apply_rows_per_s": round(rows / apply_s, 1),
            "file_mb": round((t / "search.sqlite").stat().st_size / 1e6, 1),
            "queries": len(overall), **spread_ms(overall),
            "by_kind": {kind: {**spread_ms(times[kind]),
                               "mean_hits": round(sum(hits[kind]) / len(hits[kind]), 1),
                               "examples": kinds[kind][:3]} for kind in kinds}}


# --- report ---------------------------------------------------------------------------------


def machine_facts(load_before: float) -> dict[str, Any]:
    return machine(load_before, ("segue", "PyMySQL", "mysql-replication"),
                   sqlite=sqlite3.sqlite_version)


def print_table(report: dict[str, Any]) -> None:
    m, s, r = report["machine"], report["setup"], report["results"]
    print(f"Machine: {m['nproc']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, Linux "
          f"{m['kernel']}, load average {m['loadavg_1m_before']} before the run, "
          f"{m['loadavg_1m_after']} after")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    if "source" in s:
        print(f"Source: one local mariadbd, {' '.join(s['source']['flags'])}; "
              f"stream heartbeat {s['heartbeat_s']} s")
    print("Figures from one run; they are noisy on a machine doing other work (see the load "
          "average).")
    print()
    rows: list[tuple[str, str, str]] = []
    if "snapshot" in r:
        x = r["snapshot"]
        rows.append((f"snapshot, {x['rows']:,} rows", f"{x['rows_per_s']:,.0f} rows/s "
                     f"({x['seconds']:.1f} s)", TARGETS["snapshot"]))
    if "catchup" in r:
        x = r["catchup"]
        ok = "" if x["verified"] else "  MISMATCH"
        rows.append((f"catch-up, {x['rows_inserted']:,} rows in {x['insert_transactions']:,} "
                     f"txns + {x['updates']:,} updates",
                     f"{x['rows_per_s']:,.0f} rows/s ({x['seconds']:.1f} s){ok}",
                     TARGETS["catchup"]))
        rows.append(("  same, transactions", f"{x['transactions_per_s']:,.0f} txns/s", ""))
    if "lag" in r:
        x = r["lag"]
        missed = f", {x['not_seen']} not seen" if x["not_seen"] else ""
        rows.append((f"lag, {x['writes']:,} updates at {x['achieved_rate']:,.0f}/s "
                     f"(target {x['target_rate']:,.0f}/s)",
                     f"p50 {x['p50_ms']:.0f} / p99 {x['p99_ms']:.0f} / max {x['max_ms']:.0f} ms"
                     f"{missed}", TARGETS["lag"]))
    if "search" in r:
        x = r["search"]
        rows.append((f"search build, {x['rows']:,} tracks",
                     f"{x['apply_s']:.0f} s applying ({x['apply_rows_per_s']:,.0f} rows/s), "
                     f"{x['file_mb']:.0f} MB", ""))
        rows.append((f"search, {x['queries']} queries, limit {SEARCH_LIMIT}",
                     f"p50 {x['p50_ms']:.1f} / p99 {x['p99_ms']:.1f} / max {x['max_ms']:.1f} ms",
                     TARGETS["search"]))
        for kind, k in x["by_kind"].items():
            rows.append((f"  {kind} ({k['count']}, ~{k['mean_hits']:.0f} hits)",
                         f"p50 {k['p50_ms']:.1f} / p99 {k['p99_ms']:.1f} / max "
                         f"{k['max_ms']:.1f} ms", ""))
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    print(f"{'figure':<{w0}}  {'measured':<{w1}}  target")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip())


def bench(args: argparse.Namespace, t: Path) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {}
    setup: dict[str, Any] = {"parts": args.parts, "heartbeat_s": HEARTBEAT_S,
                             "quick": args.quick, "seed": args.seed}
    replicated = [p for p in args.parts if p != "search"]
    if replicated:
        src = Source(t / "mariadb")
        try:
            log(f"starting mariadbd on 127.0.0.1:{src.port}")
            src.start()
            setup["source"] = {"version": src.version, "flags": SOURCE_FLAGS}
            node = LocalNode(Catalogue.create(t / "catalogue.sqlite"))
            results["snapshot"] = part_snapshot(src, node, args.rows)
            if "catchup" in args.parts:
                results["catchup"] = part_catchup(src, node, args.rows, args.catchup_rows,
                                                  args.txn_rows, args.updates, args.seed)
            if "lag" in args.parts:
                results["lag"] = part_lag(src, node, args.rate, args.seconds)
            node.catalogue.close()
        finally:
            src.stop()
    if "search" in args.parts:
        results["search"] = part_search(t, args.search_rows, args.queries, args.seed)
    facts = machine_facts(load_before)
    facts["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if "source" in setup:
        facts["versions"]["mariadb"] = setup["source"]["version"]
    setup.update({k: getattr(args, k) for k in FULL})
    return {"machine": facts, "setup": setup, "targets": TARGETS, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a quick run: " + ", ".join(
                            f"{k}={v:,}" for k, v in QUICK.items()))
    parser.add_argument("--rows", type=int, help="rows in the snapshot (default 200,000)")
    parser.add_argument("--catchup-rows", type=int,
                        help="rows inserted during the outage (default 100,000)")
    parser.add_argument("--txn-rows", type=int,
                        help="rows per catch-up insert transaction (default 1,000)")
    parser.add_argument("--updates", type=int,
                        help="single-row UPDATE transactions during the outage (default 10,000)")
    parser.add_argument("--rate", type=float, help="lag writer: UPDATEs per second (default 1,000)")
    parser.add_argument("--seconds", type=float, help="lag writer: duration (default 10)")
    parser.add_argument("--search-rows", type=int,
                        help="tracks in the search catalogue (default 1,000,000)")
    parser.add_argument("--queries", type=int, help="search queries timed (default 300)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma list out of " + ", ".join(PARTS) + " (catchup and lag "
                             "need snapshot, which then runs too)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random data")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.rows, args.catchup_rows, args.txn_rows, args.search_rows, args.queries) < 1 \
            or args.updates < 0 or args.rate <= 0 or args.seconds <= 0:
        parser.error("sizes must be at least 1 (--updates 0 or more), --rate and --seconds "
                     "positive")
    parts = [p.strip().lower() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts takes a comma list out of {', '.join(PARTS)}")
    if {"catchup", "lag"} & set(parts):
        parts.append("snapshot")
    args.parts = [p for p in PARTS if p in parts]

    return run_in_temp_dir("replication", args, bench, print_table)

if __name__ == "__main__":
    sys.exit(main())
