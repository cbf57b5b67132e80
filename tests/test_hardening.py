"""Regressions of the security review: each test fails on the code before its fix."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import http.client
import io
import json
import mmap
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import pymysql
import pytest
import smbclient
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from conftest import MP3, Node, make_tone, segue, with_plugins
from samba import PASSWORD, Smbd
from segue import config, wiring
from segue.catalogue import Catalogue
from segue.configured_keys import load_edge_keys
from segue.media import track_id_of
from segue.seal import keys
from segue.seal import manifest as mf
from segue.seal.errors import ManifestError
from segue.seal.track import TrackSealer, rewrap
from segue.storage import layout
from segue.storage.errors import BadCopyError, StoreError, TrackUnavailable
from segue.storage.smb import SmbStore, SmbUrl
from segue.systemd import Notifier
from segue_mysql import MySQLPlugin

TRACK = "0123456789abcdef0123456789abcdef"


@cache
def packager() -> Any:
    return keys.generate("ed25519")


@cache
def recipient() -> Any:
    return keys.generate("x25519")


def trusted() -> dict[str, Any]:
    return {keys.key_id(packager().public_key()): packager().public_key()}


@cache
def good_manifest() -> bytes:
    """A valid manifest of a three-chunk track, with the placement `segue pack` writes."""
    data = bytes(range(250))
    sealer = TrackSealer(TRACK, len(data), 100)
    for i in range(sealer.count):
        sealer.seal_chunk(i, data[i * 100:(i + 1) * 100])
    return sealer.manifest(mf.TrackMeta(title="t", mime="audio/mpeg"), [recipient().public_key()],
                           packager(), extra={"placement": {"shares": ["a"], "replicas": 1}})


def envelope_and_payload() -> tuple[dict[str, Any], dict[str, Any]]:
    envelope = json.loads(good_manifest())
    return envelope, json.loads(mf.b64d(envelope["payload"]))


def signed(payload: bytes, envelope: dict[str, Any] | None = None) -> bytes:
    """Manifest file bytes around `payload`, validly signed by the trusted packager: only
    then does the parser look inside the payload."""
    envelope = dict(envelope or json.loads(good_manifest()))
    envelope["payload"] = mf.b64e(payload)
    envelope["signatures"] = [{
        "key_id": keys.key_id(packager().public_key()), "alg": mf.ED25519,
        "sig": mf.b64e(packager().sign(mf.SIGNATURE_LABEL + payload)),
    }]
    return json.dumps(envelope).encode()


def verify_or_refuse(data: bytes) -> None:
    """verify() may accept or refuse with ManifestError; any other exception fails the test."""
    with contextlib.suppress(ManifestError):
        mf.verify(data, trusted())


# --- Finding 3: a manifest of any shape is refused with ManifestError, never crashes ---------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**60)
    | st.floats() | st.text(max_size=40) | st.binary(max_size=40).map(mf.b64e),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
_ENVELOPE, _PAYLOAD = envelope_and_payload()
# Every field a reader looks at: (where, key). "meta" and "recipients" are inside the payload.
FIELDS = (
    [("envelope", k) for k in _ENVELOPE]
    + [("signature", k) for k in _ENVELOPE["signatures"][0]]
    + [("payload", k) for k in _PAYLOAD]
    + [("meta", k) for k in _PAYLOAD["meta"]]
    + [("recipient", k) for k in _PAYLOAD["recipients"][0]]
    + [("payload", "unknown"), ("payload", "nan")]
)


def mutate(where: str, key: str, value: Any, delete: bool) -> bytes:
    envelope, payload = envelope_and_payload()
    target = {"envelope": envelope, "signature": envelope["signatures"][0], "payload": payload,
              "meta": payload["meta"], "recipient": payload["recipients"][0]}[where]
    if delete:
        target.pop(key, None)
    else:
        target[key] = value
    if where in ("envelope", "signature"):
        return json.dumps(envelope).encode()
    return signed(json.dumps(payload).encode())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=json_values, delete=st.booleans())
def test_any_value_in_any_manifest_field_is_refused_with_manifest_error(
        field: tuple[str, str], value: Any, delete: bool) -> None:
    verify_or_refuse(mutate(*field, value, delete))


@settings(max_examples=100, deadline=None)
@given(document=json_values)
def test_any_json_document_as_envelope_or_payload_is_refused_with_manifest_error(
        document: Any) -> None:
    text = json.dumps(document).encode()
    verify_or_refuse(text)
    verify_or_refuse(signed(text))


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_is_a_manifest_error(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    with pytest.raises(ManifestError, match="not valid JSON"):
        mf.verify(b'{"segue_manifest": 1, "x": ' + nested + b"}", trusted())
    with pytest.raises(ManifestError, match="not valid JSON"):
        mf.verify(signed(b'{"meta": ' + nested + b"}"), trusted())


def test_a_list_as_signature_key_id_is_a_manifest_error() -> None:
    envelope = json.loads(good_manifest())
    envelope["signatures"].insert(0, {"key_id": ["a"], "alg": mf.ED25519, "sig": ""})
    data = json.dumps(envelope).encode()
    assert mf.verify(data, trusted()).track_id == TRACK  # the good signature still counts
    del envelope["signatures"][1]
    with pytest.raises(ManifestError, match="malformed key id"):
        mf.verify(json.dumps(envelope).encode(), trusted())


@pytest.mark.parametrize(("where", "key", "value", "error"), [
    ("meta", "duration_s", float("inf"), "Infinity is not a JSON number"),
    ("meta", "duration_s", 10**400, "finite"),
    ("meta", "mime", "audio/mpeg\r\nX-Injected: 1", "printable ASCII"),
    ("payload", "placement", {"shares": [{"a": 1}], "replicas": 1}, "placement"),
    ("recipient", "key_id", ["a"], "key_id must be a string"),
    ("payload", "meta", [], "meta must be a JSON object"),
], ids=["infinity", "huge-int", "crlf-mime", "placement", "recipient-key-id", "meta-list"])
def test_fields_of_the_wrong_type_are_named_in_the_error(where: str, key: str, value: Any,
                                                         error: str) -> None:
    with pytest.raises(ManifestError, match=error):
        mf.verify(mutate(where, key, value, delete=False), trusted())


def test_fsck_reports_a_garbage_manifest_and_goes_on_to_the_next_track(fresh_node: Node,
                                                                       tmp_path: Path) -> None:
    garbage, good = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"),
                                    make_tone(tmp_path / "b.mp3", MP3, seconds=2, title="b"))
    path = fresh_node.root / "store" / layout.manifest_path(garbage)
    envelope = json.loads(path.read_bytes())
    envelope["signatures"][0]["key_id"] = ["not", "a", "key", "id"]
    path.write_text(json.dumps(envelope))
    result = segue("fsck", "--config", fresh_node.conf, check=False)
    assert result.returncode == 1, result.stderr
    assert f"{garbage} on local: manifest invalid: manifest carries no valid signature by a " \
        "trusted packager key ((a malformed key id)); no valid copy on any share " \
        "(NOT repaired)" in result.stdout
    assert "checked 2 tracks" in result.stdout
    assert good not in result.stdout  # checked, and nothing wrong with it


# --- Finding 6: versions come only from trusted manifests, and are bounded ---------------------

def test_a_version_beyond_max_version_is_refused_when_parsing_and_signing() -> None:
    _, payload = envelope_and_payload()
    payload["version"] = 2**53 - 1
    assert mf.verify(signed(json.dumps(payload).encode()), trusted()).version == 2**53 - 1
    payload["version"] = 2**53
    with pytest.raises(ManifestError, match="version must be at least 1 and at most"):
        mf.verify(signed(json.dumps(payload).encode()), trusted())
    manifest = mf.verify(good_manifest(), trusted())
    with pytest.raises(ManifestError, match=f"version {2**63 - 1} is not between"):
        mf.sign(dataclasses.replace(manifest, version=2**63 - 1), packager())


def test_pack_ignores_the_version_of_an_unsigned_manifest_planted_in_the_store(
        fresh_node: Node, tmp_path: Path) -> None:
    source = make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t")
    path = fresh_node.root / "store" / layout.manifest_path(track_id_of(source))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "segue_manifest": 1, "signatures": [],
        "payload": mf.b64e(json.dumps({"version": 2**63 - 1}).encode())}))
    (track,) = fresh_node.pack(source)
    packager = keys.load_public_key(fresh_node.root / "keys" / "packager-ed25519.pem.pub")
    assert mf.verify(path.read_bytes(), {keys.key_id(packager): packager}).version == 1
    fresh_node.start()
    with urllib.request.urlopen(fresh_node.url(track, fresh_node.token()), timeout=20) as r:
        assert r.read() == source.read_bytes()


# --- Finding 2: fsck --repair never spreads a wrong manifest -----------------------------------

def local_shares(node: Node, names: tuple[str, ...] = ("a", "b", "c")) -> dict[str, Path]:
    """Make the node store its tracks on several local directories (2 replicas of each chunk)."""
    dirs = {name: node.root / f"share-{name}" for name in names}
    for d in dirs.values():
        d.mkdir()
    tables = "".join(f'\n[[store.shares]]\nname = "{n}"\nurl = "{d}"\n' for n, d in dirs.items())
    node.conf.write_text(node.conf.read_text().replace(
        '[store]\npath = "store"\n', f"[store]\nreplicas = 2\n{tables}"))
    segue("store", "mark", "--new", "--config", node.conf)
    return dirs


def next_version(node: Node, manifest: bytes) -> bytes:
    """The manifest re-wrapped as its next version, signed by the node's packager."""
    packager = keys.load_private_key(node.root / "keys" / "packager-ed25519.pem")
    edge = keys.load_private_key(node.root / "keys" / "edge-x25519.pem")
    return rewrap(manifest, {keys.key_id(packager.public_key()): packager.public_key()},
                  {keys.key_id(edge.public_key()): edge}, [edge.public_key()], packager)


