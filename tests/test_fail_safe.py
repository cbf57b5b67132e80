"""Fail safe, never silently wrong (issue 18): a share that is not mounted, a store made before
markers, a read-only share, a catalogue that disagrees with the shares."""

from __future__ import annotations

import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import MP3, SEGUE, Node, make_tone, require, segue
from segue.storage import layout


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_for_health(node: Node, status: int, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, body = get(node.base + "/healthz")
        if code == status:
            return body.strip()
        assert time.monotonic() < deadline, f"/healthz stayed {code} {body!r}"
        time.sleep(0.1)


def test_an_unmounted_share_fails_health_plays_and_fsck_until_it_is_back(
        fresh_node: Node, tmp_path: Path) -> None:
    (track,) = fresh_node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t"))
    store = fresh_node.root / "store"
    mounted = tmp_path / "nas"
    store.rename(mounted)
    store.mkdir()  # the mount point, with nothing mounted on it
    fresh_node.start(wait=False)
    fresh_node.base = "http://" + fresh_node.wait_for_event("listening", 20)["addresses"][0]
    assert wait_for_health(fresh_node, 503) == "failing: no share can be read"
    token = fresh_node.token()
    assert get(fresh_node.url(track, token))[0] == 503  # not 404: the track may be there
    down = fresh_node.wait_for_event("share down")
    assert "segue-store.json" in down["error"] and "not mounted" in down["error"]

    fsck = segue("fsck", "--config", fresh_node.conf, check=False)
    assert fsck.returncode == 1 and "0 problems" not in fsck.stdout
    assert "share local: no store marker" in fsck.stderr
    assert f"segue store mark --config {fresh_node.conf}" in fsck.stderr
    mark = segue("store", "mark", "--config", fresh_node.conf, check=False)
    assert mark.returncode == 1 and "not mounted" in mark.stderr
    assert not (store / "segue-store.json").exists()

    store.rmdir()
    mounted.rename(store)  # mounted again: the node comes back by itself
    assert wait_for_health(fresh_node, 200) == "ok"
    assert get(fresh_node.url(track, token))[0] == 200

    store.rename(mounted)  # unmounted under the running node: seen without a play
    store.mkdir()
    assert wait_for_health(fresh_node, 503) == "failing: no share can be read"


def test_a_store_made_before_markers_is_refused_until_marked(fresh_node: Node,
                                                              tmp_path: Path) -> None:
    tone = make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t")
    (track,) = fresh_node.pack(tone)
    (fresh_node.root / "store" / "segue-store.json").unlink()
    pack = segue("pack", "--config", fresh_node.conf, tone, check=False)
    assert pack.returncode == 1
    assert f"run `segue store mark --config {fresh_node.conf}`" in pack.stderr
    marked = segue("store", "mark", "--config", fresh_node.conf).stdout
    assert marked.startswith("local: marked (store ")
    assert "already marked" in segue("store", "mark", "--config", fresh_node.conf).stdout
    fsck = segue("fsck", "--config", fresh_node.conf)
    assert "checked 1 tracks" in fsck.stdout and "0 problems" in fsck.stdout
    assert track in segue("pack", "--config", fresh_node.conf, tone).stdout


def test_pack_names_a_share_mounted_read_only_before_writing(fresh_node: Node,
                                                              tmp_path: Path) -> None:
    tone = make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t")
    store = fresh_node.root / "store"
    before = sorted(store.rglob("*"))
    # A private mount namespace: the store bind-mounted read-only on itself, for this command.
    command = " ".join(f"'{a}'" for a in [*SEGUE, "pack", "--config", fresh_node.conf, tone])
    pack = subprocess.run(
        [require("unshare", "util-linux"), "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount --bind -o ro '{store}' '{store}' && exec {command}"],
        capture_output=True, text=True, timeout=60)
    assert pack.returncode == 1, pack.stderr
    assert "share local:" in pack.stderr and "Read-only file system" in pack.stderr
    assert "mounted read-write" in pack.stderr
    assert sorted(store.rglob("*")) == before


def test_fsck_checks_the_catalogue_against_the_manifests_both_ways(fresh_node: Node,
                                                                   tmp_path: Path) -> None:
    gone, uncatalogued = fresh_node.pack(
        make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="Gone"),
        make_tone(tmp_path / "b.mp3", MP3, seconds=2, freq=550, title="Lost"))
    for path in (fresh_node.root / "store" / layout.track_dir(gone)).iterdir():
        path.unlink()
    with sqlite3.connect(fresh_node.root / "catalogue.sqlite") as db:
        db.execute("DELETE FROM tracks WHERE track_id = ?", (uncatalogued,))
    fsck = segue("fsck", "--config", fresh_node.conf, check=False)
    assert fsck.returncode == 1
    assert f"{gone} on catalogue: catalogued, but no share holds a valid manifest" in fsck.stdout
    assert f"{uncatalogued} on catalogue: on the shares but not in the catalogue" in fsck.stdout
    repair = segue("fsck", "--config", fresh_node.conf, "--repair", check=False)
    assert f"{uncatalogued} on catalogue: on the shares but not in the catalogue (repaired)" \
        in repair.stdout
    assert repair.returncode == 1  # the catalogued track with no manifest is a person's call
    with sqlite3.connect(fresh_node.root / "catalogue.sqlite") as db:
        (title,) = db.execute("SELECT title FROM tracks WHERE track_id = ?",
                              (uncatalogued,)).fetchone()
    assert title == "Lost"
