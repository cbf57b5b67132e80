"""HTTP/1.1 connections: the sans-I/O rules (segue.http.connection) and the connection task
around them (segue.http.server.serve_connection) over in-memory streams on a mock clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from segue.config import HttpSettings, Listen
from segue.http.connection import (
    CLOSED,
    CONTINUE,
    END_OF_REQUEST,
    LAST_CHUNK,
    NEED_DATA,
    Data,
    Event,
    Framing,
    ServerConnection,
    framing,
)
from segue.http.messages import Request, Response, Send
from segue.http.server import serve_connection
from segue.http.wire import ProtocolError, RequestHead
from segue.lifecycle import Lifecycle
from segue.metrics import Metrics

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def post(body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = [b"POST /echo HTTP/" + version, b"Host: x",
            b"Content-Length: " + str(len(body)).encode(), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def events(connection: ServerConnection) -> list[Event]:
    """Every event up to NEED_DATA, END_OF_REQUEST or CLOSED."""
    found = []
    while True:
        event = connection.next_event()
        found.append(event)
        if event in (NEED_DATA, END_OF_REQUEST, CLOSED):
            return found


def request_read(data: bytes, *, max_body_bytes: int = 1024) -> ServerConnection:
    connection = ServerConnection(16384, max_body_bytes)
    connection.receive_data(data)
    assert events(connection)[-1] == END_OF_REQUEST
    return connection


def fields(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    assert lines[-2:] == ["", ""]
    found = {}
    for line in lines[1:-2]:
        name, _, value = line.partition(": ")
        assert name.lower() not in found
        found[name.lower()] = value
    return int(lines[0].split(" ")[1]), found


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    """A chunked body's payload, and what followed its last chunk."""
    payload = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert data.startswith(b"\r\n"), "no trailers, then the blank line"
            return bytes(payload), data[2:]
        payload += data[:size]
        assert data[size:size + 2] == b"\r\n"
        data = data[size + 2:]


# --- the sans-I/O connection ---

def test_a_request_without_a_body_is_a_head_then_its_end() -> None:
    connection = ServerConnection(16384, 1024)
    assert connection.next_event() == NEED_DATA
    connection.receive_data(GET)
    head, end = events(connection)
    assert isinstance(head, RequestHead) and (head.method, head.target) == (b"GET", b"/a")
    assert end == END_OF_REQUEST
    assert connection.keep_alive and not connection.mid_request
    with pytest.raises(RuntimeError):  # answer first
        connection.next_event()


def test_a_body_arrives_in_pieces_as_it_comes() -> None:
    connection = ServerConnection(16384, 1024)
    whole = post(b"hello world")
    connection.receive_data(whole[:-6])
    head, data, need = events(connection)
    assert isinstance(head, RequestHead) and head.content_length == 11
    assert data == Data(b"hello")
    assert need == NEED_DATA and connection.mid_request
    connection.receive_data(whole[-6:] + GET)  # the next request's bytes wait their turn
    assert events(connection) == [Data(b" world"), END_OF_REQUEST]


def test_a_head_split_anywhere_is_found() -> None:
    connection = ServerConnection(16384, 1024)
    data = b"\r\n\r\n" + post(b"xyz").replace(b"\r\n", b"\n", 2)
    said: list[tuple[int, Event]] = []
    for i in range(len(data)):
        connection.receive_data(data[i:i + 1])
        said += [(i, event) for event in events(connection) if event != NEED_DATA]
    head_end = data.index(b"\r\n\r\nxyz") + 3
    assert [i for i, _ in said] == [head_end, head_end + 1, head_end + 2, head_end + 3,
                                    head_end + 3]
    head = said[0][1]
    assert isinstance(head, RequestHead) and head.method == b"POST"
    assert [event for _, event in said[1:]] == [Data(b"x"), Data(b"y"), Data(b"z"),
                                                END_OF_REQUEST]


def test_empty_lines_before_a_request_are_skipped_and_are_not_a_request() -> None:
    connection = ServerConnection(16384, 1024)
    connection.receive_data(b"\r\n\r\n")
    assert connection.next_event() == NEED_DATA
    assert not connection.mid_request  # a timeout now closes quietly, no 408


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000, 431),  # no end in sight
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (post(b"x" * 1025), 413),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
])
def test_malformed_input_raises_with_the_status_to_answer(data: bytes, status: int) -> None:
    connection = ServerConnection(16384, 1024)
    connection.receive_data(data)
    with pytest.raises(ProtocolError) as raised:
        connection.next_event()
    assert raised.value.status == status
    assert not connection.keep_alive
    with pytest.raises(RuntimeError):  # nothing more is read from a peer that broke HTTP
        connection.next_event()


