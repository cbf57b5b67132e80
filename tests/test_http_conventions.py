"""What HTTP clients and log readers expect of a web server, as nginx does it: Date on every
answer, Last-Modified and ETag with 304s, a Content-Disposition with the title, the extension
in the URL, the client's address behind proxies, and why each 401/403 was refused."""

from __future__ import annotations

import email.utils
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from conftest import FLAC, MP3, Node, make_tone, require, segue, track_of
from segue.seal import keys
from segue.seal.tokens import issue

IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|"
                         r"Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT\Z")
NASTY_TITLE = 'Say "Hi"\r\nSet-Cookie: stolen=1'
FOREIGN_TITLE = "Café — 夜に駆ける"


def fetch(base: str, method: str, path: str, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request; the status, the response's header fields in order, and the body."""
    parsed = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def field(fields: list[tuple[str, str]], name: str) -> str | None:
    found = [value for key, value in fields if key.lower() == name.lower()]
    assert len(found) <= 1, f"{name} sent {len(found)} times"
    return found[0] if found else None


def bearer(node: Node, user: str = "alice", *extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.token(user, *extra)}"}


def request_line(node: Node, since: int, path: str, timeout: float = 10) -> dict:
    """The log's request line for `path` written after byte `since` (the line is written once
    the answer is sent, so it may come a moment after the client has read it)."""
    deadline = time.monotonic() + timeout
    while True:
        for event in node.log_events(since):
            if event.get("event") == "request" and event.get("path") == path:
                return event
        assert time.monotonic() < deadline, f"no request line for {path}:\n{node.log_text()}"
        time.sleep(0.05)


def log_size(node: Node) -> int:
    return len(node.log_text())


@pytest.fixture(scope="module")
def titled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, float, float]]:
    """A node with tracks whose tags a header must not trust, and when they were packed."""
    d = tmp_path_factory.mktemp("titled")
    node = Node.init(d / "edge")
    nasty = make_tone(d / "nasty.mp3", MP3, seconds=3, freq=500, title=NASTY_TITLE)
    foreign = make_tone(d / "foreign.flac", FLAC, seconds=3, freq=600, title=FOREIGN_TITLE)
    before = time.time()
    node.pack(nasty, foreign)
    after = time.time()
    node.start()
    yield node, before, after
    node.stop()


# --- Date ---

def test_every_answer_has_a_date(node: Node) -> None:
    track = track_of(node, ".mp3")
    auth = bearer(node)
    before = int(time.time())
    answers = [
        fetch(node.base, "GET", f"/v1/tracks/{track}", auth),
        fetch(node.base, "GET", f"/v1/tracks/{track}", {**auth, "Range": "bytes=0-9"}),
        fetch(node.base, "GET", f"/v1/tracks/{track}", {**auth, "If-None-Match": f'"{track}"'}),
        fetch(node.base, "GET", f"/v1/tracks/{track}"),
        fetch(node.base, "GET", "/v1/tracks/00000000000000000000", auth),
        fetch(node.base, "GET", "/healthz"),
        fetch(node.base, "GET", "/player/app.js"),
    ]
    # A request the server refuses to parse is answered, with a Date, before it closes.
    parsed = urllib.parse.urlsplit(node.base)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        malformed = raw.makefile("rb").read()
    after = int(time.time())
    assert [status for status, _, _ in answers] == [200, 206, 304, 401, 404, 200, 200]
    dates = [field(fields, "Date") for _, fields, _ in answers]
    dates.append(re.search(rb"\r\nDate: ([^\r]+)\r\n", malformed).group(1).decode())
    assert malformed.startswith(b"HTTP/1.1 400")
    for date in dates:
        assert date is not None and IMF_FIXDATE.match(date), date
        assert before <= email.utils.parsedate_to_datetime(date).timestamp() <= after


# --- validators and 304 ---

