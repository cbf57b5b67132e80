"""segue_track_served off the streams' path: one bounded queue and one task per plugin.

A track's stream ends (segue.http.served says how) and `PlayReports.report` puts the event in
the queue of every plugin that implements the hook, without waiting: a full queue drops the
event for that plugin and counts it. Each plugin's task takes its events one at a time and
calls the plugin (awaiting an async implementation under [plugin_host] hook_timeout_s), so a
slow or failing plugin delays and costs itself alone, and never a player. Serving workers
forward their streams' events to the main process (segue.workers), whose plugins these are.

A plugin never gets the user id: it gets a keyed hash of it (`listener_hash`). Play reports
leave the host (royalties, statistics), and a listener's plays must still add up across the
fleet, so the key is made of what every node of a fleet shares: a fixed label and the fleet's
salt, `[log] user_hash_salt_file`. The label differs from the logs' own, so a report's hash
does not find the listener's lines in the logs.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

import trio

from segue.hook_failures import HookFailures
from segue.metrics import Metrics
from segue.plugin_host import Plugin, PluginHost

HOOK = "segue_track_served"
QUEUE_EVENTS = 4096  # per plugin: about a minute of plays of a busy node, a few hundred KiB
_KEY_LABEL = b"segue/v1 plugin listener\x00"

Event = tuple[str, str, int, str]  # track id, user, bytes sent, outcome


class PlayReports:
    """The main process's deliveries of segue_track_served to its plugins."""

    def __init__(self, host: PluginHost, metrics: Metrics, salt: bytes) -> None:
        self._host = host
        self._metrics = metrics
        self._failures = HookFailures(metrics)
        self._key = _KEY_LABEL + salt
        self._queues: list[tuple[Plugin, trio.MemorySendChannel[Event],
                                 trio.MemoryReceiveChannel[Event]]] = [
            (plugin, *trio.open_memory_channel[Event](QUEUE_EVENTS))
            for plugin in host.implementing(HOOK)]

    def report(self, track_id: str, user: str, bytes_sent: int, outcome: str) -> None:
        """A stream ended (here or in a worker): queue it for every plugin; never waits."""
        event = (track_id, user, bytes_sent, outcome)
        for plugin, queue, _ in self._queues:
            try:
                queue.send_nowait(event)
            except trio.WouldBlock:
                self._metrics.child(self._metrics.plugin_events_dropped, HOOK, plugin.name).inc()

    def listener_hash(self, user: str) -> str:
        """What plugins get instead of the user id: 32 hex digits of an HMAC-SHA256."""
        return _keyed_hash(self._key, user)

    async def run(self) -> None:
        """Deliver every plugin's queue, each in its own task, until cancelled."""
        async with trio.open_nursery() as nursery:
            for plugin, _, events in self._queues:
                nursery.start_soon(self._deliver, plugin, events)

    async def _deliver(self, plugin: Plugin, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for track_id, user, bytes_sent, outcome in events:
            result = await self._host.call_awaited(
                plugin, HOOK, self._host.settings.plugin_host.hook_timeout_s,
                track_id=track_id, user_hash=self.listener_hash(user), bytes_sent=bytes_sent,
                outcome=outcome)
            if result.error is not None:
                self._failures.record(plugin.name, HOOK, result.error)


@functools.lru_cache(maxsize=4096)
def _keyed_hash(key: bytes, user: str) -> str:
    """Remembered: a listener's plays hash the same id again and again."""
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()[:32]
