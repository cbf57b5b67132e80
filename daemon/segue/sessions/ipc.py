"""Sessions across a node's processes: the main process owns them; serving workers reach them
over a unix socket in a private directory (mode 0700), one JSON line at a time.

    worker -> main  {"op": "get", "user": U}                 -> {"view": V}
                    {"op": "command", "user": U, "doc": D}   -> {"view": V} | {"error": [S, M]}
                    {"op": "subscribe", "user": U, "device": D|null, "after": ID|null}
                                                             -> {"view": V, "age_s": A} ...
A player's event stream and another device's command may land on different workers: both go
to the one owner of the state, so the stream sees the command at once. A subscription is one
connection for as long as the stream lasts; the main process sends the latest state whenever
it changes, so a slow worker skips states rather than queueing them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import trio

from segue.sessions import commands
from segue.sessions.commands import CommandError
from segue.sessions.service import RateLimited, Sessions

log = structlog.get_logger("segue.sessions")

SOCKET_ENV = "SEGUE_SESSIONS_SOCKET"
MAX_LINE = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
IDLE_PUSH_S = 3600.0  # the main process's wait between pushes when nothing changes


class _Lines:
    """Newline-delimited JSON over a stream; reads may be cancelled without losing bytes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def read(self) -> Any:
        """The next document; EOFError when the peer closed, ValueError for garbage."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise ValueError("line too long")
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError()
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return json.loads(line)

    async def write(self, doc: Any) -> None:
        await self.stream.send_all(json.dumps(doc, separators=(",", ":")).encode() + b"\n")


# --- the main process's side ------------------------------------------------------------------
async def serve(sessions: Sessions, path: Path,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer the workers on `path` until cancelled."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1024)
    listener = trio.SocketListener(sock)

    async def answer(stream: trio.SocketStream) -> None:
        await _answer(sessions, stream)

    async with listener, trio.open_nursery() as nursery:
        task_status.started()
        await trio.serve_listeners(answer, [listener], handler_nursery=nursery)


async def _answer(sessions: Sessions, stream: trio.abc.Stream) -> None:
    lines = _Lines(stream)
    async with stream:
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                request = await lines.read()
            op, user = request["op"], request["user"]
            if op == "get":
                await lines.write({"view": await sessions.get(user)})
            elif op == "command":
                try:
                    view = await sessions.command(user, request["doc"])
                except CommandError as e:
                    await lines.write({"error": [e.status, str(e)]})
                except RateLimited:
                    await lines.write({"error": [429, "too many commands"]})
                else:
                    await lines.write({"view": view})
            elif op == "subscribe":
                await _push(sessions, lines, user, request.get("device"), request.get("after"))
        except (EOFError, ValueError, KeyError, TypeError, trio.TooSlowError,
                trio.BrokenResourceError, trio.ClosedResourceError) as e:
            if not isinstance(e, trio.BrokenResourceError | trio.ClosedResourceError | EOFError):
                log.warning("bad request from a worker", error=f"{type(e).__name__}: {e}")


async def _push(sessions: Sessions, lines: _Lines, user: str, device: str | None,
                after: str | None) -> None:
    """Send the state whenever it changes, until the worker hangs up."""
    async with trio.open_nursery() as nursery, sessions.subscribe(user, device) as subscription:
        nursery.start_soon(_until_closed, lines.stream, nursery.cancel_scope)
        while True:
            view = await subscription.next(after, IDLE_PUSH_S)
            if view is None:
                continue
            after = view["stamp"]
            age = time.perf_counter() - subscription.changed_at if subscription.changed_at else 0
            await lines.write({"view": view, "age_s": age})


async def _until_closed(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """The worker hung up (its player went away): stop pushing."""
    try:
        while await stream.receive_some(1024):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


# --- a worker's side --------------------------------------------------------------------------
class RemoteSessions:
    """The sessions of a serving worker: its main process's, over the socket."""

    def __init__(self, path: Path, is_track: Callable[[str], bool]) -> None:
        self.path = path
        self._is_track = is_track

    @classmethod
    def from_environment(cls, is_track: Callable[[str], bool]) -> RemoteSessions | None:
        path = os.environ.get(SOCKET_ENV)
        return cls(Path(path), is_track) if path else None

    async def _connect(self) -> _Lines:
        try:
            return _Lines(await trio.open_unix_socket(str(self.path)))
        except OSError as e:
            raise CommandError(503, "the node's sessions are not answering") from e

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        lines = await self._connect()
        async with lines.stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await lines.write(request)
                    answer = await lines.read()
            except (trio.TooSlowError, EOFError, ValueError, trio.BrokenResourceError) as e:
                raise CommandError(503, "the node's sessions are not answering") from e
        if "error" in answer:
            status, message = answer["error"]
            if status == 429:
                raise RateLimited()
            raise CommandError(int(status), str(message))
        return dict(answer["view"])

    async def get(self, user: str) -> dict[str, Any]:
        return await self._ask({"op": "get", "user": user})

    async def command(self, user: str, doc: Any,
                      allows: Callable[[str], bool] = lambda track: True) -> dict[str, Any]:
        # Parsed here too: a malformed command never travels, and the token's scope is known
        # only here.
        command = commands.parse(doc, self._is_track)
        refused = [t for t in command.tracks() if not allows(t)]
        if refused:
            raise CommandError(403, f"this token does not grant track {refused[0]}")
        return await self._ask({"op": "command", "user": user, "doc": doc})

    @asynccontextmanager
    async def subscribe(self, user: str, device: str | None
                        ) -> AsyncIterator[_RemoteSubscription]:
        lines = await self._connect()
        async with lines.stream:
            await lines.write({"op": "subscribe", "user": user, "device": device,
                               "after": None})
            yield _RemoteSubscription(lines)


class _RemoteSubscription:
    def __init__(self, lines: _Lines) -> None:
        self._lines = lines
        self._latest: dict[str, Any] | None = None
        self.changed_at = 0.0

    async def next(self, after: str | None, timeout_s: float) -> dict[str, Any] | None:
        if self._latest is not None and self._latest["stamp"] != after:
            return self._latest
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    pushed = await self._lines.read()
                except (EOFError, ValueError) as e:
                    raise trio.BrokenResourceError("the node's sessions went away") from e
                self._latest = pushed["view"]
                self.changed_at = time.perf_counter() - float(pushed.get("age_s", 0))
                if self._latest["stamp"] != after:
                    return self._latest
        return None
