"""HTTP/1.1 on the wire: request heads parsed, response heads written (RFC 9112).

Segue first used h11 here. Profiles of the serving path put h11 at 30 % of the event loop's
time (about 70 us to parse one request head and 60 us to validate and write one response head
on the reference VM), more than everything Segue itself did per request. The subset a player
edge needs is small: GET and HEAD, small request bodies at most, no trailers, no upgrades. So
this module parses exactly that, strictly, in a few bytes operations per line:

* request line `METHOD SP TARGET SP HTTP/1.x`; a well-formed other version gets 505; lines
  end in CRLF or a bare LF;
* header fields `name: value`, name a token with no space before the colon, no obs-fold, no
  control characters in values; HTTP/1.1 needs exactly one Host;
* a body framed by Content-Length only (one value, digits), read by segue.http.connection;
  Transfer-Encoding is refused with 501, and with Content-Length as well with 400 (the request
  smuggling case);
* keep-alive unless the request says `Connection: close` or is HTTP/1.0.

Nothing here echoes what a malformed request carried: error messages name the rule broken,
never the bytes (a token may ride in any line).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

REASONS = {
    200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 416: "Range Not Satisfiable",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# RFC 9110 token characters, for methods and field names.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Field values: visible ASCII, obs-text, space and tab; no other control characters.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A request target: visible ASCII only (origin form, absolute form or "*").
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; `status` is the answer (400, 431, 501, 505)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One request head: method, target, version, and fields with lower-cased names."""

    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: list[tuple[bytes, bytes]]
    content_length: int
    keep_alive: bool


def find_head_end(buffer: bytearray | bytes, start: int = 0) -> int:
    """The offset just past the blank line ending a head in `buffer`, or -1 if none yet.

    Lines end in CRLF; a bare LF is taken too (RFC 9112 2.2 lets a recipient), since simple
    scripted health checks send it.
    """
    ends = [at + len(blank) for blank in (b"\r\n\r\n", b"\n\n", b"\n\r\n")
            if (at := buffer.find(blank, start)) >= 0]
    return min(ends) if ends else -1


def parse_request_head(head: bytes) -> RequestHead:
    """Parse one request head, ending with its blank line; raises ProtocolError."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    if lines[-2:] != [b"", b""]:
        raise ProtocolError("a request head ends with an empty line")
    lines = lines[:-2]
    if not lines:
        raise ProtocolError("empty request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ProtocolError("a request line is METHOD SP TARGET SP VERSION")
    method, target, version_text = parts
    if not _TOKEN.match(method):
        raise ProtocolError("the method is not a token")
    if not _TARGET.match(target):
        raise ProtocolError("the request target has characters HTTP does not allow")
    version = _VERSION.match(version_text)
    if version is None:
        raise ProtocolError("the request line has no HTTP version")
    if version.group(1) != b"1":
        raise ProtocolError("this server speaks HTTP/1.1", 505)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise ProtocolError("a header line is NAME: VALUE, with no space before the colon")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise ProtocolError("a header value has control characters")
        headers.append((name.lower(), value))
    return _framed(method, target, b"1.1" if version.group(2) != b"0" else b"1.0", headers)


def _framed(method: bytes, target: bytes, version: bytes,
            headers: list[tuple[bytes, bytes]]) -> RequestHead:
    """The head with its body length and connection persistence worked out."""
    hosts = 0
    lengths: set[bytes] = set()
    connection: list[bytes] = []
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif name == b"transfer-encoding":
            if any(n == b"content-length" for n, _ in headers):
                raise ProtocolError("Transfer-Encoding and Content-Length together")
            raise ProtocolError("request bodies with Transfer-Encoding are not supported", 501)
        elif name == b"connection":
            connection.extend(t.strip().lower() for t in value.split(b","))
    if version == b"1.1" and hosts != 1:
        raise ProtocolError("an HTTP/1.1 request has exactly one Host header")
    content_length = 0
    if lengths:
        if len(lengths) != 1:
            raise ProtocolError("conflicting Content-Length values")
        text = lengths.pop()
        if not text.isdigit() or len(text) > 18:
            raise ProtocolError("Content-Length is not a number of bytes")
        content_length = int(text)
    keep_alive = version == b"1.1" and b"close" not in connection
    return RequestHead(method, target, version, headers, content_length, keep_alive)


# Headers the connection loop writes itself; a handler that sets them would break framing.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_TOKEN_TEXT = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def has_body(status: int) -> bool:
    """Whether a response with this status carries a body and its Content-Length."""
    return status >= 200 and status not in (204, 304)


def response_head(status: int, headers: Sequence[tuple[str, str]], preamble: str = "") -> bytes:
    """Status line and header fields, ending with the blank line.

    `preamble` is header lines already checked (by header_lines, or written by the server
    itself: Server, Date), CRLF between them, put in as they are. Raises ValueError for a
    header that would break the message (see header_lines).
    """
    status_line = f"HTTP/1.1 {status} {REASONS.get(status, '')}"
    lines = [status_line, preamble] if preamble else [status_line]
    if headers:
        lines.append(header_lines(headers))
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def header_lines(headers: Sequence[tuple[str, str]]) -> str:
    """`Name: value` lines, CRLF between them, for a response head.

    Raises ValueError for a header that would break the message: a name that is not a token,
    a value with a line break or another control character (response splitting), or text
    that is not Latin-1. Fields sent again and again (a track's) are checked and written once
    and kept: see segue.http.representation.
    """
    lines = []
    for name, value in headers:
        if not _TOKEN_TEXT.match(name) or _BAD_VALUE_TEXT.search(value):
            raise ValueError(f"header {name!r} cannot be sent: not a token, or a control "
                             f"character in its value")
        lines.append(f"{name}: {value}")
    text = "\r\n".join(lines)
    if not text.isascii():
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("a response header is not Latin-1 text") from None
    return text
