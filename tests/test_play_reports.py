"""Plugin API 4 as a play-reporting plugin's author meets it: segue_track_served after every
track stream (the example plugin counts plays and shows them), and node.settings."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import MP3, Node, make_tone, with_plugins
from conftest import fetch as get
from segue.storage import layout
from test_sessions import call, command

CHUNK = 256 * 1024
WAV = ["-c:a", "pcm_s16le"]
SALT = "a fleet-wide salt for user hashes\n"


def wait_for(what: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def configure(node: Node, example: str = "", **sections: str) -> None:
    """The example plugin's table (and lines at the top of other sections, made if missing)."""
    text = node.conf.read_text()
    for section, lines in sections.items():
        if f"[{section}]\n" not in text:
            text += f"\n[{section}]\n"
        text = text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1)
    node.conf.write_text(text + f'\n[plugins.example]\nrecord = "calls.jsonl"\n{example}\n')


def with_salt(node: Node, salt: str = SALT) -> None:
    path = node.root / "log-salt"
    path.write_text(salt)
    path.chmod(0o600)


def plugin_env(plugin_path: str) -> dict[str, str]:
    return {"PYTHONPATH": with_plugins(plugin_path), "SEGUE_PLUGINS_ALLOW": "example"}


@pytest.fixture(scope="module")
def reporting(tmp_path_factory: pytest.TempPathFactory, plugin_path: str,
              audio: dict[str, Path]) -> Iterator[tuple[Node, dict[str, str]]]:
    """A node with the example plugin and three tracks: a tone to play, a long WAV to walk
    away from, and one whose second chunk will be damaged."""
    root = tmp_path_factory.mktemp("reporting")
    node = Node.init(root / "edge")
    wav = make_tone(root / "long.wav", WAV, seconds=60)
    damaged = make_tone(root / "damaged.mp3", MP3, seconds=30, freq=523)
    play, long, bad = node.pack(audio["mp3"], wav, damaged)
    with_salt(node)
    configure(node, log='user_hash_salt_file = "log-salt"')
    node.start(env=plugin_env(plugin_path))
    yield node, {"play": play, "long": long, "damaged": bad}
    node.stop()


def plays(node: Node, track: str) -> list[dict]:
    return [p for p in json.loads(get(node.base + "/example/plays")[1]) if p["track_id"] == track]


