"""Benchmark: many players streaming a track at its real-time rate, Segue against nginx.

This prints figures; it judges nothing. serve_vs_nginx.py asks how fast a server answers range
requests. This script asks whether a server can hold many slow players at once, which is how an
edge node is really loaded: --players (default 2,000) connections open together, and each reads
a track no faster than a player plays it. TCP flow control then makes the server wait on every
socket, so the server has to keep 2,000 slow sockets fed, a little at a time, for a whole minute.

The servers run one after the other in the same run (segue first, then nginx; with --rounds > 1
every even round reverses the order). Each has its own free loopback port:

* segue: a throwaway node (`segue init`), one ffmpeg-generated WAV (--audio-seconds, default
  360 s, about 69 MB) packed into it, a player token, and `segue run` with [log] level =
  "warning". Its decrypted-chunk cache keeps its default (256 MiB) unless --segue-cache is
  given. When the first round starts, the cache holds only the one chunk that the byte check
  read, so the first players also pay for decrypting chunks.
* nginx: serve_vs_nginx.py's config (one worker, sendfile, access_log off), with
  worker_connections 4096 and `listen ... backlog=4096`, serving the same WAV as plaintext.

When the machine has two CPUs or more, the server is pinned to one CPU with taskset and the
load generator (this process's main thread) to the other (--no-pin turns this off). The load
generator's garbage collector is paused during a round. Both servers inherit this process's
RLIMIT_NOFILE, which is first raised to its hard limit: 2,000 players need 2,000 sockets here,
and the server needs 2,000 too (plus an open file each for nginx).

The load generator is this process, written with trio. Player i starts at i * --ramp / --players
seconds. The ramp (default 10 s) keeps the start from being one SYN flood. Each player:

1. connects (10 s timeout) and sends `GET PATH HTTP/1.1` with `Range: bytes=START-`, plus
   `Authorization: Bearer TOKEN` for Segue. START is a random 256 KiB-aligned offset in the
   first half of the file; every server in a round gets the same offsets;
2. parses the response head itself, wants 206 and a Content-Range that starts at START, and
   waits for the first body byte (10 s from the request being sent, head included);
3. reads the body on a schedule: t seconds after its first body byte, it may have read
   burst + rate * t bytes. The rate is --rate (default 40,000 bytes/s, a 320 kbit/s track), and
   the burst is --burst-seconds of audio (default 10 s, 400,000 bytes). So the player first reads
   10 s of audio as fast as the server sends it, which is the buffer fill a real player does when
   it starts. In this burst, its own trio task reads each time data arrives (at most 64 KiB per
   receive). After that, it reads at the track's real-time rate: its socket goes to one pacer
   task, which visits every paced player once per --tick (default 0.1 s) and does a
   non-blocking recv of what the schedule allows, if the data is there. (One task per player,
   sleeping between reads, costs about 60,000 task switches a second at 2,000 players: more
   than one CPU can do in Python.) Every byte read is compared with the file. A player that gets
   no data for --read-timeout (default 30 s) fails;
4. stops --seconds (default 60) after its own first body byte and closes the connection, as a
   player does when the listener stops (the range it asked for runs to the end of the file).
   So every player streams for the same 60 s (about 2.8 MB), and all of them stream at once from
   the end of the ramp until the first one stops: 50 s with the defaults.

A failure never stops the run. It is counted by kind: connect_timeout, connect_<errno>,
ttfb_timeout, status_<code>, bad_head, bad_range, eof (the server closed early), read_timeout,
send_<errno> or read_<errno> (a reset), wrong_bytes, run_timeout (still going when the round's
time limit passed). A player that fails after its first byte keeps its TTFB and stall.

Per server, the report gives:

* TTFB p50 / p99 / max (ms): from the request having been sent to the read that brought the
  first body byte, over the players that got one. Connect p50 / p99 likewise;
* stall (ms): for each player, the longest gap between two consecutive reads that returned
  data, counted from its first body byte. A paced player reads once per tick, so a server that
  keeps up gives about 100 ms. The pacer finds out that data has arrived only at its next visit,
  so a gap is measured to within one tick: one visit that finds the socket empty shows as about
  200 ms. Reported: the longest that any player saw (stall_max_ms), and p99 / p50 of the
  per-player longest stall;
* RSS (MiB): VmRSS from /proc/PID/status for the server's process tree, summed (Segue: its
  process and any --workers children; nginx: master plus worker). It is sampled every 0.5 s
  during the round: the peak, plus the value before the round and 1 s after it;
* kernel socket memory, which no RSS includes: server_sendq_peak_mib is the largest total Send-Q
  (bytes queued, not yet acknowledged) of the server's established sockets, from `ss` every 5 s.
  tcp_mem_peak_mib is the machine's TCP memory at its peak (/proc/net/sockstat: both ends of
  every connection, and any other program's too), and setup.kernel gives the tcp_mem limit.
  tcp_counters holds the change over the round in the machine-wide kernel counters for memory
  pressure, receive-queue pruning and drops, retransmission timeouts and listen overflows. When
  the sockets reach the tcp_mem limit, the kernel drops packets and players wait for
  retransmission timeouts, and the stall figures then show the kernel rather than the server;
* completed / failed players, errors by kind, body bytes received, and the server's CPU time
  (utime + stime of the tree) as a share of the round's wall time, overall and in its busiest
  1 s window. server_cpu_wait_pct is how long the server's threads were runnable but waiting
  for a CPU (schedstat), as a share of wall time; on an idle machine it is near 0;
* the load generator's health: its CPU share, its CPU wait (as above), and how late a 100 ms
  timer in its event loop woke (loadgen_lag_p99_ms / _max_ms). If the load generator is
  saturated or starved, TTFB and stall measure it and not the server, and these figures show
  whether that happened.

ratios["segue/nginx"] gives segue / nginx for ttfb_p50_ms, ttfb_p99_ms and rss_peak_mib (above
1: Segue is slower or bigger).

Run it with the project's interpreter:

    .venv/bin/python bench/players.py [--players 2000] [--seconds 60] [--ramp 10]
        [--rate 40000] [--burst-seconds 10] [--tick 0.1] [--read-timeout 30]
        [--servers segue,nginx] [--rounds 1] [--segue-cache BYTES] [--seed 1] [--no-pin]
        [--keep] [--json]

Needs the Debian packages ffmpeg and nginx-light (or any nginx); `ss` (iproute2) for the
Send-Q figure, which is null without it. Each round against each server takes --ramp +
--seconds + about 2 s. A default run takes about 3 minutes with the setup.

JSON (--json), stable for scripts that build docs/performance.md:

    {"scenario": "players",
     "machine": {nproc, cpus_usable, cpu_model, kernel, loadavg_1m_before, versions},
     "setup": {players, seconds, ramp_s, rate_bytes_per_s, burst_seconds, burst_bytes, tick_s,
               connect_timeout_s, ttfb_timeout_s, read_timeout_s, receive_max_bytes, rounds,
               seed, file_bytes, audio_seconds, start_offsets, session, pinning,
               rlimit_nofile, kernel: {tcp_mem_max_mib, tcp_wmem, tcp_rmem, somaxconn},
               segue_cache_bytes, nginx, servers: {name: label}},
     "results": {server: {players, completed, failed, errors: {kind: count},
                          connect_p50_ms, connect_p99_ms, ttfb_p50_ms, ttfb_p99_ms, ttfb_max_ms,
                          stall_max_ms, stall_p99_ms, stall_p50_ms, bytes_total, mb_per_s,
                          rss_before_mib, rss_peak_mib, rss_end_mib, server_sendq_peak_mib,
                          tcp_mem_peak_mib, server_cpu_s, server_cpu_pct, server_cpu_peak_pct,
                          server_cpu_wait_pct, loadgen_cpu_pct, loadgen_cpu_wait_pct,
                          loadgen_lag_p99_ms, loadgen_lag_max_ms, peak_streaming, wall_s,
                          tcp_counters: {name: change},
                          ttfb_ms_all: [...], stall_ms_all: [...]}},
     "runs": {server: [one such dict per round, without the two arrays]},
     "ratios": {"segue/nginx": {ttfb_p50_ms, ttfb_p99_ms, rss_peak_mib}}}

results pools every round: percentiles are over all players of all rounds; counts, bytes, CPU
and counters are summed; rss_peak_mib, the Send-Q, TCP memory and busiest-second CPU figures are
the largest of any round; rss_before_mib comes from the first round and rss_end_mib from the
last. ttfb_ms_all and stall_ms_all hold one value per player that got its first body byte
(rounded to 0.1 ms), in the same player order, so the two arrays line up. A value that cannot be
computed (no player got a byte, a ratio over 0, no `ss`) is null. ratios is {} unless both
servers ran.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import math
import os
import random
import resource
import shutil
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common import (
    BenchError,
    ffmpeg_version,
    first_line,
    free_ports,
    log,
    machine,
    make_audio,
    need,
    pinning,
    run_in_temp_dir,
    setup_segue,
    tree_cpu_s,
    tree_pids,
)
from serve_vs_nginx import BLOCK, NGINX_CONF, Server, check_same_bytes, nginx_server, segue_server

LABELS = {"segue": "segue", "nginx": "nginx"}
CONNECT_TIMEOUT_S = 10.0
TTFB_TIMEOUT_S = 10.0
RECEIVE_MAX = 64 * 1024  # bytes asked for per receive, at most
HEAD_MAX = 16 * 1024  # a longer response head is bad_head
SAMPLE_S = 0.5  # RSS and TCP memory sampling period
SENDQ_S = 5.0  # the server's socket send queues (with ss), sampling period
LAG_TICK_S = 0.1  # the load generator's own timer, whose lateness is loadgen lag
SETTLE_S = 1.0  # after a round, before RSS at the end is read
PROGRESS_S = 10.0
NGINX_CONNECTIONS = 4096
NGINX_BACKLOG = 4096
RATIO_KEYS = ("ttfb_p50_ms", "ttfb_p99_ms", "rss_peak_mib")
# Machine-wide kernel TCP counters whose change over a round is reported: memory pressure,
# receive-queue pruning and drops (packets the kernel threw away for lack of socket memory),
# retransmission timeouts, and listen-queue overflows.
TCP_COUNTERS = ("TCPMemoryPressures", "TCPMemoryPressuresChrono", "PruneCalled", "TCPRcvQDrop",
                "TCPTimeouts", "RetransSegs", "ListenOverflows", "ListenDrops",
                "TCPAbortOnMemory", "TCPLossProbes")
MIB = 1024 * 1024


def nginx_template() -> str:
    """serve_vs_nginx.py's nginx config with room for thousands of connections."""
    swaps = (("worker_connections 1024;", f"worker_connections {NGINX_CONNECTIONS};"),
             ("listen 127.0.0.1:{port};", f"listen 127.0.0.1:{{port}} backlog={NGINX_BACKLOG};"))
    template = NGINX_CONF
    for old, new in swaps:
        if old not in template:
            raise BenchError(f"serve_vs_nginx.NGINX_CONF no longer has {old!r}; update "
                             f"players.nginx_template")
        template = template.replace(old, new)
    return template


