"""The edge's routes: health, metrics, status, tracks (with ranges), metadata and search.

Handlers return Response objects; the connection loop in `segue.http.server` writes them.
A track body is sent chunk by chunk; the first chunk is read and verified before the status
line goes out, so a track whose first chunk is bad is refused with a 503 rather than cut off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from segue import __version__
from segue.catalogue import Catalogue
from segue.http import ranges
from segue.http.messages import Request, Response, Send, error, json_response, text
from segue.log import user_hash
from segue.metrics import CONTENT_TYPE, Metrics
from segue.plugin_types import Health, Route
from segue.seal.manifest import is_track_id
from segue.seal.tokens import Grant, TokenError, TokenVerifier
from segue.seal.track import OpenedTrack
from segue.storage.buffers import Lease
from segue.storage.errors import TrackNotFound, TrackUnavailable
from segue.storage.library import Library

SEARCH_DEFAULT_LIMIT = 20
CATALOGUE_TIMEOUT_S = 10.0
SEARCH_MAX_LIMIT = 100
_BEARER_REALM = 'Bearer realm="segue"'


class NodeState:
    """The node's life: what /healthz and /v1/status report."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


@dataclass
class EdgeApp:
    """The routes of one edge node and what they need."""

    node_id: str
    catalogue: Catalogue
    library: Library
    tokens: TokenVerifier
    metrics: Metrics
    limiter: trio.CapacityLimiter
    state: str = NodeState.STARTING
    health: Health = field(default_factory=Health.ok)
    routes: list[Route] = field(default_factory=list)
    plugins: Callable[[], list[dict[str, Any]]] = list
    in_flight: int = 0
    active_requests: int = 0
    _idle: trio.Event = field(default_factory=trio.Event)
    _idle_waits: set[trio.CancelScope] = field(default_factory=set)

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        self.active_requests -= 1
        if self.active_requests == 0:
            self._idle.set()
            self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Return once no request is being answered."""
        while self.active_requests:
            await self._idle.wait()

    def watch_idle(self, scope: trio.CancelScope) -> None:
        """Let draining cancel `scope`, a kept-alive connection's wait for its next request.

        So idle keep-alive connections close at once instead of holding the node up until their
        idle timeout. (Not a context manager: this runs once per request, and the generator
        behind @contextmanager showed in the serving profile.) Pair with unwatch_idle.
        """
        if self.state not in (NodeState.STARTING, NodeState.READY):
            scope.cancel()
        self._idle_waits.add(scope)

    def unwatch_idle(self, scope: trio.CancelScope) -> None:
        self._idle_waits.discard(scope)

    def start_draining(self) -> None:
        self.state = NodeState.DRAINING
        for scope in list(self._idle_waits):
            scope.cancel()

    async def handle(self, request: Request) -> Response:
        """Route one request to its handler."""
        seg = request.segments()
        for route in self.routes:
            if route.matches(request.method, request.path):
                return await route.handler(request)
        if request.method not in ("GET", "HEAD"):
            return error(405, f"{request.method} is not supported here", ("Allow", "GET, HEAD"))
        if seg == ["healthz"]:
            return self.healthz()
        if seg == ["metrics"]:
            # A worker thread: with [http] workers, rendering reads every process's files.
            body = await trio.to_thread.run_sync(self.metrics.render, limiter=self.limiter)
            return Response(200, [("Content-Type", CONTENT_TYPE)], body)
        if seg == ["v1", "status"]:
            return self.status()
        if seg == ["v1", "search"]:
            return await self.search(request)
        if len(seg) in (3, 4) and seg[:2] == ["v1", "tracks"]:
            track_id = seg[2]
            if not is_track_id(track_id):
                return error(400, "track ids are 8 to 64 lowercase letters and digits")
            if len(seg) == 3:
                return await self.track(request, track_id)
            if seg[3] == "meta":
                return await self.meta(request, track_id)
        return error(404, "no such resource")

    def healthz(self) -> Response:
        """What load balancers poll: 200 while the node should get players, else 503."""
        if self.state != NodeState.READY:
            return text(503, self.state)
        if self.health.status == "failing":
            return text(503, f"failing: {self.health.reason}")
        if self.health.status == "degraded":
            return text(200, f"degraded: {self.health.reason}")
        return text(200, "ok")

    def status(self) -> Response:
        return json_response(
            200,
            {
                "node_id": self.node_id,
                "version": __version__,
                "state": self.state,
                "streams_in_flight": self.in_flight,
                "health": {"status": self.health.status, "reason": self.health.reason},
                "plugins": self.plugins(),
            },
        )

    def authorize(self, request: Request, track_id: str | None = None) -> Grant | Response:
        """The request's grant, or the 401/403 response that refuses it."""
        header = request.headers.get("authorization")
        token = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None:
            token = request.query_one("token")
        if not token:
            return error(401, "a player token is required (Authorization: Bearer or ?token=)",
                         ("WWW-Authenticate", _BEARER_REALM))
        try:
            grant = self.tokens.verify(token)
        except TokenError as e:
            return error(401, str(e), ("WWW-Authenticate",
                                       f'{_BEARER_REALM}, error="invalid_token"'))
        if track_id is not None and not grant.allows(track_id):
            return error(403, "this token does not grant that track")
        return grant

    async def meta(self, request: Request, track_id: str) -> Response:
        grant = self.authorize(request, track_id)
        if isinstance(grant, Response):
            return grant
        try:
            with trio.fail_after(CATALOGUE_TIMEOUT_S):
                record = await trio.to_thread.run_sync(self.catalogue.get, track_id,
                                                       limiter=self.limiter,
                                                       abandon_on_cancel=True)
        except trio.TooSlowError:
            return error(503, "the catalogue is not answering", ("Retry-After", "5"))
        if record is None:
            return error(404, f"no track {track_id}")
        return json_response(200, record.to_json(), ("Cache-Control", "private"))

    async def search(self, request: Request) -> Response:
        grant = self.authorize(request)
        if isinstance(grant, Response):
            return grant
        q = request.query_one("q")
        if q is None or not q.strip():
            return error(400, "search needs ?q=TEXT")
        limit_text = request.query_one("limit")
        try:
            limit = SEARCH_DEFAULT_LIMIT if limit_text is None else int(limit_text)
        except ValueError:
            return error(400, f"limit must be a whole number from 1 to {SEARCH_MAX_LIMIT}")
        if not 1 <= limit <= SEARCH_MAX_LIMIT:
            return error(400, f"limit must be a whole number from 1 to {SEARCH_MAX_LIMIT}")
        try:
            with trio.fail_after(CATALOGUE_TIMEOUT_S):
                found = await trio.to_thread.run_sync(
                    self.catalogue.search, q, limit, limiter=self.limiter,
                    abandon_on_cancel=True,
                )
        except trio.TooSlowError:
            return error(503, "the catalogue is not answering", ("Retry-After", "5"))
        results = [r.to_json() for r in found if grant.allows(r.track_id)]
        return json_response(200, {"results": results}, ("Cache-Control", "private"))

    async def track(self, request: Request, track_id: str) -> Response:
        """The track's plaintext, whole or one byte range."""
        started = time.perf_counter()
        grant = self.authorize(request, track_id)
        if isinstance(grant, Response):
            return grant
        fields = {"track": track_id, "user": user_hash(grant.user)}
        try:
            opened = await self.library.open(track_id)
        except TrackNotFound:
            return error(404, f"no track {track_id}")
        except TrackUnavailable:
            return error(503, f"track {track_id} cannot be read now", ("Retry-After", "5"))
        manifest = opened.manifest
        size = manifest.size
        etag = f'"{track_id}"'
        headers = [
            ("Content-Type", manifest.meta.mime),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
            ("Cache-Control", "private"),
        ]
        chosen = ranges.select(
            request.headers.get("range") if request.method == "GET" else None,
            size,
            if_range=request.headers.get("if-range"),
            etag=etag,
        )
        if isinstance(chosen, ranges.Unsatisfiable):
            fields["range"] = request.headers.get("range", "")
            response = error(416, f"track {track_id} has {size} bytes",
                             ("Content-Range", chosen.content_range(size)), *headers[1:])
            response.fields = fields
            return response
        if chosen is None:
            status, span = 200, ranges.ByteRange(0, size - 1)
        else:
            status, span = 206, chosen
            headers.append(("Content-Range", chosen.content_range(size)))
            fields["range"] = f"{chosen.first}-{chosen.last}"
        length = span.length if size else 0
        if request.method == "HEAD" or length == 0:
            return Response(status, headers, length=length, fields=fields)
        chunks = opened.chunk_range(span.first, span.last)
        try:
            first = await self.library.chunk(opened, chunks[0])
        except TrackUnavailable:
            return error(503, f"track {track_id} cannot be read now", ("Retry-After", "5"))

        async def write(send: Send) -> None:
            self.metrics.time_to_first_byte.observe(time.perf_counter() - started)
            await self._send_span(opened, span, chunks, first, send)

        return Response(status, headers, writer=write, length=length, fields=fields)

    async def _send_span(
        self, opened: OpenedTrack, span: ranges.ByteRange, chunks: range, first: Lease, send: Send
    ) -> None:
        """Send plaintext bytes span.first..span.last, one verified chunk at a time."""
        chunk_size = opened.manifest.chunk_size
        lease: Lease | None = first
        try:
            for index in chunks:
                if lease is None:
                    lease = await self.library.chunk(opened, index)
                self.library.read_ahead(opened, index, chunks[-1])
                base = index * chunk_size
                await send(lease.view(max(span.first - base, 0), span.last + 1 - base))
                lease.release()
                lease = None
        finally:
            if lease is not None:
                lease.release()
