"""Cross-origin access to the API, for players served from another origin than the node's.

Off unless `[http] cors_origins` lists origins (or is ["*"]). Only paths under /v1/ take part:
the web player's own files are for this origin alone. For an allowed Origin, answers carry
Access-Control-Allow-Origin (that origin) and expose the headers a player reads (Content-Range
to seek, Retry-After to back off); a preflight (OPTIONS with Access-Control-Request-Method) is
answered here with the methods the router has for that path and the request headers players
send. Tokens travel in the Authorization header, never in cookies, so no credentials mode is
allowed: a page of another origin gets nothing a listener's browser holds for this one.
"""

from __future__ import annotations

from collections.abc import Iterable

from segue.http.messages import Request, Response
from segue.http.router import Router

ANY = "*"
API_PREFIX = "/v1/"
ALLOWED_HEADERS = ("Authorization, Content-Type, Range, If-Range, If-None-Match, "
                   "If-Modified-Since, Last-Event-ID")
EXPOSED_HEADERS = ("Content-Range, Accept-Ranges, Content-Length, ETag, Content-Disposition, "
                   "Retry-After")
PREFLIGHT_MAX_AGE_S = 600


class Cors:
    """The router's handler with CORS around it; `allow` takes new origins on a reload."""

    def __init__(self, router: Router, origins: Iterable[str] = ()) -> None:
        self._router = router
        self._origins = frozenset(origins)

    def allow(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(origins)

    async def handle(self, request: Request) -> Response:
        if not self._origins or not request.path.startswith(API_PREFIX):
            return await self._router.handle(request)
        origin = request.headers.get("origin", "")
        allowed = bool(origin) and (ANY in self._origins or origin in self._origins)
        if allowed and request.method == "OPTIONS" and \
                "access-control-request-method" in request.headers:
            methods = self._router.methods(request)
            if methods:
                return Response(204, [
                    *_granted(origin),
                    ("Access-Control-Allow-Methods", ", ".join(sorted(methods))),
                    ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                    ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S)),
                ])
        response = await self._router.handle(request)
        if allowed:
            response.headers += [*_granted(origin),
                                 ("Access-Control-Expose-Headers", EXPOSED_HEADERS)]
        else:
            response.headers.append(("Vary", "Origin"))  # another origin's answer differs
        return response


def _granted(origin: str) -> list[tuple[str, str]]:
    return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