# --- the server's process tree, read from /proc ---------------------------------------------

def tree_rss_kib(root: int) -> int:
    """Summed VmRSS of the process tree, in KiB."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def tree_runq_wait_s(root: int) -> float:
    """Summed time the tree's threads waited for a CPU while runnable (schedstat), in s."""
    total = 0
    for pid in tree_pids(root):
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[1])
    return total / 1e9


def own_runq_wait_s() -> float:
    """How long this thread (the players' event loop) waited for a CPU while runnable, in s."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    return 0.0


def tcp_counters() -> dict[str, int]:
    """TCP_COUNTERS, read from /proc/net/netstat and /proc/net/snmp (name and value lines)."""
    found: dict[str, int] = {}
    for source in ("/proc/net/netstat", "/proc/net/snmp"):
        with contextlib.suppress(OSError, ValueError):
            lines = Path(source).read_text().splitlines()
            for names, values in zip(lines[::2], lines[1::2], strict=False):
                for name, value in zip(names.split()[1:], values.split()[1:], strict=False):
                    if name in TCP_COUNTERS:
                        found[name] = int(value)
    return found


def tcp_mem_kib() -> int:
    """Machine-wide TCP socket memory (/proc/net/sockstat counts pages)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


# --- one player -------------------------------------------------------------------------------

