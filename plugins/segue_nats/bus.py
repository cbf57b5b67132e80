"""The NATS side of the plugin: the code that runs on the asyncio thread (see `bridge`).

Layout on the bus, for listener L (K = the keyed hash of L, never L itself):

    stream  SEGUE_SESSIONS, subjects "segue.sessions.*": each change to L's session is one
            message on "segue.sessions.K", {"o": origin node, "d": the delta}, published with
            a Nats-Msg-Id so that a retried publish is stored once;
    bucket  segue_sessions (key-value), key K: {"state": L's merged state, "covers": S}, where
            every delta on L's subject up to sequence S is merged into the state.

A node that gets L's first device reads the bucket, merges the state, then follows L's
subject from max(S, the sequence it had merged before) + 1 with an ordered consumer (which
recovers from gaps on its own), so it starts at the latest state and replays only what the
state may lack. Each call here is awaited by trio under a deadline.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
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

OnMessage = Callable[[str, int, bytes], None]  # subject key, stream sequence, data


class MissingSetup(Exception):
    """The stream or the bucket does not exist and this node may not create them."""


class Bus:
    def __init__(self, settings: NatsSettings, on_connection: Callable[[bool], None]) -> None:
        self.settings = settings
        self._on_connection = on_connection
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self._subs: dict[str, Any] = {}

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
    async def follow(self, key: str, start: int, on_message: OnMessage) -> None:
        """Deliver `key`'s deltas from sequence `start` on, in order, until `unfollow`."""
        assert self.js is not None
        await self.unfollow(key)

        async def deliver(msg: Any) -> None:
            on_message(key, msg.metadata.sequence.stream, msg.data)

        self._subs[key] = await self.js.subscribe(
            self.subject(key), cb=deliver, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=max(1, start)))

    async def unfollow(self, key: str) -> None:
        sub = self._subs.pop(key, None)
        if sub is not None:
            # A connection that is gone took the subscription with it.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @property
    def followed(self) -> int:
        return len(self._subs)
