"""Serving tracks over HTTP to curl: ranges, validators, HEAD, metadata and search."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import MP3, Node, make_tone, require, track_of

CHUNK = 256 * 1024


def curl(url: str, *args: str, out: Path) -> tuple[int, dict[str, str], bytes]:
    """GET with curl; returns status, response headers (lower-case) and body."""
    binary = require("curl", "curl")
    headers_file = out.with_suffix(".headers")
    proc = subprocess.run(
        [binary, "-sS", "-o", str(out), "-D", str(headers_file), "-w", "%{http_code}", *args, url],
        capture_output=True, text=True, timeout=60, check=True,
    )
    headers = {}
    for line in headers_file.read_text().splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(proc.stdout), headers, out.read_bytes()


def request(node: Node, method: str, path: str, headers: dict[str, str] | None = None):
    parsed = urllib.parse.urlsplit(node.base)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mp3(node: Node) -> tuple[str, bytes]:
    track = track_of(node, ".mp3")
    return track, node.tracks[track].read_bytes()


def test_whole_track_is_the_original_file(node: Node, mp3, tmp_path: Path) -> None:
    track, original = mp3
    status, headers, body = curl(node.url(track, node.token()), out=tmp_path / "whole")
    assert status == 200
    assert body == original
    assert headers["content-length"] == str(len(original))
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "audio/mpeg"
    assert headers["etag"] == f'"{track}"'


def _boundary_ranges(size: int) -> list[str]:
    cases = ["0-0", f"{size - 1}-{size - 1}", f"{size - 1}-", "0-", "-1", "-1000", f"-{size}",
             f"-{size + 5}", "1000-", f"0-{size + 100}"]
    for b in range(CHUNK, size, CHUNK):
        cases += [f"{b - 1}-{b - 1}", f"{b}-{b}", f"{b + 1}-{b + 1}", f"{b - 1}-{b}",
                  f"{b - 1}-{b + 1}", f"{b - CHUNK}-{b - 1}", f"{b}-{min(b + CHUNK, size) - 1}",
                  f"{b - 10}-{b + 10}", f"{b}-"]
    return cases


def _expected_slice(spec: str, data: bytes) -> tuple[int, int]:
    first_text, _, last_text = spec.partition("-")
    size = len(data)
    if not first_text:
        return max(0, size - int(last_text)), size - 1
    last = size - 1 if not last_text else min(int(last_text), size - 1)
    return int(first_text), last


@pytest.mark.parametrize("fmt", [".mp3", ".flac"])
def test_ranges_at_chunk_boundaries_return_the_original_slice(node: Node, fmt: str,
                                                              tmp_path: Path) -> None:
    track = track_of(node, fmt)
    original = node.tracks[track].read_bytes()
    token = node.token()
    assert len(original) > CHUNK, "the test file must span more than one chunk"
    for i, spec in enumerate(_boundary_ranges(len(original))):
        status, headers, body = curl(node.url(track), "-H", f"Authorization: Bearer {token}",
                                     "-H", f"Range: bytes={spec}", out=tmp_path / f"r{i}")
        first, last = _expected_slice(spec, original)
        assert status == 206, spec
        assert body == original[first:last + 1], spec
        assert headers["content-range"] == f"bytes {first}-{last}/{len(original)}", spec
        assert headers["content-length"] == str(last - first + 1), spec


@pytest.mark.parametrize("spec", ["{size}-", "{size}-{beyond}", "-0"])
def test_a_range_past_the_end_is_416(node: Node, mp3, spec: str, tmp_path: Path) -> None:
    track, original = mp3
    size = len(original)
    rng = spec.format(size=size, beyond=size + 10)
    status, headers, _ = curl(node.url(track, node.token()), "-H", f"Range: bytes={rng}",
                              out=tmp_path / "r")
    assert status == 416
    assert headers["content-range"] == f"bytes */{size}"


def test_several_ranges_get_the_whole_body(node: Node, mp3, tmp_path: Path) -> None:
    track, original = mp3
    status, _, body = curl(node.url(track, node.token()), "-H", "Range: bytes=0-1,5-6",
                           out=tmp_path / "r")
    assert (status, body) == (200, original)


def test_if_range_is_honoured(node: Node, mp3) -> None:
    track, original = mp3
    auth = {"Authorization": f"Bearer {node.token()}"}
    path = f"/v1/tracks/{track}"
    status, _, body = request(node, "GET", path, {**auth, "Range": "bytes=10-19",
                                                  "If-Range": f'"{track}"'})
    assert (status, body) == (206, original[10:20])
    status, _, body = request(node, "GET", path, {**auth, "Range": "bytes=10-19",
                                                  "If-Range": '"stale-etag"'})
    assert (status, body) == (200, original)


def test_head_has_the_headers_and_no_body(node: Node, mp3) -> None:
    track, original = mp3
    status, headers, body = request(node, "HEAD", f"/v1/tracks/{track}",
                                    {"Authorization": f"Bearer {node.token()}"})
    assert status == 200
    assert body == b""
    assert headers["Content-Length"] == str(len(original))
    assert headers["Accept-Ranges"] == "bytes"


def test_keep_alive_serves_many_requests_on_one_connection(node: Node, mp3) -> None:
    track, original = mp3
    parsed = urllib.parse.urlsplit(node.base)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    auth = {"Authorization": f"Bearer {node.token()}"}
    try:
        for start in (0, CHUNK - 3, 12345):
            conn.request("GET", f"/v1/tracks/{track}",
                         headers={**auth, "Range": f"bytes={start}-{start + 99}"})
            response = conn.getresponse()
            assert response.status == 206
            assert response.read() == original[start:start + 100]
    finally:
        conn.close()


def test_meta_describes_the_track(node: Node, mp3) -> None:
    track, original = mp3
    status, headers, body = request(node, "GET", f"/v1/tracks/{track}/meta",
                                    {"Authorization": f"Bearer {node.token()}"})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    meta = json.loads(body)
    assert meta["track_id"] == track
    assert meta["title"] == "Café del Mar"
    assert meta["mime"] == "audio/mpeg"
    assert meta["bytes"] == len(original)
    assert 29.9 < meta["duration_s"] < 30.2


@pytest.mark.parametrize(("query", "title"), [
    ("cafe", "Café del Mar"),        # accents folded
    ("caf", "Café del Mar"),         # prefix as one types
    ("opus num", "Opus Number One"),
    ("FLAC", "Flac Attack"),
])
def test_search_finds_tracks_by_title(node: Node, query: str, title: str) -> None:
    q = urllib.parse.quote(query)
    status, _, body = request(node, "GET", f"/v1/search?q={q}",
                              {"Authorization": f"Bearer {node.token()}"})
    assert status == 200
    results = json.loads(body)["results"]
    assert [r["title"] for r in results] == [title]


def test_search_without_a_query_browses_by_title_page_by_page(node: Node) -> None:
    def page(query: str) -> dict:
        status, _, body = request(node, "GET", f"/v1/search?{query}",
                                  {"Authorization": f"Bearer {node.token()}"})
        assert status == 200
        return json.loads(body)

    first = page("limit=2")
    assert [r["title"] for r in first["results"]] == ["Café del Mar", "Flac Attack"]
    assert (first["offset"], first["next"]) == (0, 2)
    second = page("limit=2&offset=2")
    assert [r["title"] for r in second["results"]] == ["Opus Number One"]
    assert second["next"] is None
    ranked = [r["track_id"] for r in page("q=sine&limit=3")["results"]]
    assert [r["track_id"] for r in page("q=sine&limit=1&offset=1")["results"]] == ranked[1:2]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "offset=-1",
                                   "offset=x", "offset=10001"])
def test_search_with_a_bad_limit_or_offset_is_400(node: Node, query: str) -> None:
    status, _, body = request(node, "GET", f"/v1/search?q=a&{query}",
                              {"Authorization": f"Bearer {node.token()}"})
    assert status == 400 and query.split("=")[0].encode() in body


def test_search_matches_artists_too(node: Node) -> None:
    status, _, body = request(node, "GET", "/v1/search?q=sine+ens",
                              {"Authorization": f"Bearer {node.token()}"})
    assert status == 200
    assert sorted(r["track_id"] for r in json.loads(body)["results"]) == sorted(node.tracks)


def test_search_only_shows_tracks_the_token_grants(node: Node, mp3) -> None:
    track, _ = mp3
    token = node.token("bob", "--tracks", track)
    status, _, body = request(node, "GET", "/v1/search?q=sine",
                              {"Authorization": f"Bearer {token}"})
    assert status == 200
    assert [r["track_id"] for r in json.loads(body)["results"]] == [track]


def test_healthz_needs_no_token(node: Node) -> None:
    assert request(node, "GET", "/healthz")[:1] == (200,)
    assert request(node, "HEAD", "/healthz")[0] == 200


def test_many_first_plays_at_once_open_the_track_once(fresh_node: Node, tmp_path: Path) -> None:
    """A new release: 16 players ask for a track nobody played yet, at the same moment."""
    (track,) = fresh_node.pack(make_tone(tmp_path / "new.mp3", MP3, seconds=5))
    fresh_node.start()
    want = fresh_node.tracks[track].read_bytes()[:1000]
    token = fresh_node.token()
    parsed = urllib.parse.urlsplit(fresh_node.base)

    def play(_: int) -> bytes:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=20)
        conn.request("GET", f"/v1/tracks/{track}", headers={
            "Authorization": f"Bearer {token}", "Range": "bytes=0-999"})
        return conn.getresponse().read()

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(play, range(16))) == [want] * 16
    metrics = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    assert 'segue_open_track_lookups_total{outcome="miss"} 1.0' in text
    assert 'segue_open_track_lookups_total{outcome="hit"} 15.0' in text