def fsck(node: Node, *args: str) -> subprocess.CompletedProcess:
    return segue("fsck", "--config", node.conf, *args, check=False)


def test_fsck_repair_never_copies_another_tracks_manifest_over_good_ones(
        fresh_node: Node, tmp_path: Path) -> None:
    shares = local_shares(fresh_node)
    track, other = fresh_node.pack(
        make_tone(tmp_path / "a.mp3", MP3, seconds=2, freq=440, title="a"),
        make_tone(tmp_path / "b.mp3", MP3, seconds=2, freq=550, title="b"))
    good = (shares["b"] / layout.manifest_path(track)).read_bytes()
    # A validly signed, newer manifest of the other track, copied into this track's folder.
    planted = next_version(fresh_node, (shares["a"] / layout.manifest_path(other)).read_bytes())
    (shares["a"] / layout.manifest_path(track)).write_bytes(planted)

    result = fsck(fresh_node, "--repair")
    assert f"{track} on a: manifest invalid: it is the manifest of track {other} (repaired)" \
        in result.stdout
    assert "1 problems, 1 repaired" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0
    for share in shares.values():
        assert (share / layout.manifest_path(track)).read_bytes() == good
    assert fsck(fresh_node).returncode == 0


def test_fsck_refuses_manifests_older_than_the_version_the_node_accepted(
        fresh_node: Node, tmp_path: Path) -> None:
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    path = fresh_node.root / "store" / layout.manifest_path(track)
    version_1 = path.read_bytes()
    path.write_bytes(next_version(fresh_node, version_1))
    Catalogue(fresh_node.root / "catalogue.sqlite").accept_version(track, 2)  # served as v2
    path.write_bytes(version_1)  # a storage attacker replays version 1

    result = fsck(fresh_node, "--repair")
    assert result.returncode == 1
    assert f"{track} on local: manifest invalid: track {track}: manifest version 1 is older " \
        "than version 2 already accepted; no valid copy on any share (NOT repaired)" \
        in result.stdout
    assert path.read_bytes() == version_1


