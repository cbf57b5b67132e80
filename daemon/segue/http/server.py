"""The connection loop: h11 over a trio stream, one task per connection.

Each phase has its own deadline: the first request's headers (header_timeout_s), the wait for
the next request on a kept-alive connection (idle_timeout_s) and every send (send_timeout_s),
so a slow or stalled peer costs one task and nothing else. Malformed HTTP gets a 400 (or 431 for
oversized headers) and the connection closes; other connections never notice.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import h11
import structlog
import trio

from segue.config import HttpSettings
from segue.http.app import EdgeApp, NodeState
from segue.http.messages import REASONS, Request, Response, error

log = structlog.get_logger("segue.http")

RECEIVE_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
LISTEN_BACKLOG = 65535  # the kernel caps it at net.core.somaxconn


class _ClosedByPeer(Exception):
    """The peer went away, or must be dropped; nothing more to say to it."""


def _head_size(event: h11.Request) -> int:
    return len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers)


class Connection:
    """One client connection: read requests, dispatch them, write responses."""

    def __init__(self, stream: trio.abc.HalfCloseableStream | trio.SSLStream,
                 app: EdgeApp, settings: HttpSettings) -> None:
        self.stream = stream
        self.app = app
        self.settings = settings
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=settings.max_header_bytes)
        # The raw socket of a plain TCP connection, for sendmsg; None under TLS.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None

    async def serve(self) -> None:
        """Answer requests until the peer closes, a deadline passes, or HTTP goes wrong."""
        first = True
        try:
            while True:
                if first:
                    event = await self._await_request(self.settings.header_timeout_s)
                    first = False
                else:
                    with self.app.idle_wait() as idle:
                        event = await self._await_request(self.settings.idle_timeout_s)
                    if idle.cancelled_caught:
                        return  # the node is draining: close kept-alive connections
                if not isinstance(event, h11.Request):
                    return
                if event.http_version not in (b"1.0", b"1.1"):
                    await self.send_and_close(error(505, "this server speaks HTTP/1.1"))
                    return
                if _head_size(event) > self.settings.max_header_bytes:
                    # h11 bounds only a head that is still arriving; one that came in a
                    # single read is measured here.
                    await self.send_and_close(error(431, "request headers are too large"))
                    return
                await self._respond(event)
                if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
        except h11.RemoteProtocolError as e:
            self.app.metrics.bad_requests.inc()
            status = e.error_status_hint if e.error_status_hint in REASONS else 400
            # h11's message quotes the offending bytes, which may hold a token: neither the log
            # nor the answer repeats it.
            log.info("malformed request", status=status)
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self.send_and_close(error(status, "malformed HTTP request"))
        except _ClosedByPeer:
            return
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await self.stream.aclose()

    async def _await_request(self, timeout: float) -> Any:
        """The next request (its body read and dropped), or None after `timeout` seconds."""
        with trio.move_on_after(timeout):
            event = await self._next_event()
            if isinstance(event, h11.Request):
                await self._read_body()
            return event
        if self.h11.trailing_data[0]:
            await self.send_and_close(error(408, "request headers took too long"))
        return None

    async def _read_body(self) -> None:
        """Read (and drop) a request body: no route takes one, but keep-alive needs it read."""
        received = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                return
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > MAX_BODY_BYTES:
                    raise h11.RemoteProtocolError("request body too large", 413)

    async def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _ClosedByPeer() from None
            self.h11.receive_data(data)  # type: ignore[arg-type]  # h11 appends bytearrays too

    async def _respond(self, event: h11.Request) -> None:
        started = time.perf_counter()
        try:
            request = Request.from_h11(event.method, event.target, event.headers)
        except ValueError:
            self.app.metrics.bad_requests.inc()
            await self.send_and_close(error(400, "malformed request target"))
            raise _ClosedByPeer() from None
        self.app.request_started()
        try:
            await self._answer(request, started)
        finally:
            self.app.request_finished()

    async def _answer(self, request: Request, started: float) -> None:
        try:
            response = await self.app.handle(request)
        except Exception:
            log.exception("request handler failed", method=request.method, path=request.path)
            response = error(500, "internal error")
        if self.app.state != NodeState.READY:
            response.headers.append(("Connection", "close"))
        sent = 0
        outcome = "ok"
        try:
            sent = await self._send_response(request, response)
        except _ClosedByPeer:
            outcome = "client closed"
            raise
        except trio.TooSlowError:
            outcome = "send timeout"
            raise _ClosedByPeer() from None
        except Exception as e:
            # A body that cannot be completed (a chunk failed verification mid-stream, say) is
            # cut off: closing the connection short of Content-Length tells the player so.
            outcome = f"aborted: {type(e).__name__}"
            raise _ClosedByPeer() from None
        finally:
            self.app.metrics.count_response(response.status, sent)
            log.info(
                "request",
                method=request.method,
                path=request.path,
                status=response.status,
                bytes=sent,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                outcome=outcome,
                **response.fields,
            )

    async def _send(self, *parts: bytes | memoryview) -> None:
        """Send every byte of `parts`, in order, under [http] send_timeout_s.

        On a plain TCP connection the parts go out with sendmsg, so a response head and its
        first body bytes cost one system call and one trip through the event loop, not two.
        (A bare CancelScope, not trio.fail_after: this runs for every write, and the context
        manager generator behind fail_after showed up in the profile.)
        """
        with trio.CancelScope(deadline=trio.current_time() + self.settings.send_timeout_s) as scope:
            try:
                if self._socket is None or len(parts) == 1:
                    for part in parts:
                        await self.stream.send_all(part)
                else:
                    await _sendmsg_all(self._socket, parts)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                raise _ClosedByPeer() from None
        if scope.cancelled_caught:
            raise trio.TooSlowError()

    async def _send_response(self, request: Request, response: Response) -> int:
        """Write status, headers and body; return the number of body bytes sent."""
        headers = [
            ("Server", "segue"),
            *response.headers,
            ("Content-Length", str(response.content_length)),
        ]
        head = self.h11.send(
            h11.Response(
                status_code=response.status,
                headers=headers,
                reason=REASONS.get(response.status, "").encode(),
            )
        )
        assert head is not None
        if request.method == "HEAD" or (response.writer is None and not response.body):
            await self._send(head)
            self.h11.send(h11.EndOfMessage())
            return 0
        if response.writer is None:
            # Small bodies go out with the head in one write.
            self.h11.send_with_data_passthrough(h11.Data(data=response.body))
            await self._send(head + response.body)
            self.h11.send(h11.EndOfMessage())
            return len(response.body)
        sent = 0
        pending_head: bytes | None = head

        async def send_body(data: bytes | memoryview) -> None:
            nonlocal sent, pending_head
            # h11 passes a memoryview through untouched; its stubs only say bytes.
            parts = self.h11.send_with_data_passthrough(h11.Data(data=data))  # type: ignore[arg-type]
            for part in parts or ():
                if pending_head is not None:
                    await self._send(pending_head, part)
                    pending_head = None
                else:
                    await self._send(part)
            sent += len(data)

        self.app.in_flight += 1
        self.app.metrics.streams_in_flight.inc()
        try:
            await response.writer(send_body)
        finally:
            self.app.in_flight -= 1
            self.app.metrics.streams_in_flight.dec()
        self.h11.send(h11.EndOfMessage())
        return sent

    async def send_and_close(self, response: Response) -> None:
        """Best effort: an error response on a connection that is about to close.

        Written without h11, whose state machine may be in ERROR or may not have seen a request
        at all (a timed-out or refused connection).
        """
        lines = [
            f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}",
            "Server: segue",
            "Connection: close",
            f"Content-Length: {len(response.body)}",
            *(f"{name}: {value}" for name, value in response.headers),
        ]
        data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + response.body
        try:
            await self._send(data)
            await self._linger()
        except (_ClosedByPeer, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError):
            pass

    async def _linger(self) -> None:
        """Half-close, then read what the peer still sends for a moment before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        error response before the peer reads it (a client still uploading a body, say).
        """
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()  # TLS has no half-close: just drain below
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                try:
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                drained += len(data)


async def _sendmsg_all(sock: trio.socket.SocketType, parts: tuple[bytes | memoryview, ...]) -> None:
    """sendmsg until every byte of `parts` is written (the kernel may take fewer)."""
    views = [memoryview(part) for part in parts]
    while views:
        sent = await sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0
        if views and not len(views[0]):
            views.pop(0)


async def _shared_port_listeners(settings: HttpSettings) -> list[trio.SocketListener]:
    """Listeners whose port other processes of this node bind too (SO_REUSEPORT).

    The kernel then spreads new connections over every process's own accept queue, so no
    process hands out work to another and none of them needs to be told of the others.
    """
    listeners: list[trio.SocketListener] = []
    infos = await trio.socket.getaddrinfo(settings.listen.host or None, settings.listen.port,
                                          type=trio.socket.SOCK_STREAM,
                                          flags=trio.socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            if family == trio.socket.AF_INET6:
                sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            for listener in listeners:
                listener.socket.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


async def serve(
    app: EdgeApp,
    settings: HttpSettings,
    tls: ssl.SSLContext | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on settings.listen (with TLS when `tls` is given) and serve until cancelled.

    task_status gets the TCP listeners, whose sockets say where the node listens.
    """
    if settings.workers > 1:
        tcp = await _shared_port_listeners(settings)
    else:
        tcp = await trio.open_tcp_listeners(settings.listen.port, host=settings.listen.host)
    listeners: list[trio.abc.Listener] = list(tcp)
    if tls is not None:
        listeners = [trio.SSLListener(listener, tls, https_compatible=True) for listener in tcp]
    active = 0

    async def handler(stream: trio.abc.HalfCloseableStream | trio.SSLStream) -> None:
        nonlocal active
        connection = Connection(stream, app, settings)
        if active >= settings.max_connections:
            await connection.send_and_close(error(503, "too many connections"))
            await stream.aclose()
            return
        active += 1
        try:
            await connection.serve()
        except Exception:
            # One connection's bug must never take the listener, and every other player,
            # down with it.
            log.exception("connection failed")
        finally:
            active -= 1

    async with trio.open_nursery() as nursery:
        task_status.started(tcp)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
