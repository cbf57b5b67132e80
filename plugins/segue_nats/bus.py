"""The NATS side of the plugin: the code that runs on the asyncio thread (see `bridge`).

Layout on the bus, for listener L (K = the keyed hash of L, never L itself):

    stream  SEGUE_SESSIONS, subjects "segue.sessions.*": each change to L's session is one
            message on "segue.sessions.K", {"o": origin node, "d": the delta}, published with
            a Nats-Msg-Id so that a retried publish is stored once;
    bucket  segue_sessions (key-value), key K: {"state": L's merged state, "covers": S}, where
            every delta on L's subject up to sequence S is merged into the state.

A node follows the whole stream with ONE consumer and keeps the deltas of the listeners it
serves (the rest it drops unread). When L's first device arrives, the node reads the bucket,
merges the state, and replays L's subject from max(S, the sequence it had merged before) + 1
(`replay`, direct reads of the stream by subject), so it starts at the latest state and fetches
only what the state may lack: deltas that went by on its consumer before L was served here.
Each call here is awaited by trio under a deadline.

The consumer is an ephemeral push consumer (memory, one replica, no acks) delivering to a
subscription of its own (the servers bind a push consumer only to a subscription on its exact
delivery subject). If it skips a message (its delivery sequence jumps) or falls silent (no
message and no idle heartbeat for two heartbeats: its server went away), it is made again
from the last stream sequence delivered. One consumer a node, not one a listener: at 10,000
listeners, 20,000 per-listener consumers kept 1.84 of 2 cores busy with no change at all
(docs/performance.md), and making one was a few round trips per listener that arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as StreamNotFoundError
from nats.js.kv import KeyValue

from segue_nats.settings import NatsSettings

DUPLICATE_WINDOW_S = 120.0
CAS_ATTEMPTS = 8
HEARTBEAT_S = 5.0  # each consumer's idle heartbeat; silent for two of them: made again
WATCH_S = 1.0  # how often the consumer's silence is checked
NO_MESSAGE_FOUND = 10037  # JetStream's error code for a message get that found none

OnMessage = Callable[[str, int, bytes], None]  # subject key, stream sequence, data


class MissingSetup(Exception):
    """The stream or the bucket does not exist and this node may not create them."""


@dataclass
class _Followed:
    """The node's consumer, as this node tracks it."""

    on_message: OnMessage
    route: str  # the last token of its delivery subject, new for each consumer made
    stream_seq: int  # the last stream sequence delivered (start - 1 before any)
    delivered: int = 0  # the consumer's delivery sequence of that message
    heard: float = 0.0  # loop time of its last message or heartbeat
    consumer: str | None = None  # the server's name for it, once made
    subscription: Any = None
    remaking: bool = False


