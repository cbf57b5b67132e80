"""The edge's own endpoints: health, metrics, status, tracks (with ranges), metadata, search,
and track tickets (what an `<audio>` element, which cannot send the token in a header, puts in
the track's URL instead: see segue.seal.tickets).

Handlers return Response objects; `EdgeRoutes.endpoints()` is their table for the router, and
the connection loop in `segue.http.server` writes what they return. A track body is sent chunk
by chunk; the first chunk is read and verified before the status line goes out, so a track
whose first chunk is bad is refused with a 503 rather than cut off.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import trio

from segue import __version__
from segue.catalogue import Catalogue
from segue.http import disposition, ranges, representation, served, validators
from segue.http.auth import Authorizer, refusal
from segue.http.messages import (
    FileSpan,
    PreparedResponse,
    Request,
    Response,
    Send,
    error,
    json_response,
    text,
)
from segue.http.router import Endpoint
from segue.lifecycle import Lifecycle, NodeState
from segue.log import user_hash
from segue.metrics import CONTENT_TYPE, Metrics
from segue.seal import tickets
from segue.seal.manifest import is_track_id
from segue.seal.tokens import Grant
from segue.seal.track import OpenedTrack
from segue.storage.errors import TrackNotFound, TrackUnavailable
from segue.storage.library import Library
from segue.storage.pages import Chunk, Page
from segue.threads import in_thread

SEARCH_DEFAULT_LIMIT = 20
CATALOGUE_TIMEOUT_S = 10.0
METRICS_TIMEOUT_S = 10.0
SEARCH_MAX_LIMIT = 100
# SQLite walks past the rows it skips: deep pages cost in proportion, so they stop here.
SEARCH_MAX_OFFSET = 10_000


class EdgeRoutes:
    """The handlers of one edge node and what they need."""

    def __init__(self, *, node_id: str, lifecycle: Lifecycle, catalogue: Catalogue,
                 library: Library, auth: Authorizer, metrics: Metrics,
                 limiter: trio.CapacityLimiter, ticket_key: bytes,
                 plugins: Callable[[], list[dict[str, Any]]] = list,
                 on_served: served.Reporter | None = None) -> None:
        self.node_id = node_id
        self.lifecycle = lifecycle
        self.catalogue = catalogue
        self.library = library
        self.auth = auth
        self.metrics = metrics
        self.limiter = limiter
        self.ticket_key = ticket_key
        self.plugins = plugins
        self.on_served = on_served  # None: no plugin reports plays, nothing to count

    def endpoints(self) -> list[Endpoint]:
        """The table the router dispatches on."""
        return [
            Endpoint.of("GET HEAD", "/healthz", self.healthz),
            Endpoint.of("GET HEAD", "/metrics", self.render_metrics),
            Endpoint.of("GET HEAD", "/v1/status", self.status),
            Endpoint.of("GET HEAD", "/v1/search", self.search),
            Endpoint.of("GET HEAD", "/v1/tracks/{track_id}", self.track),
            Endpoint.of("GET HEAD", "/v1/tracks/{track_id}/meta", self.meta),
            Endpoint.of("POST", "/v1/tracks/{track_id}/ticket", self.ticket),
        ]

    async def healthz(self, request: Request) -> Response:
        """What load balancers poll: 200 while the node should get players, else 503."""
        state, health = self.lifecycle.state, self.lifecycle.health
        if state != NodeState.READY:
            return text(503, state)
        if health.status == "failing":
            return text(503, f"failing: {health.reason}")
        if health.status == "degraded":
            return text(200, f"degraded: {health.reason}")
        return text(200, "ok")

    async def render_metrics(self, request: Request) -> Response:
        # A worker thread: with [http] workers, rendering reads every process's files.
        try:
            body = await in_thread(self.metrics.render, limiter=self.limiter,
                                   timeout_s=METRICS_TIMEOUT_S)
        except trio.TooSlowError:
            return error(503, "the metrics did not render in time", ("Retry-After", "5"))
        return Response(200, [("Content-Type", CONTENT_TYPE)], body)

    async def status(self, request: Request) -> Response:
        streams = self.lifecycle.streams_in_flight
        if self.metrics.shared:  # workers: the node's, the same whichever process answers
            try:
                streams = await in_thread(self.metrics.node_streams_in_flight,
                                          limiter=self.limiter, timeout_s=METRICS_TIMEOUT_S)
            except trio.TooSlowError:
                return error(503, "the status did not render in time", ("Retry-After", "5"))
        return json_response(
            200,
            {
                "node_id": self.node_id,
                "version": __version__,
                "state": self.lifecycle.state,
                "streams_in_flight": streams,
                "health": self.lifecycle.health.to_json(),
                "plugins": self.plugins(),
            },
        )

    async def meta(self, request: Request, track_id: str) -> Response:
        if not is_track_id(track_id):
            return _bad_track_id()
        grant = self.auth.authorize(request, track_id)
        if isinstance(grant, Response):
            return grant
        try:
            record = await in_thread(self.catalogue.get, track_id, limiter=self.limiter,
                                     timeout_s=CATALOGUE_TIMEOUT_S)
        except trio.TooSlowError:
            return error(503, "the catalogue is not answering", ("Retry-After", "5"))
        if record is None:
            return error(404, f"no track {track_id}")
        return json_response(200, record.to_json(), ("Cache-Control", "private"))

    async def search(self, request: Request) -> Response:
        grant = self.auth.authorize(request)
        if isinstance(grant, Response):
            return grant
        q = (request.query_one("q") or "").strip()
        limit = _whole_number(request.query_one("limit"), SEARCH_DEFAULT_LIMIT, 1,
                              SEARCH_MAX_LIMIT)
        offset = _whole_number(request.query_one("offset"), 0, 0, SEARCH_MAX_OFFSET)
        if limit is None:
            return error(400, f"limit must be a whole number from 1 to {SEARCH_MAX_LIMIT}")
        if offset is None:
            return error(400, f"offset must be a whole number from 0 to {SEARCH_MAX_OFFSET}")
        try:
            # Without q, the catalogue by title: what a player shows before anyone types.
            found = await (
                in_thread(self.catalogue.search, q, limit, offset, limiter=self.limiter,
                          timeout_s=CATALOGUE_TIMEOUT_S) if q else
                in_thread(self.catalogue.browse, limit, offset, limiter=self.limiter,
                          timeout_s=CATALOGUE_TIMEOUT_S))
        except trio.TooSlowError:
            return error(503, "the catalogue is not answering", ("Retry-After", "5"))
        results = [r.to_json() for r in found if grant.allows(r.track_id)]
        # A full page says there may be more; `next` is the offset that asks for them.
        page = {"results": results, "offset": offset,
                "next": offset + limit if len(found) == limit else None}
        return json_response(200, page, ("Cache-Control", "private"))

    async def ticket(self, request: Request, track_id: str) -> Response:
        """A ticket that opens this one track, for the token's listener, for a while (never
        past the token's own expiry)."""
        if not is_track_id(track_id):
            return _bad_track_id()
        grant = self.auth.authorize(request, track_id)
        if isinstance(grant, Response):
            return grant
        ttl_s = max(1, min(tickets.TRACK_TICKET_TTL_S, int(grant.expires - time.time())))
        ticket = tickets.mint(self.ticket_key, grant.user, tickets.track_scope(track_id), ttl_s)
        return json_response(200, {"ticket": ticket, "expires_in_s": ttl_s},
                             ("Cache-Control", "no-store"))

    def _track_grant(self, request: Request, track_id: str) -> Grant | Response:
        """The token's grant, or a track ticket's (?ticket=, which opens this track alone)."""
        ticket = request.query_one("ticket")
        if ticket is None or "authorization" in request.headers:
            return self.auth.authorize(request, track_id)
        try:
            found = tickets.verify(self.ticket_key, ticket, tickets.track_scope(track_id))
        except tickets.TicketError as e:
            return refusal(401, str(e), e.reason, credential="ticket", track=track_id)
        return Grant(found.user, frozenset({track_id}), found.expires)

    async def track(self, request: Request, track_id: str) -> Response:
        """The track's plaintext, whole or one byte range, or 304 when the player's copy is
        current. The id may carry the extension of the track's type (/v1/tracks/ID.mp3, what
        some players and download tools want to see); another extension is 404."""
        started = time.perf_counter()
        track_id, dot, ext = track_id.partition(".")
        if not is_track_id(track_id):
            return _bad_track_id()
        grant = self._track_grant(request, track_id)
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
        if dot and not disposition.fits(manifest.meta.mime, ext):
            return _wrong_extension(track_id, manifest.meta.mime)
        shown = representation.of(manifest)
        if validators.not_modified(request.headers, shown.etag, shown.last_modified):
            return Response(304, list(shown.validators), fields=fields)
        size = manifest.size
        chosen = ranges.select(
            request.headers.get("range") if request.method == "GET" else None,
            size,
            if_range=request.headers.get("if-range"),
            etag=shown.etag,
            last_modified=shown.last_modified,
        )
        if isinstance(chosen, ranges.Unsatisfiable):
            fields["range"] = request.headers.get("range", "")
            response = error(416, f"track {track_id} has {size} bytes",
                             ("Content-Range", chosen.content_range(size)),
                             ("Accept-Ranges", "bytes"), *shown.validators)
            response.fields = fields
            return response
        headers = []  # beside the representation's own (rendered once: see representation.py)
        if chosen is None:
            status, span = 200, ranges.ByteRange(0, size - 1)
        else:
            status, span = 206, chosen
            headers.append(("Content-Range", chosen.content_range(size)))
            fields["range"] = f"{chosen.first}-{chosen.last}"
        length = span.length if size else 0
        if request.method == "HEAD" or length == 0:
            return PreparedResponse(status, headers, length=length, fields=fields,
                                    rendered_headers=shown.rendered)
        chunks = opened.chunk_range(span.first, span.last)
        try:
            first = await self.library.chunk(opened, chunks[0])
        except TrackUnavailable:
            return error(503, f"track {track_id} cannot be read now", ("Retry-After", "5"))

        async def write(send: Send) -> None:
            self.metrics.time_to_first_byte.observe(time.perf_counter() - started)
            body = functools.partial(self._send_span, opened, span, chunks, first)
            if self.on_served is None:
                await body(send)
            else:
                await served.reporting(body, send, whole=length == size, report=functools.partial(
                    self.on_served, track_id, grant.user))

        return PreparedResponse(status, headers, writer=write, length=length, fields=fields,
                                rendered_headers=shown.rendered)

    async def _send_span(
        self, opened: OpenedTrack, span: ranges.ByteRange, chunks: range, first: Chunk, send: Send
    ) -> None:
        """Send plaintext bytes span.first..span.last, one verified chunk at a time, straight
        from where it was decrypted; with more than one chunk, the next ones are read while
        one is sent."""
        if len(chunks) == 1:  # a range within one chunk (most seeks): no read-ahead to run
            try:
                await send(_part(first, opened.manifest.chunk_size * chunks[0], span))
            finally:
                first.release()
            return
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            window = self.library.window(nursery, opened, chunks)
            try:
                page = first
                for index in chunks:
                    if index != chunks[0]:
                        page = await window.take(index)
                    try:
                        await send(_part(page, opened.manifest.chunk_size * index, span))
                    finally:
                        page.release()
            except BaseException as e:
                # Raised below, past the nursery, as itself: the nursery would wrap it in an
                # ExceptionGroup, and the connection loop tells a player who left, a send
                # timeout and a failed chunk apart by their types.
                failure = e
            finally:
                window.close()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure


def _part(chunk: Chunk, base: int, span: ranges.ByteRange) -> FileSpan | memoryview:
    """What of `chunk`, starting at byte `base` of the track, lies within `span`: a span of a
    write-once Page (sent with sendfile), or a view of a buffer (copied into the socket)."""
    start = max(span.first - base, 0)
    if isinstance(chunk, Page):
        return FileSpan(chunk.fd, start, min(span.last + 1 - base, chunk.length) - start)
    return chunk.view(start, span.last + 1 - base)


def _whole_number(text: str | None, default: int, low: int, high: int) -> int | None:
    """A query parameter's value from `low` to `high` (`default` when absent); None if not."""
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        return None
    return value if low <= value <= high else None


def _bad_track_id() -> Response:
    return error(400, "track ids are 8 to 64 lowercase letters and digits")


def _wrong_extension(track_id: str, mime: str) -> Response:
    """404: /v1/tracks/ID.EXT names no track when EXT is not the extension of its type."""
    ext = disposition.extension(mime)
    url = f"/v1/tracks/{track_id}"
    where = f"{url}.{ext} or {url}" if ext else url
    return error(404, f"track {track_id} is {mime}: its URL is {where}")
