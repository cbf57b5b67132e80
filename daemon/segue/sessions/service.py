"""The sessions of one node: commands in, the state out to every subscriber, deltas out to
the transports, device expiry, and the write-behind to disk.

Everything runs on the event loop of the node's main process (workers reach it through
sessions/ipc.py), so a session is changed by one task at a time and needs no lock. Subscribers
never queue: each waits for "something changed" and then reads the latest state, so a slow
event stream skips intermediate states instead of piling them up.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from segue.metrics import Metrics
from segue.sessions import commands
from segue.sessions.commands import CommandError
from segue.sessions.hlc import Clock
from segue.sessions.state import SessionState, StateError
from segue.sessions.store import SessionStore
from segue.threads import in_thread

log = structlog.get_logger("segue.sessions")

FLUSH_EVERY_S = 0.5
FLUSH_BATCH = 32
STORE_TIMEOUT_S = 10.0
RECENT_COMMANDS = 64  # command ids remembered per listener, for retries
#: A listener silent this long loses its rate bucket (it would be full again), its remembered
#: command ids (a retry comes within seconds) and its devices' round trips: what is kept per
#: listener in memory is bounded by the listeners active in the last ten minutes.
FORGET_IDLE_S = 600.0
MAX_RTT_MS = 10_000


class RateLimited(Exception):
    """The listener sent commands faster than [sessions] commands_per_s allows."""


@dataclass
class _Topic:
    """One listener's subscribers: woken together when the state changes."""

    changed: trio.Event = field(default_factory=trio.Event)
    subscribers: int = 0
    devices: dict[str, int] = field(default_factory=dict)  # device -> open streams
    changed_at: float = 0.0  # perf_counter of the last change accepted here

    def notify(self) -> None:
        self.changed_at = time.perf_counter()
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class _Bucket:
    tokens: float
    at: float


class Subscription:
    """An open event stream: wait for the state after the one already sent."""

    def __init__(self, sessions: Sessions, user: str, topic: _Topic) -> None:
        self._sessions = sessions
        self._user = user
        self._topic = topic

    async def next(self, after: str | None, timeout_s: float) -> dict[str, Any] | None:
        """The state's view once its stamp differs from `after` (at once if it already
        does), or None when `timeout_s` passes first (time for a heartbeat)."""
        with trio.move_on_after(timeout_s):
            while True:
                changed = self._topic.changed
                view = self._sessions.view(self._user)
                if view["stamp"] != after:
                    return view
                await changed.wait()
        return None

    @property
    def changed_at(self) -> float:
        return self._topic.changed_at