def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    connection = ServerConnection(16384, 4)
    connection.receive_data(post(b"hello")[:-5])  # the head alone
    with pytest.raises(ProtocolError, match="body") as raised:
        connection.next_event()
    assert raised.value.status == 413


@pytest.mark.parametrize("data", [b"", b"GET / HT", post(b"hello")[:-2]])
def test_a_peer_that_closes_ends_the_events(data: bytes) -> None:
    connection = ServerConnection(16384, 1024)
    if data:
        connection.receive_data(data)
    assert events(connection)[-1] == NEED_DATA
    assert connection.mid_request == bool(data)
    connection.receive_data(b"")
    assert events(connection)[-1] == CLOSED
    assert connection.next_event() == CLOSED


def test_a_request_before_the_peer_closed_is_still_read() -> None:
    connection = ServerConnection(16384, 1024)
    connection.receive_data(GET)
    connection.receive_data(b"")
    assert events(connection)[-1] == END_OF_REQUEST


def test_100_continue_is_owed_once_while_the_body_is_awaited() -> None:
    connection = ServerConnection(16384, 1024)
    connection.receive_data(post(b"hello", b"Expect: 100-Continue")[:-5])
    assert events(connection)[-1] == NEED_DATA
    assert connection.expects_continue
    assert connection.continue_response() == CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not connection.expects_continue
    with pytest.raises(RuntimeError):
        connection.continue_response()
    connection.receive_data(b"hello")
    assert events(connection) == [Data(b"hello"), END_OF_REQUEST]


@pytest.mark.parametrize("data", [
    post(b"hello", b"Expect: 100-continue"),  # the body is here already
    post(b"hello", b"Expect: 100-continue", version=b"1.0")[:-5],  # RFC 9110 10.1.1
    post(b"", b"Expect: 100-continue"),  # no body to invite
])
def test_100_continue_is_not_sent_when_nobody_waits_for_it(data: bytes) -> None:
    connection = ServerConnection(16384, 1024)
    connection.receive_data(data)
    events(connection)
    assert not connection.expects_continue


@pytest.mark.parametrize(("status", "length", "version", "chosen"), [
    (200, 10, b"1.1", Framing.LENGTH),
    (200, 0, b"1.0", Framing.LENGTH),
    (200, None, b"1.1", Framing.CHUNKED),
    (200, None, b"1.0", Framing.CLOSE),
    (204, None, b"1.1", Framing.NONE),
    (304, None, b"1.0", Framing.NONE),
    (101, None, b"1.1", Framing.NONE),
])
def test_framing_rules(status: int, length: int | None, version: bytes, chosen: Framing) -> None:
    assert framing(status, length, version) is chosen


def test_a_known_length_is_sent_as_is_and_counted() -> None:
    connection = request_read(GET)
    status, head = fields(connection.start_response(200, [("Content-Type", "a/b")], "GET", 6))
    assert (status, head) == (200, {"server": "segue", "content-type": "a/b",
                                    "content-length": "6"})
    data = memoryview(b"abcd")
    assert connection.send_body(data) is data  # no copy on the streaming path
    with pytest.raises(RuntimeError, match="more than its 6 bytes"):
        connection.send_body(b"xyz")
    assert connection.send_body(b"ef") == b"ef"
    assert connection.end_response() == b""
    connection.next_cycle()
    assert connection.next_event() == NEED_DATA


def test_a_short_body_is_an_error_and_ends_the_connection() -> None:
    connection = request_read(GET)
    connection.start_response(200, [], "GET", 6)
    connection.send_body(b"abc")
    with pytest.raises(RuntimeError, match="3 of its 6 bytes"):
        connection.end_response()
    assert not connection.keep_alive


def test_a_body_of_unknown_length_is_chunked_for_http_1_1() -> None:
    connection = request_read(GET)
    _, head = fields(connection.start_response(200, [], "GET", None))
    assert head["transfer-encoding"] == "chunked" and "content-length" not in head
    wire = bytearray()
    for data in (b"data: one\n\n", b"", b"x" * 300):
        out = connection.send_body(data)
        assert isinstance(out, tuple)
        wire += b"".join(out)
    assert connection.send_body(b"") == ()  # an empty chunk would end the body
    wire += connection.end_response()
    assert wire.endswith(LAST_CHUNK)
    assert dechunk(bytes(wire)) == (b"data: one\n\n" + b"x" * 300, b"")
    assert connection.keep_alive


