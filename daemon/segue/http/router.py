"""Which handler answers a request: a table of routes, built once when the node starts.

Plugin routes come first (they match an exact path, or a prefix ending in "/"); then Segue's
own table, whose paths are patterns of segments where `{name}` takes one segment and hands it
to the handler as a keyword. A path that matches with another method gets 405 and `Allow`.

Every response leaves with the route that answered it (`Response.route`: the pattern, such as
/v1/tracks/{track_id}, never the path itself, so that the metrics' route label stays a short
list), including the 500 of a handler that raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import structlog

from segue.api import Route
from segue.http.messages import Request, Response, error

log = structlog.get_logger("segue.http")

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One row of the table: the methods, the path pattern and its handler."""

    methods: frozenset[str]
    pattern: tuple[str, ...]
    handler: Handler

    @classmethod
    def of(cls, methods: str, path: str, handler: Handler) -> Endpoint:
        """From "GET HEAD" and "/v1/tracks/{track_id}"."""
        return cls(frozenset(methods.split()), tuple(path.strip("/").split("/")), handler)

    @property
    def path(self) -> str:
        """The pattern as it was written: "/v1/tracks/{track_id}"."""
        return "/" + "/".join(self.pattern)

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The pattern's parameters when `segments` fit it, else None."""
        if len(segments) != len(self.pattern):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(self.pattern, segments, strict=True):
            if part.startswith("{"):
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params


class Router:
    """Dispatches requests to plugin routes, then to the endpoint table."""

    def __init__(self, endpoints: Iterable[Endpoint], plugin_routes: Iterable[Route] = ()
                 ) -> None:
        self._endpoints = tuple(endpoints)
        self._plugin_routes = tuple(plugin_routes)

    async def handle(self, request: Request) -> Response:
        """Route one request to its handler; the response carries the route."""
        for route in self._plugin_routes:
            if route.matches(request.method, request.path):
                return await _answer(route.path, route.handler(request), request)
        allowed: set[str] = set()
        path = ""
        for endpoint, params in self._matching(request):
            if request.method in endpoint.methods:
                return await _answer(endpoint.path, endpoint.handler(request, **params),
                                     request)
            allowed |= endpoint.methods
            path = path or endpoint.path
        if allowed:
            response = error(405, f"{request.method} is not supported here",
                             ("Allow", ", ".join(sorted(allowed))))
            response.route = path
            return response
        return error(404, "no such resource")

    def methods(self, request: Request) -> frozenset[str]:
        """The methods Segue's own table answers at the request's path (what a CORS
        preflight is told); empty when none does."""
        return frozenset().union(*(endpoint.methods for endpoint, _ in self._matching(request)))

    def _matching(self, request: Request) -> Iterator[tuple[Endpoint, dict[str, str]]]:
        segments = request.segments()
        for endpoint in self._endpoints:
            params = endpoint.match(segments)
            if params is not None:
                yield endpoint, params


async def _answer(route: str, answering: Awaitable[Response], request: Request) -> Response:
    """The handler's response, or a 500 when it raises, with its route."""
    try:
        response = await answering
    except Exception:
        log.exception("request handler failed", method=request.method, path=request.path,
                      route=route)
        response = error(500, "internal error")
    response.route = route
    return response
