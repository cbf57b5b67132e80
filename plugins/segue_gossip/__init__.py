"""Segue's gossip plugin: listeners' playback sessions carried between edge nodes over Serf.

Serf (memberlist: SWIM with Lifeguard, an AES-GCM keyring) does membership and broadcast;
this plugin only talks to the local agent over its RPC port:

- each node tags itself (``segue``: API version, ``segue-id``: node id, ``segue-peer``: where
  its peer channel listens) and keeps the member list, shown by status on /v1/status and
  /metrics;
- every change accepted on this node goes out as a Serf user event (never coalesced; split or
  announced when it does not fit in 512 bytes, see `payload`), and every event from another
  node is merged into the node's sessions (duplicates and reordering are harmless);
- anti-entropy, because gossip is best effort: at link-up and every
  ``anti_entropy_interval_s``, one round with a random live peer over the peer channel
  (`peer`, `sync`), sealed with a key derived from the Serf keyring;
- the agent away or the node alone is ``degraded``, never fatal: sessions go on locally, and
  the first round after the link returns catches up.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import Counter, Gauge

import segue
from segue_gossip import payload, peer
from segue_gossip import settings as gossip_settings
from segue_gossip.serf_client import SerfClient, SerfError, SerfRefused, connect
from segue_gossip.sync import Sync

log = structlog.get_logger("segue_gossip")

STATUSES = ("alive", "leaving", "left", "failed")
MAX_PEER_CONNECTIONS = 32
KEY_REFRESH_ROUNDS = 10  # the keyring is asked again every this many rounds (and on failure)
PULL_QUEUE = 256


@dataclass
class Member:
    name: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    addr: str = ""

    @property
    def segue_id(self) -> str | None:
        return self.tags.get("segue-id")

    @property
    def peer_address(self) -> tuple[str, int] | None:
        try:
            host, port = gossip_settings.split_address(self.tags.get("segue-peer"))
        except ValueError:
            return None
        return (host, port) if port else None

    @classmethod
    def from_serf(cls, doc: Mapping[str, Any]) -> Member:
        addr = doc.get("Addr") or b""
        try:
            text = str(ipaddress.ip_address(addr)) if isinstance(addr, bytes) else str(addr)
        except ValueError:
            text = ""
        tags = doc.get("Tags") or {}
        return cls(str(doc.get("Name", "")), str(doc.get("Status", "")),
                   {str(k): str(v) for k, v in tags.items()}, text)


class _Metrics:
    def __init__(self, registry) -> None:
        # livemax: only the main process runs plugins (see docs/plugins.md).
        self.members = Gauge("segue_gossip_members", "Segue nodes in the Serf cluster, by status.",
                             ["status"], registry=registry, multiprocess_mode="livemax")
        self.linked = Gauge("segue_gossip_agent_up", "1 while the local Serf agent answers.",
                            registry=registry, multiprocess_mode="livemax")
        self.sent = Counter("segue_gossip_events_sent", "User events sent, by kind.", ["kind"],
                            registry=registry)
        self.sent_bytes = Counter("segue_gossip_event_bytes_sent",
                                  "Bytes of user-event payloads sent.", registry=registry)
        self.received = Counter("segue_gossip_events_received",
                                "User events received, by outcome.", ["outcome"],
                                registry=registry)
        self.received_bytes = Counter("segue_gossip_event_bytes_received",
                                      "Bytes of user-event payloads received.",
                                      registry=registry)
        self.dropped = Counter("segue_gossip_changes_dropped",
                               "Local changes not sent as events (anti-entropy carries them).",
                               ["reason"], registry=registry)
        self.rounds = Counter("segue_gossip_anti_entropy_rounds",
                              "Anti-entropy rounds asked of a peer, by outcome.", ["outcome"],
                              registry=registry)
        self.repaired = Counter("segue_gossip_anti_entropy_repaired",
                                "Listeners' states changed by anti-entropy or pulls (what "
                                "events had not delivered).", registry=registry)
        self.peer_refused = Counter("segue_gossip_peer_refused",
                                    "Peer-channel connections refused or failed, by reason.",
                                    ["reason"], registry=registry)


class GossipPlugin:
    """One instance per node (the entry point names this class)."""

    def __init__(self) -> None:
        self.settings: gossip_settings.GossipSettings | None = None
        self.metrics: _Metrics | None = None
        self.members: dict[str, Member] = {}
        self.agent_name: str | None = None
        self.node_id = ""
        self.linked = False
        self.last_error = "not connected yet"
        self.keys: list[Any] = []
        self.peer_port: int | None = None
        self._send: trio.MemorySendChannel[tuple[str, dict[str, Any]]] | None = None
        self._receive: trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]] | None = None
        self._sync: Sync | None = None
        self._connections = 0
        self._keys_stale = False

    # --- hooks --------------------------------------------------------------------------------
    @segue.hookimpl
    def segue_configure(self, config, config_path: Path) -> None:
        self.settings = gossip_settings.parse(config, config_path) if config else None
        if self.settings is not None and self._send is None:
            self._send, self._receive = trio.open_memory_channel(self.settings.max_queue)

    @segue.hookimpl
    def segue_metrics(self, registry) -> None:
        self.metrics = _Metrics(registry)

    @segue.hookimpl
    def segue_services(self, node):
        if self.settings is None:
            return []
        self.node_id = node.node_id
        self._sync = Sync(node.sessions)
        return [lambda: self._run(node)]

    @segue.hookimpl
    def segue_session_changed(self, node, user: str, delta) -> None:
        if self._send is None or self.metrics is None:
            return
        try:
            self._send.send_nowait((user, dict(delta)))
        except trio.WouldBlock:
            self.metrics.dropped.labels("queue_full").inc()

    @segue.hookimpl
    def segue_health(self, node):
        if self.settings is None:
            return None
        if not self.linked:
            return segue.Health("degraded", detail=f"Serf agent at {self.settings.rpc_address}: "
                                                   f"{self.last_error}")
        if not self.keys:
            return segue.Health("degraded", detail="anti-entropy off: the Serf keyring is empty "
                                                   "(run the agents with an encrypt key)")
        alive = sum(1 for m in self._peers())
        if not alive:
            return segue.Health("degraded", detail="alone: no other Segue node is alive in the "
                                                   "Serf cluster")
        return segue.Health("ok", detail=f"{alive} Segue peers alive")

    @segue.hookimpl
    def segue_status(self):
        if self.settings is None:
            return None
        return {"agent": "up" if self.linked else "down", "members": self._counts()}

    @segue.hookimpl
    async def segue_stop(self, node) -> None:
        """Take this node's peer address out of its tags, so that peers stop asking it."""
        if self.settings is None or not self.linked:
            return
        try:
            async with connect(self.settings.rpc_host, self.settings.rpc_port,
                               self.settings.rpc_auth, self.settings.timeout_s) as client:
                await client.set_tags({}, ["segue-peer"])
        except SerfError as e:
            log.warning("could not clear the peer tag", error=str(e))

    # --- membership ---------------------------------------------------------------------------
    def _segue_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.segue_id is not None]

    def _peers(self) -> list[Member]:
        return [m for m in self._segue_members()
                if m.status == "alive" and m.segue_id != self.node_id
                and m.peer_address is not None]

    def _counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for m in self._segue_members():
            counts[m.status] = counts.get(m.status, 0) + 1
        return counts

    def _set_members(self, docs: Sequence[Mapping[str, Any]], *, replace: bool) -> None:
        if replace:
            self.members = {}
        for doc in docs:
            member = Member.from_serf(doc)
            known = self.members.get(member.name)
            if known is not None and not member.tags:
                member.tags = known.tags  # an event about a member that lost its metadata
            self.members[member.name] = member
        if self.metrics is not None:
            for status, n in self._counts().items():
                self.metrics.members.labels(status).set(n)

    # --- the link to the agent ----------------------------------------------------------------
    async def _run(self, node) -> None:
        assert self.settings is not None
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(
                trio.serve_tcp, self._serve_peer, self.settings.peer_port,
                host=self.settings.peer_host))
            self.peer_port = listeners[0].socket.getsockname()[1]
            await self._link_forever(node)

    async def _link_forever(self, node) -> None:
        assert self.settings is not None and self.metrics is not None
        backoff = 0.5
        while True:
            try:
                async with connect(self.settings.rpc_host, self.settings.rpc_port,
                                   self.settings.rpc_auth, self.settings.timeout_s) as client:
                    backoff = 0.5
                    await self._linked(node, client)
            except* SerfError as group:
                error = _first_error(group)
                if self.linked or error != self.last_error:
                    log.warning("Serf agent link down", error=error,
                                agent=self.settings.rpc_address)
                self.last_error = error
            self.linked = False
            self.metrics.linked.set(0)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _linked(self, node, client: SerfClient) -> None:
        assert self.settings is not None and self.metrics is not None
        stats = await client.call("stats")
        self.agent_name = str((stats.get("agent") or {}).get("name", ""))
        self._set_members(await client.members(), replace=True)
        me = self.members.get(self.agent_name)
        host = self.settings.advertise_host or (me.addr if me else "") or "127.0.0.1"
        port = self.settings.advertise_port or self.peer_port
        await client.set_tags({"segue": str(segue.PLUGIN_API_VERSION), "segue-id": node.node_id,
                               "segue-peer": _join_address(host, port)})
        await self._refresh_keys(client)
        types = (f"member-join,member-leave,member-failed,member-update,member-reap,"
                 f"user:{self.settings.event_name}")
        async with client.stream(types) as events, trio.open_nursery() as nursery:
            self.linked = True
            self.metrics.linked.set(1)
            log.info("Serf agent linked", agent=self.settings.rpc_address,
                     members=self._counts())
            pulls_send, pulls_receive = trio.open_memory_channel[tuple[str, str]](PULL_QUEUE)
            nursery.start_soon(self._events, node, events, pulls_send)
            nursery.start_soon(self._publish, node, client)
            nursery.start_soon(self._anti_entropy, client)
            nursery.start_soon(self._pulls, pulls_receive)
            await client.wait_closed()
            nursery.cancel_scope.cancel()
        raise SerfError(client.failure or "the agent closed the connection")

    async def _refresh_keys(self, client: SerfClient) -> None:
        try:
            self.keys = peer.derive(await client.list_keys())
        except SerfError as e:
            self.keys = []
            log.warning("no Serf keyring: anti-entropy is off", error=str(e))

    async def _events(self, node, events, pulls: trio.MemorySendChannel[tuple[str, str]]) -> None:
        assert self.settings is not None and self.metrics is not None
        async for event in events:
            kind = event.get("Event")
            if kind != "user":
                self._set_members(list(event.get("Members") or []), replace=False)
                continue
            if event.get("Name") != self.settings.event_name:
                continue
            data = event.get("Payload") or b""
            self.metrics.received_bytes.inc(len(data))
            self.metrics.received.labels(self._take(node, data, pulls)).inc()

    def _take(self, node, data: Any, pulls: trio.MemorySendChannel[tuple[str, str]]) -> str:
        """Merge one event; the outcome counted."""
        try:
            if not isinstance(data, bytes):
                raise payload.PayloadError("the payload is not bytes")
            message = payload.decode(data)
        except payload.PayloadError as e:
            log.warning("session event dropped", error=str(e))
            return "malformed"
        if message.origin == self.node_id:
            return "own"
        if isinstance(message, payload.Announcement):
            if node.sessions.digest(message.user) == message.digest:
                return "unchanged"
            try:
                pulls.send_nowait((message.origin, message.user))
            except trio.WouldBlock:
                return "pull_dropped"
            return "announced"
        return node.sessions.merge_remote(message.user, message.delta)

    async def _publish(self, node, client: SerfClient) -> None:
        assert self.settings is not None and self.metrics is not None and self._receive
        name = self.settings.event_name
        async for user, delta in self._receive:
            payloads = payload.encode_change(self.node_id, user, delta, len(name))
            kind = "delta"
            if not payloads:
                digest = node.sessions.digest(user)
                announcement = digest and payload.encode_announcement(
                    self.node_id, user, digest, len(name))
                if not announcement:
                    self.metrics.dropped.labels("too_large").inc()
                    continue
                payloads, kind = [announcement], "announce"
            for data in payloads:
                try:
                    await client.event(name, data)
                except SerfRefused as e:  # this event only: anti-entropy carries the change
                    self.metrics.dropped.labels("refused").inc()
                    log.warning("session event refused by the agent", error=str(e))
                    continue
                self.metrics.sent.labels(kind).inc()
                self.metrics.sent_bytes.inc(len(data))

    async def _anti_entropy(self, client: SerfClient) -> None:
        """A round at link-up, then one every interval (jittered so nodes do not align)."""
        assert self.settings is not None
        rounds = 0
        while True:
            if not self.keys or self._keys_stale or (rounds and rounds % KEY_REFRESH_ROUNDS == 0):
                self._keys_stale = False
                await self._refresh_keys(client)
            self._set_members(await client.members(), replace=True)
            if not await self._round() and self.keys:
                await self._refresh_keys(client)  # a rotation may have left us behind
            rounds += 1
            interval = self.settings.anti_entropy_interval_s
            await trio.sleep(interval * random.uniform(0.8, 1.2))  # noqa: S311 - spread only

    async def _round(self) -> bool:
        """One anti-entropy round with a random live peer; False when it failed."""
        assert self.settings is not None and self.metrics is not None and self._sync
        peers = self._peers()
        if not peers or not self.keys:
            self.metrics.rounds.labels("no_peer" if self.keys else "no_key").inc()
            return True
        target = random.choice(peers)  # noqa: S311 - any peer will do; nothing secret
        address = target.peer_address
        assert address is not None
        result = None

        async def requests(call) -> None:
            nonlocal result
            assert self._sync is not None
            result = await self._sync.round(call)

        try:
            await peer.ask(address, self.keys, self.settings.timeout_s, requests)
        except (peer.PeerError, ValueError) as e:
            self.metrics.rounds.labels("failed").inc()
            log.warning("anti-entropy round failed", peer=target.segue_id, error=str(e))
            return False
        assert result is not None
        self.metrics.rounds.labels("ok").inc()
        self.metrics.repaired.inc(result.changed)
        if result.changed:
            log.info("anti-entropy repaired", peer=target.segue_id, listeners=result.changed,
                     sent=result.sent)
        return True

    async def _pulls(self, pulls: trio.MemoryReceiveChannel[tuple[str, str]]) -> None:
        """Fetch the states announcements named from their origins."""
        assert self.settings is not None and self.metrics is not None
        async for origin, user in pulls:
            target = next((m for m in self._peers() if m.segue_id == origin), None)
            if target is None or target.peer_address is None or self._sync is None:
                continue

            async def requests(call, user: str = user, sync: Sync = self._sync) -> None:
                assert self.metrics is not None
                self.metrics.repaired.inc(await sync.pull(call, [user]))

            try:
                await peer.ask(target.peer_address, self.keys, self.settings.timeout_s, requests)
            except (peer.PeerError, ValueError) as e:
                log.warning("pull failed", peer=origin, error=str(e))

    # --- the peer channel's answering side ----------------------------------------------------
    async def _serve_peer(self, stream: trio.SocketStream) -> None:
        assert self.settings is not None and self.metrics is not None
        if self._sync is None or self._connections >= MAX_PEER_CONNECTIONS:
            self.metrics.peer_refused.labels("busy").inc()
            await stream.aclose()
            return
        self._connections += 1
        try:
            await peer.serve_connection(stream, lambda: self.keys, self._sync.answer,
                                        self.settings.timeout_s)
        except peer.PeerError as e:
            self.metrics.peer_refused.labels("unsealed").inc()
            log.warning("peer connection refused", error=str(e))
            self._keys_stale = True  # perhaps a rotation this node has not heard of yet
        except (trio.TooSlowError, trio.BrokenResourceError, OSError):
            self.metrics.peer_refused.labels("broken").inc()
        finally:
            self._connections -= 1


def _first_error(group: BaseExceptionGroup) -> str:
    """The message of the first exception inside (nested) groups: what broke the link."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return str(error)


def _join_address(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
