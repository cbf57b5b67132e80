"""Short-lived tickets for what a browser cannot give a header to: a player token in a URL
would be written to the logs of every load balancer and proxy on the way, so a player trades
its token (sent in a header) for a ticket good for one thing, for a short while.

Two things take a ticket in their URL:

* the listener's event stream (`/v1/session/events?ticket=`): an EventSource sends no headers;
  good for a minute (it is used at once, and again only on a reconnect);
* one track (`/v1/tracks/{id}?ticket=`): an `<audio>` element sends no headers either, and it
  asks for new ranges whenever the listener seeks, so this ticket lasts longer
  (TRACK_TICKET_TTL_S, never past the token's own expiry) and opens that track alone.

A ticket is base64url(JSON {"u": user, "x": expiry ms, "s": scope}) "." base64url(HMAC-SHA256 of
that); compared in constant time. A ticket for one scope is refused for every other. The key
is the node's (or the fleet's, when nodes share it: see [sessions] ticket_key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

TICKET_TTL_S = 60
TRACK_TICKET_TTL_S = 900
KEY_BYTES = 32
SESSION_EVENTS = "session-events"


class TicketError(Exception):
    """The ticket is malformed, forged, for something else, or expired: `reason` says which
    in one word (malformed, bad_signature, wrong_scope, expired), as a TokenError's does."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Ticket:
    """What a verified ticket says: whose it is and until when (seconds since the epoch)."""

    user: str
    expires: float


def track_scope(track_id: str) -> str:
    """The scope of a ticket that opens one track."""
    return f"track:{track_id}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(key: bytes, user: str, scope: str = SESSION_EVENTS, ttl_s: float = TICKET_TTL_S,
         now: float | None = None) -> str:
    expires = int(((time.time() if now is None else now) + ttl_s) * 1000)
    body = _b64(json.dumps({"u": user, "x": expires, "s": scope},
                           separators=(",", ":")).encode())
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def verify(key: bytes, ticket: str, scope: str = SESSION_EVENTS,
           now: float | None = None) -> Ticket:
    """The ticket's user and expiry; TicketError otherwise (the message never repeats the
    ticket)."""
    body, dot, mac = ticket.partition(".")
    if not dot or len(ticket) > 1024:
        raise TicketError("malformed ticket")
    try:
        given = _unb64(mac)
        expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            raise TicketError("the ticket's signature does not verify", "bad_signature")
        doc = json.loads(_unb64(body))
    except (ValueError, UnicodeError) as e:
        raise TicketError("malformed ticket") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("u"), str):
        raise TicketError("malformed ticket")
    if doc.get("s") != scope:
        raise TicketError(f"not a ticket for this: ask for a {scope.partition(':')[0]} ticket",
                          "wrong_scope")
    expires = doc.get("x")
    if type(expires) is not int or expires < (time.time() if now is None else now) * 1000:
        raise TicketError("the ticket has expired: get a new one", "expired")
    return Ticket(str(doc["u"]), expires / 1000)


def load_or_create_key(path: Path) -> bytes:
    """The key in `path`; made (random, mode 0600) when the file does not exist yet.

    Raises OSError or ValueError (a key file readable by others, or of the wrong size).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o077
        if mode:
            raise ValueError(f"{path} is readable by group or others: chmod 600 {path}") from None
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ValueError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key") from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key
