"""`segue tracks list/show/remove`: the catalogue and the shares as a sysadmin sees them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from conftest import MP3, Node, make_tone, segue


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_tracks_list_show_and_remove(fresh_node: Node, tmp_path: Path) -> None:
    conf = fresh_node.conf
    kept, gone, third = fresh_node.pack(*(
        make_tone(tmp_path / f"{title}.mp3", MP3, seconds=2, freq=freq, title=title)
        for title, freq in (("Alpha", 440), ("Beta", 550), ("Gamma", 660))))
    lines = segue("tracks", "list", "--config", conf).stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[kept, "Alpha"], [gone, "Beta"],
                                                        [third, "Gamma"]]
    assert lines[0].endswith("\tSine Ensemble\t0:02")
    page = json.loads(segue("tracks", "list", "--config", conf, "--json", "--offset", "1",
                            "--limit", "1").stdout)
    assert page["total"] == 3 and [t["title"] for t in page["tracks"]] == ["Beta"]
    shown = json.loads(segue("tracks", "show", "--config", conf, "--json", gone).stdout)
    assert shown["title"] == "Beta" and shown["packed_version"] == 1
    assert shown["manifest_on"] == ["local"] and shown["catalogued"]
    assert "manifest_on: local" in segue("tracks", "show", "--config", conf, gone).stdout

    fresh_node.start()
    token = fresh_node.token()
    assert status_of(fresh_node.url(gone, token)) == 200
    out = segue("tracks", "remove", "--config", conf, gone).stdout
    assert out == f"{gone}: removed (catalogue: yes; manifests on: local)\n"
    assert not (fresh_node.root / "store" / "tracks" / gone[:2] / gone).exists()
    fresh_node.stop()  # a running node keeps what it opened in memory until it evicts it
    fresh_node.start()
    assert status_of(fresh_node.url(gone, token)) == 404
    assert status_of(fresh_node.url(kept, token)) == 200
    with urllib.request.urlopen(f"{fresh_node.base}/v1/search?token={token}", timeout=10) as r:
        assert [t["title"] for t in json.load(r)["results"]] == ["Alpha", "Gamma"]
    again = segue("tracks", "remove", "--config", conf, gone).stdout
    assert "was in neither the catalogue nor any share" in again
    missing = segue("tracks", "show", "--config", conf, gone, check=False)
    assert missing.returncode == 1 and "no track" in missing.stderr
    assert "0 problems" in segue("fsck", "--config", conf).stdout
