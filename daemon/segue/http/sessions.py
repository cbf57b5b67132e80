"""The session endpoints: the state, commands, tickets and the event stream (SSE).

    GET  /v1/session                 the token's listener's session, with the server's time
    POST /v1/session/commands        one JSON command; 200 with the new state, 400 malformed
                                     (naming the field), 409 cannot apply, 413, 429
    POST /v1/session/ticket          a one-minute ticket for the event stream
    GET  /v1/session/events          Server-Sent Events: the state after every change (id =
                                     its stamp), Last-Event-ID resumes, a heartbeat comment

The handlers talk to a SessionsPort: the node's own sessions in the main process, or, in a
serving worker, the main process's through sessions/ipc.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import trio

from segue.http.auth import TRACK_NOT_GRANTED, Authorizer, refusal
from segue.http.messages import Request, Response, Send, error, json_response
from segue.http.router import Endpoint
from segue.lifecycle import Lifecycle
from segue.metrics import Metrics
from segue.seal import tickets
from segue.seal.tokens import Grant
from segue.sessions.commands import CommandError
from segue.sessions.service import RateLimited

MAX_COMMAND_BYTES = 8 * 1024
RETRY_MS = 3000
_NO_STORE = ("Cache-Control", "no-store")


class Subscription(Protocol):
    async def next(self, after: str | None, timeout_s: float) -> dict[str, Any] | None: ...

    @property
    def changed_at(self) -> float: ...


class SessionsPort(Protocol):
    """What the endpoints need of the sessions (local, or through the main process)."""

    async def get(self, user: str) -> dict[str, Any]: ...

    async def command(self, user: str, doc: Any,
                      allows: Callable[[str], bool]) -> dict[str, Any]: ...

    def subscribe(self, user: str, device: str | None
                  ) -> AbstractAsyncContextManager[Subscription]: ...


class SessionRoutes:
    """The handlers of the session endpoints."""

    def __init__(self, *, sessions: SessionsPort, auth: Authorizer, ticket_key: bytes,
                 lifecycle: Lifecycle, metrics: Metrics, heartbeat_s: float,
                 max_subscribers: int) -> None:
        self.sessions = sessions
        self.auth = auth
        self.ticket_key = ticket_key
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s
        self.max_subscribers = max_subscribers
        self._streams = 0

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint.of("GET HEAD", "/v1/session", self.get),
            Endpoint.of("POST", "/v1/session/commands", self.command),
            Endpoint.of("POST", "/v1/session/ticket", self.ticket),
            Endpoint.of("GET", "/v1/session/events", self.events),
        ]

    async def get(self, request: Request) -> Response:
        grant = self.auth.authorize(request)
        if isinstance(grant, Response):
            return grant
        return json_response(200, await self.sessions.get(grant.user), _NO_STORE)

    async def command(self, request: Request) -> Response:
        grant = self.auth.authorize(request)
        if isinstance(grant, Response):
            return grant
        if len(request.body) > MAX_COMMAND_BYTES:
            return error(413, f"a command is at most {MAX_COMMAND_BYTES} bytes of JSON")
        try:
            doc = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return error(400, "the body is not JSON: send one command object")
        try:
            view = await self.sessions.command(grant.user, doc, grant.allows)
        except CommandError as e:
            if e.status == 403:  # a track the token does not grant
                return refusal(403, str(e), TRACK_NOT_GRANTED)
            return error(e.status, str(e))
        except RateLimited:
            return error(429, "too many commands: slow down", ("Retry-After", "1"))
        return json_response(200, view, _NO_STORE)

    async def ticket(self, request: Request) -> Response:
        grant = self.auth.authorize(request)
        if isinstance(grant, Response):
            return grant
        return json_response(200, {"ticket": tickets.mint(self.ticket_key, grant.user),
                                   "expires_in_s": tickets.TICKET_TTL_S}, _NO_STORE)

    def _events_grant(self, request: Request) -> str | Response:
        ticket = request.query_one("ticket")
        if ticket is None:
            grant = self.auth.authorize(request)
            return grant.user if isinstance(grant, Grant) else grant
        try:
            return tickets.verify(self.ticket_key, ticket).user
        except tickets.TicketError as e:
            return refusal(401, str(e), e.reason, credential="ticket")

    async def events(self, request: Request) -> Response:
        user = self._events_grant(request)
        if isinstance(user, Response):
            return user
        device = request.query_one("device")
        if device is not None and not 0 < len(device) <= 64:
            return error(400, "device: 1 to 64 characters")
        if self._streams >= self.max_subscribers:
            return error(503, "too many event streams on this node", ("Retry-After", "5"))
        last_id = request.headers.get("last-event-id") or request.query_one("last_event_id")

        async def stream(send: Send) -> None:
            self._streams += 1
            try:
                async with self.sessions.subscribe(user, device) as subscription:
                    await send(f"retry: {RETRY_MS}\n\n".encode())
                    await self._follow(subscription, last_id, send)
            finally:
                self._streams -= 1

        return Response(200, [("Content-Type", "text/event-stream"), _NO_STORE,
                              ("X-Accel-Buffering", "no")], writer=stream, length=None,
                        fields={"stream": "session-events"})

    async def _follow(self, subscription: Subscription, after: str | None, send: Send) -> None:
        """Events until the node drains (the player reconnects elsewhere) or the peer goes."""
        first = True
        scope = trio.CancelScope()
        self.lifecycle.cancel_on_drain(scope)
        try:
            with scope:
                while True:
                    view = await subscription.next(after, self.heartbeat_s)
                    if view is None:
                        await send(b": heartbeat\n\n")
                        continue
                    after = view["stamp"]
                    await send(_event(view))
                    if not first:
                        self.metrics.command_to_event.observe(
                            time.perf_counter() - subscription.changed_at)
                    first = False
        finally:
            self.lifecycle.forget_on_drain(scope)


def _event(view: dict[str, Any]) -> bytes:
    data = json.dumps(view, ensure_ascii=False, separators=(",", ":"))
    return f"id: {view['stamp']}\nevent: state\ndata: {data}\n\n".encode()