class Sessions:
    """Every listener's session on this node.

    `duration_ms(track)` is a track's length in milliseconds (None when unknown), raising
    KeyError for a track this node does not have; `is_track` says whether text is a track id.
    """

    def __init__(self, node_id: str, store: SessionStore, metrics: Metrics, *,
                 device_timeout_s: float, commands_per_s: float, command_burst: int,
                 duration_ms: Callable[[str], Awaitable[int | None]],
                 is_track: Callable[[str], bool],
                 clock: Clock | None = None) -> None:
        self.node_id = node_id
        self.clock = clock or Clock(node_id)
        self._store = store
        self._metrics = metrics
        self._device_timeout_s = device_timeout_s
        self._rate = commands_per_s
        self._burst = command_burst
        self._duration_ms = duration_ms
        self._is_track = is_track
        self._states: dict[str, SessionState] = {}
        # Digests cost a canonical JSON dump each; anti-entropy asks for all of them every
        # round, so each is kept until its state changes.
        self._digests: dict[str, str] = {}
        self._topics: dict[str, _Topic] = {}
        self._recent: dict[str, OrderedDict[str, None]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._seen: dict[tuple[str, str], float] = {}  # (user, device here) -> last seen
        self._devices_here: dict[str, int] = {}  # user -> how many of their devices are here
        self._here: set[str] = set()  # listeners with a device or an event stream here
        self._presence_observers: list[Callable[[str, bool], None]] = []
        self._rtt_ms: dict[tuple[str, str], int] = {}
        self._dirty: set[str] = set()
        self._observers: list[Callable[[str, SessionState], None]] = []
        # The sessions database's own thread: never the shares' or the catalogue's.
        self._store_limiter = trio.CapacityLimiter(1)

    # --- start and stop --------------------------------------------------------------------
    async def load(self) -> None:
        """Read the sessions kept on disk; devices of this node start their timeout now."""
        self._states = await in_thread(self._store.load, limiter=self._store_limiter,
                                       timeout_s=STORE_TIMEOUT_S)
        self._digests = {}
        now = time.monotonic()
        for user, state in self._states.items():
            self.clock.observe(state.stamp)
            for device, d in state.present_devices().items():
                if d.node == self.node_id:
                    self._see(user, device, now)
        self._publish_counts()
        log.info("sessions loaded", sessions=len(self._states), path=str(self._store.path))

    async def run(self) -> None:
        """Expire devices and write changes to disk until cancelled (then write once more)."""
        try:
            while True:
                await trio.sleep(FLUSH_EVERY_S)
                self._expire_devices()
                self._forget_idle_listeners()
                self._publish_counts()
                await self.flush()
        finally:
            with trio.move_on_after(STORE_TIMEOUT_S) as final:
                final.shield = True
                await self.flush()

    async def flush(self) -> None:
        """Write the sessions changed since the last flush (in a thread). Their JSON is made
        here, a batch at a time with the loop let through in between: a thousand listeners'
        states at once would stall every stream for tens of milliseconds."""
        if not self._dirty:
            return
        docs = []
        for n, user in enumerate(list(self._dirty)):
            self._dirty.discard(user)
            docs.append((user, self._states[user].to_json()))
            if n % FLUSH_BATCH == FLUSH_BATCH - 1:
                await trio.sleep(0)
        try:
            await in_thread(self._store.save, docs, limiter=self._store_limiter,
                            timeout_s=STORE_TIMEOUT_S)
        except Exception as e:  # a full disk, a slow one: keep them for the next try
            log.error("sessions not written; retrying", path=str(self._store.path),
                      error=f"{type(e).__name__}: {e}")
            self._dirty.update(user for user, _ in docs)

    # --- what players do -------------------------------------------------------------------
    async def get(self, user: str) -> dict[str, Any]:
        """The listener's session as players see it (the SessionsPort of http/sessions.py)."""
        return self.view(user)

    def view(self, user: str) -> dict[str, Any]:
        state = self._states.get(user) or SessionState()
        return state.view(self.clock.now_ms())

    async def command(self, user: str, doc: Any,
                      allows: Callable[[str], bool] = lambda track: True) -> dict[str, Any]:
        """Apply one command; the new view. Raises CommandError (400, 403 for a track the
        token does not grant, 409) or RateLimited."""
        try:
            command = commands.parse(doc, self._is_track)
        except CommandError:
            self._count("invalid")
            raise
        refused = [t for t in command.tracks() if not allows(t)]
        if refused:
            self._count("invalid")
            raise CommandError(403, f"this token does not grant track {refused[0]}")
        if not self._take_token(user):
            self._count("limited")
            raise RateLimited()
        recent = self._recent.setdefault(user, OrderedDict())
        if command.command_id is not None and command.command_id in recent:
            self._count("duplicate")  # a retry of a command already applied: once is enough
            self._see(user, command.device, time.monotonic())
            return self.view(user)
        lengths: dict[str, int | None] = {}
        for track in self._tracks_to_check(user, command):
            try:
                lengths[track] = await self._duration_ms(track)
            except KeyError:
                self._count("conflict")
                raise CommandError(409, f"track: no track {track} on this node") from None
        if command.type == "ping" and "echo_ms" in command.args:
            rtt = self.clock.now_ms() - command.args["echo_ms"]
            if not 0 <= rtt <= MAX_RTT_MS:
                self._count("invalid")
                raise CommandError(400, "echo_ms: the server_time_ms of a recent answer")
            self._rtt_ms[user, command.device] = rtt
        state = self._states.setdefault(user, SessionState())
        context = commands.Context(
            self.clock.tick(), self.clock.now_ms(), self.node_id, lengths.get,
            new_id=lambda: uuid.uuid4().hex[:16],
            rtt_ms=lambda device: self._rtt_ms.get((user, device), 0))
        try:
            delta = commands.apply(state, command, context)
        except CommandError:
            self._count("conflict")
            raise
        self._see(user, command.device, time.monotonic())
        if command.command_id is not None:
            recent[command.command_id] = None
            while len(recent) > RECENT_COMMANDS:
                recent.popitem(last=False)
        self._count("applied")
        self._change(user, delta, local=True)
        return self.view(user)

    def _tracks_to_check(self, user: str, command: commands.Command) -> list[str]:
        if command.type in ("play", "queue_add"):
            return [command.args["track"]]
        state = self._states.get(user)
        if command.type == "seek" and state is not None and state.playback is not None:
            return [t for t in (state.playback.value.track_id,) if t]
        return []

    def _take_token(self, user: str) -> bool:
        now = time.monotonic()
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = _Bucket(float(self._burst), now)
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    @asynccontextmanager
    async def subscribe(self, user: str, device: str | None) -> AsyncIterator[Subscription]:
        """An event stream's subscription; a device with an open stream never expires."""
        topic = self._topics.setdefault(user, _Topic())
        topic.subscribers += 1
        self._update_presence(user)
        if device is not None:
            topic.devices[device] = topic.devices.get(device, 0) + 1
        self._metrics.session_subscribers.inc()
        try:
            yield Subscription(self, user, topic)
        finally:
            self._metrics.session_subscribers.dec()
            topic.subscribers -= 1
            if device is not None:
                topic.devices[device] -= 1
                if not topic.devices[device]:
                    del topic.devices[device]
                    if (user, device) in self._seen:
                        self._seen[user, device] = time.monotonic()
            if not topic.subscribers:
                del self._topics[user]
                self._update_presence(user)

    # --- the transports' door --------------------------------------------------------------
    def observe_local(self, observer: Callable[[str, SessionState], None]) -> None:
        """Call `observer(user, delta)` for every change accepted on this node."""
        self._observers.append(observer)

    def observe_presence(self, observer: Callable[[str, bool], None]) -> None:
        """Call `observer(user, True)` when a listener's first device (or event stream) is
        here, and `observer(user, False)` when the last has left."""
        self._presence_observers.append(observer)

    def local_listeners(self) -> set[str]:
        """The listeners with a device or an event stream on this node now."""
        return set(self._here)

    def apply_remote(self, user: str, doc: Any) -> bool:
        """Merge a delta (or a whole state) from another node; False when it is malformed
        (dropped and counted). Stamps too far ahead of this node's clock are clamped."""
        return self.merge_remote(user, doc) != "malformed"

    def merge_remote(self, user: str, doc: Any) -> str:
        """apply_remote, saying what the merge did: "applied" (the state changed),
        "unchanged" (it held the delta already) or "malformed" (dropped and counted)."""
        if not isinstance(user, str) or not 0 < len(user) <= 256:
            self._metrics.child(self._metrics.session_remote, "malformed").inc()
            return "malformed"
        try:
            delta = SessionState.from_json(doc)
        except StateError as e:
            self._metrics.child(self._metrics.session_remote, "malformed").inc()
            log.warning("session delta dropped", error=str(e))
            return "malformed"
        clamped = delta.restamped(self.clock.observe)
        if clamped.to_json() != delta.to_json():
            self._metrics.child(self._metrics.session_remote, "clamped").inc()
        outcome = "applied" if self._change(user, clamped, local=False) else "unchanged"
        self._metrics.child(self._metrics.session_remote, outcome).inc()
        return outcome

    def digests(self) -> dict[str, str]:
        """Each listener's state digest, for anti-entropy: equal digests, equal states."""
        for user in self._states:
            self.digest(user)
        return dict(self._digests)

    def digest(self, user: str) -> str | None:
        """One listener's state digest (None: no state here), kept until the state changes."""
        found = self._digests.get(user)
        if found is None and (state := self._states.get(user)) is not None:
            found = self._digests[user] = state.digest()
        return found

    def export(self, user: str) -> dict[str, Any] | None:
        """A listener's whole state in its JSON form (merge it with apply_remote)."""
        state = self._states.get(user)
        return None if state is None else state.to_json()

    # --- inside ---------------------------------------------------------------------------
    def _see(self, user: str, device: str, now: float) -> None:
        if (user, device) not in self._seen:
            self._devices_here[user] = self._devices_here.get(user, 0) + 1
        self._seen[user, device] = now
        self._update_presence(user)

    def _unsee(self, user: str, device: str) -> None:
        del self._seen[user, device]
        left = self._devices_here[user] - 1
        if left:
            self._devices_here[user] = left
        else:
            del self._devices_here[user]
        self._update_presence(user)

    def _update_presence(self, user: str) -> None:
        here = user in self._devices_here or user in self._topics
        if here == (user in self._here):
            return
        if here:
            self._here.add(user)
        else:
            self._here.discard(user)
        for observer in self._presence_observers:
            try:
                observer(user, here)
            except Exception:  # a transport's bug must not undo a listener's command
                log.exception("session presence observer failed")

    def _change(self, user: str, delta: SessionState, *, local: bool) -> bool:
        state = self._states.setdefault(user, SessionState())
        if not state.merge(delta):
            return False
        self._digests.pop(user, None)
        self._dirty.add(user)
        topic = self._topics.get(user)
        if topic is not None:
            topic.notify()
        if local:
            for observer in self._observers:
                try:
                    observer(user, delta)
                except Exception:  # a transport's bug must not undo a listener's command
                    log.exception("session observer failed")
        return True

    def _expire_devices(self) -> None:
        """Devices of this node not seen for device_timeout_s leave their sessions."""
        now = time.monotonic()
        for (user, device), seen in list(self._seen.items()):
            topic = self._topics.get(user)
            if topic is not None and device in topic.devices:
                self._seen[user, device] = now
                continue
            if now - seen < self._device_timeout_s:
                continue
            self._unsee(user, device)
            state = self._states.get(user)
            if state is None:
                continue
            context = commands.Context(self.clock.tick(), self.clock.now_ms(), self.node_id,
                                       lambda t: None, new_id=lambda: "", rtt_ms=lambda d: 0)
            delta = commands.leave(state, device, context)
            if delta.devices:
                log.info("device left", device=device, after_s=self._device_timeout_s)
                self._change(user, delta, local=True)

    def _forget_idle_listeners(self) -> None:
        horizon = time.monotonic() - FORGET_IDLE_S
        idle = [user for user, bucket in self._buckets.items() if bucket.at < horizon]
        for user in idle:
            del self._buckets[user]
            self._recent.pop(user, None)
        if idle:
            gone = set(idle)
            for key in [k for k in self._rtt_ms if k[0] in gone]:
                del self._rtt_ms[key]

    def _count(self, outcome: str) -> None:
        self._metrics.child(self._metrics.session_commands, outcome).inc()

    def _publish_counts(self) -> None:
        self._metrics.sessions.set(len(self._states))
        self._metrics.session_devices.set(
            sum(len(s.present_devices()) for s in self._states.values()))