def test_if_none_match_and_if_modified_since_get_304(node: Node) -> None:
    track = track_of(node, ".mp3")
    path, auth = f"/v1/tracks/{track}", bearer(node)
    status, fields, original = fetch(node.base, "GET", path, auth)
    etag, modified = field(fields, "ETag"), field(fields, "Last-Modified")
    assert status == 200 and etag == f'"{track}"' and IMF_FIXDATE.match(modified)
    earlier = email.utils.formatdate(email.utils.parsedate_to_datetime(modified).timestamp() - 1,
                                     usegmt=True)

    def get(**conditions: str) -> tuple[int, list[tuple[str, str]], bytes]:
        return fetch(node.base, "GET", path, {**auth, **conditions})

    for matching in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, fields, body = get(**{"If-None-Match": matching})
        assert (status, body) == (304, b""), matching
        assert field(fields, "ETag") == etag and field(fields, "Last-Modified") == modified
        assert field(fields, "Content-Length") is None
    assert get(**{"If-Modified-Since": modified})[0] == 304
    assert get(**{"If-Modified-Since": "Fri, 31 Dec 2100 23:59:59 GMT"})[0] == 304
    assert get(**{"If-Modified-Since": earlier})[:3:2] == (200, original)
    assert get(**{"If-Modified-Since": "not a date"})[:3:2] == (200, original)
    # If-None-Match wins: a tag that does not match means a new copy, whatever the date says.
    assert get(**{"If-None-Match": '"other"', "If-Modified-Since": modified})[:3:2] == (
        200, original)
    assert fetch(node.base, "HEAD", path, {**auth, "If-None-Match": etag})[0] == 304
    # A validator opens nothing: without a token it is still 401.
    assert fetch(node.base, "GET", path, {"If-None-Match": etag})[0] == 401


def test_curl_revalidates_with_its_etag_and_time_condition(node: Node, tmp_path: Path) -> None:
    curl = require("curl", "curl")
    track = track_of(node, ".flac")
    url, token = f"{node.base}/v1/tracks/{track}", node.token()
    saved, etag_file = tmp_path / "track.flac", tmp_path / "etag"

    def run(*args: str) -> str:
        return subprocess.run([curl, "-sS", "-H", f"Authorization: Bearer {token}",
                               "-w", "%{http_code}", *args, url], capture_output=True,
                              text=True, timeout=60, check=True).stdout

    assert run("-o", str(saved), "--etag-save", str(etag_file)) == "200"
    assert saved.read_bytes() == node.tracks[track].read_bytes()
    assert run("-o", str(tmp_path / "again"), "--etag-compare", str(etag_file)) == "304"
    assert run("-o", str(tmp_path / "again"), "-z", str(saved)) == "304"  # file time: now


def test_if_range_takes_the_etag_or_the_last_modified_date(node: Node) -> None:
    track = track_of(node, ".mp3")
    path, auth = f"/v1/tracks/{track}", bearer(node)
    _, fields, original = fetch(node.base, "GET", path, auth)
    modified = field(fields, "Last-Modified")
    for validator, expected in ((f'"{track}"', 206), (modified, 206), (f'W/"{track}"', 200),
                                ("Thu, 01 Jan 1998 00:00:00 GMT", 200), ('"stale"', 200)):
        status, _, body = fetch(node.base, "GET", path,
                                {**auth, "Range": "bytes=10-19", "If-Range": validator})
        assert (status, body) == ((206, original[10:20]) if expected == 206
                                  else (200, original)), validator


def test_last_modified_is_the_packing_time_and_the_same_on_every_node(
        titled: tuple[Node, float, float], tmp_path: Path) -> None:
    """Two nodes serving their own copies of a store (copied, so every file has another
    mtime) say the same validators: a cache in front of the fleet may ask either."""
    first, packing_began, packing_ended = titled
    track = track_of(first, ".mp3")
    path = f"/v1/tracks/{track}"
    _, fields, _ = fetch(first.base, "HEAD", path, bearer(first))
    modified = email.utils.parsedate_to_datetime(field(fields, "Last-Modified")).timestamp()
    assert int(packing_began) <= modified <= packing_ended
    second = Node(tmp_path / "copy")
    shutil.copytree(first.root, second.root, ignore=shutil.ignore_patterns("segued.log"))
    for manifest in (second.root / "store").rglob("manifest.json"):
        manifest.touch()
    second.tracks = dict(first.tracks)
    second.start()
    try:
        _, again, _ = fetch(second.base, "HEAD", path, bearer(second))
    finally:
        second.stop()
    assert [field(again, name) for name in ("ETag", "Last-Modified")] == [
        field(fields, name) for name in ("ETag", "Last-Modified")]


# --- Content-Disposition ---

def disposition(fields: list[tuple[str, str]]) -> tuple[str, str]:
    """The plain `filename` and the decoded `filename*` of a Content-Disposition."""
    value = field(fields, "Content-Disposition")
    assert value is not None and value.startswith("inline; ")
    plain = re.search(r'filename="([^"]*)"', value).group(1)
    encoded = re.search(r"filename\*=UTF-8''(\S+)", value).group(1)
    return plain, urllib.parse.unquote(encoded, errors="strict")


def test_the_file_name_is_the_title_with_the_extension_of_its_type(node: Node) -> None:
    auth = bearer(node)
    names = {}
    for suffix in (".mp3", ".flac", ".ogg"):
        _, fields, _ = fetch(node.base, "HEAD", f"/v1/tracks/{track_of(node, suffix)}", auth)
        names[suffix] = disposition(fields)
    assert names == {".mp3": ("Cafe del Mar.mp3", "Café del Mar.mp3"),
                     ".flac": ("Flac Attack.flac", "Flac Attack.flac"),
                     ".ogg": ("Opus Number One.ogg", "Opus Number One.ogg")}


