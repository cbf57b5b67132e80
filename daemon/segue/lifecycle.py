"""The node's life as the rest of the daemon sees it: its state, health and streams.

The node owns one Lifecycle and is the only one to change its state and health; the HTTP layer
reads them (for /healthz, and to close connections while draining) and counts what it serves
through the lifecycle's own context managers, so nobody assigns into anybody else's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from types import TracebackType
from typing import Protocol

import trio

from segue.health import Health


class NodeState(StrEnum):
    """Where the node is in its life; plugins may compare `node.state` against these."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


class _Gauge(Protocol):
    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class _Count:
    """A reusable context manager that counts what is inside it (a class, not a generator:
    it runs for every request, and @contextmanager's generator showed in the profile)."""

    __slots__ = ("_gauge", "_on_zero", "value")

    def __init__(self, gauge: _Gauge | None = None,
                 on_zero: Callable[[], None] | None = None) -> None:
        self.value = 0
        self._gauge = gauge
        self._on_zero = on_zero

    def __enter__(self) -> None:
        self.value += 1
        if self._gauge is not None:
            self._gauge.inc()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.value -= 1
        if self._gauge is not None:
            self._gauge.dec()
        if self.value == 0 and self._on_zero is not None:
            self._on_zero()


class Lifecycle:
    """State, health, streams and requests in flight, and the waits that draining ends."""

    def __init__(self, streams_gauge: _Gauge | None = None) -> None:
        self._state = NodeState.STARTING
        self._health = Health.ok()
        self._streams = _Count(streams_gauge)
        self._requests = _Count(on_zero=self._no_requests)
        self._idle = trio.Event()
        self._drain_scopes: set[trio.CancelScope] = set()

    # --- read by everyone ---
    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def health(self) -> Health:
        return self._health

    @property
    def accepting(self) -> bool:
        """Whether new requests are welcome (starting or ready: not draining or stopping)."""
        return self._state in (NodeState.STARTING, NodeState.READY)

    @property
    def streams_in_flight(self) -> int:
        """Response bodies being sent right now."""
        return self._streams.value

    @property
    def requests_in_flight(self) -> int:
        return self._requests.value

    # --- counted by the HTTP layer ---
    def stream(self) -> _Count:
        """`with lifecycle.stream():` around sending one response body."""
        return self._streams

    def request(self) -> _Count:
        """`with lifecycle.request():` around answering one request (drain waits for these)."""
        return self._requests

    def cancel_on_drain(self, scope: trio.CancelScope) -> None:
        """Let draining cancel `scope`: a kept-alive connection's wait for its next request
        (idle connections close at once instead of holding the node up until their idle
        timeout), an event stream (its player reconnects to another node). At once when the
        node drains already. Pair with forget_on_drain."""
        if not self.accepting:
            scope.cancel()
        self._drain_scopes.add(scope)

    def forget_on_drain(self, scope: trio.CancelScope) -> None:
        self._drain_scopes.discard(scope)

    async def wait_idle(self) -> None:
        """Return once no request is being answered."""
        while self._requests.value:
            await self._idle.wait()

    # --- changed by the node alone ---
    def set_health(self, health: Health) -> None:
        self._health = health

    def ready(self) -> None:
        self._state = NodeState.READY

    def start_draining(self) -> None:
        """Draining: /healthz says so, idle keep-alive connections close, answers close theirs."""
        self._state = NodeState.DRAINING
        for scope in list(self._drain_scopes):
            scope.cancel()

    def stopping(self) -> None:
        self._state = NodeState.STOPPING

    def _no_requests(self) -> None:
        self._idle.set()
        self._idle = trio.Event()
