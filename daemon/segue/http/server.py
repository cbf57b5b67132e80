"""The connection loop: HTTP/1.1 (segue.http.wire) over a trio stream, one task per connection.

Each phase has its own deadline: the first request's headers (header_timeout_s), the wait for
the next request on a kept-alive connection (idle_timeout_s) and every send (send_timeout_s),
so a slow or stalled peer costs one task and nothing else. Malformed HTTP gets a 400 (431 for
oversized headers, 413 for a body over [http] max_body_bytes, 501 for Transfer-Encoding, 505
for another HTTP) and the connection closes; other connections never notice.

What HTTP/1.1 itself decides (framing, keep-alive, 100 Continue, when a stalled wait is a 408)
is segue.http.connection's, which does no I/O; this module does the reads, the writes, the
deadlines and the logging around it.
"""

from __future__ import annotations

import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
import trio

from segue.http import dates
from segue.http.client_address import ClientAddresses
from segue.http.connection import (
    END_OF_REQUEST,
    NEED_DATA,
    BodyPart,
    Data,
    Outgoing,
    ServerConnection,
    closing_head,
)
from segue.http.messages import FileSpan, PreparedResponse, Request, Response, error
from segue.http.wire import ProtocolError, RequestHead
from segue.lifecycle import Lifecycle, NodeState
from segue.log import info_enabled
from segue.metrics import Metrics

log = structlog.get_logger("segue.http")

RECEIVE_BYTES = 64 * 1024
# A response body yields to the other connections once every this many bytes (as nginx's
# sendfile_max_chunk, 2m, does): a socket that never fills (a fast reader on a fast network,
# a cached track) would otherwise keep the event loop to itself until the track ends.
FAIR_SHARE_BYTES = 2 * 1024 * 1024
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
LISTEN_BACKLOG = 65535  # the kernel caps it at net.core.somaxconn

Stream = trio.abc.HalfCloseableStream | trio.SSLStream
Handler = Callable[[Request], Awaitable[Response]]