def test_fsck_repair_replaces_a_valid_older_manifest_only_when_asked_to(
        fresh_node: Node, tmp_path: Path) -> None:
    shares = local_shares(fresh_node)
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    older = shares["a"] / layout.manifest_path(track)
    version_1 = older.read_bytes()
    version_2 = next_version(fresh_node, version_1)
    for name in ("b", "c"):
        (shares[name] / layout.manifest_path(track)).write_bytes(version_2)

    kept = fsck(fresh_node, "--repair")
    assert kept.returncode == 1
    assert f"{track} on a: manifest version 1 older than 2 (a valid copy: --repair " \
        "--replace-older replaces it) (NOT repaired)" in kept.stdout
    assert older.read_bytes() == version_1
    replaced = fsck(fresh_node, "--repair", "--replace-older")
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert f"{track} on a: manifest version 1 older than 2 (repaired)" in replaced.stdout
    assert older.read_bytes() == version_2
    assert "--replace-older works with --repair only" in fsck(fresh_node, "--replace-older").stderr


# --- Finding 7: STATUS= texts cannot inject other sd_notify assignments ------------------------

def test_status_texts_lose_their_control_characters(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    try:
        notifier = Notifier()
        notifier.ready("degraded: haproxy: backend said\nWATCHDOG=trigger")
        assert sock.recv(4096).decode().splitlines() == [
            "READY=1", "STATUS=degraded: haproxy: backend said WATCHDOG=trigger",
            f"MAINPID={os.getpid()}"]
        notifier.status("degraded: haproxy: \r\nREADY=0\x00\x1b[2J\x85end")
        assert sock.recv(4096).decode().splitlines() == [
            "STATUS=degraded: haproxy:  READY=0 [2J end"]
    finally:
        sock.close()


# --- Finding 8: init never overwrites a key file without --force ------------------------------

def test_init_over_a_node_without_its_config_keeps_the_keys(tmp_path: Path) -> None:
    root = tmp_path / "n"
    segue("init", root)
    (root / "segued.toml").rename(tmp_path / "moved.toml")
    before = {p: p.read_bytes() for p in (root / "keys").iterdir()}
    again = segue("init", root, check=False)
    assert again.returncode == 2
    assert again.stderr.splitlines() == [
        f"segue: {root / 'keys' / 'edge-x25519.pem'} exists; refusing to overwrite it (--force "
        "rewrites segued.toml and makes what is missing, keeping keys and tracks)"]
    assert {p: p.read_bytes() for p in (root / "keys").iterdir()} == before
    assert not (root / "segued.toml").exists()


# --- Shared by the findings below ---------------------------------------------------------------

def configure(node: Node, section: str, lines: str) -> None:
    """Add `lines` (TOML keys) to [section] of the node's configuration, making the table if
    `segue init` did not."""
    text = node.conf.read_text()
    header = f"[{section}]\n"
    if header in text:
        node.conf.write_text(text.replace(header, f"{header}{lines}\n", 1))
    else:
        node.conf.write_text(f"{text}\n{header}{lines}\n")


def get(url: str, *headers: tuple[str, str]) -> tuple[int, bytes]:
    """Status and body of a GET, whatever the status."""
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(node: Node, name: str) -> float:
    _, body = get(node.base + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"no {name} in /metrics")


# --- Finding 5: the chunk cache counts the memory its entries pin -----------------------------

def test_the_chunk_cache_counts_the_pages_a_short_last_chunk_pins(fresh_node: Node,
                                                                  tmp_path: Path) -> None:
    # Three tracks of one short chunk each (2 s of 128 kb/s MP3: about 32 KiB of 256 KiB).
    tracks = fresh_node.pack(*(make_tone(tmp_path / f"{i}.mp3", MP3, seconds=2, freq=300 + i,
                                         title=str(i)) for i in range(3)))
    # Each entry pins its plaintext rounded up to whole pages: room for the first two.
    pinned = [-(-fresh_node.tracks[t].stat().st_size // mmap.PAGESIZE) * mmap.PAGESIZE
              for t in tracks]
    configure(fresh_node, "cache", f"bytes = {pinned[0] + pinned[1]}\nread_ahead_chunks = 0")
    fresh_node.start()
    token = fresh_node.token()
    for track in tracks:
        status, body = get(fresh_node.url(track, token))
        assert status == 200 and body == fresh_node.tracks[track].read_bytes()
        assert len(body) < 262144
    assert metric(fresh_node, "segue_chunk_cache_bytes") <= pinned[0] + pinned[1]
    assert metric(fresh_node, "segue_chunk_cache_evictions_total") >= 1


# --- Finding 4: one unreadable file is a bad copy; the public health says little --------------

def test_an_unreadable_copy_fails_over_and_leaves_its_share_up(fresh_node: Node,
                                                               tmp_path: Path) -> None:
    shares = local_shares(fresh_node, ("a", "b"))  # each holds every file
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=20, title="a"))
    # Every file of the track on share a becomes a link to itself: opening it fails (ELOOP)
    # while the share answers.
    damaged = 0
    for path in (shares["a"] / layout.track_dir(track)).iterdir():
        path.unlink()
        path.symlink_to(path.name)
        damaged += 1
    assert damaged > 2  # the manifest and some chunks
    fresh_node.start()
    status, body = get(fresh_node.url(track, fresh_node.token()))
    assert status == 200 and body == fresh_node.tracks[track].read_bytes()
    assert get(fresh_node.base + "/healthz") == (200, b"ok\n")
    time.sleep(1)  # the probe service ticks every 0.25 s: it would have logged "share down"
    assert not fresh_node.log_events_named("share down")
    refused = fresh_node.log_events_named("manifest refused") \
        + fresh_node.log_events_named("chunk copy refused")
    assert refused and all(e["share"] == "a" and "Too many levels of symbolic links" in e["error"]
                           for e in refused)
    assert metric(fresh_node, 'segue_share_up{share="a"}') == 1


