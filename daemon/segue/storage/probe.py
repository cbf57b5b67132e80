"""Bringing shares back: probe each share marked down, with exponential backoff.

Reads mark a share down from any thread (Share.failed); this service, on the event loop, owns
when each one is probed next, on trio's clock alone. The first probe comes PROBE_BACKOFF_START_S
after the share was seen down, each failed one doubles the wait up to PROBE_BACKOFF_MAX_S, and
a probe that answers marks the share up. Whoever runs it hears of every change of health.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from segue.storage.errors import StoreError
from segue.storage.shares import Share, ShareSet
from segue.threads import in_thread

log = structlog.get_logger("segue.storage.probe")

PROBE_TICK_S = 0.25
PROBE_BACKOFF_START_S = 0.5
PROBE_BACKOFF_MAX_S = 30.0


async def probe_shares(shares: ShareSet, timeout_s: float,
                       on_change: Callable[[], None]) -> None:
    """Probe the shares marked down until cancelled; `on_change()` after any share went down
    or came back (see ShareSet.health for the outcome)."""
    due: dict[str, float] = {}  # share marked down -> when to probe it next
    backoff: dict[str, float] = {}
    known = {s.name: s.healthy for s in shares.shares}
    while True:
        now = trio.current_time()
        for share in shares.shares:
            if share.healthy:
                due.pop(share.name, None)
                backoff.pop(share.name, None)
            elif share.name not in due:
                backoff[share.name] = PROBE_BACKOFF_START_S
                due[share.name] = now + PROBE_BACKOFF_START_S
            elif now >= due[share.name] and not await _probe(share, timeout_s):
                backoff[share.name] = min(backoff[share.name] * 2, PROBE_BACKOFF_MAX_S)
                due[share.name] = trio.current_time() + backoff[share.name]
        seen = {s.name: s.healthy for s in shares.shares}
        if seen != known:
            for share in shares.shares:
                if share.healthy != known[share.name]:
                    log.warning("share up" if share.healthy else "share down",
                                share=share.name, error=share.last_error)
            known = seen
            on_change()
        await trio.sleep_until(now + PROBE_TICK_S)


async def _probe(share: Share, timeout_s: float) -> bool:
    """One probe, under the share's limiter (a share whose threads are all stuck stays down)."""
    try:
        await in_thread(share.store.probe, limiter=share.limiter, timeout_s=timeout_s)
    except trio.TooSlowError:
        share.failed(f"probe timed out after {timeout_s:g} s")
    except StoreError as e:
        share.failed(str(e))
    else:
        share.answered()
        return True
    return False
