"""Issue 19's chaos suite: faults injected into real processes while players stream.

Each scenario asserts what the design promises, as a player or an operator sees it: every
stream's bytes equal to the plaintext (a stream the design lets be cut is asked again from the
byte it lacks, with Range and If-Range, as players do), and the health that /healthz and
/v1/status show during the fault and after it.

What other modules already cover, and this one does not repeat:
- a share killed under one stream, and a hung share (SIGSTOP) before a request:
  test_shares.py (test_a_share_killed_mid_stream_costs_the_player_nothing,
  test_a_hung_smb_server_costs_its_share_and_nothing_else); here both happen under many
  streams at once, each already in flight, and /v1/status is asserted too;
- hung reads in-process (the share's own limiter, failover, probe): test_storage_hung_share.py;
- SIGTERM draining twenty slow players: test_life.py; here it is 500 streams;
- a worker SIGKILLed and started again, idle: test_workers.py; here it is killed under load;
- a MariaDB shard killed while idle, and caught up: test_replication.py; here it is killed
  while rows are being written;
- F5 answering 500s (HTML) and timeouts while the node registers: test_f5.py; here F5 breaks
  after registration, and stays broken for a while;
- HAProxy draining a node: test_haproxy.py; here its admin socket goes away and comes back.

The catalogue's disk is a 16 MiB tmpfs mounted below the node, and the unmounted share a bind
mount: both need root, as the Samba shares do.

Every wait has a deadline; timing thresholds are left to the benchmarks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pytest
import trio

from conftest import Node, make_tone, require, segue
from fake_f5 import FakeF5
from haproxy import HAProxy
from samba import Smbd
from test_f5 import POOL, session_of
from test_f5 import configure as register_with_f5
from test_hardening import configure, get, local_shares
from test_life import status_of
from test_replication import configure as replicate_from
from test_replication import local_rows, start_shards, track_id, upsert, wait_equal
from test_shares import use_shares
from test_workers import _set_workers, _wait_for, _workers_of

#: Bytes a player's socket buffers: with so little, an unread stream stays in flight on the node
#: (its writer blocked) instead of disappearing into kernel buffers.
PLAYER_RCVBUF = 16384
#: Attempts a player makes for one range before the test gives up on it.
MAX_ATTEMPTS = 5
STREAMS_TIMEOUT_S = 120


def wav(path: Path, seconds: int) -> Path:
    """Uncompressed audio: about 192 kB a second, so a few seconds span several chunks."""
    return make_tone(path, ["-c:a", "pcm_s16le"], seconds=seconds, title=path.stem)


@dataclass
class Play:
    """One player fetching bytes first..last of a track; a stream that is cut is asked again
    from the first byte missing (Range, with If-Range on the ETag), as players do."""

    path: str
    first: int
    last: int
    body: bytearray = field(default_factory=bytearray)
    cuts: int = 0
    #: The local port of each connection made, to find which process served it.
    ports: list[int] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return self.last - self.first + 1 - len(self.body)

    def matches(self, plaintext: bytes) -> bool:
        return (hashlib.sha256(self.body).digest()
                == hashlib.sha256(plaintext[self.first:self.last + 1]).digest())


async def _read_head(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    """The status, the header fields (lower-case names) and the body bytes read with them."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = await stream.receive_some(65536)
        if not piece:
            raise trio.BrokenResourceError("closed before the response head")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip()
              for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, rest


async def play(address: tuple[str, int], p: Play, begun: Callable[[], None],
               go: trio.Event) -> None:
    """Fetch `p` to its end. After the first response head (the stream is in flight on the
    node) call `begun()` and read no further until `go` is set."""
    etag = ""
    for attempt in range(MAX_ATTEMPTS):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PLAYER_RCVBUF)
        await sock.connect(address)
        p.ports.append(sock.getsockname()[1])
        stream = trio.SocketStream(sock)
        try:
            if_range = f"If-Range: {etag}\r\n" if etag else ""
            await stream.send_all(
                f"GET {p.path} HTTP/1.1\r\nHost: chaos\r\n"
                f"Range: bytes={p.first + len(p.body)}-{p.last}\r\n{if_range}\r\n".encode())
            status, fields, rest = await _read_head(stream)
            assert status == 206, (status, fields, rest)
            etag = fields["etag"]
            length = int(fields["content-length"])
            if attempt == 0:
                begun()
                await go.wait()
            p.body += rest
            length -= len(rest)
            while length > 0 and (piece := await stream.receive_some(65536)):
                p.body += piece
                length -= len(piece)
        except (trio.BrokenResourceError, OSError):
            pass  # reset by a process that died: asked again below
        finally:
            await stream.aclose()
        if not p.missing:
            return
        p.cuts += 1
    raise AssertionError(f"{p.path} {p.first}-{p.last}: {p.missing} bytes still missing "
                         f"after {MAX_ATTEMPTS} attempts")