def test_a_body_of_unknown_length_ends_with_an_http_1_0_connection() -> None:
    connection = request_read(b"GET / HTTP/1.0\r\n\r\n")
    _, head = fields(connection.start_response(200, [], "GET", None))
    assert head["connection"] == "close"
    assert "content-length" not in head and "transfer-encoding" not in head
    assert connection.send_body(b"abc") == b"abc"
    assert connection.end_response() == b""
    assert not connection.keep_alive
    with pytest.raises(RuntimeError):
        connection.next_cycle()


def test_head_states_the_length_and_sends_no_body() -> None:
    connection = request_read(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
    _, head = fields(connection.start_response(200, [], "HEAD", 1000, body=b""))
    assert head["content-length"] == "1000"
    with pytest.raises(RuntimeError):
        connection.send_body(b"a")
    assert connection.end_response() == b""


@pytest.mark.parametrize(("status", "headers", "method", "length", "body", "rule"), [
    (200, [("Content-Length", "3")], "GET", None, b"abc", "connection's to set"),
    (200, [("transfer-encoding", "chunked")], "GET", None, None, "connection's to set"),
    (200, [("Connection", "close")], "GET", None, b"", "connection's to set"),
    (200, [], "GET", 5, b"abc", "length 5 given for a body of 3 bytes"),
    (204, [], "GET", None, b"abc", "no body"),
    (304, [], "GET", 10, b"", "no body"),
    (204, [], "GET", None, None, "no body"),  # a writer
    (200, [("X-Split", "a\r\nSet-Cookie: b")], "GET", None, b"", "cannot be sent"),
])
def test_a_response_that_cannot_be_framed_can_still_become_a_500(
        status: int, headers: list[tuple[str, str]], method: str, length: int | None,
        body: bytes | None, rule: str) -> None:
    connection = request_read(GET)
    with pytest.raises(ValueError, match=rule):
        connection.start_response(status, headers, method, length, body=body)
    status, head = fields(connection.start_response(500, [], "GET", None, body=b"{}"))
    assert (status, head["content-length"]) == (500, "2")


def test_a_response_answers_one_whole_request_once() -> None:
    connection = ServerConnection(16384, 1024)
    connection.receive_data(post(b"hello")[:-1])
    events(connection)
    with pytest.raises(RuntimeError):
        connection.start_response(200, [], "POST", 0)
    connection.receive_data(b"o")
    events(connection)
    connection.start_response(200, [], "POST", 0)
    with pytest.raises(RuntimeError):
        connection.start_response(200, [], "POST", 0)
    with pytest.raises(RuntimeError):
        connection.next_cycle()  # not ended yet


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
])
def test_a_closing_request_gets_a_closing_answer(data: bytes) -> None:
    connection = request_read(data)
    assert not connection.keep_alive
    _, head = fields(connection.start_response(200, [], "GET", 0))
    assert head["connection"] == "close"


def test_the_owner_can_make_an_answer_the_last() -> None:
    connection = request_read(GET)
    connection.close_after_response()
    _, head = fields(connection.start_response(200, [], "GET", None))
    assert head["connection"] == "close"
    assert connection.end_response() == LAST_CHUNK
    with pytest.raises(RuntimeError):
        connection.next_cycle()


def test_pipelined_requests_are_read_one_cycle_at_a_time() -> None:
    connection = ServerConnection(16384, 1024)
    connection.receive_data(post(b"abc") + b"\r\n" + GET)
    head, body, end = events(connection)
    assert isinstance(head, RequestHead) and body == Data(b"abc") and end == END_OF_REQUEST
    connection.start_response(200, [], "POST", 0)
    connection.end_response()
    connection.next_cycle()
    head, end = events(connection)
    assert isinstance(head, RequestHead) and head.method == b"GET"


# --- the connection task, over memory streams ---

SETTINGS = HttpSettings(
    listen=Listen("127.0.0.1", 0), max_header_bytes=16384, max_body_bytes=1024,
    header_timeout_s=10.0, idle_timeout_s=60.0, send_timeout_s=60.0, max_connections=10,
    max_connections_per_client=0,
    workers=1, tls_certificate=None, tls_key=None, cors_origins=(), trusted_proxies=())