class Address(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class HttpSettings(Protocol):
    """What the connection loop reads of the node's [http] table (the node passes its
    config.HttpSettings; this layer takes values, never the configuration module)."""

    @property
    def listen(self) -> Address: ...

    @property
    def max_header_bytes(self) -> int: ...

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def header_timeout_s(self) -> float: ...

    @property
    def idle_timeout_s(self) -> float: ...

    @property
    def send_timeout_s(self) -> float: ...

    @property
    def max_connections(self) -> int: ...

    @property
    def max_connections_per_client(self) -> int: ...

    @property
    def workers(self) -> int: ...


class _ClosedByPeer(Exception):
    """The peer went away, or must be dropped; nothing more to say to it."""


class _NothingSent(Exception):
    """A body writer failed before its first byte: the response can still become a 500."""


class _Connection:
    """One client connection: the reads, writes and deadlines around a ServerConnection."""

    def __init__(self, stream: Stream, handler: Handler, lifecycle: Lifecycle, metrics: Metrics,
                 settings: HttpSettings, clients: ClientAddresses, peer: str) -> None:
        self.stream = stream
        self.clients = clients
        self.peer = peer  # the peer's IP address, for the log lines
        self.handler = handler
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.settings = settings
        self.http = ServerConnection(settings.max_header_bytes, settings.max_body_bytes)
        self.sent = 0  # body bytes of the current response written so far
        self._send_scope: trio.CancelScope | None = None  # the deadline of the writes under way
        # The raw socket of a plain TCP connection, for sendmsg; None under TLS.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None

    async def serve(self) -> None:
        """Answer requests until the peer closes, a deadline passes, or HTTP goes wrong."""
        first = True
        try:
            while True:
                request = await self._await_request(idle=not first)
                first = False
                if request is None:
                    return
                await self._respond(*request)
                if not self.http.keep_alive:
                    break
                self.http.next_cycle()
            await self._linger()  # after the last answer, so that nothing resets its tail
        except ProtocolError as e:
            self.metrics.bad_requests.inc()
            # The message names the rule broken, never the bytes (which may hold a token).
            log.info("malformed request", status=e.status, error=str(e), client=self.peer)
            await self.send_and_close(error(e.status, f"malformed HTTP request: {e}"))
        except _ClosedByPeer:
            return
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await self.stream.aclose()

    async def _await_request(self, *, idle: bool) -> tuple[RequestHead, bytes] | None:
        """The next request's head and body, or None when the wait ends.

        The first request has [http] header_timeout_s; a kept-alive connection waits up to
        idle_timeout_s for the next one, and draining ends that wait at once.
        """
        timeout = self.settings.idle_timeout_s if idle else self.settings.header_timeout_s
        scope = trio.CancelScope(deadline=trio.current_time() + timeout)
        if idle:
            self.lifecycle.cancel_on_drain(scope)
        try:
            with scope:
                return await self._read_request()
        finally:
            if idle:
                self.lifecycle.forget_on_drain(scope)
        drained = idle and not self.lifecycle.accepting
        if self.http.mid_request and not drained:
            await self.send_and_close(error(408, "request headers took too long"))
        return None

    async def _read_request(self) -> tuple[RequestHead, bytes]:
        http = self.http
        head: RequestHead | None = None
        body: list[bytes] = []
        while True:
            event = http.next_event()
            if event is NEED_DATA:
                if http.expects_continue:  # or the client waits before it sends the body
                    await self._send((http.continue_response(),))
                await self._receive()
            elif isinstance(event, RequestHead):
                head = event
            elif isinstance(event, Data):
                body.append(event.data)
            elif event is END_OF_REQUEST:
                assert head is not None  # the connection ends only a request it began
                return head, b"".join(body)
            else:  # CLOSED: the peer is gone, perhaps halfway through a request
                raise _ClosedByPeer()

    async def _receive(self) -> None:
        """Read what the peer sent. On plain TCP: wait until readable, then one read(2), as the
        bare trio server does (trio's receive_some tries first and, the next request not being
        there yet, fails, waits and passes through the scheduler once more)."""
        try:
            if self._socket is None:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            else:
                while True:
                    await trio.lowlevel.wait_readable(self._socket)
                    try:
                        data = os.read(self._socket.fileno(), RECEIVE_BYTES)
                        break
                    except BlockingIOError:  # woken for nothing: wait again
                        continue
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _ClosedByPeer() from None
        except OSError as e:  # a reset: the peer is gone
            raise _ClosedByPeer() from e
        self.http.receive_data(data)

    async def _respond(self, head: RequestHead, body: bytes) -> None:
        started = time.perf_counter()
        try:
            request = Request.from_wire(head.method, head.target, head.headers, body)
        except ValueError:
            raise ProtocolError("malformed request target") from None
        with self.lifecycle.request():
            await self._answer(request, started)

    async def _answer(self, request: Request, started: float) -> None:
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("request handler failed", method=request.method, path=request.path)
            response = error(500, "internal error")
        if self.lifecycle.state != NodeState.READY:
            self.http.close_after_response()  # draining: every answer closes its connection
        try:
            head = self._start(request.method, response)
        except ValueError as e:
            log.error("a handler's response cannot be sent", path=request.path, error=str(e))
            response = error(500, "internal error")
            head = self._start(request.method, response)
        self.sent = 0
        outcome = "ok"
        try:
            await self._send_response(request, response, head)
        except _ClosedByPeer:
            outcome = "client closed"
            raise
        except trio.TooSlowError:
            outcome = "send timeout"
            raise _ClosedByPeer() from None
        except trio.Cancelled:
            outcome = "cut: the node stopped"
            raise
        except _NothingSent as e:
            outcome = f"aborted: {e}"
            await self.send_and_close(error(500, "internal error"))
            raise _ClosedByPeer() from None
        except Exception as e:
            # A body that cannot be completed (a chunk failed verification mid-stream, say) is
            # cut off: closing the connection short of its framing tells the player so.
            outcome = f"aborted: {type(e).__name__}"
            raise _ClosedByPeer() from None
        finally:
            self.metrics.count_response(response.route, response.status, self.sent)
            if info_enabled():
                self._log_request(request, response, started, outcome)

    def _log_request(self, request: Request, response: Response, started: float,
                     outcome: str) -> None:
        """The request line (at info: a node at warning writes none, and builds none)."""
        log.info(
            "request",
            client=self.clients.client(self.peer, request.headers.get("x-forwarded-for")),
            method=request.method,
            path=request.path,
            status=response.status,
            bytes=self.sent,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            outcome=outcome,
            **response.fields,
        )

    def _start(self, method: str, response: Response) -> bytes:
        """The response's head; ValueError when the response cannot be framed as it is."""
        return self.http.start_response(
            response.status, response.headers, method, response.length,
            body=response.body if response.writer is None else None, date=dates.now(),
            rendered=response.rendered_headers if isinstance(response, PreparedResponse) else "")

    async def _send(self, parts: tuple[BodyPart, ...]) -> None:
        """Send every byte of `parts`, in order, within [http] send_timeout_s.

        On a plain TCP connection bytes go out with sendmsg, so a response head and its first
        body bytes cost one system call and one trip through the event loop, not two, and a
        FileSpan with sendfile (see _write). Under TLS a FileSpan is read, then encrypted.

        Within a response the deadline is the response's one cancel scope (see
        _send_response), moved for each write; a write outside one (100 Continue, a closing
        error) gets a scope of its own.
        """
        scope = self._send_scope
        if scope is None:
            with trio.CancelScope() as scope:
                self._send_scope = scope
                try:
                    await self._send(parts)
                finally:
                    self._send_scope = None
            if scope.cancelled_caught:
                raise trio.TooSlowError()
            return
        scope.deadline = trio.current_time() + self.settings.send_timeout_s
        try:
            if self._socket is not None:
                await _write(self._socket, parts)
            else:
                for part in parts:
                    await self.stream.send_all(
                        os.pread(part.fd, part.count, part.offset)
                        if isinstance(part, FileSpan) else part)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _ClosedByPeer() from None
        scope.deadline = math.inf  # the body writer's own waits (reads) have their deadlines

    async def _send_response(self, request: Request, response: Response, head: bytes) -> None:
        """Write the head and the body, counting body bytes in self.sent as they go out.

        One cancel scope for the whole response, not one per write: a stream of a whole track
        writes hundreds of chunks, and a scope each showed in the profile.
        """
        with trio.CancelScope() as scope:
            self._send_scope = scope
            try:
                await self._send_head_and_body(request, response, head)
            finally:
                self._send_scope = None
        if scope.cancelled_caught:
            raise trio.TooSlowError()

    async def _send_head_and_body(self, request: Request, response: Response,
                                  head: bytes) -> None:
        http = self.http
        if request.method == "HEAD" or (response.writer is None and not response.body):
            await self._send((head,))
            http.end_response()  # b"": nothing follows the head
            return
        if response.writer is None:  # small bodies go out with the head
            await self._send(_parts(http.send_body(response.body), head))
            self.sent = len(response.body)
            http.end_response()  # b"": a whole body has its Content-Length
            return
        pending_head: bytes | None = head
        yield_at = FAIR_SHARE_BYTES

        async def send_body(data: BodyPart) -> None:
            nonlocal pending_head, yield_at
            await self._send(_parts(http.send_body(data), pending_head))
            pending_head = None
            self.sent += len(data)
            if self.sent >= yield_at:
                yield_at = self.sent + FAIR_SHARE_BYTES
                await trio.lowlevel.checkpoint()

        with self.lifecycle.stream():
            try:
                await response.writer(send_body)
            except (_ClosedByPeer, trio.TooSlowError):
                raise
            except Exception as e:
                if pending_head is not None:  # not a byte out yet: the player can still get a 500
                    raise _NothingSent(f"{type(e).__name__} before the first byte") from e
                raise
        try:
            tail = http.end_response()
        except RuntimeError:
            if pending_head is not None:
                raise _NothingSent("the body writer sent nothing") from None
            raise
        if pending_head is not None:
            await self._send((pending_head, tail) if tail else (pending_head,))
        elif tail:
            await self._send((tail,))

    async def send_and_close(self, response: Response) -> None:
        """Best effort: an error response on a connection that is about to close.

        The connection may not have seen a whole request (a timed-out or refused connection,
        a malformed head), so nothing here depends on one.
        """
        head = closing_head(response.status, response.headers, len(response.body), dates.now())
        try:
            await self._send((head, response.body))
            await self._linger()
        except (_ClosedByPeer, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError):
            pass

    async def _linger(self) -> None:
        """Half-close, then read what the peer still sends for a moment before closing.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        last response before the peer reads it (a client still uploading a body, or one that
        pipelined another request behind a `Connection: close`).
        """
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            try:
                await self.stream.send_eof()  # TLS has no half-close: just drain below
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
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


def _parts(out: Outgoing, head: bytes | None) -> tuple[BodyPart, ...]:
    """What to write for send_body's `out`, after the response head while it is unsent."""
    if isinstance(out, tuple):
        return out if head is None else (head, *out)
    return (out,) if head is None else (head, out)


async def _write(sock: trio.socket.SocketType, parts: tuple[BodyPart, ...]) -> None:
    """Every byte of `parts` in order: each run of bytes with sendmsg (MSG_MORE when a file
    follows, so that a head and the file's first bytes can share a segment), each FileSpan
    with sendfile."""
    run: list[bytes | memoryview] = []
    for part in parts:
        if isinstance(part, FileSpan):
            if run:
                await _sendmsg_all(sock, run, trio.socket.MSG_MORE)
                run = []
            await _sendfile_all(sock, part)
        else:
            run.append(part)
    if run:
        await _sendmsg_all(sock, run, 0)


async def _sendfile_all(sock: trio.socket.SocketType, span: FileSpan) -> None:
    """sendfile until the whole span is written, waiting whenever the socket is full.

    The kernel sends the file's pages by reference and holds them until the peer acknowledges
    them, which is safe only for pages never written again (segue.storage.pages).
    """
    fd = sock.fileno()
    offset, left = span.offset, span.count
    while left:
        try:
            sent = os.sendfile(fd, span.fd, offset, left)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        if not sent:
            raise OSError(f"sendfile: the file ended {left} bytes short")
        offset += sent
        left -= sent


async def _sendmsg_all(sock: trio.socket.SocketType, parts: list[bytes | memoryview],
                       flags: int) -> None:
    """sendmsg until every byte of `parts` is written (the kernel may take fewer)."""
    views = [memoryview(part) for part in parts]
    while views:
        sent = await sock.sendmsg(views, (), flags)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0
        if views and not len(views[0]):
            views.pop(0)


def _peer_host(stream: Stream) -> str:
    """The peer's IP address ("" once the peer is gone: it is served, or not, as one)."""
    plain = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock = getattr(plain, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else ""
    except OSError:
        return ""


async def _shared_port_listeners(settings: HttpSettings,
                                 join: bool) -> list[trio.SocketListener]:
    """Listeners whose port other processes of this node bind too (SO_REUSEPORT).

    The kernel then spreads new connections over every process's own accept queue, so no
    process hands out work to another and none of them needs to be told of the others.
    SO_REUSEPORT would also let an unrelated process of the same user join the port, so the
    main process (join=False) first binds without it: a port already taken fails as it does
    with one worker. Workers (join=True) join the main process's port.
    """
    listeners: list[trio.SocketListener] = []
    infos = await trio.socket.getaddrinfo(settings.listen.host or None, settings.listen.port,
                                          type=trio.socket.SOCK_STREAM,
                                          flags=trio.socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        if not join:
            with trio.socket.socket(family, kind, proto) as probe:
                probe.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                if family == trio.socket.AF_INET6:
                    probe.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await probe.bind(address)  # EADDRINUSE when someone else listens there
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


async def serve_connection(stream: Stream, handler: Handler, lifecycle: Lifecycle,
                           metrics: Metrics, settings: HttpSettings, *,
                           clients: ClientAddresses | None = None, peer: str = "") -> None:
    """Serve one accepted connection until it closes; never raises for what it meets.

    `peer` is the client's IP address, and `clients` which proxies may say another (for the
    log lines)."""
    try:
        await _Connection(stream, handler, lifecycle, metrics, settings,
                          clients or ClientAddresses(), peer).serve()
    except Exception:
        # One connection's bug must never take the listener, and every other player, down
        # with it.
        log.exception("connection failed")


async def serve(
    handler: Handler,
    lifecycle: Lifecycle,
    metrics: Metrics,
    settings: HttpSettings,
    tls: ssl.SSLContext | None = None,
    *,
    clients: ClientAddresses | None = None,
    join: bool = False,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on settings.listen (with TLS when `tls` is given) and serve until cancelled.

    `handler` answers each request; `lifecycle` says whether the node is draining and counts
    requests and streams; `clients` tells the client's address for the log behind trusted
    proxies (none: the peer's); `join`: a serving worker, binding the port its node's main
    process holds.

    task_status gets the TCP listeners, whose sockets say where the node listens.
    """
    if settings.workers > 1:
        tcp = await _shared_port_listeners(settings, join)
    else:
        tcp = await trio.open_tcp_listeners(settings.listen.port, host=settings.listen.host)
    listeners: list[trio.abc.Listener] = list(tcp)
    if tls is not None:
        listeners = [trio.SSLListener(listener, tls, https_compatible=True) for listener in tcp]
    active = 0
    # Connections open per peer address, so that one client cannot take all max_connections
    # ([http] max_connections_per_client; 0: no cap). Behind a proxy every player shares its
    # address: leave it 0 there.
    per_client: dict[str, int] = {}
    client_cap = settings.max_connections_per_client
    clients = clients or ClientAddresses()

    async def accepted(stream: Stream) -> None:
        nonlocal active
        peer = _peer_host(stream)
        if active >= settings.max_connections:
            refusal = "too many connections"
        elif client_cap and per_client.get(peer, 0) >= client_cap:
            refusal = "too many connections from your address"
        else:
            refusal = ""
        if refusal:
            refused = _Connection(stream, handler, lifecycle, metrics, settings, clients, peer)
            await refused.send_and_close(error(503, refusal))
            await stream.aclose()
            return
        active += 1
        per_client[peer] = per_client.get(peer, 0) + 1
        try:
            await serve_connection(stream, handler, lifecycle, metrics, settings, clients=clients,
                                   peer=peer)
        finally:
            active -= 1
            per_client[peer] -= 1
            if not per_client[peer]:
                del per_client[peer]

    async with trio.open_nursery() as nursery:
        task_status.started(tcp)
        await trio.serve_listeners(accepted, listeners, handler_nursery=nursery)
