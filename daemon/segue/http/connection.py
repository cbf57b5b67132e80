"""One HTTP/1.1 server connection as a state machine: bytes in, events out; calls in, bytes out.

Nothing here reads, writes, sleeps or knows of trio (the design of h11, with segue.http.wire's
fast strict head parser underneath). The owner feeds what it received to `receive_data`, takes
`next_event()` until it says NEED_DATA, and writes what `start_response`, `send_body` and
`end_response` return. So every rule of the protocol (how a request body is framed and limited,
when 100 Continue is owed, when a stalled wait deserves a 408, how a response is framed, when
the connection may carry another request) is decided here and can be tested without a socket;
the owner keeps only reads, writes, deadlines and logging.

One request at a time: the next request's bytes (pipelining) wait in the buffer until the
response to this one has ended and `next_cycle()` starts the next.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from segue.http.messages import FileSpan
from segue.http.wire import (
    FRAMING_HEADERS,
    ProtocolError,
    RequestHead,
    find_head_end,
    has_body,
    parse_request_head,
    response_head,
)

#: The interim response a client that sent `Expect: 100-continue` waits for (RFC 9110 10.1.1).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The last chunk of a chunked body, with no trailers (RFC 9112 7.1).
LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"


BodyPart = bytes | memoryview | FileSpan
#: What send_body returns: the data itself, or the parts of one chunk to write in order.
Outgoing = BodyPart | tuple[BodyPart, ...]


@dataclass(frozen=True, slots=True)
class Data:
    """Some bytes of the request body, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfRequest:
    """The request (head and body) was read whole; now the owner answers it."""


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can be said until more bytes arrive: receive, then `receive_data`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed its side before another whole request arrived; nothing more will come."""


END_OF_REQUEST = EndOfRequest()
NEED_DATA = NeedData()
CLOSED = Closed()

Event = RequestHead | Data | EndOfRequest | NeedData | Closed


class Framing(enum.Enum):
    """How a response tells where its body ends (RFC 9112 6.3)."""

    NONE = "no body"  # 1xx, 204, 304: the head is all there is
    LENGTH = "Content-Length"
    CHUNKED = "chunked"  # length unknown, HTTP/1.1 client
    CLOSE = "close-delimited"  # length unknown, HTTP/1.0 client: the body ends with the connection


def framing(status: int, length: int | None, version: bytes) -> Framing:
    """The framing a server chooses for a response: the rules of RFC 9112 6.3.

    A known length is stated; an HTTP/1.1 client can take a body of unknown length chunked;
    an HTTP/1.0 client knows no chunked encoding, so such a body ends when the connection does.
    """
    if not has_body(status):
        return Framing.NONE
    if length is not None:
        return Framing.LENGTH
    return Framing.CHUNKED if version == b"1.1" else Framing.CLOSE


def closing_head(status: int, headers: Sequence[tuple[str, str]], length: int,
                 date: str | None = None) -> bytes:
    """The head of a connection's last answer outside the request cycle (a malformed or
    stalled request, a refused connection), whose body of `length` bytes goes with it."""
    return _compose_head(status, headers, ("Content-Length", str(length)), close=True,
                         date=date, rendered="")


def _compose_head(status: int, headers: Sequence[tuple[str, str]],
                  frame: tuple[str, str] | None, *, close: bool, date: str | None,
                  rendered: str) -> bytes:
    fields = list(headers)
    if frame is not None:
        fields.append(frame)
    if close:
        fields.append(("Connection", "close"))
    preamble = _server_fields(date)
    if rendered:
        preamble = f"{preamble}\r\n{rendered}"
    # ValueError for a header that cannot be sent
    return response_head(status, fields, preamble)


@functools.lru_cache(maxsize=2)
def _server_fields(date: str | None) -> str:
    """The fields every response starts with, written once per second (the date's)."""
    return "Server: segue" if date is None else f"Server: segue\r\nDate: {date}"


class _Receiving(enum.Enum):
    HEAD = "waiting for a request head"
    BODY = "reading a request body"
    DONE = "the request was read whole"
    CLOSED = "the peer closed"
    FAILED = "the peer broke the protocol"


class _Sending(enum.Enum):
    IDLE = "no response started"
    BODY = "sending a response body"
    DONE = "the response ended"


class ServerConnection:
    """The server's side of one HTTP/1.1 connection, without I/O.

    `max_head_bytes` bounds a request head (431 beyond), `max_body_bytes` a request body
    (413 beyond, told from Content-Length before any of the body is read).
    """

    def __init__(self, max_head_bytes: int, max_body_bytes: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        # Received, not yet taken: the owner reads only on NEED_DATA, so at most a head's limit
        # plus one read.
        self._buffer = bytearray()
        self._searched = 0  # how much of the buffer is known to hold no end of a head
        self._peer_closed = False
        self._receiving = _Receiving.HEAD
        self._sending = _Sending.IDLE
        self._head: RequestHead | None = None
        self._body_left = 0
        self._continue_owed = False
        self._keep_alive = True
        self._framing = Framing.NONE
        self._length = 0  # the declared body length (Content-Length framing)
        self._framed = 0  # body bytes handed out by send_body so far

    # --- receiving ---
    def receive_data(self, data: bytes | bytearray) -> None:
        """Take bytes from the peer; b"" means it closed its side."""
        if data:
            self._buffer += data
        else:
            self._peer_closed = True

    def next_event(self) -> Event:
        """The next thing the peer said; raises ProtocolError (with the status to answer).

        Per request: one RequestHead, Data events for its body, END_OF_REQUEST. NEED_DATA
        whenever more bytes must arrive first, CLOSED once the peer closed before a whole
        request. After END_OF_REQUEST, answer it and call next_cycle() before asking again.
        """
        if self._receiving is _Receiving.HEAD:
            return self._next_head()
        if self._receiving is _Receiving.BODY:
            return self._next_body()
        if self._receiving is _Receiving.CLOSED:
            return CLOSED
        raise RuntimeError(f"no events now: {self._receiving.value}")

    def _next_head(self) -> Event:
        buffer = self._buffer
        while buffer.startswith(_CRLF):  # RFC 9112 2.2: empty lines before a request
            del buffer[:2]
            self._searched = 0
        end = find_head_end(buffer, max(self._searched - 3, 0))
        limit = self.max_head_bytes
        if end > limit or (end < 0 and len(buffer) > limit):
            self._fail()
            raise ProtocolError("request headers are too large", 431)
        if end < 0:
            self._searched = len(buffer)
            return self._starved()
        data = bytes(buffer[:end])
        del buffer[:end]
        self._searched = 0
        try:
            head = parse_request_head(data)
        except ProtocolError:
            self._fail()
            raise
        if head.content_length > self.max_body_bytes:
            self._fail()
            raise ProtocolError("request body too large", 413)
        self._head = head
        self._keep_alive = head.keep_alive
        self._body_left = head.content_length
        # RFC 9110 10.1.1: an HTTP/1.0 client's expectation is ignored; a body already here
        # needs no invitation.
        self._continue_owed = head.version == b"1.1" and head.content_length > 0 and any(
            name == b"expect" and value.lower() == b"100-continue" for name, value in head.headers)
        self._receiving = _Receiving.BODY
        return head

    def _next_body(self) -> Event:
        left = self._body_left
        if not left:
            self._receiving = _Receiving.DONE
            self._continue_owed = False
            return END_OF_REQUEST
        if not self._buffer:
            return self._starved()
        data = bytes(self._buffer[:left])
        del self._buffer[:len(data)]
        self._body_left = left - len(data)
        return Data(data)

    def _starved(self) -> NeedData | Closed:
        if self._peer_closed:
            self._receiving = _Receiving.CLOSED
            return CLOSED
        return NEED_DATA

    def _fail(self) -> None:
        self._receiving = _Receiving.FAILED
        self._keep_alive = False

    @property
    def mid_request(self) -> bool:
        """Whether the peer sent part of a request and stalled: a wait that times out now owes
        it a 408, where an idle connection is closed without a word."""
        return self._receiving is _Receiving.BODY or bool(self._buffer)

    @property
    def expects_continue(self) -> bool:
        """Whether the client waits for `100 Continue` before it sends the body being read.

        Ask when next_event said NEED_DATA; send continue_response() before reading more.
        """
        return self._continue_owed and self._receiving is _Receiving.BODY

    def continue_response(self) -> bytes:
        """The bytes of 100 Continue, to send now; the expectation is met once."""
        if not self.expects_continue:
            raise RuntimeError("no 100 Continue is owed")
        self._continue_owed = False
        return CONTINUE

    # --- sending ---
    @property
    def keep_alive(self) -> bool:
        """Whether this connection may carry another request after the current one."""
        return self._keep_alive

    def close_after_response(self) -> None:
        """The owner's word (the node drains): this response is the connection's last.

        Before start_response, so that the head says `Connection: close`.
        """
        self._keep_alive = False

    def start_response(self, status: int, headers: Sequence[tuple[str, str]], method: str,
                       length: int | None, *, body: bytes | None = None,
                       date: str | None = None, rendered: str = "") -> bytes:
        """The head of the answer to the request read whole; raises ValueError when the
        response cannot be framed as given, and then nothing changed: another response (a 500)
        can take its place.

        `length` is the body's size when known; None for a body of unknown size, sent chunked
        to an HTTP/1.1 client and close-delimited to HTTP/1.0. `body` is a whole body the
        owner sends right after with send_body (None when it streams one): then `length`, if
        given, must be its size, except for HEAD, whose head states the size a GET would get
        and which sends no body. The connection writes the framing headers itself (a
        handler's would contradict it), `Server: segue`, `Date: date` (the owner reads the
        clock: segue.http.dates.now()), and `Connection: close` when this answer is the
        connection's last. `rendered` are header lines checked already (wire.header_lines),
        sent before `headers`; they must hold no framing header.
        """
        if self._receiving is not _Receiving.DONE or self._sending is not _Sending.IDLE:
            raise RuntimeError("a response answers one request read whole, once")
        assert self._head is not None
        for name, _ in headers:
            if name.lower() in FRAMING_HEADERS:
                raise ValueError(f"{name} is the connection's to set, not a handler's")
        if not has_body(status):
            if body or body is None or length:
                raise ValueError(f"a {status} response has no body")
        elif body is not None:
            if method != "HEAD" and length not in (None, len(body)):
                raise ValueError(f"length {length} given for a body of {len(body)} bytes")
            if length is None:
                length = len(body)
        chosen = framing(status, length, self._head.version)
        keep_alive = self._keep_alive and chosen is not Framing.CLOSE
        frame = (("Content-Length", str(length)) if chosen is Framing.LENGTH
                 else ("Transfer-Encoding", "chunked") if chosen is Framing.CHUNKED else None)
        head = _compose_head(status, headers, frame, close=not keep_alive, date=date,
                             rendered=rendered)
        self._keep_alive = keep_alive
        self._continue_owed = False
        self._framing = Framing.NONE if method == "HEAD" else chosen
        self._length = length or 0
        self._framed = 0
        self._sending = _Sending.BODY
        return head

    def send_body(self, data: BodyPart) -> Outgoing:
        """What to write for `data`, the next bytes of the body: under Content-Length `data`
        itself (no copy: this runs for every chunk of every stream), chunked the parts of one
        chunk. RuntimeError for more than the declared length, or a body where none may go.
        """
        if self._framing is Framing.LENGTH:
            framed = self._framed + len(data)
            if framed > self._length:
                raise RuntimeError(f"a body writer sent more than its {self._length} bytes")
            self._framed = framed
            return data
        if self._framing is Framing.CHUNKED:
            size = len(data)
            if not size:  # an empty chunk would end the body
                return ()
            self._framed += size
            return (b"%x\r\n" % size, data, _CRLF)
        if self._framing is Framing.CLOSE:
            self._framed += len(data)
            return data
        raise RuntimeError("no response body may be sent now")

    def end_response(self) -> bytes:
        """The bytes that end the response (the last chunk, when chunked); RuntimeError when a
        Content-Length body came short, and then the connection carries nothing more."""
        if self._sending is not _Sending.BODY:
            raise RuntimeError("no response to end")
        if self._framing is Framing.LENGTH and self._framed != self._length:
            self._keep_alive = False
            raise RuntimeError(f"a body writer sent {self._framed} of its {self._length} bytes")
        tail = LAST_CHUNK if self._framing is Framing.CHUNKED else b""
        self._framing = Framing.NONE
        self._sending = _Sending.DONE
        return tail

    def next_cycle(self) -> None:
        """Start on the next request of a kept-alive connection, once this one is answered."""
        if self._receiving is not _Receiving.DONE or self._sending is not _Sending.DONE:
            raise RuntimeError("the current request is not answered yet")
        if not self._keep_alive:
            raise RuntimeError("this connection carries no more requests")
        self._receiving = _Receiving.HEAD
        self._sending = _Sending.IDLE
        self._head = None
