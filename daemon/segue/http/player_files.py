"""The web player's files (daemon/segue/player/): hand-written HTML, CSS and ES modules that
ship inside the package, so a node serves its player with no build step and no internet.

They are read once when the node starts and served from memory by every process (core
endpoints, not a plugin's routes, so `[http] workers > 1` serves them too). Each answer
carries what keeps a page that holds a player token safe: a Content-Security-Policy that allows
only this origin's own scripts, styles and media and no framing, `nosniff`, and no Referer.
The ETag is the file's hash, and `no-cache` makes browsers revalidate: an upgraded node's
player is seen at the next load, an unchanged one costs a 304.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from segue.http.messages import Request, Response, error
from segue.http.router import Endpoint
from segue.http.validators import none_match

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "media-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
])
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
INDEX = "index.html"
_SAFETY = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


@dataclass(frozen=True)
class PlayerFile:
    body: bytes
    content_type: str
    etag: str


def load() -> dict[str, PlayerFile]:
    """The player's files by name, from the installed package; a file of a type not in
    CONTENT_TYPES is not served (it would have no honest Content-Type)."""
    files: dict[str, PlayerFile] = {}
    for entry in resources.files("segue").joinpath("player").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:20]
        files[entry.name] = PlayerFile(body, CONTENT_TYPES[suffix], f'"{digest}"')
    return files


class PlayerFiles:
    """The endpoints of the player: `/` (the page) and `/player/NAME` (what it loads)."""

    def __init__(self, files: Mapping[str, PlayerFile]) -> None:
        self._files = dict(files)

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint.of("GET HEAD", "/", self.page),
            Endpoint.of("GET HEAD", "/player/{name}", self.asset),
        ]

    async def page(self, request: Request) -> Response:
        return self._serve(request, INDEX)

    async def asset(self, request: Request, name: str) -> Response:
        return self._serve(request, name)

    def _serve(self, request: Request, name: str) -> Response:
        found = self._files.get(name)
        if found is None:
            return error(404, "no such file")
        headers = [("ETag", found.etag), ("Cache-Control", "no-cache"), *_SAFETY]
        if none_match(request.headers.get("if-none-match", ""), found.etag):
            return Response(304, headers)
        return Response(200, [("Content-Type", found.content_type), *headers], found.body)

