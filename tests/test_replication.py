"""Catalogue replication from two real MariaDB shards into a node's local catalogue."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SEGUE, Node
from mariadb import MariaDB
from segue_mysql.schema import DATABASE, TRACKS_DDL, KeyRange, keyspace_id

RANGES = {"s0": KeyRange.parse("-80"), "s1": KeyRange.parse("80-")}


def track_id(n: int) -> str:
    return f"{n:032x}"


def shard_of(tid: str) -> str:
    return next(name for name, r in RANGES.items() if keyspace_id(tid) in r)


def start_shards(root: Path) -> dict[str, MariaDB]:
    """A running MariaDB for each shard of RANGES, its tracks table made."""
    servers = {name: MariaDB(root / name, server_id=i + 1) for i, name in enumerate(RANGES)}
    for server in servers.values():
        server.start()
        server.execute(f"CREATE DATABASE {DATABASE}", database=None)
        server.execute(TRACKS_DDL, database=None)
    return servers


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[dict[str, MariaDB]]:
    servers = start_shards(tmp_path)
    yield servers
    for server in servers.values():
        server.kill()


def upsert(shards: dict[str, MariaDB], n: int, title: str) -> None:
    tid = track_id(n)
    shards[shard_of(tid)].execute(
        "INSERT INTO tracks (track_id, keyspace_id, title, artist, album, duration_s, mime, "
        "bytes, chunks) VALUES (%s, %s, %s, 'Replicated Artist', 'Album', 12.5, 'audio/mpeg', "
        "1000, 1) ON DUPLICATE KEY UPDATE title = VALUES(title)",
        tid, keyspace_id(tid), title)


def delete(shards: dict[str, MariaDB], n: int) -> None:
    tid = track_id(n)
    shards[shard_of(tid)].execute("DELETE FROM tracks WHERE track_id = %s", tid)


def source_rows(shards: dict[str, MariaDB]) -> set[tuple]:
    rows = set()
    for server in shards.values():
        rows |= set(server.execute("SELECT track_id, title FROM tracks"))
    return rows


def local_rows(node: Node, catalogue: str = "catalogue.sqlite") -> set[tuple]:
    """The replicated rows of the node's catalogue (`catalogue`: its path below the node)."""
    conn = sqlite3.connect(node.root / catalogue)
    try:
        rows = conn.execute(
            "SELECT track_id, title FROM tracks WHERE source IN ('s0', 's1')").fetchall()
    finally:
        conn.close()
    assert len(rows) == len(set(rows)), "duplicates in the local catalogue"
    return set(rows)


def configure(node: Node, shards: dict[str, MariaDB]) -> None:
    tables = "".join(
        f'\n[[plugins.mysql.shards]]\nname = "{name}"\nrange = "{"-80" if name == "s0" else "80-"}"'
        f'\nhost = "127.0.0.1"\nport = {server.port}\nuser = "root"\n'
        for name, server in shards.items())
    node.conf.write_text(node.conf.read_text() + "\n[plugins.mysql]\nheartbeat_s = 0.5\n"
                         + tables + "\n[plugin_host]\nhealth_interval_s = 0.3\n")


def wait_equal(node: Node, shards: dict[str, MariaDB], timeout: float = 30,
               catalogue: str = "catalogue.sqlite") -> None:
    deadline = time.monotonic() + timeout
    while local_rows(node, catalogue) != source_rows(shards):
        assert time.monotonic() < deadline, (
            f"local {len(local_rows(node, catalogue))} rows, source {len(source_rows(shards))}")
        time.sleep(0.1)


def search(node: Node, text: str) -> list[str]:
    url = f"{node.base}/v1/search?q={urllib.parse.quote(text)}&token={node.token()}"
    with urllib.request.urlopen(url, timeout=10) as r:
        import json

        return [t["title"] for t in json.load(r)["results"]]


def healthz(node: Node) -> str:
    try:
        with urllib.request.urlopen(node.base + "/healthz", timeout=5) as r:
            return r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.read().decode().strip()


def test_snapshot_then_changes_on_both_shards(fresh_node: Node, shards) -> None:
    for n in range(40):
        upsert(shards, n, f"Snapshot Song {n}")
    configure(fresh_node, shards)
    fresh_node.start()
    wait_equal(fresh_node, shards)
    for n in range(40, 80):
        upsert(shards, n, f"Streamed Tune {n}")
    for n in range(0, 10):
        upsert(shards, n, f"Renamed Melody {n}")
    for n in range(10, 20):
        delete(shards, n)
    wait_equal(fresh_node, shards)
    # A schema change mid-stream (a DDL group, which MariaDB logs without an XidEvent).
    for server in shards.values():
        server.execute("ALTER TABLE tracks ADD COLUMN popularity INT NOT NULL DEFAULT 0")
    for n in range(80, 90):
        upsert(shards, n, f"After Alter {n}")
    wait_equal(fresh_node, shards)
    assert {shard_of(track_id(n)) for n in range(40, 80)} == {"s0", "s1"}
    assert "Streamed Tune 41" in search(fresh_node, "streamed tune 41")
    assert len(search(fresh_node, "renamed melody")) == 10
    assert search(fresh_node, "snapshot song 15") == []


