"""Requests and responses as the routes see them, independent of the wire and of sockets."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from segue.http.wire import REASONS


@dataclass(frozen=True, slots=True)
class FileSpan:
    """`count` bytes of the open file `fd` from `offset`, as a piece of a response body.

    The owner sends it with sendfile where it can (plain TCP: the kernel sends the file's
    pages, nothing is copied through user space) and reads it where it must (TLS). Whoever
    hands one over keeps the file open until the send returns.
    """

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


#: What a body writer gets: send these bytes, or this span of a file, and return once written.
Send = Callable[[bytes | memoryview | FileSpan], Awaitable[None]]
BodyWriter = Callable[[Send], Awaitable[None]]


@dataclass(frozen=True)
class Request:
    """One parsed request: method, decoded path segments, query, lower-cased headers, and its
    body (whole, at most [http] max_body_bytes; b"" for most)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    @classmethod
    def from_wire(
        cls, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> Request:
        """From a parsed head (field names already lower-case) and the body read after it;
        ValueError for a bad query."""
        raw = target.decode("ascii", "replace")
        scheme, sep, rest = raw.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            # Absolute form (RFC 9112 3.2.2, what a proxy may forward): the authority goes,
            # the path and query stay.
            raw = "/" + rest.partition("/")[2]
        path, _, query = raw.partition("?")
        merged: dict[str, str] = {}
        for name, value in headers:
            key = name.decode("ascii", "replace")
            text = value.decode("latin-1")
            merged[key] = f"{merged[key]}, {text}" if key in merged else text
        return cls(
            method=method.decode("ascii", "replace"),
            path=path,
            query=parse_qs(query, keep_blank_values=True, max_num_fields=50),
            headers=merged,
            body=body,
        )

    def segments(self) -> list[str]:
        """Path segments, percent-decoded one by one (so %2F never becomes a separator)."""
        return [unquote(s) for s in self.path.split("/")[1:]]

    def query_one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    """A response: status, headers, and either a small body or a writer that streams one.

    `length` is the Content-Length of a streamed body; a writer with no length streams a body
    of unknown size (chunked; to an HTTP/1.0 client, until the connection closes), as Server-
    Sent Events need. For HEAD, `length` alone states the size a GET would get. `fields` are
    extra fields for the request's log line (track, range, user). `route` is the pattern of
    the route that answered (the router sets it; the metrics count requests under it).
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    writer: BodyWriter | None = None
    length: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    route: str = ""


@dataclass
class PreparedResponse(Response):
    """A Response with header lines checked and written beforehand by
    segue.http.wire.header_lines (a track's: the same at every play), sent before `headers`.

    The core's own, not the plugin API's: plugins return Response.
    """

    rendered_headers: str = ""


def text(status: int, message: str, *headers: tuple[str, str]) -> Response:
    """A plain-text response (health checks, errors)."""
    return Response(
        status, [("Content-Type", "text/plain; charset=utf-8"), *headers], (message + "\n").encode()
    )


def json_response(status: int, doc: Any, *headers: tuple[str, str]) -> Response:
    return Response(
        status,
        [("Content-Type", "application/json"), *headers],
        json.dumps(doc, ensure_ascii=False).encode() + b"\n",
    )


def error(status: int, message: str, *headers: tuple[str, str]) -> Response:
    """A JSON error body: {"error": REASON, "detail": MESSAGE}."""
    return json_response(
        status, {"error": REASONS.get(status, "Error"), "detail": message}, *headers
    )