def stream_through(node: Node, plays: list[Play], fault: Callable[[], None]) -> None:
    """Start every play and wait until each one's stream is in flight; then run `fault` (in a
    thread: it may block) and let every player read to the end."""
    host, port = node.base.removeprefix("http://").rsplit(":", 1)

    async def main() -> None:
        go, all_begun = trio.Event(), trio.Event()
        count = 0

        def begun() -> None:
            nonlocal count
            count += 1
            if count == len(plays):
                all_begun.set()

        with trio.fail_after(STREAMS_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for p in plays:
                    nursery.start_soon(play, (host, int(port)), p, begun, go)
                await all_begun.wait()
                await trio.to_thread.run_sync(fault)
                go.set()

    trio.run(main)


def ranges_of(node: Node, track: str, count: int, length: int, size: int) -> list[Play]:
    """`count` plays of `length` bytes each, at offsets spread over the track."""
    path = f"/v1/tracks/{track}?token={node.token()}"
    step = max((size - length) // count, 1)
    return [Play(path, first, first + length - 1)
            for first in (i * step % (size - length) for i in range(count))]


def status_doc(node: Node) -> dict:
    code, body = status_of(node.base + "/v1/status")
    assert code == 200, body
    return json.loads(body)


def wait_health(node: Node, healthz: tuple[int, str], timeout: float = 20) -> dict:
    """Wait until /healthz answers `healthz`; /v1/status must then say the same. Returns the
    status document."""
    said: list[tuple[int, str]] = []

    def answers() -> bool:
        said.append(status_of(node.base + "/healthz"))
        return said[-1] == healthz

    try:
        _wait_for(answers, timeout)
    except AssertionError:
        raise AssertionError(f"/healthz still says {said[-1]}, not {healthz}") from None
    doc = status_doc(node)
    code, text = healthz
    status, _, reason = text.partition(": ")
    if code == 200 and status == "ok":
        assert doc["health"] == {"status": "ok", "reason": ""}, doc
    elif status in ("degraded", "failing"):
        assert doc["health"] == {"status": status, "reason": reason}, doc
    return doc


# --- SIGTERM under 500 streams, a worker SIGKILLed under load --------------------------------

STREAMS = 500


@pytest.fixture
def long_track(fresh_node: Node, tmp_path: Path) -> tuple[str, bytes]:
    source = wav(tmp_path / "long.wav", seconds=10)
    (track,) = fresh_node.pack(source)
    return track, source.read_bytes()


def test_sigterm_under_500_streams_loses_none(fresh_node: Node,
                                              long_track: tuple[str, bytes]) -> None:
    """docs/operations.md, Stop: streams in flight finish, /healthz answers 503 draining, the
    process exits 0."""
    track, plaintext = long_track
    fresh_node.start()
    plays = ranges_of(fresh_node, track, STREAMS, 160_000, len(plaintext))

    def sigterm() -> None:
        _wait_for(lambda: status_doc(fresh_node)["streams_in_flight"] == STREAMS)
        fresh_node.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: status_of(fresh_node.base + "/healthz") == (503, "draining"))
        assert status_doc(fresh_node)["state"] == "draining"

    stream_through(fresh_node, plays, sigterm)
    assert fresh_node.proc.wait(timeout=30) == 0
    assert [p.cuts for p in plays] == [0] * STREAMS
    assert all(p.matches(plaintext) for p in plays)


def _server_pids(port: int) -> dict[int, int]:
    """Client port -> the pid of the process holding the node's end of that connection."""
    ss = require("ss", "iproute2")
    out = subprocess.run([ss, "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    found = {}
    for line in out.splitlines():
        peer = re.search(r":\d+\s+\S+:(\d+)\s", line)
        pid = re.search(r"pid=(\d+)", line)
        if peer and pid:
            found[int(peer.group(1))] = int(pid.group(1))
    return found


def test_a_worker_sigkilled_under_load_costs_only_its_own_streams(
        fresh_node: Node, long_track: tuple[str, bytes]) -> None:
    """docs/operations.md, Several cores: a connection stays with the process that accepted
    it, and a worker that dies is started again. Its players' streams are cut and resumed
    (elsewhere) with Range; nobody else's stream is touched, and the node stays healthy."""
    track, plaintext = long_track
    _set_workers(fresh_node, 3)
    fresh_node.start()
    _wait_for(lambda: len(fresh_node.log_events_named("listening")) == 3)
    port = int(fresh_node.base.rsplit(":", 1)[1])
    plays = ranges_of(fresh_node, track, 60, 400_000, len(plaintext))
    served_by: dict[int, int] = {}
    victim = 0

    def kill_the_busiest_worker() -> None:
        nonlocal victim
        served_by.update(_server_pids(port))
        workers = _workers_of(fresh_node)
        victim = max(workers, key=lambda pid: sum(p == pid for p in served_by.values()))
        os.kill(victim, signal.SIGKILL)

    stream_through(fresh_node, plays, kill_the_busiest_worker)
    assert all(p.matches(plaintext) for p in plays)
    cut = {i for i, p in enumerate(plays) if p.cuts}
    on_victim = {i for i, p in enumerate(plays) if served_by.get(p.ports[0]) == victim}
    assert on_victim and cut == on_victim
    _wait_for(lambda: victim not in _workers_of(fresh_node) and len(_workers_of(fresh_node)) == 2)
    assert fresh_node.wait_for_event("worker exited")["status"] == -signal.SIGKILL
    wait_health(fresh_node, (200, "ok"))


# --- SMB shares killed and hung mid-stream ----------------------------------------------------

@pytest.fixture(scope="module")
def smb_node(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Node, dict[str, Smbd], str, bytes]]:
    """A node on three Samba shares holding two copies of each chunk, one track packed. No
    chunk cache: every chunk of every stream is read from the shares, the worst case."""
    root = tmp_path_factory.mktemp("chaos-smb")
    servers = {name: Smbd(root / f"smb-{name}", name) for name in ("a", "b", "c")}
    node = Node.init(root / "edge")
    try:
        for server in servers.values():
            server.start()
        use_shares(node, list(servers.values()))
        configure(node, "cache", "bytes = 0")
        source = wav(root / "track.wav", seconds=10)
        (track,) = node.pack(source)
        node.start()
        yield node, servers, track, source.read_bytes()
    finally:
        node.stop()
        for server in servers.values():
            server.stop()


def test_a_share_hung_mid_stream_costs_no_stream(smb_node) -> None:
    """docs/operations.md, Storage: a read that takes longer than read_timeout_s marks the
    share down and goes to the next copy; /healthz says degraded while it is down."""
    node, servers, track, plaintext = smb_node
    plays = ranges_of(node, track, 20, 1_500_000, len(plaintext))
    group = servers["a"].proc.pid
    try:
        stream_through(node, plays, lambda: os.killpg(group, signal.SIGSTOP))
        wait_health(node, (200, "degraded: share a down"))
    finally:
        os.killpg(group, signal.SIGCONT)
    assert [p.cuts for p in plays] == [0] * len(plays)
    assert all(p.matches(plaintext) for p in plays)
    wait_health(node, (200, "ok"))


def test_a_share_killed_mid_stream_costs_no_stream(smb_node) -> None:
    node, servers, track, plaintext = smb_node
    plays = ranges_of(node, track, 20, 1_500_000, len(plaintext))
    stream_through(node, plays, servers["b"].kill)
    wait_health(node, (200, "degraded: share b down"))
    assert [p.cuts for p in plays] == [0] * len(plays)
    assert all(p.matches(plaintext) for p in plays)
    servers["b"].start()
    wait_health(node, (200, "ok"))


# --- a share unmounted: its mount point left as an empty folder --------------------------------

def _mount(*args: str | Path) -> None:
    subprocess.run([require("mount", "mount"), *map(str, args)], check=True, timeout=30,
                   capture_output=True)


def _unmount(path: Path) -> None:
    # Lazy: a read in flight keeps the old mount until it ends, as with a CIFS mount that goes.
    subprocess.run([require("umount", "mount"), "--lazy", str(path)], check=True, timeout=30,
                   capture_output=True)


def test_a_share_unmounted_mid_stream_is_down_not_empty(fresh_node: Node,
                                                        tmp_path: Path) -> None:
    """A CIFS share configured as a path whose mount goes away leaves an empty folder: that is
    the share down (docs/operations.md, Health: "share a down" while every chunk has another
    copy), not a share that holds no tracks. Streams go on from the other copies."""
    shares = local_shares(fresh_node, ("a", "b"))  # two copies of everything: a and b
    for made in shares["a"].iterdir():  # a mount point is an empty folder under the mount
        shutil.rmtree(made) if made.is_dir() else made.unlink()
    disk = tmp_path / "disk-a"
    disk.mkdir()
    _mount("--bind", disk, shares["a"])
    try:
        segue("store", "mark", "--new", "--share", "a", "--config", fresh_node.conf)
        source = wav(tmp_path / "track.wav", seconds=10)
        (track,) = fresh_node.pack(source)
        plaintext = source.read_bytes()
        configure(fresh_node, "cache", "bytes = 0")
        fresh_node.start()
        plays = ranges_of(fresh_node, track, 20, 1_500_000, len(plaintext))
        stream_through(fresh_node, plays, lambda: _unmount(shares["a"]))
        assert [p.cuts for p in plays] == [0] * len(plays)
        assert all(p.matches(plaintext) for p in plays)
        wait_health(fresh_node, (200, "degraded: share a down"))
        _mount("--bind", disk, shares["a"])
        wait_health(fresh_node, (200, "ok"))
    finally:
        subprocess.run(["umount", "--lazy", str(shares["a"])], check=False, timeout=30,
                       capture_output=True)


# --- MariaDB killed while rows are written; the catalogue's disk full ------------------------

CATALOGUE_DISK = "disk"  # below the node: a small tmpfs of its own
CATALOGUE = f"{CATALOGUE_DISK}/catalogue.sqlite"


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A node replicating two MariaDB shards into a catalogue on a 16 MiB tmpfs (room for its
    WAL), serving two tracks that catalogue has never seen (packed with the node's first
    catalogue, as tracks packed on another host are), so each one's first play records its
    manifest version there."""
    root = tmp_path_factory.mktemp("chaos-db")
    shards = start_shards(root / "db")
    node = Node.init(root / "edge")
    disk = node.root / CATALOGUE_DISK
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", disk)
    try:
        sources = [wav(root / f"track-{i}.wav", seconds=3) for i in range(2)]
        tracks = dict(zip(node.pack(*sources), (s.read_bytes() for s in sources), strict=True))
        node.conf.write_text(node.conf.read_text().replace(
            'path = "catalogue.sqlite"', f'path = "{CATALOGUE}"'))
        replicate_from(node, shards)
        node.start()
        yield node, shards, list(tracks.items())
    finally:
        node.stop()
        for server in shards.values():
            server.kill()
        _unmount(disk)


class Writer:
    """Rows written to the shards one by one (each committed on its own) from a thread, until
    stopped; `acknowledged` holds the rows whose commit returned."""

    def __init__(self, shards, first: int, title: str) -> None:  # type: ignore[no-untyped-def]
        self.acknowledged: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, args=(shards, first, title))
        self._thread.start()

    def _write(self, shards, n: int, title: str) -> None:  # type: ignore[no-untyped-def]
        while not self._stop.is_set():
            try:
                upsert(shards, n, f"{title} {n}")
                self.acknowledged.add(track_id(n))
            except pymysql.err.MySQLError:
                pass  # that shard is down: the row was not written, and nobody was told so
            n += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def plays_and_searches(node: Node, track: str, plaintext: bytes, text: str) -> None:
    """The node serves the track whole and answers a search."""
    assert get(node.url(track, node.token())) == (200, plaintext)
    code, _ = get(f"{node.base}/v1/search?q={urllib.parse.quote(text)}&token={node.token()}")
    assert code == 200


def caught_up(node: Node, shards) -> None:  # type: ignore[no-untyped-def]
    """Every source row in the node's catalogue, and the node healthy."""
    wait_equal(node, shards, catalogue=CATALOGUE)
    wait_health(node, (200, "ok"))


def plugin_health(doc: dict, name: str) -> dict:
    return next(p["health"] for p in doc["plugins"] if p["name"] == name)


def test_mariadb_killed_while_rows_are_written_loses_no_row(replicated) -> None:
    """docs/catalogue.md, Replication: every source transaction is applied with its position,
    and after any error the reader resumes from the stored position: a shard killed mid-write
    costs no row once it is back. Meanwhile the node is degraded and serves."""
    node, shards, ((track, plaintext), _) = replicated
    caught_up(node, shards)
    writer = Writer(shards, 0, "Written Through")
    try:
        _wait_for(lambda: len(writer.acknowledged) >= 40)
        shards["s1"].kill()
        doc = wait_health(node, (200, "degraded: plugin mysql degraded"))
        assert plugin_health(doc, "mysql") == {"status": "degraded",
                                               "reason": "plugin mysql degraded"}
        plays_and_searches(node, track, plaintext, "written through")
        shards["s1"].start()
        _wait_for(lambda: len(writer.acknowledged) >= 80)
    finally:
        writer.stop()
    caught_up(node, shards)
    assert writer.acknowledged <= {row[0] for row in local_rows(node, CATALOGUE)}


def _fill(path: Path) -> None:
    """Write zeros to `path` until its file system is full."""
    block = bytes(1 << 20)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        block = bytes(4096)
        with contextlib.suppress(OSError):
            while True:
                f.write(block)


def test_the_catalogue_disk_full_loses_no_row_and_serves(replicated) -> None:
    """A full disk under the catalogue: replication cannot apply a transaction, so it applies
    none (each goes with its position, docs/catalogue.md) and retries; the node is degraded,
    and serves and searches meanwhile. Once there is room, every row arrives."""
    node, shards, (_, (track, plaintext)) = replicated
    caught_up(node, shards)
    filler = node.root / CATALOGUE_DISK / "filler"
    _fill(filler)
    try:
        # Rows keep coming until one finds no room (a WAL being reused holds a few more).
        degraded = (200, "degraded: plugin mysql degraded")
        for n in range(1000, 1300):
            upsert(shards, n, f"Disk Full {n} " + "x" * 400)
            if status_of(node.base + "/healthz") == degraded:
                break
        wait_health(node, degraded)
        assert any("database or disk is full" in event["detail"]
                   for event in node.log_events_named("health"))
        plays_and_searches(node, track, plaintext, "disk full")
    finally:
        filler.unlink()
    caught_up(node, shards)


# --- the balancers: F5 answering 500s (HTML), HAProxy's admin socket gone --------------------

@pytest.fixture
def short_track(fresh_node: Node, tmp_path: Path) -> tuple[str, bytes]:
    source = wav(tmp_path / "short.wav", seconds=2)
    (track,) = fresh_node.pack(source)
    return track, source.read_bytes()


def test_f5_answering_500s_in_html_degrades_and_the_node_serves(
        fresh_node: Node, short_track: tuple[str, bytes]) -> None:
    """plugins/segue_f5: F5 never stops the node from serving; every failure is retried in the
    background and reported as degraded. Here F5 breaks after the member was enabled."""
    track, plaintext = short_track
    with FakeF5(username="svc-segue", password="pw") as f5:
        f5.add_pool(POOL)
        register_with_f5(fresh_node, f5)
        fresh_node.start()
        _wait_for(lambda: session_of(f5, fresh_node) == "user-enabled")
        wait_health(fresh_node, (200, "ok"))
        f5.fail_next(1_000_000, 500, html=True)  # Jetty's HTML error page, to every call
        doc = wait_health(fresh_node, (200, "degraded: plugin f5 degraded"))
        assert plugin_health(doc, "f5") == {"status": "degraded",
                                            "reason": "plugin f5 degraded"}
        assert get(fresh_node.url(track, fresh_node.token())) == (200, plaintext)
        f5.clear_faults()
        wait_health(fresh_node, (200, "ok"))
        assert session_of(f5, fresh_node) == "user-enabled"
        assert fresh_node.stop() == 0  # while F5 answers: the member is drained, not left


def test_haproxys_socket_gone_degrades_and_the_node_registers_again(
        fresh_node: Node, short_track: tuple[str, bytes], tmp_path: Path) -> None:
    """plugins/segue_haproxy: HAProxy being away never stops the node from serving; it is
    degraded meanwhile, and registers again in its slot when HAProxy is back."""
    track, plaintext = short_track
    proxy = HAProxy(tmp_path / "haproxy")
    configure(fresh_node, "plugins.haproxy", f'admin_socket = "{proxy.socket}"\nbackend = "be"\n'
              'server = "edge1"\nreconcile_interval_s = 0.3')
    configure(fresh_node, "plugin_host", "health_interval_s = 0.3")
    proxy.start()
    try:
        fresh_node.start()
        _wait_for(lambda: proxy.status("edge1") == "UP")
        wait_health(fresh_node, (200, "ok"))
        proxy.stop()  # and its admin socket with it
        doc = wait_health(fresh_node, (200, "degraded: plugin haproxy degraded"))
        assert plugin_health(doc, "haproxy") == {"status": "degraded",
                                                 "reason": "plugin haproxy degraded"}
        assert get(fresh_node.url(track, fresh_node.token())) == (200, plaintext)
        proxy.start()  # a new HAProxy: its slots as configured, edge1 disabled
        _wait_for(lambda: proxy.status("edge1") == "UP")
        wait_health(fresh_node, (200, "ok"))
        assert get(f"{proxy.url}/v1/tracks/{track}?token={fresh_node.token()}") == (
            200, plaintext)
    finally:
        proxy.stop()