class Failed(Exception):
    """The player failed; `kind` is how it is counted."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def os_kind(prefix: str, e: BaseException) -> str:
    """prefix_errno-name of the OSError behind `e` (trio wraps it in BrokenResourceError)."""
    cause = e if isinstance(e, OSError) else e.__cause__
    code = getattr(cause, "errno", None)
    name = errno.errorcode.get(code, "error") if isinstance(code, int) else "closed"
    return f"{prefix}_{name.lower()}"


@dataclass(slots=True)
class Player:
    start: int  # the first byte asked for
    connect_s: float | None = None
    ttfb_s: float | None = None
    stall_s: float = 0.0
    bytes: int = 0
    completed: bool = False
    error: str | None = None


class Reading:
    """A player's body being read: its schedule, where it is, and its longest gap so far."""

    __slots__ = ("done", "end", "error", "first", "last", "load", "player", "pos", "sock")

    def __init__(self, load: Load, player: Player, sock: socket.socket, first: float) -> None:
        self.load = load
        self.player = player
        self.sock = sock
        self.first = self.last = first
        self.end = first + load.seconds
        self.pos = player.start
        self.done = trio.Event()
        self.error: str | None = None

    def allowed(self, now: float) -> float:
        """Bytes the schedule lets the player read at `now` (burst + rate * t, less what it has)."""
        return self.load.burst + self.load.rate * (now - self.first) - self.player.bytes

    def take(self, data: bytes, now: float) -> None:
        """Count bytes read at `now`, after checking them against the file."""
        p = self.player
        if p.bytes and now - self.last > p.stall_s:
            p.stall_s = now - self.last
        self.last = now
        n = len(data)
        if data != self.load.audio[self.pos:self.pos + n]:
            raise Failed("wrong_bytes")
        self.pos += n
        p.bytes += n

    def finish(self, error: str | None) -> None:
        self.error = error
        self.done.set()


class Pacer:
    """Reads for every player that is on its schedule, in one task.

    One task per player sleeping --tick between reads costs the event loop three task switches
    per read, 60,000 a second for 2,000 players: more than one CPU can do in Python. So after
    its burst, a player hands its socket to the pacer, which wakes GROUPS times per tick and
    serves one group each time (every player once per tick, the players spread over the tick):
    a non-blocking recv of what the schedule allows, and nothing more when the socket is empty.
    A gap is therefore measured to within one tick.
    """

    GROUPS = 10

    def __init__(self, load: Load) -> None:
        self.load = load
        self.groups: list[list[Reading]] = [[] for _ in range(self.GROUPS)]
        self.joined = 0

    async def follow(self, r: Reading) -> None:
        """Read for `r` until its session ends; raises Failed if it fails."""
        self.groups[self.joined % self.GROUPS].append(r)
        self.joined += 1
        await r.done.wait()
        if r.error is not None:
            raise Failed(r.error)

    async def run(self) -> None:
        slot = self.load.tick / self.GROUPS
        target = trio.current_time()
        turn = 0
        while True:
            target += slot
            await trio.sleep_until(target)
            now = trio.current_time()
            group = self.groups[turn]
            if group:
                self.groups[turn] = [r for r in group if not self.serve(r, now)]
            turn = (turn + 1) % self.GROUPS
            if target < now - 1.0:
                target = now  # far behind: do not race through the missed slots

    def serve(self, r: Reading, now: float) -> bool:
        """One paced visit: read what is allowed and there; True when the reading is over."""
        if now >= r.end:
            r.finish(None)
            return True
        allowed = int(r.allowed(now))
        try:
            while allowed > 0:
                ask = min(allowed, RECEIVE_MAX)
                data = r.sock.recv(ask)
                if not data:
                    raise Failed("eof")
                r.take(data, now)
                allowed -= len(data)
                if len(data) < ask:
                    break  # the socket is empty now
        except BlockingIOError:
            pass
        except Failed as e:
            r.finish(e.kind)
            return True
        except OSError as e:
            r.finish(os_kind("read", e))
            return True
        if now - r.last > self.load.read_timeout:
            r.finish("read_timeout")
            return True
        return False


