"""Segue's NATS plugin: listeners' playback sessions between edge nodes on NATS JetStream, for
fleets too large for gossip (every change to every node).

A node keeps the deltas of the listeners it serves (``segue_session_presence``), from one
consumer of the whole stream; it drops the others' unread. When a listener arrives, it reads
the merged state from the key-value bucket, then replays the listener's delta subject from the
sequence the state covers (or the one it had merged before a restart, kept in `positions`).
Each local change is published to the listener's subject with a message id (a retry is stored
once), then merged into the bucket by compare-and-set. Listeners are named on the bus by a
keyed hash (``user_key_file``), never in clear; the subject key maps back to a listener only on
nodes that serve them.

NATS away is ``degraded``, never fatal: sessions go on locally; listeners whose changes could
not be published are published whole (their merged state, as one delta) once NATS is back,
and every followed listener is followed again from where the node got to.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import Counter, Gauge

import segue
from segue_nats import settings as nats_settings
from segue_nats.bridge import AsyncioThread
from segue_nats.bus import CAS_ATTEMPTS, Bus, MissingSetup
from segue_nats.positions import Positions

log = structlog.get_logger("segue_nats")

PUBLISH_BATCH = 256  # changes handed to the NATS thread (and in flight) at once
FOLLOWERS = 32  # listeners being followed (bucket read, subject replayed) at once
PUBLISH_ATTEMPTS = 6  # one change, under one message id, before it is published whole
POSITIONS_FLUSH_S = 1.0
KV_FLUSH_S = 0.05
MAX_MESSAGE = 1024 * 1024


class _Metrics:
    def __init__(self, registry) -> None:
        self.connected = Gauge("segue_nats_connected", "1 while this node is connected to NATS.",
                               registry=registry, multiprocess_mode="livemax")
        self.followed = Gauge("segue_nats_followed_listeners",
                              "Listeners whose delta subject this node follows.",
                              registry=registry, multiprocess_mode="livemax")
        self.published = Counter("segue_nats_deltas_published",
                                 "Local changes published, by outcome.", ["outcome"],
                                 registry=registry)
        self.received = Counter("segue_nats_deltas_received",
                                "Deltas delivered from the bus, by outcome (applied, "
                                "unchanged, own, duplicate, malformed, not_served: of a "
                                "listener with no device here).", ["outcome"],
                                registry=registry)
        # Counted on the NATS thread for every delta of the fleet: looked up once.
        self.not_served = self.received.labels("not_served")
        self.state_writes = Counter("segue_nats_state_writes",
                                    "Merged states written to the bucket, by outcome.",
                                    ["outcome"], registry=registry)


@dataclass
class _Outgoing:
    """One local change on its way to the bus."""

    user: str
    key: str
    data: bytes
    msg_id: str
    attempts: int = 0


class NatsPlugin:
    """One instance per node (the entry point names this class)."""

    def __init__(self) -> None:
        self.settings: nats_settings.NatsSettings | None = None
        self.metrics: _Metrics | None = None
        self.node: Any = None
        self.connected = False
        self.last_error = "not connected yet"
        self._bridge: AsyncioThread | None = None
        self._bus: Bus | None = None
        self._positions: Positions | None = None
        self._keys: dict[str, str] = {}  # subject key -> listener, for the listeners followed
        self._changes_send: trio.MemorySendChannel[tuple[str, dict[str, Any], str]] | None = None
        self._changes: trio.MemoryReceiveChannel[tuple[str, dict[str, Any], str]] | None = None
        self._unsent: set[str] = set()  # listeners to publish whole once NATS answers
        self._to_store: set[str] = set()  # listeners whose merged state the bucket lacks
        self._presence = trio.Event()  # the set of listeners here changed
        self._resync = trio.Event()  # NATS came back: follow everyone again

    # --- hooks --------------------------------------------------------------------------------
    @segue.hookimpl
    def segue_configure(self, config, config_path: Path) -> None:
        self.settings = nats_settings.parse(config, config_path) if config else None
        if self.settings is not None and self._changes_send is None:
            self._changes_send, self._changes = trio.open_memory_channel(self.settings.max_queue)

    @segue.hookimpl
    def segue_metrics(self, registry) -> None:
        self.metrics = _Metrics(registry)

    @segue.hookimpl
    def segue_services(self, node):
        if self.settings is None:
            return []
        self.node = node
        return [self._run]

    @segue.hookimpl
    def segue_session_changed(self, node, user: str, delta) -> None:
        if self._changes_send is None or self.metrics is None:
            return
        try:
            self._changes_send.send_nowait((user, dict(delta), uuid.uuid4().hex))
        except trio.WouldBlock:
            self._unsent.add(user)  # published whole (as its merged state) later
            self.metrics.published.labels("queue_full").inc()

    @segue.hookimpl
    def segue_session_presence(self, node, user: str, present: bool) -> None:
        self._presence.set()

    @segue.hookimpl
    def segue_health(self, node):
        if self.settings is None:
            return None
        if not self.connected:
            return segue.Health("degraded", detail=f"NATS: {self.last_error}")
        return segue.Health("ok", detail=f"following {len(self._keys)} listeners")

    @segue.hookimpl
    def segue_status(self):
        if self.settings is None:
            return None
        return {"connected": self.connected, "followed": len(self._keys),
                "unsent": len(self._unsent)}

    # --- naming -------------------------------------------------------------------------------
    def _key(self, user: str) -> str:
        """The listener's name on the bus: a keyed hash, so the bus never sees who listens."""
        assert self.settings is not None
        return hmac.new(self.settings.user_key, user.encode(), hashlib.sha256).hexdigest()[:32]

    # --- the service --------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self.settings is not None
        self._positions = Positions(self.settings.positions_path)
        await trio.to_thread.run_sync(self._positions.load)
        self._bridge = AsyncioThread()
        self._bridge.start()
        self._bus = Bus(self.settings, self._connection_changed)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_positions)
                await self._connect()
                await self._follow_stream()
                nursery.start_soon(self._publish)
                nursery.start_soon(self._store_states)
                nursery.start_soon(self._follow_here)
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(2):
                    await self._bridge.run(self._bus.close, 2)
                await trio.to_thread.run_sync(self._positions.write,
                                              self._positions.take_dirty())
            self._bridge.stop()

    def _connection_changed(self, up: bool) -> None:
        """From the asyncio thread: NATS dropped or came back."""
        assert self._bridge is not None
        self._bridge.to_trio(self._set_connected, up)

    def _set_connected(self, up: bool) -> None:
        assert self.metrics is not None
        if up and not self.connected:
            log.info("NATS reconnected")
            self._resync.set()
            self._presence.set()
        elif not up and self.connected:
            log.warning("NATS connection lost")
            self.last_error = "connection lost; reconnecting"
        self.connected = up
        self.metrics.connected.set(1 if up else 0)

    async def _call(self, make, *args):
        assert self._bridge is not None and self.settings is not None
        return await self._bridge.run(functools.partial(make, *args), self.settings.timeout_s)

    async def _connect(self) -> None:
        """Connect and find (or make) the stream and the bucket; retry until it works."""
        assert self._bus is not None and self.settings is not None
        delay = 0.5
        while True:
            try:
                if self._bus.nc is None:
                    await self._call(self._bus.connect)
                await self._call(self._bus.setup)
                self._set_connected(True)
                log.info("NATS ready", stream=self.settings.stream, bucket=self.settings.bucket)
                return
            except MissingSetup as e:
                self.last_error = str(e)
            except Exception as e:  # nats-py raises many kinds; all mean: not yet
                self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if self._bus.nc is not None and not self._bus.nc.is_connected:
                    self._bus.nc = None
            log.warning("NATS not ready", error=self.last_error)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # --- following the listeners served here ----------------------------------------------------
    async def _follow_stream(self) -> None:
        """The node's consumer of every listener's deltas (again after a reconnection, from
        where it got to); retried until it is made."""
        assert self._bus is not None
        while True:
            try:
                await self._call(self._bus.follow, self._delivered)
                return
            except Exception as e:
                self.last_error = f"following the stream: {type(e).__name__}: {e}"
                log.warning("NATS not ready", error=self.last_error)
            await trio.sleep(1.0)

    async def _follow_here(self) -> None:
        """Follow exactly the listeners with a device here; all again after a reconnection."""
        assert self._bus is not None and self.metrics is not None
        self._presence.set()
        while True:
            await self._presence.wait()
            self._presence = trio.Event()
            if self._resync.is_set():
                # The consumer may not have survived the outage: make it again from where it
                # got to, and replay every listener from where this node got to (the bucket's
                # state or its own position, whichever is further).
                self._resync = trio.Event()
                log.info("following again after the reconnection", listeners=len(self._keys))
                await self._follow_stream()
                self._keys.clear()
            here = self.node.sessions.local_listeners()
            wanted = {self._key(u): u for u in here}
            for key in [k for k in self._keys if k not in wanted]:
                del self._keys[key]
            # Each follow is a bucket read and a replay, a few round trips: one at a time,
            # 10,000 listeners took minutes.
            limiter = trio.Semaphore(FOLLOWERS)
            async with trio.open_nursery() as nursery:
                for key, user in wanted.items():
                    if key not in self._keys:
                        await limiter.acquire()
                        nursery.start_soon(self._follow_one, limiter, key, user)
            self.metrics.followed.set(len(self._keys))
            if self._presence.is_set() or self._resync.is_set():
                await trio.sleep(0.5)

    async def _follow_one(self, limiter: trio.Semaphore, key: str, user: str) -> None:
        try:
            if not await self._follow(key, user):
                self._presence.set()  # try again at the next turn
        finally:
            limiter.release()

    async def _follow(self, key: str, user: str) -> bool:
        """Start keeping `user`'s deltas: the bucket's state, then what the stream holds after
        it. The key is kept BEFORE the replay starts, so a delta the consumer brings from then
        on is merged, and one it dropped earlier is in the stream for the replay."""
        assert self._bus is not None and self._positions is not None
        try:
            found = await self._call(self._bus.read_state, key)
            covers = 0
            if found is not None:
                state, covers, _ = found
                self.node.sessions.apply_remote(user, state)
            self._keys[key] = user
            after = max(covers, self._positions.get(key))
            await self._call(self._bus.replay, key, after, self._replayed)
        except Exception as e:
            self._keys.pop(key, None)
            self.last_error = f"following a listener: {type(e).__name__}: {e}"
            return False
        self._positions.advance(key, covers)
        return True

    def _delivered(self, key: str, seq: int, data: bytes) -> None:
        """From the asyncio thread: a delta from the node's consumer. One of a listener not
        served here is dropped on this thread, without a hop to trio (a dict lookup is safe
        across threads; one dropped just before its listener is kept here is in the stream
        for that listener's replay, which starts after the key is kept)."""
        assert self._bridge is not None and self.metrics is not None
        if key in self._keys:
            self._bridge.to_trio(self._merge, key, seq, data)
        else:
            self.metrics.not_served.inc()

    def _replayed(self, key: str, seq: int, data: bytes) -> None:
        """From the asyncio thread: a delta of a listener being followed, replayed."""
        assert self._bridge is not None
        self._bridge.to_trio(self._merge, key, seq, data, True)

    def _merge(self, key: str, seq: int, data: bytes, replayed: bool = False) -> None:
        """Merge a delta of a listener served here; skip one merged already. A replayed one is
        merged even when the consumer brought a later one first: deltas merge in any order,
        and skipping it by sequence would lose it."""
        assert self.metrics is not None and self._positions is not None
        user = self._keys.get(key)
        if user is None:
            return  # not served here (or not any more)
        if seq <= self._positions.get(key) and not replayed:
            self.metrics.received.labels("duplicate").inc()
            return
        self._positions.advance(key, seq)
        outcome = self._apply(user, data)
        self.metrics.received.labels(outcome).inc()

    def _apply(self, user: str, data: bytes) -> str:
        if len(data) > MAX_MESSAGE:
            return "malformed"
        try:
            doc = json.loads(data)
        except ValueError:
            log.warning("a malformed delta on the bus was dropped")
            return "malformed"
        if not isinstance(doc, dict) or not isinstance(doc.get("o"), str):
            log.warning("a malformed delta on the bus was dropped")
            return "malformed"
        if doc["o"] == self.node.node_id:
            return "own"
        return self.node.sessions.merge_remote(user, doc.get("d"))

    # --- publishing ---------------------------------------------------------------------------
    async def _publish(self) -> None:
        """Publish local changes in batches (up to PUBLISH_BATCH in flight at once); a change
        that fails is tried again under its message id (JetStream stores it once) with a
        growing delay while a server fails over, and after PUBLISH_ATTEMPTS its listener is
        published whole once NATS answers."""
        assert self._changes is not None
        retry: list[tuple[float, _Outgoing]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_unsent)
            while True:
                now = trio.current_time()
                due = [item for at, item in retry if at <= now]
                retry = [(at, item) for at, item in retry if at > now]
                batch = list(due)
                if not batch:
                    wait = min((at for at, _ in retry), default=math.inf) - now
                    with trio.move_on_after(wait):
                        batch.append(self._outgoing(*await self._changes.receive()))
                while len(batch) < PUBLISH_BATCH:
                    try:
                        batch.append(self._outgoing(*self._changes.receive_nowait()))
                    except trio.WouldBlock:
                        break
                if batch:
                    retry += await self._publish_batch(batch)

    def _outgoing(self, user: str, delta: dict[str, Any], msg_id: str) -> _Outgoing:
        data = json.dumps({"o": self.node.node_id, "d": delta}, separators=(",", ":")).encode()
        return _Outgoing(user, self._key(user), data, msg_id)

    async def _publish_batch(self, batch: list[_Outgoing]) -> list[tuple[float, _Outgoing]]:
        """Publish `batch`; the failed ones to try again, with when."""
        assert self.metrics is not None and self._bus is not None
        try:
            stored = await self._call(self._bus.publish_batch,
                                      [(o.key, o.data, o.msg_id) for o in batch])
        except Exception as e:
            self.last_error = f"publishing: {type(e).__name__}: {e}"
            stored = [False] * len(batch)
        again = []
        now = trio.current_time()
        for outgoing, ok in zip(batch, stored, strict=True):
            if ok:
                self.metrics.published.labels("ok").inc()
                self._to_store.add(outgoing.user)
            elif outgoing.attempts + 1 < PUBLISH_ATTEMPTS:
                self.metrics.published.labels("retried").inc()
                outgoing.attempts += 1
                again.append((now + 0.25 * 2 ** outgoing.attempts, outgoing))
            else:
                self._unsent.add(outgoing.user)
                self.metrics.published.labels("failed").inc()
        return again

    async def _publish_unsent(self) -> None:
        """Listeners whose changes did not go out: their merged state, as one delta."""
        assert self._changes_send is not None
        while True:
            await trio.sleep(0.5)
            if not self.connected or not self._unsent:
                continue
            users, self._unsent = self._unsent, set()
            for user in users:
                state = self.node.sessions.export(user)
                if state is not None:
                    await self._changes_send.send((user, state, uuid.uuid4().hex))

    async def _store_states(self) -> None:
        """Merge what this node holds into the bucket, for the listeners it changed."""
        while True:
            await trio.sleep(KV_FLUSH_S)
            if not self.connected or not self._to_store:
                continue
            users, self._to_store = self._to_store, set()
            for user in users:
                await self._store_state(user)

    async def _store_state(self, user: str) -> None:
        """Read, merge, write if nobody wrote since; again on a conflict."""
        assert self._bus is not None and self.metrics is not None
        assert self._positions is not None
        key = self._key(user)
        try:
            for _ in range(CAS_ATTEMPTS):
                found = await self._call(self._bus.read_state, key)
                revision, covers = None, 0
                if found is not None:
                    state, covers, revision = found
                    self.node.sessions.apply_remote(user, state)
                mine = self.node.sessions.export(user)
                if mine is None:
                    return
                covers = max(covers, self._positions.get(key))
                if await self._call(self._bus.write_state, key, mine, covers, revision):
                    self.metrics.state_writes.labels("ok").inc()
                    return
                self.metrics.state_writes.labels("conflict").inc()
        except Exception as e:
            self.last_error = f"storing a state: {type(e).__name__}: {e}"
            self.metrics.state_writes.labels("failed").inc()
        self._to_store.add(user)

    async def _flush_positions(self) -> None:
        assert self._positions is not None
        while True:
            await trio.sleep(POSITIONS_FLUSH_S)
            rows = self._positions.take_dirty()
            if rows:
                await trio.to_thread.run_sync(self._positions.write, rows)
