"""Bad input gets a clear 4xx and the daemon goes on serving everyone else."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import MP3, Node, make_tone, track_of


def raw(node: Node, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes; return everything the server answers until it closes."""
    parsed = urllib.parse.urlsplit(node.base)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def get(node: Node, path: str, token: str) -> int:
    request = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               "Connection: close\r\n\r\n")
    return status_of(raw(node, request.encode()))


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/tracks/..%2F..%2Fetc%2Fpasswd", 400),
    ("/v1/tracks/%2e%2e", 400),
    ("/v1/tracks/ABCDEF0123456789", 400),
    ("/v1/tracks/short", 400),
    ("/v1/tracks/" + "a" * 65, 400),
    ("/v1/tracks/abcdefgh%00", 400),
    ("/v1/tracks/abcdefgh%0A", 400),
    ("/v1/tracks/../../etc/passwd", 404),
    ("/v1/tracks/0123456789abcdef/../../../etc/passwd", 404),
    ("/etc/passwd", 404),
])
def test_malformed_and_traversing_track_ids(node: Node, path: str, status: int) -> None:
    assert get(node, path, node.token()) == status


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",  # TLS hello
    b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
])
def test_malformed_http_gets_400_and_the_connection_closes(node: Node, garbage: bytes) -> None:
    answer = raw(node, garbage)
    assert status_of(answer) == 400
    assert b"connection: close" in answer.lower()


def test_an_unknown_http_version_gets_505(node: Node) -> None:
    assert status_of(raw(node, b"GET /healthz HTTP/9.9\r\n\r\n")) == 505


def test_oversized_headers_get_431(node: Node) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert status_of(raw(node, request)) == 431


def test_other_methods_get_405(node: Node) -> None:
    answer = raw(node, b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 405
    assert b"allow: get, head" in answer.lower()


def test_a_large_request_body_gets_413(node: Node) -> None:
    body = b"x" * 200_000
    request = (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status_of(raw(node, request)) == 413


def test_players_keep_playing_while_others_send_garbage(node: Node) -> None:
    """A slow player downloads a whole track while many connections misbehave."""
    track = track_of(node, ".flac")
    original = node.tracks[track].read_bytes()
    parsed = urllib.parse.urlsplit(node.base)
    received = bytearray()
    failures: list[BaseException] = []

    def slow_player() -> None:
        try:
            with socket.create_connection((parsed.hostname, parsed.port), timeout=20) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                s.sendall(f"GET /v1/tracks/{track} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                          f"Bearer {node.token()}\r\nConnection: close\r\n\r\n".encode())
                while chunk := s.recv(8192):
                    received.extend(chunk)
                    time.sleep(0.002)
        except BaseException as e:  # reported below
            failures.append(e)

    player = threading.Thread(target=slow_player)
    player.start()
    for i in range(40):
        answer = raw(node, b"NOT HTTP AT ALL %d\r\n\r\n" % i)
        assert status_of(answer) == 400
        half_open = socket.create_connection((parsed.hostname, parsed.port), timeout=5)
        half_open.sendall(b"GET /heal")  # and hang up mid-request
        half_open.close()
    player.join(timeout=60)
    assert not failures
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == original
    assert get(node, "/healthz", "") == 200
    assert "connection failed" not in node.log_text()


def test_a_stalled_request_is_dropped_after_the_header_timeout(fresh_node: Node,
                                                               tmp_path: Path) -> None:
    n = fresh_node
    n.conf.write_text(n.conf.read_text().replace(
        "[http]\n", "[http]\nheader_timeout_s = 0.5\n"))
    n.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t"))
    n.start()
    started = time.monotonic()
    answer = raw(n, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", timeout=10)
    assert status_of(answer) == 408
    assert time.monotonic() - started < 5
    # A whole head whose body never comes is just as stalled.
    answer = raw(n, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    assert status_of(answer) == 408


def test_a_malformed_request_never_echoes_or_logs_what_it_carried(node: Node) -> None:
    secret = "eyJhbGciOiJFZERTQSJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl"
    for garbage in (f"GET /v1/search?q=x&token={secret} HTTP/1.1x\r\n\r\n",
                    f"GET / HTTP/1.1\r\nAuthorization : Bearer {secret}\r\n\r\n"):
        answer = raw(node, garbage.encode())
        assert status_of(answer) == 400
        assert secret.encode() not in answer
    assert secret not in node.log_text()


def test_too_many_query_fields_get_400(node: Node) -> None:
    query = "&".join(f"a{i}=1" for i in range(80))
    answer = raw(node, f"GET /healthz?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(answer) == 400


def test_pipelined_requests_and_dropped_bodies_keep_their_order(node: Node) -> None:
    """Three requests in one write, one with a body to skip: three answers, in order."""
    answer = raw(node, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                       b"\r\nGET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert re.findall(rb"HTTP/1.1 (\d{3}) ", answer) == [b"405", b"200", b"200"]
    assert answer.lower().count(b"connection: close") == 1


def test_a_head_with_bare_line_feeds_is_answered(node: Node) -> None:
    """Scripted health checks (printf | nc) often end lines with LF alone."""
    answer = raw(node, b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n", timeout=5)
    assert status_of(answer) == 200


def test_expect_100_continue_is_answered_before_the_body(node: Node) -> None:
    parsed = urllib.parse.urlsplit(node.base)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=5) as s:
        s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert b"HTTP/1.1 405 " in rest


def test_a_closing_answer_arrives_whole_though_the_player_sent_more(node: Node) -> None:
    """`Connection: close` and another request behind it: the track must not end in a reset."""
    track = track_of(node, ".flac")
    original = node.tracks[track].read_bytes()
    parsed = urllib.parse.urlsplit(node.base)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as s:
        s.sendall(f"GET /v1/tracks/{track} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  f"{node.token()}\r\nConnection: close\r\n\r\n".encode())
        time.sleep(0.3)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1)  # the server has written all it can and closed by now
        received = bytearray()
        while chunk := s.recv(65536):
            received.extend(chunk)
    assert bytes(received).partition(b"\r\n\r\n")[2] == original


def test_an_absolute_form_target_is_served(node: Node) -> None:
    """RFC 9112 3.2.2: a server accepts `GET http://host/path` (a proxy may send it)."""
    answer = raw(node, b"GET http://edge.example/healthz HTTP/1.1\r\nHost: edge.example\r\n"
                       b"Connection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert answer.endswith(b"ok\n")
