"""nats-py runs on asyncio; Segue runs on trio. This is the door between them: an asyncio event
loop on a thread of its own, that trio code hands coroutines to and awaits.

Why a thread rather than trio-asyncio: the NATS client keeps long-lived tasks (reading,
pinging, reconnecting, flow control) that must go on whatever trio is doing, and a separate loop
keeps each side's cancellation its own: a trio deadline cancels the asyncio task it was waiting
for (`run`), and nothing on the asyncio side can cancel trio. What the asyncio side has to tell
trio (a message arrived, the connection dropped) goes through `to_trio`, which queues a plain
function call on the trio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class AsyncioThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="segue-nats-asyncio",
                                        daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]], timeout_s: float) -> T:
        """Run `make()` on the asyncio loop and wait for its result, for at most `timeout_s`
        (trio.TooSlowError then); cancelling the wait cancels the coroutine."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = asyncio.run_coroutine_threadsafe(make(), self.loop)
        future.add_done_callback(lambda _: _call_soon(token, done.set))
        try:
            with trio.fail_after(timeout_s):
                await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        """From the asyncio thread: call `fn(*args)` on the trio loop, soon."""
        assert self._token is not None
        _call_soon(self._token, fn, *args)

    def stop(self) -> None:
        """Stop the loop (after closing the client) and wait for the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def _call_soon(token: trio.lowlevel.TrioToken, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(trio.RunFinishedError):  # trio has finished: nobody waits now
        token.run_sync_soon(fn, *args)