def test_a_title_cannot_inject_header_fields(titled: tuple[Node, float, float],
                                             tmp_path: Path) -> None:
    node = titled[0]
    nasty, foreign = track_of(node, ".mp3"), track_of(node, ".flac")
    status, fields, _ = fetch(node.base, "GET", f"/v1/tracks/{nasty}", bearer(node))
    assert status == 200
    assert field(fields, "Set-Cookie") is None
    assert disposition(fields) == ("Say Hi Set-Cookie: stolen=1.mp3",
                                   "Say Hi Set-Cookie: stolen=1.mp3")
    # Where JSON carries it, the title is as `segue pack` keeps it: control characters are
    # spaces there (a tag's line break would split pack's own output line).
    meta = json.loads(fetch(node.base, "GET", f"/v1/tracks/{nasty}/meta", bearer(node))[2])
    assert meta["title"] == NASTY_TITLE.replace("\r", " ").replace("\n", " ")
    _, fields, _ = fetch(node.base, "GET", f"/v1/tracks/{foreign}", bearer(node))
    assert disposition(fields) == ("Cafe.flac", f"{FOREIGN_TITLE}.flac")
    # What `curl -OJ` saves it as (curl reads the plain filename).
    curl = require("curl", "curl")
    subprocess.run([curl, "-sS", "-O", "-J", "--output-dir", str(tmp_path), "-H",
                    f"Authorization: Bearer {node.token()}", f"{node.base}/v1/tracks/{foreign}"],
                   check=True, timeout=60, capture_output=True)
    assert [p.name for p in tmp_path.iterdir()] == ["Cafe.flac"]


# --- /v1/tracks/{id}.{ext} ---

def test_the_url_may_carry_the_extension_of_the_track_type(node: Node) -> None:
    mp3, flac = track_of(node, ".mp3"), track_of(node, ".flac")
    auth = bearer(node)
    whole = node.tracks[mp3].read_bytes()
    status, fields, body = fetch(node.base, "GET", f"/v1/tracks/{mp3}.mp3", auth)
    assert (status, body, field(fields, "ETag")) == (200, whole, f'"{mp3}"')
    status, _, body = fetch(node.base, "GET", f"/v1/tracks/{mp3}.MP3",
                            {**auth, "Range": "bytes=100-199"})
    assert (status, body) == (206, whole[100:200])
    assert fetch(node.base, "GET", f"/v1/tracks/{flac}.flac", auth)[0] == 200
    status, _, body = fetch(node.base, "GET", f"/v1/tracks/{mp3}.flac", auth)
    assert status == 404
    assert json.loads(body)["detail"] == (
        f"track {mp3} is audio/mpeg: its URL is /v1/tracks/{mp3}.mp3 or /v1/tracks/{mp3}")
    for wrong in (f"{mp3}.", f"{mp3}.exe", f"{mp3}.mp3.mp3"):
        assert fetch(node.base, "GET", f"/v1/tracks/{wrong}", auth)[0] == 404, wrong
    assert fetch(node.base, "GET", "/v1/tracks/BAD.mp3", auth)[0] == 400
    assert fetch(node.base, "GET", f"/v1/tracks/{mp3}.mp3")[0] == 401


# --- the client's address ---