@dataclass
class Load:
    """What every player of one round shares: the target, the schedule, the file's bytes."""

    port: int
    path: str
    auth: str | None
    audio: bytes
    rate: float
    burst: float
    seconds: float
    tick: float
    read_timeout: float
    streaming: int = 0

    def request(self, start: int) -> bytes:
        lines = [f"GET {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 f"Range: bytes={start}-", "User-Agent: segue-bench-players"]
        if self.auth:
            lines.append(f"Authorization: {self.auth}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lowercased) of a response head without its blank line."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise Failed("bad_head")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise Failed("bad_head")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers


async def read_head(stream: trio.SocketStream, start: int) -> bytes:
    """Read and check the head; return the body bytes that came with it (maybe none)."""
    buf = b""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > HEAD_MAX:
            raise Failed("bad_head")
        data = await stream.receive_some(RECEIVE_MAX)
        if not data:
            raise Failed("eof")
        buf += data
    status, headers = parse_head(buf[:end])
    if status != 206:
        raise Failed(f"status_{status}")
    if not headers.get("content-range", "").startswith(f"bytes {start}-"):
        raise Failed("bad_range")
    return buf[end + 4:]


async def first_body(load: Load, p: Player, stream: trio.SocketStream) -> bytes:
    """Send the request, read the head, wait for the first body byte; sets p.ttfb_s."""
    try:
        with trio.fail_after(TTFB_TIMEOUT_S):
            try:
                await stream.send_all(load.request(p.start))
            except trio.BrokenResourceError as e:
                raise Failed(os_kind("send", e)) from None
            sent = trio.current_time()
            body = await read_head(stream, p.start)
            while not body:
                body = await stream.receive_some(RECEIVE_MAX)
                if not body:
                    raise Failed("eof")
    except trio.TooSlowError:
        raise Failed("ttfb_timeout") from None
    p.ttfb_s = trio.current_time() - sent
    return body


async def burst(r: Reading, stream: trio.SocketStream) -> None:
    """Read as fast as the data comes until the player is on schedule (the buffer fill)."""
    tick_bytes = r.load.rate * r.load.tick
    with trio.CancelScope() as scope:
        while True:
            now = trio.current_time()
            allowed = r.allowed(now)
            if now >= r.end or allowed < tick_bytes:
                return
            scope.deadline = now + r.load.read_timeout
            data = await stream.receive_some(min(int(allowed), RECEIVE_MAX))
            if not data:
                raise Failed("eof")
            r.take(data, trio.current_time())
    raise Failed("read_timeout")  # only the scope's deadline gets here


async def play(load: Load, pacer: Pacer, p: Player, start_at: float) -> None:
    """One player, from its connect to its close; a failure is recorded, never raised."""
    await trio.sleep_until(start_at)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setblocking(False)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        began = trio.current_time()
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await sock.connect(("127.0.0.1", load.port))
        except trio.TooSlowError:
            raise Failed("connect_timeout") from None
        except OSError as e:
            raise Failed(os_kind("connect", e)) from None
        p.connect_s = trio.current_time() - began
        stream = trio.SocketStream(sock)
        body = await first_body(load, p, stream)
        r = Reading(load, p, raw, trio.current_time())
        r.take(body, r.first)
        load.streaming += 1
        try:
            await burst(r, stream)
            await pacer.follow(r)
        finally:
            load.streaming -= 1
        p.completed = True
    except Failed as e:
        p.error = e.kind
    except trio.BrokenResourceError as e:
        p.error = os_kind("read", e)
    finally:
        sock.close()  # with unread data: a reset, as when a player stops mid-track


# --- one round against one server -------------------------------------------------------------

@dataclass
class Round:
    """One server's players and what was sampled while they played."""

    players: list[Player]
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    tcp_mem_peak_kib: int = 0
    sendq_peak: int | None = None  # bytes; None without ss
    server_cpu_s: float = 0.0
    server_cpu_peak: float = 0.0  # the busiest 1 s window's CPU share, 0..1 per CPU
    server_wait_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    loadgen_wait_s: float = 0.0
    tcp: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    peak_streaming: int = 0
    lag_s: list[float] = field(default_factory=list)


async def monitor(load: Load, r: Round, pid: int, label: str) -> None:
    """Sample the server's RSS and TCP memory, and the event loop's own lateness."""
    started = target = trio.current_time()
    every = max(1, round(SAMPLE_S / LAG_TICK_S))
    ticks = 0
    cpu_window = [(started, tree_cpu_s(pid))] * 2  # (when, CPU s) one and two samples ago
    while True:
        target += LAG_TICK_S
        await trio.sleep_until(target)
        now = trio.current_time()
        r.lag_s.append(now - target)
        r.peak_streaming = max(r.peak_streaming, load.streaming)
        ticks += 1
        if ticks % every == 0:
            r.rss_peak_kib = max(r.rss_peak_kib, tree_rss_kib(pid))
            r.tcp_mem_peak_kib = max(r.tcp_mem_peak_kib, tcp_mem_kib())
            sample = (now, tree_cpu_s(pid))
            then = cpu_window[0]
            if sample[0] - then[0] >= 0.9:
                r.server_cpu_peak = max(r.server_cpu_peak,
                                        (sample[1] - then[1]) / (sample[0] - then[0]))
            cpu_window = [cpu_window[1], sample]
        if ticks % round(PROGRESS_S / LAG_TICK_S) == 0:
            failed = sum(p.error is not None for p in r.players)
            log(f"{label}: {now - started:.0f} s, {load.streaming} streaming, {failed} failed, "
                f"RSS {r.rss_peak_kib / 1024:.0f} MiB peak")
        if target < now - 1.0:
            target = now  # far behind: count the lateness once, not on every missed tick


async def sendq_sampler(r: Round, port: int, ss: str | None) -> None:
    """Peak of the bytes queued in the server's established sockets (ss Send-Q, summed)."""
    if ss is None:
        return
    r.sendq_peak = 0
    while True:
        await trio.sleep(SENDQ_S)
        done = await trio.run_process([ss, "-tnH", "state", "established", "sport", "=",
                                       f":{port}"], capture_stdout=True, check=False)
        total = 0
        for line in done.stdout.splitlines():
            fields = line.split()
            with contextlib.suppress(ValueError, IndexError):
                total += int(fields[1])
        r.sendq_peak = max(r.sendq_peak or 0, total)


async def run_round(load: Load, r: Round, ramp: float, pid: int, label: str) -> None:
    limit = ramp + CONNECT_TIMEOUT_S + TTFB_TIMEOUT_S + load.seconds + load.read_timeout + 30
    async with trio.open_nursery() as outer:
        outer.start_soon(monitor, load, r, pid, label)
        outer.start_soon(sendq_sampler, r, load.port, shutil.which("ss"))
        pacer = Pacer(load)
        outer.start_soon(pacer.run)
        started = trio.current_time()
        with trio.move_on_after(limit):
            async with trio.open_nursery() as nursery:
                for i, p in enumerate(r.players):
                    nursery.start_soon(play, load, pacer, p, started + ramp * i / len(r.players))
        outer.cancel_scope.cancel()
    for p in r.players:
        if not p.completed and p.error is None:
            p.error = "run_timeout"


def measure(load: Load, server: Server, starts: list[int], ramp: float) -> Round:
    assert server.proc is not None
    pid = server.proc.pid
    r = Round([Player(start) for start in starts])
    r.rss_before_kib = r.rss_peak_kib = tree_rss_kib(pid)
    cpu_before, wait_before = tree_cpu_s(pid), tree_runq_wait_s(pid)
    own_wait, tcp_before = own_runq_wait_s(), tcp_counters()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic()
    # A full collection over 2,000 players' objects would stall the event loop; none during
    # the round (its garbage is collected after).
    gc.collect()
    gc.disable()
    try:
        trio.run(run_round, load, r, ramp, pid, server.label)
    finally:
        gc.enable()
    r.wall_s = time.monotonic() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    r.loadgen_cpu_s = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    r.loadgen_wait_s = own_runq_wait_s() - own_wait
    r.server_cpu_s = tree_cpu_s(pid) - cpu_before
    r.server_wait_s = tree_runq_wait_s(pid) - wait_before
    r.tcp = {k: v - tcp_before.get(k, 0) for k, v in tcp_counters().items()}
    time.sleep(SETTLE_S)
    r.rss_end_kib = tree_rss_kib(pid)
    r.rss_peak_kib = max(r.rss_peak_kib, r.rss_end_kib)
    return r


# --- figures ----------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summarize(rounds: list[Round], arrays: bool) -> dict[str, object]:
    """Figures pooled over `rounds` (one server's), with the raw per-player arrays if asked."""
    players = [p for r in rounds for p in r.players]
    got = [p for p in players if p.ttfb_s is not None]
    ttfb = [p.ttfb_s for p in got if p.ttfb_s is not None]
    stall = [p.stall_s for p in got]
    connect = [p.connect_s for p in players if p.connect_s is not None]
    lag = [x for r in rounds for x in r.lag_s]
    wall = sum(r.wall_s for r in rounds)
    total = sum(p.bytes for p in players)
    server_cpu = sum(r.server_cpu_s for r in rounds)
    tcp: Counter[str] = Counter()
    for r in rounds:
        tcp.update(r.tcp)

    def share(seconds: float) -> float | None:
        return round(100 * seconds / wall, 1) if wall else None

    summary: dict[str, object] = {
        "players": len(players),
        "completed": sum(p.completed for p in players),
        "failed": sum(p.error is not None for p in players),
        "errors": dict(sorted(Counter(p.error for p in players if p.error).items())),
        "connect_p50_ms": ms(pct(connect, 50)),
        "connect_p99_ms": ms(pct(connect, 99)),
        "ttfb_p50_ms": ms(pct(ttfb, 50)),
        "ttfb_p99_ms": ms(pct(ttfb, 99)),
        "ttfb_max_ms": ms(max(ttfb, default=None)),
        "stall_max_ms": ms(max(stall, default=None)),
        "stall_p99_ms": ms(pct(stall, 99)),
        "stall_p50_ms": ms(pct(stall, 50)),
        "bytes_total": total,
        "mb_per_s": round(total / 1e6 / wall, 2) if wall else None,
        "rss_before_mib": round(rounds[0].rss_before_kib / 1024, 1),
        "rss_peak_mib": round(max(r.rss_peak_kib for r in rounds) / 1024, 1),
        "rss_end_mib": round(rounds[-1].rss_end_kib / 1024, 1),
        "tcp_mem_peak_mib": round(max(r.tcp_mem_peak_kib for r in rounds) / 1024, 1),
        "server_sendq_peak_mib": (None if any(r.sendq_peak is None for r in rounds)
                                  else round(max(r.sendq_peak or 0 for r in rounds) / MIB, 1)),
        "server_cpu_s": round(server_cpu, 1),
        "server_cpu_pct": share(server_cpu),
        "server_cpu_peak_pct": round(100 * max(r.server_cpu_peak for r in rounds), 1),
        "server_cpu_wait_pct": share(sum(r.server_wait_s for r in rounds)),
        "loadgen_cpu_pct": share(sum(r.loadgen_cpu_s for r in rounds)),
        "loadgen_cpu_wait_pct": share(sum(r.loadgen_wait_s for r in rounds)),
        "loadgen_lag_p99_ms": ms(pct(lag, 99)),
        "loadgen_lag_max_ms": ms(max(lag, default=None)),
        "peak_streaming": max(r.peak_streaming for r in rounds),
        "wall_s": round(wall, 1),
        "tcp_counters": {k: tcp[k] for k in TCP_COUNTERS if k in tcp},
    }
    if arrays:
        summary["ttfb_ms_all"] = [round(x * 1000, 1) for x in ttfb]
        summary["stall_ms_all"] = [round(x * 1000, 1) for x in stall]
    return summary


def ratios(results: dict[str, dict[str, object]]) -> dict[str, dict[str, float | None]]:
    if "segue" not in results or "nginx" not in results:
        return {}
    segue, nginx = results["segue"], results["nginx"]
    found: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        a, b = segue[key], nginx[key]
        ok = isinstance(a, int | float) and isinstance(b, int | float) and b
        found[key] = round(a / b, 3) if ok else None  # type: ignore[operator]
    return {"segue/nginx": found}


# --- the run ----------------------------------------------------------------------------------

def raise_nofile(players: int) -> int:
    """Raise RLIMIT_NOFILE to its hard limit (the servers inherit it); return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    # Each side: one socket per player (nginx adds the open file), plus its own few.
    if target < 2 * players + 256:
        raise BenchError(f"RLIMIT_NOFILE hard limit is {hard}; {players} players need "
                         f"{2 * players + 256} (raise it with ulimit -Hn or limits.conf)")
    return target


def kernel_settings() -> dict[str, object]:
    """The sysctls that bound thousands of loopback sockets."""
    def sysctl(name: str) -> str:
        try:
            return " ".join(Path(f"/proc/sys/net/{name}").read_text().split())
        except OSError:
            return "unknown"

    tcp_mem = sysctl("ipv4/tcp_mem").split()
    page = os.sysconf("SC_PAGE_SIZE")
    return {
        "tcp_mem_max_mib": (round(int(tcp_mem[2]) * page / MIB, 1) if len(tcp_mem) == 3
                            else None),
        "tcp_wmem": sysctl("ipv4/tcp_wmem"),
        "tcp_rmem": sysctl("ipv4/tcp_rmem"),
        "somaxconn": sysctl("core/somaxconn"),
    }


def offsets(size: int, players: int, seed: int) -> list[int]:
    """Random 256 KiB-aligned starts in the first half of the file."""
    rng = random.Random(seed)
    slots = size // 2 // BLOCK
    return [rng.randrange(slots) * BLOCK for _ in range(players)]


@dataclass
class Tools:
    """The programs a run needs: ffmpeg always, nginx and segue when they are measured."""

    ffmpeg: str
    nginx: str | None
    segue: Path

    @classmethod
    def find(cls, names: list[str]) -> Tools:
        segue = Path(sys.executable).with_name("segue")  # the venv's, which is measured
        if "segue" in names and not segue.exists():
            raise BenchError(f"no {segue}: start this script with the Python of the venv that "
                             f"has Segue installed (.venv/bin/python bench/players.py)")
        with_nginx = "nginx" in names
        return cls(need("ffmpeg", "ffmpeg"),
                   need("nginx", "nginx-light", fallback="/usr/sbin/nginx") if with_nginx
                   else None,
                   segue)

    def versions(self) -> dict[str, str]:
        found = {"ffmpeg": ffmpeg_version(self.ffmpeg)}
        if self.nginx:
            found["nginx"] = first_line([self.nginx, "-v"]).removeprefix("nginx version: nginx/")
        return found


def track_file(t: Path, tools: Tools, args: argparse.Namespace, burst: int) -> Path:
    """The WAV both servers serve, in a www/ that nginx's unprivileged worker can reach."""
    if os.geteuid() == 0:
        t.chmod(0o711)  # nginx's worker does not run as root; it must get through t
    www = t / "www"
    www.mkdir(mode=0o755)
    make_audio(tools.ffmpeg, www / "track.wav", args.audio_seconds)
    size = (www / "track.wav").stat().st_size
    longest = burst + args.rate * args.seconds + 2 * RECEIVE_MAX  # a player's bytes, at most
    if size < 2 * BLOCK or size - size // 2 < longest:
        raise BenchError(f"the WAV has {size} bytes and a player starting in its first half may "
                         f"read {longest:.0f}: raise --audio-seconds")
    return www / "track.wav"


def prepare(names: list[str], tools: Tools, t: Path, audio: Path,
            cache: int | None) -> tuple[list[Server], Path | None]:
    """A Server per name, each on its own port; Segue's node is made and packed here."""
    made, conf = [], None
    for name, port in zip(names, free_ports(len(names)), strict=True):
        target, bearer = f"/{audio.name}", None
        if name == "segue":
            conf, target, bearer = setup_segue(tools.segue, t, audio, port, cache)
        # `lua` is serve_vs_nginx's wrk script; this benchmark never writes or reads it.
        made.append(Server(name, port, target, bearer, lua=t / "unused.lua"))
    return made, conf


def launch(stack: contextlib.ExitStack, s: Server, tools: Tools, conf: Path | None,
           pin: list[str], t: Path) -> None:
    """Start `s` for the rest of the run (stopped when `stack` closes)."""
    log(f"{s.label}: listening on 127.0.0.1:{s.port}")
    if s.name == "nginx":
        assert tools.nginx is not None
        stack.enter_context(nginx_server(tools.nginx, s, pin, t, nginx_template()))
    else:
        assert conf is not None
        stack.enter_context(segue_server(tools.segue, conf, s, pin, t))


def bench(args: argparse.Namespace, t: Path) -> dict[str, object]:
    names: list[str] = args.servers
    tools = Tools.find(names)
    nofile = raise_nofile(args.players)
    pin_server, pin_load = pinning(not args.no_pin)
    # Before this thread is pinned, which would make cpus_usable 1.
    facts = machine(os.getloadavg()[0], ("segue", "cryptography", "trio", "h11"),
                    **tools.versions())
    burst = round(args.rate * args.burst_seconds)
    audio = track_file(t, tools, args, burst)
    size = audio.stat().st_size
    servers, conf = prepare(names, tools, t, audio, args.segue_cache)

    rounds: dict[str, list[Round]] = {s.name: [] for s in servers}
    data = audio.read_bytes()
    with contextlib.ExitStack() as stack:
        for s in servers:
            launch(stack, s, tools, conf, pin_server, t)
        check_same_bytes(servers, audio)
        if pin_load:
            os.sched_setaffinity(0, {int(pin_load[-1])})  # this thread runs the players
        for i in range(args.rounds):
            starts = offsets(size, args.players, args.seed + i)
            for s in servers if i % 2 == 0 else servers[::-1]:
                log(f"round {i + 1}/{args.rounds}: {args.players} players against {s.label}, "
                    f"{args.ramp:g} s ramp + {args.seconds:g} s each")
                load = Load(s.port, s.path, s.auth, data, args.rate, burst, args.seconds,
                            args.tick, args.read_timeout)
                rounds[s.name].append(measure(load, s, starts, args.ramp))

    results = {name: summarize(rs, arrays=True) for name, rs in rounds.items()}
    return {
        "scenario": "players",
        "machine": facts,
        "setup": {
            "players": args.players,
            "seconds": args.seconds,
            "ramp_s": args.ramp,
            "rate_bytes_per_s": args.rate,
            "burst_seconds": args.burst_seconds,
            "burst_bytes": burst,
            "tick_s": args.tick,
            "connect_timeout_s": CONNECT_TIMEOUT_S,
            "ttfb_timeout_s": TTFB_TIMEOUT_S,
            "read_timeout_s": args.read_timeout,
            "receive_max_bytes": RECEIVE_MAX,
            "rounds": args.rounds,
            "seed": args.seed,
            "file_bytes": size,
            "audio_seconds": args.audio_seconds,
            "start_offsets": "random, 256 KiB-aligned, first half of the file",
            "session": "each player: --seconds from its own first body byte",
            "pinning": (f"server on CPU {pin_server[-1]}, players on CPU {pin_load[-1]}"
                        if pin_server else "none"),
            "rlimit_nofile": nofile,
            "kernel": kernel_settings(),
            "segue_cache_bytes": args.segue_cache,
            "nginx": (f"1 worker, sendfile, worker_connections {NGINX_CONNECTIONS}, "
                      f"backlog {NGINX_BACKLOG}"),
            "servers": {s.name: s.label for s in servers},
        },
        "results": results,
        "runs": {name: [summarize([r], arrays=False) for r in rs] for name, rs in rounds.items()},
        "ratios": ratios(results),
    }


def print_table(report: dict[str, object]) -> None:
    facts, setup = report["machine"], report["setup"]
    results, given = report["results"], report["ratios"]
    assert isinstance(facts, dict) and isinstance(setup, dict)
    assert isinstance(results, dict) and isinstance(given, dict)
    print(f"Machine: {facts['nproc']} CPUs ({facts['cpus_usable']} usable), {facts['cpu_model']}, "
          f"Linux {facts['kernel']}, load average {facts['loadavg_1m_before']} before the run")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()))
    print(f"Load: {setup['players']} players over a {setup['ramp_s']:g} s ramp, each "
          f"{setup['seconds']:g} s from its first byte: a {setup['burst_seconds']:g} s burst "
          f"({setup['burst_bytes']:.0f} B) then {setup['rate_bytes_per_s']:.0f} B/s read every "
          f"{setup['tick_s']:g} s; {setup['rounds']} round(s); {setup['file_bytes'] / 1e6:.1f} MB "
          f"WAV; pinning: {setup['pinning']}")
    cache = setup["segue_cache_bytes"]
    if "segue" in results:
        print("Segue cache: " + ("the node's default" if cache is None else f"{cache} bytes"))
    print()
    names = list(results)
    ratio = given.get("segue/nginx", {})
    rows = (
        ("completed", "completed", "{:.0f}"), ("failed", "failed", "{:.0f}"),
        ("connect p50 ms", "connect_p50_ms", "{:.1f}"),
        ("connect p99 ms", "connect_p99_ms", "{:.1f}"),
        ("TTFB p50 ms", "ttfb_p50_ms", "{:.1f}"), ("TTFB p99 ms", "ttfb_p99_ms", "{:.1f}"),
        ("TTFB max ms", "ttfb_max_ms", "{:.1f}"),
        ("longest stall ms", "stall_max_ms", "{:.1f}"),
        ("stall p99 ms (per player)", "stall_p99_ms", "{:.1f}"),
        ("stall p50 ms (per player)", "stall_p50_ms", "{:.1f}"),
        ("RSS before MiB", "rss_before_mib", "{:.1f}"), ("RSS peak MiB", "rss_peak_mib", "{:.1f}"),
        ("RSS end MiB", "rss_end_mib", "{:.1f}"),
        ("server Send-Q peak MiB", "server_sendq_peak_mib", "{:.1f}"),
        ("TCP memory peak MiB (all)", "tcp_mem_peak_mib", "{:.1f}"),
        ("body MB received", "bytes_total", "{:.0f}"), ("MB/s", "mb_per_s", "{:.1f}"),
        ("server CPU %", "server_cpu_pct", "{:.1f}"),
        ("server CPU % busiest 1 s", "server_cpu_peak_pct", "{:.1f}"),
        ("server CPU wait %", "server_cpu_wait_pct", "{:.1f}"),
        ("peak streaming", "peak_streaming", "{:.0f}"),
        ("loadgen CPU %", "loadgen_cpu_pct", "{:.1f}"),
        ("loadgen CPU wait %", "loadgen_cpu_wait_pct", "{:.1f}"),
        ("loadgen lag p99 ms", "loadgen_lag_p99_ms", "{:.1f}"),
        ("loadgen lag max ms", "loadgen_lag_max_ms", "{:.1f}"),
    )
    head = [LABELS[n] for n in names] + (["segue/nginx"] if ratio else [])
    print(f"{'':<26}" + "".join(f"{h:>13}" for h in head))
    for label, key, form in rows:
        cells = []
        for n in names:
            value = results[n][key]
            if key == "bytes_total":
                value = value / 1e6
            cells.append("-" if value is None else form.format(value))
        if ratio:
            r = ratio.get(key)
            cells.append("" if key not in ratio else "-" if r is None else f"{r:.3f}")
        print(f"{label:<26}" + "".join(f"{c:>13}" for c in cells))
    for n in names:
        errors = results[n]["errors"]
        if errors:
            print(f"{LABELS[n]} errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    for n in names:
        changed = {k: v for k, v in results[n]["tcp_counters"].items() if v}
        print(f"{LABELS[n]} kernel TCP counters (machine-wide, change over the round): "
              + (", ".join(f"{k} {v}" for k, v in changed.items()) or "none changed"))
    kernel = setup["kernel"]
    print(f"Kernel: tcp_mem hard limit {kernel['tcp_mem_max_mib']} MiB, tcp_wmem "
          f"{kernel['tcp_wmem']}, tcp_rmem {kernel['tcp_rmem']}, somaxconn {kernel['somaxconn']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=2000, help="players (default 2000)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="each player's session from its first body byte (default 60)")
    parser.add_argument("--ramp", type=float, default=10.0,
                        help="players start evenly over this many seconds (default 10)")
    parser.add_argument("--rate", type=int, default=40_000,
                        help="bytes/s a player reads after its burst (default 40000: 320 kbit/s)")
    parser.add_argument("--burst-seconds", type=float, default=10.0,
                        help="seconds of audio a player first reads as fast as it can "
                             "(default 10)")
    parser.add_argument("--tick", type=float, default=0.1,
                        help="a paced player reads when it is allowed this many seconds of "
                             "audio (default 0.1)")
    parser.add_argument("--read-timeout", type=float, default=30.0,
                        help="a body read that waits longer fails the player (default 30)")
    parser.add_argument("--servers", default="segue,nginx",
                        help="comma list out of segue, nginx, in this order (default segue,nginx)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds; even rounds reverse the server order (default 1)")
    parser.add_argument("--audio-seconds", type=int, default=360,
                        help="length of the generated WAV; 360 s is about 69 MB")
    parser.add_argument("--segue-cache", type=int, default=None, metavar="BYTES",
                        help="write [cache] bytes = BYTES into Segue's config (default: the "
                             "node's default)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the start offsets")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.players < 1 or args.rounds < 1 or args.rate < 1:
        parser.error("--players, --rounds and --rate must be at least 1")
    if args.seconds <= 0 or args.ramp < 0 or args.burst_seconds < 0:
        parser.error("--seconds must be positive; --ramp and --burst-seconds not negative")
    if not 0 < args.tick < args.read_timeout:
        parser.error("--tick must be positive and below --read-timeout")
    if args.segue_cache is not None and args.segue_cache < 0:
        parser.error("--segue-cache must not be negative")
    names = list(dict.fromkeys(n.strip().lower() for n in args.servers.split(",") if n.strip()))
    if not names or any(n not in LABELS for n in names):
        parser.error(f"--servers takes a comma list out of segue, nginx; got {args.servers!r}")
    args.servers = names
    return run_in_temp_dir("players", args, bench, print_table)


if __name__ == "__main__":
    sys.exit(main())
