"""The daemon's life under systemd: notify messages, watchdog, drain, reload, second SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MP3, SEGUE, Node, make_tone, with_plugins
from segue.seal import keys


class NotifySocket:
    """A test-owned NOTIFY_SOCKET: collects every datagram the daemon sends, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, field: str, timeout: float = 15) -> float:
        """Wait for a message holding `field` (like "READY=1"); returns when it came."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for at, message in self.messages[seen:]:
                if field in message.splitlines():
                    return at
            time.sleep(0.02)
        raise AssertionError(f"no {field} in {self.messages}")

    def kinds(self) -> list[str]:
        """The first field of each message (READY=1, STATUS=..., WATCHDOG=1, ...)."""
        return [message.splitlines()[0].split("=")[0] for _, message in self.messages]

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


def status_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace").strip()


def test_notify_sequence_from_a_real_segued(fresh_node: Node, notify: NotifySocket,
                                            tmp_path: Path) -> None:
    fresh_node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t"))
    fresh_node.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "300000"})
    notify.wait_for("READY=1")
    time.sleep(0.5)  # several watchdog intervals of 0.15 s
    fresh_node.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if [k for k in notify.kinds() if k == "READY"][1:]:
            break
        time.sleep(0.05)
    assert fresh_node.stop() == 0
    notify.wait_for("STOPPING=1")
    kinds = notify.kinds()
    first_ready = kinds.index("READY")
    reload_at = kinds.index("RELOADING")
    second_ready = kinds.index("READY", reload_at)
    stopping = kinds.index("STOPPING")
    assert first_ready < reload_at < second_ready < stopping
    assert "WATCHDOG" in kinds[first_ready:reload_at]
    ready_message = notify.messages[first_ready][1].splitlines()
    assert any(line.startswith("STATUS=ready;") for line in ready_message)
    reload_message = notify.messages[reload_at][1].splitlines()
    usec = int(next(line for line in reload_message if line.startswith("MONOTONIC_USEC="))
               .split("=")[1])
    # MONOTONIC_USEC is CLOCK_MONOTONIC when the reload began, as systemd requires.
    assert abs(usec / 1e6 - reloading) < 1.0
    assert reloading - notify.messages[first_ready][0] > 0


def test_a_blocked_event_loop_stops_the_watchdog(fresh_node: Node, notify: NotifySocket,
                                                 plugin_path: str, tmp_path: Path) -> None:
    fresh_node.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000",
                          "PYTHONPATH": with_plugins(plugin_path),
                          "SEGUE_PLUGINS_ALLOW": "example"})
    notify.wait_for("READY=1")
    time.sleep(0.5)
    started = time.monotonic()
    assert status_of(fresh_node.base + "/example/block?seconds=1.5") == (200, "unblocked")
    ended = time.monotonic()
    pings = [at for at, message in notify.messages if message == "WATCHDOG=1"]
    during = [at for at in pings if started + 0.15 < at < ended - 0.15]
    before = [at for at in pings if started - 0.5 < at < started]
    assert len(before) >= 2, "pings every 0.1 s while the loop runs"
    assert during == [], "no ping while the loop is blocked"
    time.sleep(0.5)
    assert [at for at, m in notify.messages if m == "WATCHDOG=1" and at > ended], "pings resume"


def _slow_download(url: str, results: dict, key: int, chunk: int = 16384,
                   pause: float = 0.004) -> None:
    parsed = urllib.parse.urlsplit(url)
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.settimeout(30)
            s.connect((parsed.hostname, parsed.port))
            s.sendall(f"GET {parsed.path}?{parsed.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = bytearray()
            last = 0.0
            while piece := s.recv(chunk):
                data.extend(piece)
                last = time.monotonic()
                time.sleep(pause)
            results[key] = (bytes(data), last)
    except Exception as e:  # reported by the test
        results[key] = (e, 0.0)


def _body(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def test_sigterm_drains_twenty_slow_players_and_exits_0(fresh_node: Node, tmp_path: Path,
                                                        notify: NotifySocket) -> None:
    # 11.5 MB each, read at about 1.6 MB/s: several seconds, more than socket buffers hold.
    source = make_tone(tmp_path / "long.wav", ["-c:a", "pcm_s16le"], seconds=60, title="Long")
    (track,) = fresh_node.pack(source)
    original = source.read_bytes()
    fresh_node.start(env={"NOTIFY_SOCKET": str(notify.path)})
    url = fresh_node.url(track, fresh_node.token())
    results: dict = {}
    players = [threading.Thread(target=_slow_download, args=(url, results, i),
                                kwargs={"pause": 0.01}) for i in range(20)]
    for p in players:
        p.start()
    time.sleep(0.7)
    signalled = time.monotonic()
    fresh_node.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    assert status_of(fresh_node.base + "/healthz") == (503, "draining")
    for p in players:
        p.join(timeout=60)
    code = fresh_node.proc.wait(timeout=30)
    exited = time.monotonic()
    assert code == 0
    assert exited - signalled < 30  # within the default drain deadline
    late = 0
    for i in range(20):
        raw, last = results[i]
        assert not isinstance(raw, Exception), raw
        head, body = _body(raw)
        assert head.startswith(b"HTTP/1.1 200")
        assert body == original, f"player {i} got {len(body)} of {len(original)} bytes"
        late += last > signalled + 1.0
    assert late >= 10, "most players were still downloading a second after SIGTERM"
    kinds = notify.kinds()
    assert kinds.index("STOPPING") > kinds.index("READY")


def test_a_second_sigterm_stops_at_once(fresh_node: Node, tmp_path: Path) -> None:
    source = make_tone(tmp_path / "long.wav", ["-c:a", "pcm_s16le"], seconds=30, title="Long")
    (track,) = fresh_node.pack(source)
    fresh_node.start()
    results: dict = {}
    player = threading.Thread(target=_slow_download,
                              args=(fresh_node.url(track, fresh_node.token()), results, 0),
                              kwargs={"pause": 0.05})
    player.start()
    time.sleep(0.5)
    fresh_node.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert fresh_node.proc.poll() is None, "still draining the slow player"
    fresh_node.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    fresh_node.proc.wait(timeout=5)
    assert time.monotonic() - started < 2
    player.join(timeout=30)
    raw, _ = results[0]
    assert isinstance(raw, Exception) or len(_body(raw)[1]) < source.stat().st_size


def test_sighup_with_a_broken_config_keeps_the_old_one(fresh_node: Node, tmp_path: Path) -> None:
    (track,) = fresh_node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t"))
    fresh_node.start()
    token = fresh_node.token()
    good = fresh_node.conf.read_text()
    fresh_node.conf.write_text(good + "\n[http]\nlisten = 'nonsense'\n")
    fresh_node.proc.send_signal(signal.SIGHUP)
    fresh_node.wait_for_event("reload refused")
    assert status_of(fresh_node.url(track, token))[0] == 200
    assert status_of(fresh_node.base + "/healthz") == (200, "ok")


def test_sighup_with_an_unreadable_key_path_keeps_the_old_config(fresh_node: Node,
                                                                 tmp_path: Path) -> None:
    (track,) = fresh_node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t"))
    fresh_node.start()
    fresh_node.conf.write_text(fresh_node.conf.read_text().replace(
        '"keys/edge-rsa.pem"]', '"segued.toml/not-a-dir.pem"]'))
    fresh_node.proc.send_signal(signal.SIGHUP)
    fresh_node.wait_for_event("reload refused")
    assert fresh_node.proc.poll() is None
    assert status_of(fresh_node.url(track, fresh_node.token()))[0] == 200


def test_a_port_in_use_is_one_clear_line(fresh_node: Node) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        fresh_node.conf.write_text(fresh_node.conf.read_text().replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
        result = subprocess.run([*SEGUE, "run", "--config", str(fresh_node.conf)],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("segue:")]
    assert len(errors) == 1 and "ExceptionGroup" not in errors[0], result.stderr
    assert "address already in use" in errors[0].lower()


def test_sighup_with_a_new_packager_key_serves_tracks_it_signed(fresh_node: Node,
                                                                tmp_path: Path) -> None:
    n = fresh_node
    n.start()
    token = n.token()
    keys.write_key_pair(keys.generate("p256"), n.root / "keys" / "packager2.pem")
    n.conf.write_text(n.conf.read_text()
                      .replace('signing_key = "keys/packager-ed25519.pem"',
                               'signing_key = "keys/packager2.pem"'))
    (track,) = n.pack(make_tone(tmp_path / "new.mp3", MP3, seconds=2, title="New"))
    assert status_of(n.url(track, token))[0] == 503  # not trusted yet
    n.conf.write_text(n.conf.read_text().replace(
        'trusted_packagers = ["keys/packager-ed25519.pem.pub"]',
        'trusted_packagers = ["keys/packager-ed25519.pem.pub", "keys/packager2.pem.pub"]'))
    # A limit read at start-up changes too: the reload names it, not taking it silently.
    n.conf.write_text(n.conf.read_text().replace("[http]", "[http]\nidle_timeout_s = 7", 1))
    n.proc.send_signal(signal.SIGHUP)
    n.wait_for_event("configuration reloaded")
    assert status_of(n.url(track, token))[0] == 200
    assert [e["key"] for e in n.log_events_named("setting needs a restart to take effect")] \
        == ["http.idle_timeout_s"]


def test_request_log_lines_are_json_with_the_canonical_fields(node: Node) -> None:
    token = node.token("frank")
    track = next(iter(node.tracks))
    request = urllib.request.Request(node.url(track), headers={
        "Authorization": f"Bearer {token}", "Range": "bytes=10-19"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 206
    # The line is written once the response has gone out: the player may read it first.
    deadline = time.monotonic() + 10
    while not (lines := [e for e in node.log_events() if e.get("event") == "request"
                         and e.get("range") == "10-19"]):
        assert time.monotonic() < deadline, node.log_text()
        time.sleep(0.05)
    line = lines[-1]
    for key in ("method", "path", "track", "range", "status", "bytes", "duration_ms", "user",
                "timestamp", "level"):
        assert key in line, key
    assert (line["status"], line["bytes"], line["track"]) == (206, 10, track)
    assert token not in node.log_text() and "frank" not in node.log_text()
