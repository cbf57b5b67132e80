"""Shared fixtures: real binaries (named by Debian package when missing), generated audio,
and segued nodes started as real processes on loopback."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SEGUE = [sys.executable, "-m", "segue"]


def require(command: str, package: str) -> str:
    """The path of `command`; a missing one fails the test, naming the Debian package."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} not found: install the Debian package {package} "
                    f"(apt-get install {package}, or run `make test` as root)")
    return path


def segue(*args: str | os.PathLike[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the `segue` command; output is captured as text."""
    return subprocess.run([*SEGUE, *map(str, args)], capture_output=True, text=True,
                          check=check, timeout=120, **kw)


def make_tone(path: Path, codec_args: list[str], seconds: int = 30, freq: int = 440,
              title: str | None = None) -> Path:
    """Write a sine tone with ffmpeg (stereo, 48 kHz)."""
    ffmpeg = require("ffmpeg", "ffmpeg")
    meta = ["-metadata", f"title={title}", "-metadata", "artist=Sine Ensemble"] if title else []
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
         f"sine=frequency={freq}:duration={seconds}:sample_rate=48000", "-ac", "2",
         *meta, *codec_args, str(path)],
        check=True, timeout=120,
    )
    return path


MP3 = ["-c:a", "libmp3lame", "-b:a", "128k"]
FLAC = ["-c:a", "flac"]
OPUS = ["-c:a", "libopus", "-b:a", "96k"]


@dataclass
class Node:
    """A node directory made by `segue init`, and its segued process once started."""

    root: Path
    proc: subprocess.Popen | None = None
    _log_start: int = 0
    base: str = ""
    tracks: dict[str, Path] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "segued.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "segued.log"

    @classmethod
    def init(cls, root: Path) -> Node:
        segue("init", root, "--listen", "127.0.0.1:0")
        return cls(root)

    def pack(self, *files: Path) -> list[str]:
        out = segue("pack", "--config", self.conf, "--json", *files).stdout
        ids = []
        for line, path in zip(out.splitlines(), files, strict=True):
            track_id = json.loads(line)["track_id"]
            self.tracks[track_id] = path
            ids.append(track_id)
        return ids

    def token(self, user: str = "alice", *extra: str) -> str:
        return segue("token", "--config", self.conf, "--user", user, *extra).stdout.strip()

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start segued on a free port and wait until /healthz answers ok.

        `env` is added to the environment (plugin paths, NOTIFY_SOCKET, ...).
        """
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen([*SEGUE, "run", "--config", str(self.conf)],
                                     stdout=log, stderr=log, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        log.close()
        if not wait:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"segued exited {self.proc.returncode}:\n{self.log_text()}")
            for event in self.log_events(since=self._log_start):
                if event.get("event") == "listening":
                    self.base = f"http://{event['addresses'][0]}"
                    self.wait_healthy()
                    return
            time.sleep(0.05)
        raise RuntimeError(f"segued did not start:\n{self.log_text()}")

    def wait_healthy(self) -> None:
        with urllib.request.urlopen(self.base + "/healthz", timeout=5) as r:
            assert r.status == 200

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_event(self, prefix: str, timeout: float = 10) -> dict:
        """The first log event whose name starts with `prefix`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.log_events():
                if str(event.get("event", "")).startswith(prefix):
                    return event
            assert time.monotonic() < deadline, f"no {prefix!r} event:\n{self.log_text()}"
            time.sleep(0.05)

    def log_events(self, since: int = 0) -> list[dict]:
        """The JSON log lines of segued (from byte offset `since` of the log file)."""
        events = []
        for line in self.log_text()[since:].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def log_events_named(self, name: str) -> list[dict]:
        return [e for e in self.log_events() if e.get("event") == name]

    def url(self, track_id: str, token: str | None = None, suffix: str = "") -> str:
        query = f"?token={token}" if token else ""
        return f"{self.base}/v1/tracks/{track_id}{suffix}{query}"


@pytest.fixture(scope="session")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """30-second tones as MP3, FLAC and Ogg/Opus, tagged with titles."""
    d = tmp_path_factory.mktemp("audio")
    return {
        "mp3": make_tone(d / "tone.mp3", MP3, freq=440, title="Café del Mar"),
        "flac": make_tone(d / "tone.flac", FLAC, freq=330, title="Flac Attack"),
        "ogg": make_tone(d / "tone.ogg", OPUS, freq=262, title="Opus Number One"),
    }


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, audio: dict[str, Path]) -> Iterator[Node]:
    """One running node with the three tones packed, shared by the read-only HTTP tests."""
    n = Node.init(tmp_path_factory.mktemp("node") / "edge")
    n.pack(*audio.values())
    n.start()
    yield n
    n.stop()


@pytest.fixture
def fresh_node(tmp_path: Path) -> Iterator[Node]:
    """A node of the test's own, not started, for tests that change keys or chunks."""
    n = Node.init(tmp_path / "edge")
    yield n
    n.stop()


def track_of(node: Node, suffix: str) -> str:
    """The id of the packed track whose source file ends with `suffix`."""
    return next(t for t, p in node.tracks.items() if p.name.endswith(suffix))


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET `url`: the status and whatever body arrived (a body cut short, as far as it came)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=20) as r:
            try:
                return r.status, r.read()
            except http.client.IncompleteRead as e:
                return r.status, e.partial
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on, for as long as the test runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


EXAMPLE_PLUGIN = Path(__file__).parent / "example_plugin"


def with_plugins(plugin_path: str) -> str:
    """PYTHONPATH for a node that sees the example plugin: its folder, then whatever the tests
    run with (the tree under test, when it is not the installed one)."""
    return os.pathsep.join(filter(None, [plugin_path, os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example plugin pip-installed from its own pyproject into a folder of its own.

    Nodes see it only when started with PYTHONPATH set to this folder, so it never leaks into
    the other tests' nodes.
    """
    target = tmp_path_factory.mktemp("plugins")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE_PLUGIN)],
        check=True, timeout=300, capture_output=True,
    )
    return str(target)