def test_the_log_names_the_client_behind_trusted_proxies_only(fresh_node: Node,
                                                              tmp_path: Path) -> None:
    node = fresh_node
    conf = node.conf.read_text()
    node.conf.write_text(conf.replace("[http]\n", '[http]\ntrusted_proxies = ["10.0.0.0/8"]\n'))
    node.start()

    def client(path: str, forwarded_for: str | None) -> str:
        since = log_size(node)
        fetch(node.base, "GET", path,
              {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {})
        return request_line(node, since, path)["client"]

    # This test connects from 127.0.0.1, not a trusted proxy here: its header is not believed.
    assert client("/nowhere/1", None) == "127.0.0.1"
    assert client("/nowhere/2", "203.0.113.7") == "127.0.0.1"
    node.conf.write_text(conf.replace(
        "[http]\n", '[http]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]\n'))
    node.proc.send_signal(signal.SIGHUP)
    node.wait_for_event("configuration reloaded")
    assert client("/nowhere/3", "203.0.113.7") == "203.0.113.7"
    # Walking from the right: the first address that is no trusted proxy. What that client
    # claimed before it (198.51.100.1) is not believed.
    assert client("/nowhere/4", "198.51.100.1, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert client("/nowhere/5", "[2001:db8::5]:4711, 2001:db8::9") == "2001:db8::5"
    assert client("/nowhere/6", "203.0.113.9:5555 , [2001:db8::1]") == "203.0.113.9"
    assert client("/nowhere/7", "10.9.9.9, 10.1.2.3") == "10.9.9.9"  # all trusted: leftmost
    assert client("/nowhere/8", "198.51.100.1, unknown, 10.1.2.3") == "10.1.2.3"
    assert client("/nowhere/9", None) == "127.0.0.1"


def test_trusted_proxies_must_be_addresses_or_networks(fresh_node: Node) -> None:
    conf = fresh_node.conf.read_text()
    fresh_node.conf.write_text(conf.replace(
        "[http]\n", '[http]\ntrusted_proxies = ["10.0.0.1/8", "proxy.example.net"]\n'))
    result = segue("check-config", "--config", fresh_node.conf, check=False)
    assert result.returncode == 2
    assert "http.trusted_proxies: '10.0.0.1/8' is not an IP address or network" in result.stderr
    assert "write '10.0.0.0/8'" in result.stderr


# --- why a token was refused ---

def test_every_refusal_logs_its_reason_and_never_the_token(node: Node) -> None:
    track, other = track_of(node, ".mp3"), track_of(node, ".flac")
    auth_key = keys.load_private_key(node.root / "keys" / "auth-ed25519.pem")
    real_kid = keys.key_id(auth_key.public_key())
    forger = keys.generate("ed25519")
    claims = {"sub": "mallory", "exp": int(time.time()) + 600, "aud": "segue", "tracks": "*"}
    tokens = {
        "malformed": "not-a-jwt",
        "expired": issue(auth_key, "ivy", ttl=60, tracks=None, audience="segue",
                         now=time.time() - 3600),
        "bad_signature": jwt.encode(claims, forger, algorithm="EdDSA",
                                    headers={"kid": real_kid}),
        "unknown_key": jwt.encode(claims, forger, algorithm="EdDSA", headers={"kid": "idp-9"}),
        "audience": issue(auth_key, "ivy", ttl=600, tracks=None, audience="another-service"),
        "track_not_granted": node.token("ivy", "--tracks", other),
    }
    path = f"/v1/tracks/{track}"
    for reason, token in tokens.items():
        since = log_size(node)
        status, _, _ = fetch(node.base, "GET", path, {"Authorization": f"Bearer {token}"})
        line = request_line(node, since, path)
        assert (status, line["auth_refused"], line["credential"], line["track"]) == (
            403 if reason == "track_not_granted" else 401, reason, "token", track)
        assert line["client"] == "127.0.0.1"
    since = log_size(node)
    assert fetch(node.base, "GET", path)[0] == 401
    assert request_line(node, since, path)["auth_refused"] == "missing"
    # A ticket in the URL instead of a token.
    since = log_size(node)
    assert fetch(node.base, "GET", f"{path}?ticket=abc.def")[0] == 401
    line = request_line(node, since, path)
    assert (line["auth_refused"], line["credential"]) == ("bad_signature", "ticket")
    # A session command for a track the token does not grant.
    since = log_size(node)
    command = json.dumps({"type": "play", "device": "phone", "track": track}).encode()
    scoped = bearer(node, "ivy", "--tracks", other)
    status, _, _ = fetch(node.base, "POST", "/v1/session/commands",
                         {**scoped, "Content-Type": "application/json"}, command)
    line = request_line(node, since, "/v1/session/commands")
    assert (status, line["auth_refused"]) == (403, "track_not_granted")
    log = node.log_text()
    tokens["scoped session"] = scoped["Authorization"].removeprefix("Bearer ")
    for token in tokens.values():
        assert token not in log
        assert token.rpartition(".")[2] not in log


def test_a_node_that_requires_scopes_says_so(fresh_node: Node, tmp_path: Path) -> None:
    node = fresh_node
    node.pack(make_tone(tmp_path / "s.mp3", MP3, seconds=2))
    node.conf.write_text(node.conf.read_text().replace("[auth]\n",
                                                       "[auth]\nrequire_scope = true\n"))
    node.start()
    auth_key = keys.load_private_key(node.root / "keys" / "auth-ed25519.pem")
    unscoped = jwt.encode({"sub": "joe", "exp": int(time.time()) + 600, "aud": "segue"},
                          auth_key, algorithm="EdDSA")
    path = f"/v1/tracks/{next(iter(node.tracks))}"
    since = log_size(node)
    assert fetch(node.base, "GET", path, {"Authorization": f"Bearer {unscoped}"})[0] == 403
    assert request_line(node, since, path)["auth_refused"] == "scope_required"
    assert unscoped not in node.log_text()