def test_the_public_health_names_what_is_down_and_the_log_says_why(
        fresh_node: Node, tmp_path: Path, plugin_path: str) -> None:
    shares = local_shares(fresh_node, ("b", "a"))  # manifests are read from b first
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    secret_reason = "pool unreachable at smb://svc-segue@nas-a/media (set server be/edge1)"
    fresh_node.conf.write_text(fresh_node.conf.read_text() + "\n[plugins.example]\n"
                               f"health = \"degraded\"\nreason = {json.dumps(secret_reason)}\n")
    fresh_node.start(env={"PYTHONPATH": with_plugins(plugin_path),
                          "SEGUE_PLUGINS_ALLOW": "example"})
    assert get(fresh_node.base + "/healthz") == (200, b"degraded: plugin example degraded\n")
    # Share b's folder is gone (a file in its place): the share itself cannot be read.
    shutil.rmtree(shares["b"])
    shares["b"].write_text("not a folder")
    assert get(fresh_node.url(track, fresh_node.token()))[0] == 200  # from share a
    deadline = time.monotonic() + 10  # the probe service publishes the change
    while (healthz := get(fresh_node.base + "/healthz"))[1] != b"degraded: share b down\n":
        assert time.monotonic() < deadline, healthz
        time.sleep(0.05)
    _, body = get(fresh_node.base + "/v1/status")
    doc = json.loads(body)
    assert doc["health"] == {"status": "degraded", "reason": "share b down"}
    assert doc["plugins"][0]["health"] == {"status": "degraded",
                                           "reason": "plugin example degraded"}
    for text in (body.decode(), get(fresh_node.base + "/metrics")[1].decode()):
        assert str(fresh_node.root) not in text and "svc-segue" not in text
    # The detail is in the log, for the people who run the node.
    details = [e["detail"] for e in fresh_node.log_events_named("health")]
    assert f"example: {secret_reason}" in details[0]
    assert any(f"{shares['b']}" in d and "Not a directory" in d for d in details[1:])