Handler = Callable[[Request], Awaitable[Response]]


async def echo(request: Request) -> Response:
    """The request's body, or its path."""
    return Response(200, [("Content-Type", "text/plain")], request.body or request.path.encode())


class Client:
    """The player's end of a memory stream: writes requests, reads responses."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            assert await self._more(), "the server closed early"
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, fields, and its body (whichever its framing)."""
        while b"\r\n\r\n" not in self.buffer:
            assert await self._more(), "the server closed early"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, found = fields(head + b"\r\n\r\n")
        if "content-length" in found:
            return status, found, await self.take(int(found["content-length"]))
        if found.get("transfer-encoding") == "chunked":
            while LAST_CHUNK not in self.buffer:  # enough for these tests' payloads
                assert await self._more(), "the server closed early"
            body, self.buffer = dechunk(self.buffer)
            return status, found, body
        while await self._more():
            pass
        body, self.buffer = self.buffer, b""
        return status, found, body

    async def closed(self) -> bool:
        """Whether the server closed the connection with nothing more to say."""
        return not self.buffer and not await self._more()


def connected(handler: Handler, test: Callable[[Client, Lifecycle], Awaitable[None]], *,
              settings: HttpSettings = SETTINGS, ready: bool = True,
              lifecycle: Lifecycle | None = None) -> Metrics:
    """Run `test` as a player against one connection served by `handler`, on a mock clock
    that jumps whenever everybody waits; the connection task must end by itself."""
    lifecycle = lifecycle or Lifecycle()
    if ready:
        lifecycle.ready()
    metrics = Metrics()

    async def main() -> None:
        client, server = trio.testing.memory_stream_pair()
        with trio.fail_after(3600):  # mock seconds: a task that never ends fails, not hangs
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_connection, server, handler, lifecycle, metrics,
                                   settings)
                await test(Client(client), lifecycle)
                await client.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return metrics


def answered(metrics: Metrics, status: int) -> tuple[float, float]:
    """(responses, body bytes) counted under `status` (and route "none": these handlers are
    called without a router, which is what names the route)."""
    label = {"route": "none", "status": str(status)}
    return (metrics.registry.get_sample_value("segue_http_requests_total", label) or 0,
            metrics.registry.get_sample_value("segue_http_response_bytes_total", label) or 0)


def test_a_kept_alive_connection_answers_request_after_request() -> None:
    async def player(client: Client, _: Lifecycle) -> None:
        for path in ("/one", "/two", "/three"):
            await client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, head, body = await client.response()
            assert (status, body) == (200, path.encode())
            assert head["server"] == "segue" and "connection" not in head
            await trio.sleep(30)  # idle, but within idle_timeout_s

    metrics = connected(echo, player)
    assert answered(metrics, 200) == (3, 14)