def test_a_whole_play_and_ranges_are_reported_with_a_hash_for_the_user(reporting) -> None:
    node, tracks = reporting
    track, alice = tracks["play"], node.token("alice")
    status, whole = get(node.url(track, alice))
    assert status == 200
    assert get(node.url(track, alice), {"Range": "bytes=1000-1999"})[0] == 206
    assert get(node.url(track, alice), {"Range": "bytes=0-"})[0] == 206  # what browsers ask
    # Not streams: a HEAD, a refused token, an unsatisfiable range.
    head = urllib.request.Request(node.url(track, alice), method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as r:
        assert r.status == 200
    assert get(node.url(track, "not-a-token"))[0] == 401
    assert get(node.url(track, alice), {"Range": f"bytes={len(whole)}-"})[0] == 416
    assert get(node.url(track, node.token("bob")), {"Range": "bytes=0-99"})[0] == 206

    # One queue, in order: once bob's (the last request) is in, any other would be too.
    reported = wait_for(lambda: len(found := plays(node, track)) >= 4 and found)
    assert [(p["outcome"], p["bytes_sent"]) for p in reported] == [
        ("complete", len(whole)), ("partial", 1000), ("complete", len(whole)), ("partial", 100)]
    hashes = [p["user_hash"] for p in reported]
    assert hashes[0] == hashes[1] == hashes[2] != hashes[3]
    assert all(re.fullmatch(r"[0-9a-f]{32}", h) for h in hashes)
    # Not the id, and not the logs' hash of it either: a report does not find the user's lines.
    logged = {e["user"] for e in node.log_events_named("request")
              if e.get("track") == track and "user" in e}  # a refused request has no user
    assert logged
    assert not {h[:len(u)] for h in hashes for u in logged} & logged
    assert "alice" not in json.dumps(reported)
    status_doc = json.loads(get(node.base + "/v1/status")[1])
    (example,) = status_doc["plugins"]
    assert example["status"]["plays"]["partial"] >= 2


def test_a_player_that_walks_away_and_a_chunk_that_fails_are_reported(reporting) -> None:
    node, tracks = reporting
    token = node.token()
    # A player that reads a little of a 11 MB track and goes (a reset, no goodbye).
    host, port = node.base[7:].rsplit(":", 1)
    with socket.socket() as player:
        player.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        player.connect((host, int(port)))
        player.sendall(f"GET /v1/tracks/{tracks['long']}?token={token} HTTP/1.1\r\n"
                       f"Host: edge\r\n\r\n".encode())
        received = 0
        while received < 3 * CHUNK:
            received += len(player.recv(65536))
        player.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    (walked,) = wait_for(lambda: plays(node, tracks["long"]))
    size = (node.tracks[tracks["long"]]).stat().st_size
    # Counted a write (a chunk) at a time: at least the chunks the player had, never the track.
    assert walked["outcome"] == "aborted" and 2 * CHUNK <= walked["bytes_sent"] < size

    damaged = tracks["damaged"]
    chunk = node.root / "store" / layout.chunk_path(damaged, 1)
    data = bytearray(chunk.read_bytes())
    data[5000] ^= 0x01
    chunk.write_bytes(bytes(data))
    status, body = get(node.url(damaged, token))
    assert status == 200 and len(body) == CHUNK  # the first chunk, then the cut
    (failed,) = wait_for(lambda: plays(node, damaged))
    assert failed == {"track_id": damaged, "user_hash": failed["user_hash"],
                      "bytes_sent": CHUNK, "outcome": "error"}


def test_plugins_read_the_node_settings_but_cannot_change_them(reporting) -> None:
    node, _ = reporting
    doc = json.loads(get(node.base + "/example/settings")[1])
    assert doc["writable"] is False
    assert doc["config_path"] == str(node.conf)
    settings = doc["settings"]
    assert "plugins" not in settings  # a plugin's own table is node.plugin_config(name)
    assert settings["http"]["listen"] == "127.0.0.1:0"
    assert settings["http"]["workers"] == 1 and settings["http"]["admin_listen"] is None
    assert settings["node"]["drain_timeout_s"] == 30.0  # a default, filled in
    assert settings["store"]["path"] == str(node.root / "store")
    assert settings["log"]["user_hash_salt_file"] == str(node.root / "log-salt")
    # Paths to secrets, never what they hold.
    text = json.dumps(doc)
    assert SALT.strip() not in text
    for key in (node.root / "keys").iterdir():
        body = [line for line in key.read_text().splitlines() if "-----" not in line]
        assert not any(line in text for line in body), key.name


def started_failing(node: Node, plugin_path: str, audio: dict[str, Path],
                    *hooks: str) -> tuple[Node, str, str]:
    """`node` started with one track and the example plugin raising in `hooks`: the node,
    the track and a token."""
    (track,) = node.pack(audio["mp3"])
    configure(node, f"raise_in = {json.dumps(list(hooks))}")
    node.start(env=plugin_env(plugin_path))
    return node, track, node.token()


def test_a_failing_plugin_is_named_and_counted_and_players_never_notice(
        fresh_node: Node, plugin_path: str, audio: dict[str, Path]) -> None:
    node, track, token = started_failing(fresh_node, plugin_path, audio, "segue_track_served")
    for _ in range(3):
        status, body = get(node.url(track, token))
        assert status == 200 and len(body) == audio["mp3"].stat().st_size

    wait_for(lambda: hook_failures(node, "segue_track_served") == 3)
    logged = [e for e in node.log_events_named("plugin hook failed")
              if e["hook"] == "segue_track_served"]
    assert len(logged) == 1  # once a minute at most, however often it fails
    assert logged[0]["plugin"] == "example" and "told to fail" in logged[0]["error"]
    node.wait_healthy()  # the plugin's health is its own to report


def test_a_failing_session_hook_is_named_and_counted_and_the_command_stands(
        fresh_node: Node, plugin_path: str, audio: dict[str, Path]) -> None:
    node, track, token = started_failing(fresh_node, plugin_path, audio,
                                         "segue_session_changed", "segue_session_presence")
    for doc in ({"type": "play", "track": track}, {"type": "pause"}):
        status, view = command(node, token, device="phone", **doc)
        assert status == 200, view
    assert call(node, token, "GET", "/v1/session")[1]["playback"]["playing"] is False
    assert hook_failures(node, "segue_session_changed") >= 2
    assert hook_failures(node, "segue_session_presence") == 1  # the phone's arrival
    logged = {e["hook"]: e for e in node.log_events_named("plugin hook failed")}
    assert logged["segue_session_changed"]["plugin"] == "example"
    assert "told to fail" in logged["segue_session_presence"]["error"]


def hook_failures(node: Node, hook: str) -> float:
    text = get(node.base + "/metrics")[1].decode()
    found = re.search(rf'^segue_plugin_hook_failures_total\{{hook="{hook}",'
                      r'plugin="example"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0


def test_nodes_that_share_the_salt_report_a_listener_alike(tmp_path: Path, plugin_path: str,
                                                          audio: dict[str, Path]) -> None:
    edges = [Node.init(tmp_path / name) for name in ("a", "b")]
    hashes = []
    try:
        for edge in edges:
            (track,) = edge.pack(audio["mp3"])
            with_salt(edge)
            configure(edge, log='user_hash_salt_file = "log-salt"')
            edge.start(env=plugin_env(plugin_path))
            assert get(edge.url(track, edge.token("alice")), {"Range": "bytes=0-9"})[0] == 206
            hashes.append(wait_for(lambda e=edge, t=track: plays(e, t))[0]["user_hash"])
        assert hashes[0] == hashes[1]
        # Another salt, another hash: without the salt, nobody can hash guessed ids to match.
        b = edges[1]
        b.stop()
        with_salt(b, "another salt for another fleet\n")
        b.start(env=plugin_env(plugin_path))
        (track,) = b.tracks
        assert get(b.url(track, b.token("alice")), {"Range": "bytes=0-9"})[0] == 206
        assert wait_for(lambda: plays(b, track))[0]["user_hash"] != hashes[0]
    finally:
        for edge in edges:
            edge.stop()


def test_with_workers_every_play_reaches_the_plugins_of_the_main_process(
        tmp_path: Path, plugin_path: str, audio: dict[str, Path]) -> None:
    node = Node.init(tmp_path / "edge")
    (track,) = node.pack(audio["mp3"])
    # Plugins run in the main process; one that adds routes needs one process.
    configure(node, "routes = false", http='workers = 3\nadmin_listen = "127.0.0.1:0"')
    node.start(env=plugin_env(plugin_path))
    try:
        wait_for(lambda: len(node.log_events_named("listening")) == 3, 15)
        admin = "http://" + node.wait_for_event("listening")["admin_addresses"][0]
        token = node.token()
        for _ in range(30):  # a connection each: the kernel picks a process per connection
            assert get(node.url(track, token))[0] == 200
        served_by = {e.get("worker", 0) for e in node.log_events_named("request")
                     if e.get("path", "").startswith("/v1/tracks/")}
        assert len(served_by) >= 2, served_by

        def counted() -> dict:
            doc = json.loads(get(admin + "/v1/status")[1])
            return next(p for p in doc["plugins"] if p["name"] == "example")["status"]["plays"]

        wait_for(lambda: counted().get("complete") == 30)
    finally:
        node.stop()