def test_an_smb_file_the_server_refuses_keeps_the_share_and_its_connections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real smbd refusing one file (a folder where a chunk should be: STATUS_FILE_IS_A_DIRECTORY)
    while the share answers: that copy is bad, the share and its connections stay."""
    server = Smbd(tmp_path / "smb", "solo")
    server.start()
    try:
        store = SmbStore(SmbUrl.parse(server.url), PASSWORD)
        store.write_chunk(TRACK, 1, b"a good chunk")
        chunk = server.share_dir / "segue" / layout.chunk_path(TRACK, 0)
        chunk.mkdir(parents=True)
        resets: list[bool] = []
        reset = store.reset
        monkeypatch.setattr(store, "reset", lambda: (resets.append(True), reset()))
        with pytest.raises(BadCopyError, match=f"cannot read chunk 0 of track {TRACK} on "
                                               f"{server.url}: SMBOSError"):
            store.read_chunk_into(TRACK, 0, bytearray(16))
        assert not resets  # the pooled connections stay, and serve the next read
        assert store.read_chunk_into(TRACK, 1, buf := bytearray(16)) == 12
        assert bytes(buf[:12]) == b"a good chunk"
        # The same file while the server is gone: the share is at fault.
        server.kill()
        with pytest.raises(StoreError) as failure:
            store.read_chunk_into(TRACK, 0, bytearray(16))
        assert not isinstance(failure.value, BadCopyError) and resets
    finally:
        server.stop()


# --- Finding 9: store writers follow no links; SMB temporary names are unique ------------------

def test_fsck_repair_never_writes_through_a_linked_track_folder(fresh_node: Node,
                                                                tmp_path: Path) -> None:
    shares = local_shares(fresh_node, ("a", "b"))
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    # A share writer swaps the track's folder on share a for a link to a folder of its choice.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = shares["a"] / layout.track_dir(track)
    shutil.rmtree(folder)
    folder.symlink_to(elsewhere)

    result = fsck(fresh_node, "--repair")
    assert result.returncode == 1
    assert f"{track} on a: manifest missing; cannot repair: refusing to write below {folder}: " \
        "it is a symbolic link or not a folder" in result.stdout, result.stdout + result.stderr
    assert list(elsewhere.iterdir()) == []
    # A real folder in its place is repaired as before, with no temporary file left behind.
    folder.unlink()
    assert fsck(fresh_node, "--repair").returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in (shares["b"] / layout.track_dir(track)).iterdir())


def test_smb_writers_use_temporary_names_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the names smbclient is asked to write and rename."""
    store = SmbStore(SmbUrl.parse("smb://svc@nas/media"), "secret")
    monkeypatch.setattr(store, "_session", dict)
    written: list[str] = []
    monkeypatch.setattr(smbclient, "makedirs", lambda path, **kw: None)
    monkeypatch.setattr(smbclient, "open_file",
                        lambda path, **kw: written.append(path) or contextlib.nullcontext(
                            io.BytesIO()))
    monkeypatch.setattr(smbclient, "replace", lambda src, dst, **kw: None)
    store.write_chunk(TRACK, 0, b"sealed")
    store.write_chunk(TRACK, 0, b"sealed")
    first, second = written
    assert first != second
    assert f"\\.0.chunk.{os.getpid()}." in first and first.endswith(".tmp")


