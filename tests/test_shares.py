"""Chunks on several CIFS/SMB shares (real smbd processes): placement, failover, fsck."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MP3, Node, make_tone, segue
from samba import PASSWORD, Smbd
from segue.seal.manifest import b64d
from segue.storage import layout
from segue.storage.errors import NotInStoreError
from segue.storage.local import LocalStore
from segue.storage.placement import placement
from segue.storage.smb import SmbStore, SmbUrl

CHUNK = 256 * 1024


@pytest.fixture
def smbds(tmp_path: Path) -> Iterator[list[Smbd]]:
    servers = [Smbd(tmp_path / f"smb-{name}", name) for name in ("a", "b", "c")]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def use_shares(node: Node, servers: list[Smbd], replicas: int = 2) -> None:
    secret = node.root / "smb.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    tables = "".join(
        f'\n[[store.shares]]\nname = "{s.name}"\nurl = "{s.url}"\n'
        f'password_file = "smb.password"\n' for s in servers)
    node.conf.write_text(node.conf.read_text().replace(
        '[store]\npath = "store"\n',
        f"[store]\nreplicas = {replicas}\nread_timeout_s = 2.0\n{tables}"))
    segue("store", "mark", "--new", "--config", node.conf)


def share_file(server: Smbd, rel: os.PathLike[str]) -> Path:
    return server.share_dir / "segue" / rel


def holders(servers: list[Smbd], track: str, index: int) -> list[Smbd]:
    names = placement([s.name for s in servers], 2, track, index)
    return [s for s in servers if s.name in names]


def get(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def healthz(node: Node) -> str:
    return get(node.base + "/healthz")[1].decode().strip()


def wait_until(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- the store contract, for both backends ---


@pytest.fixture(params=["local", "smb"])
def store(request, tmp_path: Path):
    if request.param == "local":
        (tmp_path / "dir").mkdir()
        yield LocalStore(tmp_path / "dir")
        return
    server = Smbd(tmp_path / "smb", "solo")
    server.start()
    yield SmbStore(SmbUrl.parse(server.url), PASSWORD)
    server.stop()


def test_a_store_removes_a_track_and_its_folder(store) -> None:
    track = "0123456789abcdef"
    for index in range(3):
        store.write_chunk(track, index, b"x")
    store.write_manifest(track, b'{"m": 1}')
    store.remove_track(track)
    assert not store.has_manifest(track) and store.track_ids() == []
    with pytest.raises(NotInStoreError):
        store.read_chunk_into(track, 0, bytearray(10))
    store.remove_track(track)  # gone already: nothing to do


def test_a_store_reads_back_what_it_wrote(store) -> None:
    track = "0123456789abcdef"
    assert store.track_ids() == []
    assert not store.has_manifest(track)
    with pytest.raises(NotInStoreError):
        store.read_manifest(track)
    with pytest.raises(NotInStoreError):
        store.read_chunk_into(track, 0, bytearray(10))
    data = os.urandom(CHUNK + 16)
    store.write_chunk(track, 0, data)
    store.write_manifest(track, b'{"m": 1}')
    store.probe()  # a share that holds tracks answers
    buf = bytearray(CHUNK + 17)
    assert store.read_chunk_into(track, 0, buf) == len(data)
    assert bytes(buf[:len(data)]) == data
    assert store.read_manifest(track) == b'{"m": 1}'
    assert store.has_manifest(track)
    assert store.track_ids() == [track]
    store.write_manifest(track, b'{"m": 2}')  # replaced whole
    assert store.read_manifest(track) == b'{"m": 2}'


def test_smb_urls() -> None:
    url = SmbUrl.parse("smb://segue@nas.example.net:4455/media/a/b")
    assert (url.user, url.host, url.port, url.share, url.path) == (
        "segue", "nas.example.net", 4455, "media", "a/b")
    assert str(url) == "smb://segue@nas.example.net:4455/media/a/b"
    for bad in ("smb://nas/media", "smb://u@nas", "http://u@nas/media", "smb://u:pw@nas/m"):
        with pytest.raises(ValueError):
            SmbUrl.parse(bad)


# --- a node on three shares ---


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    return make_tone(tmp_path / "long.wav", ["-c:a", "pcm_s16le"], seconds=30, title="Long")


def test_pack_places_each_chunk_on_two_of_three_shares(fresh_node: Node, smbds, wav) -> None:
    use_shares(fresh_node, smbds)
    (track,) = fresh_node.pack(wav)
    count = -(-wav.stat().st_size // CHUNK)
    for server in smbds:
        assert share_file(server, layout.manifest_path(track)).exists()
    for index in range(count):
        have = {s.name for s in smbds if share_file(s, layout.chunk_path(track, index)).exists()}
        assert have == {s.name for s in holders(smbds, track, index)}, index
    # Rendezvous hashing spreads the chunks over all three shares.
    assert all(any(share_file(s, layout.chunk_path(track, i)).exists() for i in range(count))
               for s in smbds)


def _slow_get(url: str, out: dict) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            body = bytearray()
            while piece := r.read(64 * 1024):
                body.extend(piece)
                time.sleep(0.02)
            out["body"] = bytes(body)
    except Exception as e:  # reported by the test
        out["error"] = e


def test_a_share_killed_mid_stream_costs_the_player_nothing(fresh_node: Node, smbds,
                                                            tmp_path: Path) -> None:
    # 23 MB read at ~3 MB/s: far more than socket buffers hold, so most chunks are read from
    # the shares after one of them is gone.
    wav = make_tone(tmp_path / "longer.wav", ["-c:a", "pcm_s16le"], seconds=120, title="L")
    use_shares(fresh_node, smbds)
    (track,) = fresh_node.pack(wav)
    fresh_node.start()
    out: dict = {}
    player = threading.Thread(target=_slow_get,
                              args=(fresh_node.url(track, fresh_node.token()), out))
    player.start()
    time.sleep(0.4)
    smbds[0].kill()
    player.join(timeout=120)
    assert "error" not in out, out.get("error")
    assert out["body"] == wav.read_bytes()
    wait_until(lambda: healthz(fresh_node).startswith("degraded: share a down"))
    smbds[0].start()
    wait_until(lambda: healthz(fresh_node) == "ok")
    metrics = get(fresh_node.base + "/metrics")[1].decode()
    assert 'segue_share_up{share="a"} 1.0' in metrics
    assert "segue_store_failovers_total" in metrics


def test_every_share_down_is_failing(fresh_node: Node, smbds, wav) -> None:
    use_shares(fresh_node, smbds)
    (track,) = fresh_node.pack(wav)
    fresh_node.start()
    for server in smbds:
        server.kill()
    assert get(fresh_node.url(track, fresh_node.token()))[0] == 503
    wait_until(lambda: healthz(fresh_node).startswith("failing: no share can be read"))


def test_a_chunk_with_no_readable_copy_is_503_and_logged(fresh_node: Node, smbds, wav) -> None:
    use_shares(fresh_node, smbds)
    (track,) = fresh_node.pack(wav)
    for server in holders(smbds, track, 3):
        share_file(server, layout.chunk_path(track, 3)).unlink()
    fresh_node.start()
    token = fresh_node.token()
    assert get(fresh_node.url(track, token), Range=f"bytes={3 * CHUNK}-")[0] == 503
    line = next(e for e in fresh_node.log_events()
                if e.get("event") == "no readable copy of a chunk")
    assert (line["track"], line["chunk"]) == (track, 3)
    assert {t.split(" ")[0] for t in line["tried"]} == {s.name for s in holders(smbds, track, 3)}
    # Other chunks still play.
    status, body = get(fresh_node.url(track, token), Range=f"bytes=0-{CHUNK - 1}")
    assert (status, body) == (206, wav.read_bytes()[:CHUNK])


def test_a_corrupt_copy_is_skipped_then_found_and_repaired_by_fsck(fresh_node: Node, smbds,
                                                                   wav) -> None:
    use_shares(fresh_node, smbds)
    (track,) = fresh_node.pack(wav)
    bad_share = holders(smbds, track, 0)[0]
    path = share_file(bad_share, layout.chunk_path(track, 0))
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x40
    path.write_bytes(bytes(data))
    share_file(smbds[2], layout.manifest_path(track)).unlink()
    fresh_node.start()
    status, body = get(fresh_node.url(track, fresh_node.token()))
    assert (status, body) == (200, wav.read_bytes())

    found = segue("fsck", "--config", fresh_node.conf, check=False)
    assert found.returncode == 1
    assert f"{track} on {bad_share.name}: chunk 0 corrupt (digest mismatch) (NOT repaired)" \
        in found.stdout
    assert f"{track} on {smbds[2].name}: manifest missing (NOT repaired)" in found.stdout
    repaired = segue("fsck", "--config", fresh_node.conf, "--repair", check=False)
    assert repaired.returncode == 0, repaired.stdout
    assert "2 problems, 2 repaired" in repaired.stdout
    clean = segue("fsck", "--config", fresh_node.conf, "--track", track, check=False)
    assert clean.returncode == 0
    assert "0 problems" in clean.stdout
    envelope = json.loads(share_file(smbds[2], layout.manifest_path(track)).read_text())
    digest = json.loads(b64d(envelope["payload"]))["chunks"][0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_fsck_on_local_directories(fresh_node: Node, tmp_path: Path) -> None:
    (track,) = fresh_node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=40, title="t"))
    store = fresh_node.root / "store"
    (store / layout.chunk_path(track, 1)).unlink()
    result = segue("fsck", "--config", fresh_node.conf, check=False)
    assert result.returncode == 1
    assert f"{track} on local: chunk 1 missing; no good copy on any share (NOT repaired)" \
        in result.stdout


def test_two_readers_of_one_smb_file_at_once(tmp_path: Path) -> None:
    """Players share chunks: concurrent opens of one file must not be sharing violations."""
    server = Smbd(tmp_path / "smb", "solo")
    server.start()
    try:
        store = SmbStore(SmbUrl.parse(server.url), PASSWORD)
        store.write_chunk("0123456789abcdef", 0, b"x" * CHUNK)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                for _ in range(20):
                    buf = bytearray(CHUNK + 1)
                    assert store.read_chunk_into("0123456789abcdef", 0, buf) == CHUNK
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
    finally:
        server.stop()


def test_an_smb_store_reads_files_of_every_size_and_holds_no_handle_after(
        tmp_path: Path) -> None:
    server = Smbd(tmp_path / "smb", "solo")
    server.start()
    try:
        store = SmbStore(SmbUrl.parse(server.url), PASSWORD)
        track = "0123456789abcdef"
        sizes = [0, 1, CHUNK, CHUNK + 16, CHUNK + 17, CHUNK + 1000]
        files = [os.urandom(size) for size in sizes]
        for index, data in enumerate(files):
            store.write_chunk(track, index, data)
        assert server.open_files() == []
        for _ in range(3):
            for index, data in enumerate(files):
                buf = bytearray(CHUNK + 17)
                got = store.read_chunk_into(track, index, buf)
                # A file larger than the buffer reads as exactly the buffer ("too large").
                assert got == min(len(data), len(buf))
                assert bytes(buf[:got]) == data[:got]
        assert server.open_files() == []
    finally:
        server.stop()


def test_a_hung_smb_server_costs_its_share_and_nothing_else(fresh_node: Node, smbds,
                                                            tmp_path: Path) -> None:
    """Issue 19: a share that stops answering (smbd stopped, connections open) is given up
    after the read deadline, marked down, and the node keeps serving from the other copies."""
    use_shares(fresh_node, smbds)
    first, second = fresh_node.pack(
        make_tone(tmp_path / "one.mp3", MP3, seconds=5, title="One"),
        make_tone(tmp_path / "two.mp3", MP3, seconds=5, title="Two"))
    fresh_node.start()
    token = fresh_node.token()
    assert get(fresh_node.url(first, token))[0] == 200  # every share connected
    os.killpg(smbds[0].proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, body = get(fresh_node.url(second, token))
        assert (status, body) == (200, fresh_node.tracks[second].read_bytes())
        assert time.monotonic() - started < 10  # read_timeout_s is 2 s
        # The node hears of it on the probe service's next tick.
        wait_until(lambda: healthz(fresh_node).startswith("degraded: share a down"), 5)
        assert get(fresh_node.url(second, token, "/meta"))[0] == 200
        assert get(f"{fresh_node.base}/v1/search?q=Two&token={token}")[0] == 200
        assert get(fresh_node.base + "/metrics")[0] == 200
    finally:
        os.killpg(smbds[0].proc.pid, signal.SIGCONT)
    wait_until(lambda: healthz(fresh_node) == "ok")
