"""Short-lived tickets for event streams: a browser's EventSource cannot set headers, so it
would have to put the player token in the URL, where load balancers and proxies log it. Instead
a player trades its token (POST /v1/session/ticket, in a header) for a ticket that is good for
one thing, this listener's event stream, for a minute.

A ticket is base64url(JSON {"u": user, "x": expiry ms, "s": "session-events"}) "." base64url
(HMAC-SHA256 of that); compared in constant time. The key is the node's (or the fleet's, when
nodes share it: see [sessions] ticket_key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

TICKET_TTL_S = 60
KEY_BYTES = 32
_SCOPE = "session-events"


class TicketError(Exception):
    """The ticket is malformed, forged, for something else, or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(key: bytes, user: str, ttl_s: int = TICKET_TTL_S, now: float | None = None) -> str:
    expires = int(((time.time() if now is None else now) + ttl_s) * 1000)
    body = _b64(json.dumps({"u": user, "x": expires, "s": _SCOPE},
                           separators=(",", ":")).encode())
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def verify(key: bytes, ticket: str, now: float | None = None) -> str:
    """The ticket's user; TicketError otherwise (the message never repeats the ticket)."""
    body, dot, mac = ticket.partition(".")
    if not dot or len(ticket) > 1024:
        raise TicketError("malformed ticket")
    try:
        given = _unb64(mac)
        expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            raise TicketError("the ticket's signature does not verify")
        doc = json.loads(_unb64(body))
    except (ValueError, UnicodeError) as e:
        raise TicketError("malformed ticket") from e
    if not isinstance(doc, dict) or doc.get("s") != _SCOPE or not isinstance(doc.get("u"), str):
        raise TicketError("not a session-events ticket")
    expires = doc.get("x")
    if type(expires) is not int or expires < (time.time() if now is None else now) * 1000:
        raise TicketError("the ticket has expired: get a new one")
    return str(doc["u"])


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