class Bus:
    def __init__(self, settings: NatsSettings, on_connection: Callable[[bool], None]) -> None:
        self.settings = settings
        self._on_connection = on_connection
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self._consumer: _Followed | None = None  # the node's one consumer, once made
        # One making or remaking of it at a time (a reconnection's and the watchdog's could
        # overlap, and the first consumer made would be left delivering to nobody's use).
        self._making = asyncio.Lock()
        self._routes = itertools.count(1)
        self._inbox = ""
        self._watchdog: asyncio.Task[None] | None = None

    def subject(self, key: str) -> str:
        return f"{self.settings.subject_prefix}.{key}"

    async def connect(self) -> None:
        s = self.settings

        async def disconnected() -> None:
            self._on_connection(False)

        async def reconnected() -> None:
            self._on_connection(True)

        async def error(e: Exception) -> None:
            pass  # the connection state is what counts; nats-py retries on its own

        self.nc = await nats.connect(
            servers=s.servers, user=s.user, password=s.password,
            user_credentials=s.creds_file, tls=s.tls, connect_timeout=s.timeout_s,
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
            name="segued")
        self.js = self.nc.jetstream(timeout=s.timeout_s)
        self._inbox = self.nc.new_inbox()
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def setup(self) -> None:
        """Find the stream and the bucket; create them when allowed (`create`)."""
        assert self.js is not None
        s = self.settings
        try:
            await self.js.stream_info(s.stream)
        except StreamNotFoundError:
            if not s.create:
                raise MissingSetup(f"no stream {s.stream}: create it (create = true once, "
                                   f"on one node)") from None
            await self.js.add_stream(StreamConfig(
                name=s.stream, subjects=[f"{s.subject_prefix}.*"], storage=StorageType.FILE,
                num_replicas=s.replicas, max_age=s.max_age_s,
                max_msgs_per_subject=s.max_msgs_per_subject,
                duplicate_window=DUPLICATE_WINDOW_S))
        try:
            self.kv = await self.js.key_value(s.bucket)
        except BucketNotFoundError:
            if not s.create:
                raise MissingSetup(f"no bucket {s.bucket}: create it (create = true once, "
                                   f"on one node)") from None
            self.kv = await self.js.create_key_value(KeyValueConfig(
                bucket=s.bucket, history=1, replicas=s.replicas, ttl=s.max_age_s,
                storage=StorageType.FILE))

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.nc is not None:
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # --- changes out --------------------------------------------------------------------------
    async def publish(self, key: str, data: bytes, msg_id: str) -> int:
        """Store one delta; its stream sequence (the first one, for a retried duplicate)."""
        assert self.js is not None
        ack = await self.js.publish(self.subject(key), data, headers={"Nats-Msg-Id": msg_id})
        return ack.seq

    async def publish_batch(self, items: list[tuple[str, bytes, str]]) -> list[bool]:
        """Store many deltas at once, all in flight together: one hop from trio for the lot
        (a hop per delta cost more than the publishing itself). Whether each was stored."""
        async def one(key: str, data: bytes, msg_id: str) -> bool:
            try:
                await self.publish(key, data, msg_id)
            except Exception:  # this delta only: the caller retries it under its message id
                return False
            return True
        return list(await asyncio.gather(*(one(*item) for item in items)))

    async def read_state(self, key: str) -> tuple[dict[str, Any], int, int] | None:
        """(state, covers, revision) of the bucket's entry for `key`, or None."""
        assert self.kv is not None
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        doc = json.loads(entry.value or b"{}")
        return doc.get("state") or {}, int(doc.get("covers") or 0), int(entry.revision or 0)

    async def write_state(self, key: str, state: dict[str, Any], covers: int,
                          revision: int | None) -> bool:
        """Write the entry if it is still at `revision` (None: if there is none); False when
        another node wrote first (read, merge and try again)."""
        assert self.kv is not None
        value = json.dumps({"state": state, "covers": covers},
                           separators=(",", ":")).encode()
        try:
            if revision is None:
                await self.kv.create(key, value)
            else:
                await self.kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:  # also what create says when the key exists
            return False
        return True

    # --- changes in ---------------------------------------------------------------------------
    async def follow(self, on_message: OnMessage) -> None:
        """Deliver every listener's deltas, in stream order, from the sequence after the last
        one delivered (the first time: after the stream's last message), until `close`."""
        assert self.js is not None
        if self._consumer is None:
            info = await self.js.stream_info(self.settings.stream)
            self._consumer = _Followed(on_message, "", info.state.last_seq)
        await self._renew(self._consumer)

    async def replay(self, key: str, after: int, on_message: OnMessage) -> int:
        """Hand `on_message` the deltas of `key` stored after sequence `after`, in order (at
        most the stream keeps of one subject); how many."""
        assert self.js is not None
        seq, count = after + 1, 0
        while count < self.settings.max_msgs_per_subject:
            try:
                msg = await self.js.get_msg(self.settings.stream, seq=seq,
                                            subject=self.subject(key), next=True)
            except StreamNotFoundError as e:
                if e.err_code == NO_MESSAGE_FOUND:  # none at or after `seq`
                    break
                raise
            found = int(msg.seq or seq)
            on_message(key, found, msg.data or b"")
            seq, count = found + 1, count + 1
        return count

    async def _make_consumer(self, followed: _Followed) -> None:
        """A consumer from the sequence after the last one delivered, to a delivery subject
        of its own (what an earlier consumer still sends goes nowhere)."""
        assert self.js is not None and self.nc is not None
        route = str(next(self._routes))
        followed.route = route
        followed.delivered = 0
        followed.consumer = None
        followed.heard = asyncio.get_running_loop().time()

        async def deliver(msg: Any) -> None:
            if self._consumer is followed and followed.route == route:
                await self._deliver(followed, msg)

        # nats-py subscribes again after a reconnection.
        followed.subscription = await self.nc.subscribe(f"{self._inbox}.{route}", cb=deliver)
        try:
            info = await self.js.add_consumer(self.settings.stream, ConsumerConfig(
                deliver_subject=f"{self._inbox}.{route}",
                filter_subject=self.subject("*"), deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=followed.stream_seq + 1, ack_policy=AckPolicy.NONE, max_deliver=1,
                idle_heartbeat=HEARTBEAT_S, num_replicas=1, mem_storage=True))
        except BaseException:
            await self._delete_consumer(followed)
            raise
        followed.consumer = info.name

    async def _delete_consumer(self, followed: _Followed) -> None:
        if followed.subscription is not None:
            with contextlib.suppress(Exception):  # a connection that is gone took it along
                await followed.subscription.unsubscribe()
            followed.subscription = None
        if followed.consumer is not None and self.js is not None and self.connected:
            # A consumer whose server or connection is gone went with it.
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.settings.stream, followed.consumer)

    async def _deliver(self, followed: _Followed, msg: Any) -> None:
        followed.heard = asyncio.get_running_loop().time()
        if not msg.data and msg.headers and msg.headers.get("Status") == "100":
            # An idle heartbeat names the last delivery sequence sent: one missed here?
            last = msg.headers.get("Nats-Last-Consumer")
            if last is not None and int(last) != followed.delivered:
                await self._remake(followed)
            return
        sequence = msg.metadata.sequence
        if sequence.consumer != followed.delivered + 1:
            await self._remake(followed)
            return
        followed.delivered = sequence.consumer
        followed.stream_seq = sequence.stream
        # The message arrives under the subject it was published to: its last token is the key.
        followed.on_message(msg.subject.rpartition(".")[2], sequence.stream, msg.data)

    async def _remake(self, followed: _Followed) -> None:
        """Replace a consumer that skipped a message or fell silent (in the background: the
        subscription's callback must not wait on the servers)."""
        if followed.remaking:
            return
        followed.remaking = True

        async def again() -> None:
            try:
                with contextlib.suppress(Exception):  # still silent: the watchdog tries again
                    await self._renew(followed)
            finally:
                followed.remaking = False

        asyncio.get_running_loop().create_task(again())

    async def _renew(self, followed: _Followed) -> None:
        """Delete the consumer (if the servers have one) and make it again from where it got
        to, one renewal at a time."""
        async with self._making:
            await self._delete_consumer(followed)
            if self._consumer is followed:
                await self._make_consumer(followed)

    async def _watch(self) -> None:
        """Make the consumer again when it is silent for two heartbeats (its server went
        away)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_S)
            if not self.connected:
                continue  # the plugin follows again once NATS is back
            followed = self._consumer
            if followed is not None and followed.heard < loop.time() - 2 * HEARTBEAT_S - WATCH_S:
                await self._remake(followed)
