"""Which handler answers a request: a table of routes, built once when the node starts.

Plugin routes come first (they match an exact path, or a prefix ending in "/"); then Segue's
own table, whose paths are patterns of segments where `{name}` takes one segment and hands it
to the handler as a keyword. A path that matches with another method gets 405 and `Allow`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from segue.api import Route
from segue.http.messages import Request, Response, error

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
        """Route one request to its handler."""
        for route in self._plugin_routes:
            if route.matches(request.method, request.path):
                return await route.handler(request)
        allowed: set[str] = set()
        for endpoint, params in self._matching(request):
            if request.method in endpoint.methods:
                return await endpoint.handler(request, **params)
            allowed |= endpoint.methods
        if allowed:
            return error(405, f"{request.method} is not supported here",
                         ("Allow", ", ".join(sorted(allowed))))
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
