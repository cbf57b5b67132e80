"""Issue 19, finding 1: a share whose reads hang (or that holds FIFOs, devices or huge files
where manifests belong) costs the node that share and nothing else.

In-process: a node's app built from its configuration with two local shares, driven by trio.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from conftest import MP3, Node, make_tone, segue
from segue import config, wiring
from segue.configured_keys import load_edge_keys
from segue.storage import layout
from segue.storage.errors import BadCopyError, TrackUnavailable
from segue.storage.local import LocalStore
from segue.storage.probe import probe_shares
from segue.storage.shares import Share
from segue.wiring import Serving

TIMEOUT_S = 1.0
FAKE_IDS = [f"{i:02d}" + "0123456789abcd" for i in range(8)]  # as many as [limits] threads


@pytest.fixture(scope="module")
def two_shares(tmp_path_factory: pytest.TempPathFactory) -> tuple[Node, str]:
    """A node on local shares a and b (both holding every chunk), one track packed."""
    root = tmp_path_factory.mktemp("hung")
    node = Node.init(root / "edge")
    for name in ("a", "b"):
        (node.root / name).mkdir()
    node.conf.write_text(node.conf.read_text().replace(
        '[store]\npath = "store"\n',
        f'[store]\nreplicas = 2\nread_timeout_s = {TIMEOUT_S}\n'
        '\n[[store.shares]]\nname = "a"\nurl = "a"\n'
        '\n[[store.shares]]\nname = "b"\nurl = "b"\n'))
    segue("store", "mark", "--new", "--config", node.conf)
    (track,) = node.pack(make_tone(root / "t.mp3", MP3, seconds=3, title="Hung"))
    return node, track


def fresh_app(node: Node) -> Serving:
    return wiring.build(config.load(node.conf))


class HangingManifests:
    """Wraps a store: manifest reads block until released (a CIFS server that stopped)."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.release = threading.Event()
        self.waiting = 0

    def read_manifest(self, track_id: str) -> bytes:
        self.waiting += 1
        self.release.wait(30)
        raise OSError("released")

    def probe(self) -> None:
        self.release.wait(30)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def share_named(app: Serving, name: str) -> Share:
    share = app.library.shares.get(name)
    assert share is not None
    return share


def test_a_hung_manifest_read_fails_over_and_marks_the_share_down(two_shares) -> None:
    node, track = two_shares
    app = fresh_app(node)
    a = share_named(app, "a")
    hanging = HangingManifests(a.store)
    a.store = hanging  # type: ignore[assignment]
    changes: list[str] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_shares, app.library.shares, TIMEOUT_S,
                               lambda: changes.append(app.library.shares.health().status))
            started = trio.current_time()
            opened = await app.library.open(track)  # a first: it is healthy
            assert trio.current_time() - started < TIMEOUT_S + 0.5
            (await app.library.chunk(opened, 0)).release()
            assert not a.healthy and "timed out" in a.last_error
            assert app.library.shares.health().status == "degraded"
            # The node-wide limiter (search, /meta, /metrics) was never used by the reads.
            assert app.limiter.statistics().borrowed_tokens == 0
            # Later opens go to b first: no more waiting on a.
            app.library.set_keys(load_edge_keys(config.load(node.conf)))
            started = trio.current_time()
            await app.library.open(track)
            assert trio.current_time() - started < 0.5
            await trio.sleep(0.5)
            assert changes == ["degraded"]
            hanging.release.set()  # the server answers again: the probe brings a back
            with trio.fail_after(10):
                while not a.healthy:
                    await trio.sleep(0.1)
            await trio.sleep(0.5)
            assert changes == ["degraded", "ok"]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_no_share_answering_is_failing(two_shares) -> None:
    node, track = two_shares
    app = fresh_app(node)
    stores = []
    for share in app.library.shares.shares:
        stores.append(HangingManifests(share.store))
        share.store = stores[-1]  # type: ignore[assignment]

    async def main() -> None:
        with pytest.raises(TrackUnavailable):
            await app.library.open(track)

    started = time.monotonic()
    trio.run(main)
    assert time.monotonic() - started < 2 * TIMEOUT_S + 1
    assert app.library.shares.health().status == "failing"
    for store in stores:
        store.release.set()


def test_fifos_named_manifest_json_are_refused_at_once(two_shares) -> None:
    """FIFOs where manifests belong: refused without a thread left waiting for a writer."""
    node, track = two_shares
    made = []
    for track_id in [*FAKE_IDS, track]:
        path = node.root / "a" / layout.manifest_path(track_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.rename(path.with_name("saved.json"))
        os.mkfifo(path)
        made.append(path)
    try:
        app = fresh_app(node)

        async def main() -> None:
            with trio.fail_after(TIMEOUT_S):
                for track_id in FAKE_IDS:
                    with pytest.raises(TrackUnavailable):
                        await app.library.open(track_id)
                opened = await app.library.open(track)
                (await app.library.chunk(opened, 0)).release()
            for share in app.library.shares.shares:
                assert share.limiter.statistics().borrowed_tokens == 0
            # A bad copy is not a share that is down.
            assert app.library.shares.health().status == "ok"

        trio.run(main)
    finally:
        for path in made:
            path.unlink()
            saved = path.with_name("saved.json")
            if saved.exists():
                saved.rename(path)


def test_a_manifest_larger_than_any_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_manifest("0123456789abcdef", b"{" * (layout.MANIFEST_MAX_BYTES + 1))
    with pytest.raises(BadCopyError):
        store.read_manifest("0123456789abcdef")
    store.write_manifest("0123456789abcdef", b"{" * layout.MANIFEST_MAX_BYTES)
    assert len(store.read_manifest("0123456789abcdef")) == layout.MANIFEST_MAX_BYTES


def test_a_manifest_linked_to_dev_zero_is_refused_without_exhausting_memory(
        tmp_path: Path) -> None:
    path = tmp_path / layout.manifest_path("0123456789abcdef")
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/zero")
    # In a child process whose memory is capped: reading /dev/zero whole would only end there.
    code = ("import sys; from pathlib import Path; from segue.storage.local import LocalStore\n"
            "from segue.storage.errors import StoreError\n"
            "try:\n"
            f"    LocalStore(Path({str(tmp_path)!r})).read_manifest('0123456789abcdef')\n"
            "except StoreError as e:\n"
            "    print('refused:', e)\n")

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, preexec_fn=cap_memory, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("refused:")


def test_track_ids_skips_names_that_are_not_track_ids(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_manifest("0123456789abcdef", b"{}")
    (tmp_path / "tracks" / "01" / "lost+found").mkdir()
    (tmp_path / "tracks" / "01" / "..hidden").mkdir()
    assert store.track_ids() == ["0123456789abcdef"]
