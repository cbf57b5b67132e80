"""Serf's RPC protocol as bytes in, replies out: no sockets, no clock, no waiting.

The agent speaks msgpack over TCP. A request is a header ``{"Command", "Seq"}`` and, for
some commands, a body. A reply is a header ``{"Seq", "Error"}`` and, for the commands that
answer with data, a body; a ``stream`` request is acknowledged by a header, after which every
event comes as a header carrying the stream's Seq plus the event as a body. Nothing in the
stream says whether a body follows a header, so this codec remembers what each Seq asked for.

A header is told from a body by its shape (exactly ``Seq`` and ``Error``): no body Serf sends
has those two keys alone. That keeps a reply that lacks the body we expected (the agent's
protocol errors, such as "Authentication required", come as a bare header) from swallowing
the next message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

#: The commands whose reply carries a body after the header.
ANSWERS_WITH_BODY = frozenset({
    "members", "members-filtered", "list-keys", "install-key", "use-key", "remove-key",
    "stats", "join", "get-coordinate"})

#: The most bytes the agent may leave unparsed; a peer sending more is broken or hostile.
MAX_BUFFER = 16 * 1024 * 1024


class SerfProtocolError(Exception):
    """The agent sent something this protocol does not allow; the connection is unusable."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request: `error` is Serf's text ("" when it worked)."""

    seq: int
    error: str
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Record:
    """One event of a stream opened with the request numbered `seq`."""

    seq: int
    body: dict[str, Any]


def _is_header(obj: Any) -> bool:
    return isinstance(obj, dict) and set(obj) == {"Seq", "Error"}


class SerfCodec:
    """One RPC connection's framing: `request()` makes bytes to send, `receive_data()` takes
    what arrived, `next_event()` hands out replies and stream records in order."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_BUFFER)
        self._seq = 0
        self._pending: dict[int, str] = {}  # seq -> command awaiting its reply
        self._streams: set[int] = set()  # seqs of acknowledged streams
        self._header: dict[str, Any] | None = None  # a header whose body is still to come
        self._out: list[Reply | Record] = []

    def request(self, command: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """The bytes of one request and the Seq its reply will carry."""
        seq = self._seq
        self._seq += 1
        self._pending[seq] = command
        data = msgpack.packb({"Command": command, "Seq": seq})
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        return seq, data

    def forget(self, seq: int) -> None:
        """Stop expecting anything for `seq` (a request given up on, a stream stopped)."""
        self._pending.pop(seq, None)
        self._streams.discard(seq)

    def receive_data(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
            for obj in self._unpacker:
                self._take(obj)
        except (msgpack.UnpackException, ValueError, TypeError) as e:
            raise SerfProtocolError(f"undecodable data from the agent: {e}") from None

    def next_event(self) -> Reply | Record | None:
        return self._out.pop(0) if self._out else None

    def _take(self, obj: Any) -> None:
        if self._header is not None:
            header, self._header = self._header, None
            if not _is_header(obj):
                self._emit(header, obj)
                return
            self._emit(header, None)  # the body we expected never came: a bare error
        if not _is_header(obj):
            raise SerfProtocolError(f"a message with no header before it: {str(obj)[:80]}")
        seq, error = obj["Seq"], obj["Error"]
        if not isinstance(seq, int) or not isinstance(error, str):
            raise SerfProtocolError("a reply header without an integer Seq and a text Error")
        command = self._pending.get(seq)
        if seq in self._streams or command in ANSWERS_WITH_BODY:
            self._header = obj
        elif command is not None:
            self._emit(obj, None)
        # else: a reply to a request given up on; nothing follows it

    def _emit(self, header: dict[str, Any], body: Any) -> None:
        seq = header["Seq"]
        if body is not None and not isinstance(body, dict):
            raise SerfProtocolError("a reply body that is not a map")
        if seq in self._streams:
            if body is not None:
                self._out.append(Record(seq, body))
            return
        command = self._pending.pop(seq, None)
        if command is None:
            return
        if command == "stream" and not header["Error"]:
            self._streams.add(seq)
        self._out.append(Reply(seq, header["Error"], body))
