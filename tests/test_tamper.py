"""A tampered, swapped or rolled-back track is never served, and the node says which."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import MP3, Node, make_tone
from segue.seal import keys
from segue.seal.manifest import verify
from segue.seal.track import rewrap
from segue.storage import layout

CHUNK = 256 * 1024


def fetch(url: str) -> tuple[int, bytes, int]:
    """Status, the body bytes that arrived, and the promised Content-Length."""
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            length = int(r.headers["Content-Length"])
            body = bytearray()
            try:
                while chunk := r.read(65536):
                    body.extend(chunk)
            except http.client.IncompleteRead as e:  # the body was cut short
                body.extend(e.partial)
            return r.status, bytes(body), length
    except urllib.error.HTTPError as e:
        return e.code, e.read(), -1


def chunk_file(node: Node, track: str, index: int) -> Path:
    return node.root / "store" / layout.chunk_path(track, index)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def metric(node: Node, name: str) -> float:
    with urllib.request.urlopen(node.base + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def rewrap_in_store(node: Node, track: str) -> None:
    """Write the next manifest version of `track`, wrapped for the node's X25519 key."""
    path = node.root / "store" / layout.manifest_path(track)
    packager = keys.load_private_key(node.root / "keys" / "packager-ed25519.pem")
    edge = keys.load_private_key(node.root / "keys" / "edge-x25519.pem")
    path.write_bytes(rewrap(path.read_bytes(),
                            {keys.key_id(packager.public_key()): packager.public_key()},
                            {keys.key_id(edge.public_key()): edge}, [edge.public_key()],
                            packager))


@pytest.fixture
def packed(fresh_node: Node, tmp_path: Path) -> tuple[Node, str, bytes]:
    source = make_tone(tmp_path / "t.mp3", MP3, seconds=40, title="Tamper Target")
    (track,) = fresh_node.pack(source)
    return fresh_node, track, source.read_bytes()


def test_a_tampered_first_chunk_is_refused_with_503(packed) -> None:
    node, track, _ = packed
    flip(chunk_file(node, track, 0), 100)
    node.start()
    status, _, _ = fetch(node.url(track, node.token()))
    assert status == 503
    assert metric(node, "segue_chunk_auth_failures_total") == 1
    failures = [e for e in node.log_events() if e.get("event") == "chunk failed verification"]
    assert [(e["track"], e["chunk"]) for e in failures] == [(track, 0)]


@pytest.mark.parametrize("cache", ["cache on", "cache off"])
def test_a_tampered_later_chunk_cuts_the_body_before_any_bad_byte(packed, cache: str) -> None:
    """With the cache off every chunk is read and verified as it is sent: same outcome."""
    node, track, original = packed
    assert len(original) > 2 * CHUNK
    flip(chunk_file(node, track, 1), 5000)
    if cache == "cache off":
        with node.conf.open("a") as f:
            f.write("\n[cache]\nbytes = 0\n")
    node.start()
    status, body, length = fetch(node.url(track, node.token()))
    assert status == 200
    assert length == len(original)
    assert body == original[:CHUNK]  # chunk 0 arrived whole, nothing of chunk 1
    # A range that starts in the good chunk 2 is still served.
    request = urllib.request.Request(node.url(track, node.token()),
                                     headers={"Range": f"bytes={2 * CHUNK}-"})
    with urllib.request.urlopen(request, timeout=20) as r:
        assert r.status == 206
        assert r.read() == original[2 * CHUNK:]
    assert any(e.get("event") == "chunk failed verification" and e["chunk"] == 1
               for e in node.log_events())


def test_a_chunk_swapped_in_from_another_track_is_refused(packed, tmp_path: Path) -> None:
    node, track, _ = packed
    other_source = make_tone(tmp_path / "u.mp3", MP3, seconds=40, freq=880, title="Other")
    (other,) = node.pack(other_source)
    chunk_file(node, track, 0).write_bytes(chunk_file(node, other, 0).read_bytes())
    node.start()
    assert fetch(node.url(track, node.token()))[0] == 503
    assert fetch(node.url(other, node.token()))[0] == 200


@pytest.mark.parametrize("damage", ["truncate", "extend", "delete"])
def test_a_damaged_chunk_file_is_never_served(packed, damage: str) -> None:
    node, track, _ = packed
    path = chunk_file(node, track, 0)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1])
    elif damage == "extend":
        path.write_bytes(path.read_bytes() + b"\x00")
    else:
        path.unlink()
    node.start()
    assert fetch(node.url(track, node.token()))[0] == 503
    assert node.proc is not None and node.proc.poll() is None


def test_a_rolled_back_manifest_is_refused_after_a_newer_one_was_accepted(packed) -> None:
    node, track, original = packed
    manifest_path = node.root / "store" / layout.manifest_path(track)
    v1 = manifest_path.read_bytes()
    rewrap_in_store(node, track)
    node.start()
    assert fetch(node.url(track, node.token()))[1] == original  # v2 accepted
    node.stop()
    manifest_path.write_bytes(v1)  # the storage attacker replays version 1
    node.start()
    assert fetch(node.url(track, node.token()))[0] == 503
    assert any(e.get("event") == "manifest refused" and "older" in e["error"]
               for e in node.log_events())


def test_a_manifest_signed_by_an_untrusted_key_is_refused(packed) -> None:
    node, track, _ = packed
    keys.write_key_pair(keys.generate("ed25519"), node.root / "keys" / "rogue.pem")
    node.conf.write_text(node.conf.read_text().replace(
        'signing_key = "keys/packager-ed25519.pem"', 'signing_key = "keys/rogue.pem"'))
    (node.root / "store" / layout.manifest_path(track)).unlink()
    node.pack(node.tracks[track])  # re-signed with the new, untrusted key
    node.start()
    assert fetch(node.url(track, node.token()))[0] == 503


def test_repacking_after_a_rewrap_is_not_a_rollback(packed) -> None:
    node, track, original = packed
    manifest_path = node.root / "store" / layout.manifest_path(track)
    rewrap_in_store(node, track)
    node.start()
    assert fetch(node.url(track, node.token()))[1] == original  # version 2 accepted
    node.stop()
    manifest_path.unlink()
    node.pack(node.tracks[track])  # sealed afresh: must come out as version 3
    packager = keys.load_public_key(node.root / "keys" / "packager-ed25519.pem.pub")
    assert verify(manifest_path.read_bytes(), {keys.key_id(packager): packager}).version == 3
    node.start()
    assert fetch(node.url(track, node.token()))[1] == original