# --- Finding 11: reloads, token scope, JWKS use and alg, salted user hashes, peers' connections --

class GatedManifests:
    """Wraps a store: manifest reads wait until the test opens the gate."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.reading = threading.Event()
        self.gate = threading.Event()

    def read_manifest(self, track_id: str) -> bytes:
        self.reading.set()
        assert self.gate.wait(10)
        return self._store.read_manifest(track_id)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_an_open_in_flight_during_a_key_change_is_not_cached(fresh_node: Node,
                                                             tmp_path: Path) -> None:
    """In-process: the race needs an open held between its read and set_keys."""
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    settings = config.load(fresh_node.conf)
    serving = wiring.build(settings)
    share = serving.library.shares.shares[0]
    gated = GatedManifests(share.store)
    share.store = gated  # type: ignore[assignment]
    old = load_edge_keys(settings)
    # The reload removes the packager from the trusted keys.
    untrusting = dataclasses.replace(old, trusted_packagers={})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serving.library.open, track)  # under the old trust
            await trio.to_thread.run_sync(gated.reading.wait)
            serving.library.set_keys(untrusting)
            gated.gate.set()
        with pytest.raises(TrackUnavailable):  # opened afresh, under the new trust
            await serving.library.open(track)

    trio.run(main, strict_exception_groups=True)


def test_require_scope_refuses_tokens_that_name_no_tracks(fresh_node: Node,
                                                          tmp_path: Path) -> None:
    configure(fresh_node, "auth", "require_scope = true")
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    fresh_node.start()
    auth_key = keys.load_private_key(fresh_node.root / "keys" / "auth-ed25519.pem")
    claims = {"sub": "idp-user", "exp": int(time.time()) + 600, "aud": "segue"}
    unscoped = jwt.encode(claims, auth_key, algorithm="EdDSA",
                          headers={"kid": keys.key_id(auth_key.public_key())})
    status, body = get(fresh_node.url(track, unscoped))
    assert status == 403
    assert json.loads(body)["detail"].startswith('this token has no "tracks" claim')
    assert get(fresh_node.url(track, fresh_node.token()))[0] == 200  # `segue token`: "*"


def test_jwks_keys_sign_only_with_their_use_and_alg(fresh_node: Node, tmp_path: Path) -> None:
    encryption, rs512, signing = keys.generate("p256"), keys.generate("rsa"), keys.generate("p256")
    jwks = [dict(json.loads(ECAlgorithm.to_jwk(encryption.public_key())), kid="enc", use="enc"),
            dict(json.loads(RSAAlgorithm.to_jwk(rs512.public_key())), kid="rs512", alg="RS512"),
            dict(json.loads(ECAlgorithm.to_jwk(signing.public_key())), kid="sig", use="sig",
                 alg="ES256")]
    (fresh_node.root / "jwks.json").write_text(json.dumps({"keys": jwks}))
    configure(fresh_node, "auth", 'jwks = "jwks.json"')
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    fresh_node.start()
    claims = {"sub": "idp-user", "exp": int(time.time()) + 600, "aud": "segue", "tracks": "*"}

    def play(key: Any, alg: str, kid: str) -> int:
        token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
        return get(fresh_node.url(track, token))[0]

    assert play(signing, "ES256", "sig") == 200
    assert play(encryption, "ES256", "enc") == 401  # an encryption key signs nothing
    assert play(rs512, "RS256", "rs512") == 401  # an RS512 key verifies no RS256 token
    only_enc = segue("check-config", "--config", fresh_node.conf, check=False)
    assert only_enc.returncode == 0, only_enc.stderr
    (fresh_node.root / "jwks.json").write_text(json.dumps({"keys": jwks[:2]}))
    refused = segue("check-config", "--config", fresh_node.conf, check=False)
    assert refused.returncode == 2
    assert "auth.jwks: " in refused.stderr and "holds no key that signs tokens Segue " \
        "verifies; left out: enc (use 'enc', not \"sig\"), rs512 (alg 'RS512'" in refused.stderr


def test_user_hashes_in_the_request_log_are_keyed_with_the_fleet_salt(fresh_node: Node,
                                                                      tmp_path: Path) -> None:
    salt = fresh_node.root / "log-salt"
    salt.write_text("short\n")
    salt.chmod(0o600)
    configure(fresh_node, "log", 'user_hash_salt_file = "log-salt"')
    short = segue("check-config", "--config", fresh_node.conf, check=False)
    assert short.returncode == 2
    assert f"log.user_hash_salt_file: {salt} holds fewer than 16 characters" in short.stderr
    salt.write_text("fleet-salt-0123456789abcdef\n")
    (track,) = fresh_node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="a"))
    fresh_node.start()
    assert get(fresh_node.url(track, fresh_node.token("alice")))[0] == 200
    # The request's line is written once its response has ended, a moment after the client
    # has read it.
    deadline = time.monotonic() + 5
    while not (lines := [e for e in fresh_node.log_events_named("request")
                         if e.get("track") == track]) and time.monotonic() < deadline:
        time.sleep(0.02)
    (line,) = lines
    expected = hmac.new(b"segue/v1 log user\x00fleet-salt-0123456789abcdef", b"alice",
                        hashlib.sha256).hexdigest()[:16]
    assert line["user"] == expected
    unsalted = hashlib.sha256(b"segue/v1 log user\x00alice").hexdigest()[:16]
    assert unsalted not in fresh_node.log_text()


def test_one_client_cannot_hold_more_than_its_connections(fresh_node: Node) -> None:
    configure(fresh_node, "http", "max_connections_per_client = 2")
    fresh_node.start()
    host, port = fresh_node.base.removeprefix("http://").rsplit(":", 1)
    held = []
    for _ in range(2):  # each answered once, so the node has surely counted it
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        held.append(connection)
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b"ok\n"
    try:
        with socket.create_connection((host, int(port)), timeout=10) as third:
            answer = third.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"too many connections from your address" in answer
        held.pop().close()
        deadline = time.monotonic() + 5  # the node notices the close
        while get(fresh_node.base + "/healthz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


# --- Finding 10: F5 over https only, MySQL with verified TLS, the HAProxy agent's address ------

def test_an_f5_management_url_over_plain_http_is_refused_unless_allowed(
        fresh_node: Node) -> None:
    secret = fresh_node.root / "f5.password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    table = ('management_url = "http://bigip.example.net"\nusername = "svc-segue"\n'
             'password_file = "f5.password"\npool = "edge_pool"\n')
    fresh_node.conf.write_text(fresh_node.conf.read_text() + f"\n[plugins.f5]\n{table}")
    refused = segue("check-config", "--config", fresh_node.conf, check=False)
    assert refused.returncode == 2
    assert "management_url is http://: the password and the auth token would cross the " \
        "network in clear; use https://HOST" in refused.stderr
    configure(fresh_node, "plugins.f5", "allow_plain_http = true")
    allowed = segue("check-config", "--config", fresh_node.conf, check=False)
    assert allowed.returncode == 0, allowed.stderr


def test_mysql_tls_is_required_and_verified_when_asked_for(
        fresh_node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(fresh_node, "plugins.mysql", 'tls = true\ntls_ca_file = "no-such-ca.pem"\n'
              '[[plugins.mysql.shards]]\nname = "s0"\nrange = "-"\nhost = "db.example.net"\n'
              'user = "segue_replicator"')
    refused = segue("check-config", "--config", fresh_node.conf, check=False)
    assert refused.returncode == 2
    assert "tls_ca_file: cannot load 'no-such-ca.pem' as PEM CA certificates" in refused.stderr
    # In-process: the connections the plugin makes carry a context that verifies.
    plugin = MySQLPlugin()
    plugin.segue_configure({"tls": True, "shards": [
        {"name": "s0", "range": "-", "host": "db.example.net", "user": "u"}]},
        fresh_node.conf)
    (shard,) = plugin.shards
    seen: dict[str, Any] = {}
    monkeypatch.setattr(pymysql, "connect", lambda **kw: seen.update(kw))
    shard.connect()
    for context in (seen["ssl"], shard.connection_settings()["ssl"]):
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_haproxy_agent_listens_where_it_is_told(fresh_node: Node) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        agent_port = s.getsockname()[1]
    configure(fresh_node, "plugins.haproxy", f'mode = "agent"\nbackend = "be"\nserver = "edge1"\n'
              f'agent_port = {agent_port}\nagent_address = "127.0.0.2"')
    fresh_node.start()
    with socket.create_connection(("127.0.0.2", agent_port), timeout=5) as agent:
        assert agent.makefile("rb").readline() == b"up ready\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", agent_port), timeout=5).close()