def test_a_track_deleted_and_written_again_in_one_transaction_is_there(fresh_node: Node,
                                                                        shards) -> None:
    for n in range(6):
        upsert(shards, n, f"First Take {n}")
    configure(fresh_node, shards)
    fresh_node.start()
    wait_equal(fresh_node, shards)
    tid = track_id(0)
    conn = shards[shard_of(tid)].connect("segue_catalogue")
    try:
        with conn.cursor() as cur:  # one source transaction: delete, then write it again
            cur.execute("BEGIN")
            cur.execute("DELETE FROM tracks WHERE track_id = %s", (tid,))
            cur.execute(
                "INSERT INTO tracks (track_id, keyspace_id, title, mime, bytes, chunks) "
                "VALUES (%s, %s, 'Second Take', 'audio/mpeg', 1000, 1)", (tid, keyspace_id(tid)))
            cur.execute("COMMIT")
        with conn.cursor() as cur:  # REPLACE INTO logs a delete and a write, or an update
            cur.execute(
                "REPLACE INTO tracks (track_id, keyspace_id, title, mime, bytes, chunks) "
                "VALUES (%s, %s, 'Replaced Take', 'audio/mpeg', 1000, 1)",
                (track_id(1), keyspace_id(track_id(1))))
    finally:
        conn.close()
    # An UPDATE of the key itself moves the row.
    moved = track_id(2)
    shards[shard_of(moved)].execute(
        "UPDATE tracks SET track_id = %s WHERE track_id = %s", moved[:-1] + "x", moved)
    wait_equal(fresh_node, shards)
    assert search(fresh_node, "second take") == ["Second Take"]
    assert search(fresh_node, "replaced take") == ["Replaced Take"]
    assert moved not in {tid for tid, _ in local_rows(fresh_node)}


def test_a_node_killed_mid_stream_resumes_exactly(fresh_node: Node, shards) -> None:
    configure(fresh_node, shards)
    fresh_node.start()
    for n in range(200):
        upsert(shards, n, f"Before Kill {n}")
        if n == 100:
            fresh_node.proc.send_signal(signal.SIGKILL)
            fresh_node.proc.wait(timeout=10)
    fresh_node.start()
    for n in range(200, 250):
        upsert(shards, n, f"After Restart {n}")
    wait_equal(fresh_node, shards)


def test_a_shard_down_degrades_and_catches_up(fresh_node: Node, shards) -> None:
    for n in range(20):
        upsert(shards, n, f"Steady {n}")
    configure(fresh_node, shards)
    fresh_node.start()
    wait_equal(fresh_node, shards)
    shards["s1"].kill()
    deadline = time.monotonic() + 20
    while healthz(fresh_node) != "degraded: plugin mysql degraded":
        assert time.monotonic() < deadline, healthz(fresh_node)
        time.sleep(0.1)
    # /healthz answers anyone: which shard and why is in the log.
    assert any("shard s1 not replicating" in e["detail"]
               for e in fresh_node.log_events_named("health"))
    assert len(search(fresh_node, "steady")) == 20  # the node still searches
    time.sleep(1.5)
    with urllib.request.urlopen(fresh_node.base + "/metrics", timeout=5) as r:
        lag = next(float(line.split()[-1]) for line in r.read().decode().splitlines()
                   if line.startswith('segue_replication_lag_seconds{shard="s1"}'))
    assert lag >= 1.0
    shards["s1"].start()
    for n in range(20, 40):
        upsert(shards, n, f"After Outage {n}")
    wait_equal(fresh_node, shards)
    deadline = time.monotonic() + 20
    while healthz(fresh_node) != "ok":
        assert time.monotonic() < deadline, healthz(fresh_node)
        time.sleep(0.1)


def test_a_purged_binlog_leads_to_a_fresh_snapshot(fresh_node: Node, shards) -> None:
    for n in range(20):
        upsert(shards, n, f"First {n}")
    configure(fresh_node, shards)
    fresh_node.start()
    wait_equal(fresh_node, shards)
    assert fresh_node.stop() == 0
    for n in range(20, 40):
        upsert(shards, n, f"While Down {n}")
    for server in shards.values():
        server.execute("FLUSH BINARY LOGS", database=None)
        (current,) = [row[0] for row in server.execute("SHOW MASTER STATUS", database=None)]
        server.execute(f"PURGE BINARY LOGS TO '{current}'", database=None)
    fresh_node.start()
    wait_equal(fresh_node, shards)
    assert any(e.get("event") == "taking a fresh snapshot" for e in fresh_node.log_events())


def test_a_server_logging_mixed_is_refused_naming_the_variable(fresh_node: Node,
                                                               tmp_path: Path) -> None:
    server = MariaDB(tmp_path / "mixed", server_id=9, binlog_flags=["--binlog-format=MIXED"])
    server.start()
    try:
        fresh_node.conf.write_text(fresh_node.conf.read_text() + (
            "\n[plugins.mysql]\n[[plugins.mysql.shards]]\nname = \"s0\"\nrange = \"-\"\n"
            f'host = "127.0.0.1"\nport = {server.port}\nuser = "root"\n'))
        result = subprocess.run([*SEGUE, "run", "--config", str(fresh_node.conf)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert "binlog_format is MIXED" in result.stderr
        assert "binlog_format=ROW" in result.stderr
    finally:
        server.kill()


def test_catalogue_init_and_pack_publish_to_the_right_shard(fresh_node: Node,
                                                            tmp_path: Path) -> None:
    from conftest import MP3, make_tone, segue

    servers = {name: MariaDB(tmp_path / name, server_id=i + 1) for i, name in enumerate(RANGES)}
    for server in servers.values():
        server.start()
    try:
        configure(fresh_node, servers)
        out = segue("catalogue", "init", "--config", fresh_node.conf).stdout
        assert out.count("tracks ready") == 2
        (track,) = fresh_node.pack(make_tone(tmp_path / "p.mp3", MP3, seconds=2,
                                             title="Published Tune"))
        home = servers[shard_of(track)]
        other = next(s for s in servers.values() if s is not home)
        assert home.execute("SELECT title, manifest_version FROM tracks WHERE track_id = %s",
                            track) == [("Published Tune", 1)]
        assert other.execute("SELECT count(*) FROM tracks") == [(0,)]
    finally:
        for server in servers.values():
            server.kill()
