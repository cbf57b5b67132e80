"""Share health: probe every share at start, the healthy ones now and then, and each share
marked down with exponential backoff until it answers again.

A probe is a read of the share's store marker (segue.storage.marker), so a share that answers
but is not the store (an unmounted CIFS mount point: an empty folder) is down like one that
does not answer. Reads mark a share down from any thread (Share.failed); this service, on the
event loop, owns when each one is probed next, on trio's clock alone. A healthy share is probed
every HEALTHY_PROBE_S, so a share unmounted under a running node is seen without waiting for a
play to fail. The first probe of a share marked down comes PROBE_BACKOFF_START_S after it was
seen down, each failed one doubles the wait up to PROBE_BACKOFF_MAX_S, and a probe that answers
marks the share up. Whoever runs it hears of every change of health.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from segue.storage import marker
from segue.storage.errors import StoreError
from segue.storage.shares import Share, ShareSet
from segue.threads import in_thread

log = structlog.get_logger("segue.storage.probe")

PROBE_TICK_S = 0.25
PROBE_BACKOFF_START_S = 0.5
PROBE_BACKOFF_MAX_S = 30.0
HEALTHY_PROBE_S = 5.0


async def probe_all(shares: ShareSet, timeout_s: float) -> None:
    """Probe every share once, at the same time (before a node says it is ready)."""
    async with trio.open_nursery() as nursery:
        for share in shares.shares:
            nursery.start_soon(_probe, share, timeout_s)
    for share in shares.shares:
        if not share.healthy:
            log.warning("share down", share=share.name, error=share.last_error)


async def probe_shares(shares: ShareSet, timeout_s: float,
                       on_change: Callable[[], None]) -> None:
    """Probe the shares until cancelled; `on_change()` after any share went down or came back
    (see ShareSet.health for the outcome)."""
    due: dict[str, float] = {}  # share marked down -> when to probe it next
    backoff: dict[str, float] = {}
    healthy_due = {s.name: trio.current_time() + HEALTHY_PROBE_S for s in shares.shares}
    known = {s.name: s.healthy for s in shares.shares}
    while True:
        now = trio.current_time()
        for share in shares.shares:
            if share.healthy:
                due.pop(share.name, None)
                backoff.pop(share.name, None)
                if now >= healthy_due[share.name]:
                    await _probe(share, timeout_s)
                    healthy_due[share.name] = trio.current_time() + HEALTHY_PROBE_S
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
        await in_thread(marker.read, share.store, limiter=share.limiter, timeout_s=timeout_s)
    except trio.TooSlowError:
        share.failed(f"probe timed out after {timeout_s:g} s")
    except StoreError as e:
        share.failed(str(e))
    else:
        share.answered()
        return True
    return False
