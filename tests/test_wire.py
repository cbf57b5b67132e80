"""HTTP/1.1 request heads as segue.http.wire reads them: strict where smuggling hides."""

from __future__ import annotations

import pytest

from segue.http.wire import (
    ProtocolError,
    find_head_end,
    has_body,
    parse_request_head,
    response_head,
)


def head(*lines: str, request: str = "GET /v1/tracks/abcdefgh HTTP/1.1") -> bytes:
    return ("\r\n".join([request, *lines]) + "\r\n\r\n").encode("latin-1")


def test_a_player_request_is_read_whole() -> None:
    parsed = parse_request_head(head("Host: edge", "Range: bytes=0-", "X-Empty:",
                                     "Authorization:   Bearer abc  "))
    assert (parsed.method, parsed.target, parsed.version) == (b"GET", b"/v1/tracks/abcdefgh",
                                                              b"1.1")
    assert parsed.headers == [(b"host", b"edge"), (b"range", b"bytes=0-"), (b"x-empty", b""),
                              (b"authorization", b"Bearer abc")]
    assert parsed.keep_alive and parsed.content_length == 0


@pytest.mark.parametrize(("lines", "request_line", "keep_alive"), [
    (["Host: e"], "GET / HTTP/1.1", True),
    (["Host: e", "Connection: keep-alive, Close"], "GET / HTTP/1.1", False),
    ([], "GET / HTTP/1.0", False),
])
def test_keep_alive_follows_version_and_connection(lines: list[str], request_line: str,
                                                   keep_alive: bool) -> None:
    assert parse_request_head(head(*lines, request=request_line)).keep_alive is keep_alive


@pytest.mark.parametrize(("lines", "request_line", "status"), [
    (["Host: e"], "GET / HTTP/2.0", 505),
    (["Host: e"], "GET / HTTP/1.1x", 400),
    (["Host: e"], "GET  / HTTP/1.1", 400),
    (["Host: e"], "GET /a b HTTP/1.1", 400),
    (["Host: e"], "G(T / HTTP/1.1", 400),
    ([], "GET / HTTP/1.1", 400),                                   # no Host
    (["Host: e", "Host: f"], "GET / HTTP/1.1", 400),
    (["Host: e", "Bad Header"], "GET / HTTP/1.1", 400),
    (["Host: e", "Name : v"], "GET / HTTP/1.1", 400),              # space before the colon
    (["Host: e", "X: a", " folded"], "GET / HTTP/1.1", 400),       # obs-fold
    (["Host: e", "X: a\x00b"], "GET / HTTP/1.1", 400),
    (["Host: e", "X: a\rb"], "GET / HTTP/1.1", 400),
    (["Host: e", "Content-Length: -1"], "GET / HTTP/1.1", 400),
    (["Host: e", "Content-Length: 5", "Content-Length: 6"], "GET / HTTP/1.1", 400),
    (["Host: e", "Content-Length: 5", "Transfer-Encoding: chunked"], "POST / HTTP/1.1", 400),
    (["Host: e", "Transfer-Encoding: chunked"], "POST / HTTP/1.1", 501),
])
def test_what_http_forbids_is_refused_with_the_right_status(lines: list[str], request_line: str,
                                                            status: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request_head(head(*lines, request=request_line))
    assert caught.value.status == status


def test_errors_never_repeat_the_bytes_they_refuse() -> None:
    secret = "c2VjcmV0LXRva2Vu"
    for lines, request_line in ((["Authorization : Bearer " + secret], "GET / HTTP/1.1"),
                                (["Host: e"], f"GET /?token={secret} HTTP/1.1x")):
        with pytest.raises(ProtocolError) as caught:
            parse_request_head(head(*lines, request=request_line))
        assert secret not in str(caught.value)


def test_equal_content_lengths_frame_one_body() -> None:
    parsed = parse_request_head(head("Host: e", "Content-Length: 5, 5", request="POST / HTTP/1.1"))
    assert parsed.content_length == 5


def test_the_end_of_a_head_is_found_across_reads() -> None:
    data = b"GET / HTTP/1.1\r\nHost: e\r\n\r\nGET /next"
    assert find_head_end(data) == data.index(b"GET /next")
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: e\r\n\r") == -1


def test_a_response_head_refuses_header_splitting() -> None:
    assert response_head(206, [("Content-Length", "3")]) == (
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\n\r\n")
    for name, value in (("X-Plugin", "a\r\nSet-Cookie: b"), ("X Plugin", "b"),
                        ("X-Plugin", "nul\x00"), ("X-Plugin", "caf\u00e9 \u2603")):
        with pytest.raises(ValueError):
            response_head(200, [(name, value)])
    assert [has_body(s) for s in (100, 200, 204, 206, 304, 404)] == [
        False, True, False, True, False, True]


def test_heads_with_bare_line_feeds_are_read() -> None:
    data = b"GET / HTTP/1.1\nHost: e\nRange: bytes=0-\n\nNEXT"
    end = find_head_end(data)
    assert data[end:] == b"NEXT"
    assert parse_request_head(data[:end]).headers == [(b"host", b"e"), (b"range", b"bytes=0-")]