def test_an_idle_connection_closes_quietly_after_the_idle_timeout() -> None:
    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(GET)
        await client.response()
        started = trio.current_time()
        assert await client.closed()  # no 408: nothing was asked
        assert trio.current_time() - started == pytest.approx(60, abs=2)

    connected(echo, player)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(post(b"hello") + b"\r\n" + b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
                          + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [await client.response() for _ in range(3)]
        assert [(status, body) for status, _, body in answers] == [
            (200, b"hello"), (200, b"/two"), (200, b"/last")]
        assert answers[-1][1]["connection"] == "close"
        assert await client.closed()

    connected(echo, player)


def test_100_continue_is_sent_before_the_body_is_read() -> None:
    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(post(b"hello", b"Expect: 100-continue")[:-5])  # the head alone
        assert await client.take(len(CONTINUE)) == CONTINUE
        await client.send(b"hello")
        assert (await client.response())[::2] == (200, b"hello")

    connected(echo, player)


@pytest.mark.parametrize("data", [b"GET /a HTTP/1.1\r\nHost", post(b"hello")[:-2]])
def test_a_request_that_stalls_gets_408_after_the_header_timeout(data: bytes) -> None:
    async def player(client: Client, _: Lifecycle) -> None:
        started = trio.current_time()
        await client.send(data)
        status, head, _ = await client.response()
        assert (status, head["connection"]) == (408, "close")
        assert trio.current_time() - started == pytest.approx(10, abs=1)
        assert await client.closed()

    connected(echo, player)


def test_a_body_over_max_body_bytes_gets_413() -> None:
    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(post(b"x" * 101))
        status, head, body = await client.response()
        assert (status, head["connection"]) == (413, "close")
        assert b"too large" in body
        assert await client.closed()

    metrics = connected(echo, player, settings=dataclasses.replace(SETTINGS, max_body_bytes=100))
    assert metrics.registry.get_sample_value("segue_http_protocol_errors_total") == 1


def test_a_body_of_unknown_length_streams_chunked() -> None:
    async def events_stream(request: Request) -> Response:
        async def write(send: Send) -> None:
            for i in range(3):
                await send(f"data: {i}\n\n".encode())
                await trio.sleep(1)
            await send(memoryview(b"x" * 70000))

        return Response(200, [("Content-Type", "text/event-stream")], writer=write)

    async def player(client: Client, lifecycle: Lifecycle) -> None:
        await client.send(GET)
        status, head, body = await client.response()
        assert (status, head["transfer-encoding"]) == (200, "chunked")
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" + b"x" * 70000
        await client.send(GET)  # and the connection goes on
        assert (await client.response())[0] == 200

    metrics = connected(events_stream, player)
    assert answered(metrics, 200) == (2, 2 * (27 + 70000))


def test_an_http_1_0_body_of_unknown_length_ends_with_the_connection() -> None:
    async def stream(request: Request) -> Response:
        async def write(send: Send) -> None:
            await send(b"abc")
            await send(b"def")

        return Response(200, writer=write)

    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        status, head, body = await client.response()
        assert (status, head["connection"], body) == (200, "close", b"abcdef")

    connected(stream, player)


def test_a_stream_is_counted_while_it_is_sent() -> None:
    lifecycle = Lifecycle()

    async def stream(request: Request) -> Response:
        async def write(send: Send) -> None:
            await send(str(lifecycle.streams_in_flight).encode())

        return Response(200, writer=write, length=1)

    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(GET)
        assert (await client.response())[2] == b"1"
        assert lifecycle.streams_in_flight == 0

    connected(stream, player, lifecycle=lifecycle)


def test_draining_closes_idle_kept_alive_connections_at_once() -> None:
    async def player(client: Client, lifecycle: Lifecycle) -> None:
        await client.send(GET)
        assert "connection" not in (await client.response())[1]
        await trio.sleep(5)
        started = trio.current_time()
        lifecycle.start_draining()
        assert await client.closed()  # closed, without a 408
        assert trio.current_time() - started < 1.5  # (the lingering second at most)

    connected(echo, player)


def test_answers_close_their_connection_unless_the_node_is_ready() -> None:
    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(GET + GET)
        status, head, _ = await client.response()
        assert (status, head["connection"]) == (200, "close")
        assert await client.closed()

    connected(echo, player, ready=False)


def test_a_handler_that_raises_gets_500_and_the_connection_goes_on() -> None:
    async def flaky(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("a bug")
        return await echo(request)

    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        status, head, body = await client.response()
        assert (status, "connection" in head) == (500, False)
        assert b"internal error" in body
        await client.send(GET)
        assert (await client.response())[::2] == (200, b"/a")

    connected(flaky, player)


def test_a_response_that_cannot_be_framed_becomes_a_500() -> None:
    async def wrong(request: Request) -> Response:
        return Response(200, [("Content-Length", "1")], b"abc")

    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(GET)
        assert (await client.response())[0] == 500

    connected(wrong, player)


def test_a_writer_that_fails_before_its_first_byte_gets_500() -> None:
    async def failing(request: Request) -> Response:
        async def write(send: Send) -> None:
            raise OSError("the share went away")

        return Response(200, writer=write, length=10)

    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(GET)
        status, head, _ = await client.response()
        assert (status, head["connection"]) == (500, "close")
        assert await client.closed()

    connected(failing, player)


def test_a_writer_that_fails_midway_cuts_the_body_short() -> None:
    async def failing(request: Request) -> Response:
        async def write(send: Send) -> None:
            await send(b"abcd")
            raise OSError("the share went away")

        return Response(200, writer=write, length=10)

    async def player(client: Client, _: Lifecycle) -> None:
        await client.send(GET)
        while b"abcd" not in client.buffer:
            assert await client._more()
        assert client.buffer.startswith(b"HTTP/1.1 200 ")
        client.buffer = b""
        assert await client.closed()

    metrics = connected(failing, player)
    assert answered(metrics, 200) == (1, 4)

