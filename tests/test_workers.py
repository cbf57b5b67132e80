"""[http] workers = N: one node, N processes on one port (SO_REUSEPORT), one life."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import MP3, SEGUE, Node, make_tone, require, with_plugins


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "PID (COMM) STATE PPID ...": COMM may hold spaces, so split after its parenthesis.
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _workers_of(node: Node) -> list[int]:
    assert node.proc is not None
    workers = []
    for pid in _children(node.proc.pid):
        try:
            if b"segue.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            continue
    return workers


def _wait_for(predicate, timeout: float = 15):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _set_workers(node: Node, count: int) -> None:
    text = node.conf.read_text()
    node.conf.write_text(text.replace("[http]\n", f"[http]\nworkers = {count}\n", 1))


@pytest.fixture
def three_workers(tmp_path: Path):  # type: ignore[no-untyped-def]
    node = Node.init(tmp_path / "edge")
    tone = make_tone(tmp_path / "tone.mp3", MP3, seconds=20)
    node.pack(tone)
    _set_workers(node, 3)
    node.start()
    _wait_for(lambda: len(node.log_events_named("listening")) == 3)
    yield node
    node.stop()


def test_every_worker_serves_players_on_the_one_port(three_workers: Node) -> None:
    node = three_workers
    assert len(_workers_of(node)) == 2
    track_id, path = next(iter(node.tracks.items()))
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    token = node.token()
    for _ in range(40):  # a new connection each: the kernel picks a process per connection
        with urllib.request.urlopen(node.url(track_id, token), timeout=10) as r:
            assert hashlib.sha256(r.read()).hexdigest() == want
    served_by = {e.get("worker", 0) for e in node.log_events_named("request")
                 if e.get("path", "").startswith("/v1/tracks/")}
    assert len(served_by) >= 2, served_by
    # Whichever process answers the scrape, it counts every process's streams.
    for _ in range(6):
        with urllib.request.urlopen(node.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert re.search(r"^segue_time_to_first_byte_seconds_count 40\.0$", text, re.M), text


def _stalled_player(url: str) -> socket.socket:
    """A player that starts a track and then reads no more (a small receive buffer, so the
    node's stream cannot finish into the socket buffers)."""
    parts = urllib.parse.urlsplit(url)
    player = socket.socket()
    player.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    player.settimeout(10)
    player.connect((parts.hostname, parts.port))
    player.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert player.recv(1024).startswith(b"HTTP/1.1 200")
    return player


def test_the_status_counts_the_streams_of_every_process(three_workers: Node) -> None:
    node = three_workers
    track_id, _ = next(iter(node.tracks.items()))
    url = node.url(track_id, node.token())

    def in_flight() -> int:
        with urllib.request.urlopen(node.base + "/v1/status", timeout=10) as r:
            return json.load(r)["streams_in_flight"]

    # A connection each: the kernel spreads them over the processes.
    players = [_stalled_player(url) for _ in range(6)]
    try:
        served_by = {e.get("worker", 0) for e in node.log_events_named("request")}
        # Whichever process answers (a new connection each), it counts every process's.
        assert [in_flight() for _ in range(12)] == [6] * 12
        answered = {e.get("worker", 0) for e in node.log_events_named("request")
                    if e.get("path") == "/v1/status"}
        assert len(served_by | answered) >= 2
    finally:
        for player in players:
            player.close()
    _wait_for(lambda: in_flight() == 0)


def test_a_dead_worker_is_started_again(three_workers: Node) -> None:
    node = three_workers
    victim = _workers_of(node)[0]
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: victim not in _workers_of(node) and len(_workers_of(node)) == 2)
    restarted = node.wait_for_event("worker exited")
    assert restarted["status"] == -signal.SIGKILL
    node.wait_healthy()


def test_sigterm_drains_every_worker_and_exits_0(three_workers: Node) -> None:
    node = three_workers
    children = _workers_of(node)
    shared = [p for p in Path(tempfile.gettempdir()).glob("segue-metrics-*")
              if any(str(p) in Path(f"/proc/{pid}/environ").read_text(errors="replace")
                     for pid in children)]
    assert len(shared) == 1
    assert node.stop() == 0
    assert not shared[0].exists()  # the metrics files go with the node
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    stopped = node.log_events_named("stopped")
    assert {e.get("worker", 0) for e in stopped} == {0, 1, 2}


def test_workers_leave_when_the_main_process_is_killed(three_workers: Node) -> None:
    node = three_workers
    assert node.proc is not None
    children = _workers_of(node)
    node.proc.kill()  # no drain, no goodbye: the workers see their stdin close
    node.proc.wait(timeout=10)
    _wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in children))
    node.proc = None


def test_plugin_routes_need_one_worker(tmp_path: Path, plugin_path: str) -> None:
    node = Node.init(tmp_path / "edge")
    _set_workers(node, 2)
    done = subprocess.run([*SEGUE, "run", "--config", str(node.conf)], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": with_plugins(plugin_path),
                               "SEGUE_PLUGINS_ALLOW": "example"})
    assert done.returncode == 1
    assert "set [http] workers = 1" in done.stderr


def test_a_worker_that_cannot_be_started_again_leaves_the_node_serving(
        three_workers: Node) -> None:
    """Out of file descriptors when a worker died: retried with backoff, the node lives."""
    node = three_workers
    assert node.proc is not None
    main = node.proc.pid
    in_use = len(os.listdir(f"/proc/{main}/fd"))
    prlimit = require("prlimit", "util-linux")
    subprocess.run([prlimit, f"--pid={main}", f"--nofile={in_use}:20000"], check=True)
    os.kill(_workers_of(node)[0], signal.SIGKILL)
    failed = node.wait_for_event("cannot start a worker")
    assert "Too many open files" in failed["error"]
    assert node.proc.poll() is None
    subprocess.run([prlimit, f"--pid={main}", "--nofile=20000:20000"], check=True)
    _wait_for(lambda: len(_workers_of(node)) == 2)
    node.wait_healthy()


def test_sighup_reloads_every_process_with_the_address_it_serves(three_workers: Node) -> None:
    node = three_workers
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: len(node.log_events_named("configuration reloaded")) == 3)
    assert node.log_events_named("setting needs a restart to take effect") == []
    node.wait_healthy()


def test_another_node_cannot_join_the_port(three_workers: Node, tmp_path: Path) -> None:
    """SO_REUSEPORT must not let an unrelated node of the same user share the players."""
    port = three_workers.base.rsplit(":", 1)[1]
    other = Node.init(tmp_path / "other")
    _set_workers(other, 2)
    done = subprocess.run([*SEGUE, "run", "--config", str(other.conf), "--listen",
                           f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "address already in use" in done.stderr
    three_workers.wait_healthy()
