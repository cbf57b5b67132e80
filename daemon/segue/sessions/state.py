"""A listener's session as a join-semilattice: any two states (or a state and a delta) merge
into one, in any order, any number of times, with the same result.

The parts, each with its own rule:

* registers (the playback register, the active device, shuffle, repeat, each device, each
  device's volume, each queue item's place): the value with the later stamp wins (last action
  wins); the playback register (track, position as of a time, rate, playing) moves as one
  value, so a pause on one device and a seek on another never mix into a state nobody chose;
* the queue: items are added with ids of their own, so adding a track twice makes two items,
  and a removal names the item it saw: it beats that addition and no other (add wins over a
  concurrent removal it did not see). Removals are kept as tombstones so that a late copy of
  the addition cannot bring the item back.

A delta is a state holding only what one change touched; state and delta merge the same way, so
a transport can send deltas as they happen and whole states for anti-entropy.

Positions are never sent as ticks: a reader extrapolates from (position, at_ms, rate).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from segue.sessions.hlc import ZERO, Stamp

T = TypeVar("T")

REPEAT_MODES = ("off", "one", "all")
MAX_ID = 64  # device ids, item ids and names are short: they travel in every delta


class StateError(ValueError):
    """A state or delta from elsewhere is malformed: drop it (it changes nothing)."""


@dataclass(frozen=True, slots=True)
class Playback:
    """What is playing, where, and whether: one value, changed whole."""

    track_id: str | None
    position_ms: int  # as of at_ms
    at_ms: int  # server time (ms) the position holds for; may be in the future (scheduled)
    rate: float
    playing: bool

    def position_at(self, now_ms: int) -> int:
        """The position a reader shows at `now_ms` (extrapolated while playing)."""
        if not self.playing or now_ms <= self.at_ms:
            return self.position_ms
        return self.position_ms + int((now_ms - self.at_ms) * self.rate)

    def to_json(self) -> dict[str, Any]:
        return {"track_id": self.track_id, "position_ms": self.position_ms, "at_ms": self.at_ms,
                "rate": self.rate, "playing": self.playing}

    @classmethod
    def from_json(cls, doc: Any) -> Playback:
        doc = _dict(doc, "playback")
        track = doc.get("track_id")
        if track is not None and not _short_text(track):
            raise StateError("playback.track_id")
        rate = doc.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not (
                math.isfinite(rate) and 0 < rate <= 4):
            raise StateError("playback.rate")
        return cls(track, _whole(doc.get("position_ms"), "playback.position_ms"),
                   _whole(doc.get("at_ms"), "playback.at_ms"), float(rate),
                   _flag(doc.get("playing"), "playback.playing"))


@dataclass(frozen=True, slots=True)
class Device:
    """A player of the listener's: `present` False once it left (a tombstone: a late copy of
    its arrival must not bring it back)."""

    name: str
    kind: str
    node: str
    present: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "node": self.node,
                "present": self.present}

    @classmethod
    def from_json(cls, doc: Any) -> Device:
        doc = _dict(doc, "device")
        for key in ("name", "kind", "node"):
            if not _short_text(doc.get(key), empty=True):
                raise StateError(f"device.{key}")
        return cls(doc["name"], doc["kind"], doc["node"],
                   _flag(doc.get("present"), "device.present"))


@dataclass(frozen=True, slots=True)
class Register(Generic[T]):
    """A value and the stamp of the change that set it."""

    value: T
    stamp: Stamp


def _later(a: Register[T] | None, b: Register[T] | None,
           encode: Callable[[T], Any]) -> Register[T] | None:
    """The register that wins: the later stamp; on equal stamps (only a faulty or hostile
    node reuses one) the larger encoded value, so every node picks the same."""
    if a is None:
        return b
    if b is None or a.stamp > b.stamp:
        return a
    if b.stamp > a.stamp:
        return b
    return a if _canonical(encode(a.value)) >= _canonical(encode(b.value)) else b


@dataclass(frozen=True, slots=True)
class QueueItem:
    track_id: str
    added: Stamp


def _same(value: Any) -> Any:
    return value


def _encode_playback(p: Playback) -> Any:
    return p.to_json()


def _encode_device(d: Device) -> Any:
    return d.to_json()


@dataclass
class SessionState:
    """One listener's session (or a delta of it)."""

    playback: Register[Playback] | None = None
    active_device: Register[str | None] | None = None
    shuffle: Register[bool] | None = None
    repeat: Register[str] | None = None
    devices: dict[str, Register[Device]] = field(default_factory=dict)
    volumes: dict[str, Register[int]] = field(default_factory=dict)
    queue: dict[str, QueueItem] = field(default_factory=dict)  # item id -> its addition
    removed: dict[str, Stamp] = field(default_factory=dict)  # item id -> its removal
    order: dict[str, Register[float]] = field(default_factory=dict)  # item id -> its place

    # --- the lattice ----------------------------------------------------------------------
    def merge(self, other: SessionState) -> bool:
        """Join `other` (a state or a delta) into this one; whether anything changed."""
        changed = False
        playback = _later(self.playback, other.playback, _encode_playback)
        active = _later(self.active_device, other.active_device, _same)
        shuffle = _later(self.shuffle, other.shuffle, _same)
        repeat = _later(self.repeat, other.repeat, _same)
        changed = (playback is not self.playback or active is not self.active_device
                   or shuffle is not self.shuffle or repeat is not self.repeat)
        self.playback, self.active_device, self.shuffle, self.repeat = (
            playback, active, shuffle, repeat)
        changed |= _merge_map(self.devices, other.devices, _encode_device)
        changed |= _merge_map(self.volumes, other.volumes, _same)
        changed |= _merge_map(self.order, other.order, _same)
        for item_id, removed in other.removed.items():
            mine = self.removed.get(item_id)
            if mine is None or removed > mine:
                self.removed[item_id] = removed
                changed = True
                # Removed, the item goes, and so does its place: only the tombstone stays.
                self.queue.pop(item_id, None)
                self.order.pop(item_id, None)
        for item_id, added in other.queue.items():
            if item_id in self.removed:
                continue
            mine_item = self.queue.get(item_id)
            if mine_item is None or (added.added, added.track_id) > (mine_item.added,
                                                                        mine_item.track_id):
                self.queue[item_id] = added
                changed = True
        for item_id in other.order:
            if item_id in self.removed:
                self.order.pop(item_id, None)
        return changed

    def restamped(self, fix: Callable[[Stamp], Stamp]) -> SessionState:
        """The same state with every stamp passed through `fix` (clamping a remote delta)."""
        def reg(r: Register[Any] | None) -> Register[Any] | None:
            return None if r is None else Register(r.value, fix(r.stamp))

        def regs(m: dict[str, Register[Any]]) -> dict[str, Register[Any]]:
            return {k: Register(r.value, fix(r.stamp)) for k, r in m.items()}

        return SessionState(
            playback=reg(self.playback), active_device=reg(self.active_device),
            shuffle=reg(self.shuffle), repeat=reg(self.repeat), devices=regs(self.devices),
            volumes=regs(self.volumes), order=regs(self.order),
            queue={k: QueueItem(q.track_id, fix(q.added)) for k, q in self.queue.items()},
            removed={k: fix(v) for k, v in self.removed.items()})

    def copy(self) -> SessionState:
        return SessionState.from_json(self.to_json())

    # --- reading ----------------------------------------------------------------------------
    @property
    def stamp(self) -> Stamp:
        """The latest change this state holds (the SSE event id of its view)."""
        return max(self._stamps(), default=ZERO)

    def _stamps(self) -> Iterator[Stamp]:
        for register in (self.playback, self.active_device, self.shuffle, self.repeat):
            if register is not None:
                yield register.stamp
        for registers in (self.devices, self.volumes, self.order):
            for r in registers.values():
                yield r.stamp
        for item in self.queue.values():
            yield item.added
        yield from self.removed.values()

    def present_devices(self) -> dict[str, Device]:
        return {d: r.value for d, r in sorted(self.devices.items()) if r.value.present}

    def queue_items(self) -> list[tuple[str, str]]:
        """(item id, track id) in queue order."""
        def place(item_id: str) -> tuple[float, str]:
            register = self.order.get(item_id)
            return (register.value if register is not None else 0.0, item_id)
        return [(i, self.queue[i].track_id) for i in sorted(self.queue, key=place)]

    def view(self, now_ms: int) -> dict[str, Any]:
        """What players get: the state at `now_ms`, with the server's time to extrapolate."""
        playback = self.playback.value if self.playback is not None else None
        return {
            "stamp": str(self.stamp),
            "server_time_ms": now_ms,
            "active_device": self.active_device.value if self.active_device else None,
            "playback": None if playback is None else {
                **playback.to_json(), "position_now_ms": playback.position_at(now_ms)},
            "queue": [{"item": i, "track_id": t} for i, t in self.queue_items()],
            "shuffle": bool(self.shuffle.value) if self.shuffle else False,
            "repeat": self.repeat.value if self.repeat else "off",
            "devices": [{"device_id": d, **dev.to_json(),
                         "volume": self.volumes[d].value if d in self.volumes else None}
                        for d, dev in self.present_devices().items()],
        }

    def digest(self) -> str:
        """A short hash of the whole state: equal on two nodes iff they hold the same state."""
        return hashlib.sha256(_canonical(self.to_json()).encode()).hexdigest()[:32]

    # --- JSON: persistence and transports ---------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        scalars: list[tuple[str, Register[Any] | None, Callable[[Any], Any]]] = [
            ("playback", self.playback, _encode_playback),
            ("active_device", self.active_device, _same),
            ("shuffle", self.shuffle, _same), ("repeat", self.repeat, _same)]
        for name, register, encode in scalars:
            if register is not None:
                doc[name] = [encode(register.value), register.stamp.to_json()]
        maps: list[tuple[str, dict[str, Register[Any]], Callable[[Any], Any]]] = [
            ("devices", self.devices, _encode_device), ("volumes", self.volumes, _same),
            ("order", self.order, _same)]
        for name, registers, encode in maps:
            if registers:
                doc[name] = {k: [encode(r.value), r.stamp.to_json()]
                             for k, r in sorted(registers.items())}
        if self.queue:
            doc["queue"] = {k: [q.track_id, q.added.to_json()]
                            for k, q in sorted(self.queue.items())}
        if self.removed:
            doc["removed"] = {k: s.to_json() for k, s in sorted(self.removed.items())}
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> SessionState:
        """A state or delta from its JSON form; StateError for anything malformed."""
        doc = _dict(doc, "state")
        unknown = set(doc) - {"playback", "active_device", "shuffle", "repeat", "devices",
                              "volumes", "order", "queue", "removed"}
        if unknown:
            raise StateError(f"unknown parts {sorted(unknown)[:3]}")
        try:
            state = cls(
                playback=_register(doc.get("playback"), Playback.from_json),
                active_device=_register(doc.get("active_device"), _device_id_or_none),
                shuffle=_register(doc.get("shuffle"), _bool),
                repeat=_register(doc.get("repeat"), _repeat),
                devices=_registers(doc.get("devices"), Device.from_json),
                volumes=_registers(doc.get("volumes"), _volume),
                order=_registers(doc.get("order"), _place),
                queue={_id(k): QueueItem(_track(v[0]), Stamp.from_json(v[1]))
                       for k, v in _dict(doc.get("queue", {}), "queue").items()
                       if _pair(v)},
                removed={_id(k): Stamp.from_json(v)
                         for k, v in _dict(doc.get("removed", {}), "removed").items()},
            )
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise StateError(str(e) or type(e).__name__) from None
        for item_id in state.removed:
            state.queue.pop(item_id, None)
            state.order.pop(item_id, None)
        return state


def _merge_map(mine: dict[str, Register[T]], theirs: dict[str, Register[T]],
               encode: Callable[[T], Any]) -> bool:
    """Join `theirs` into `mine`, register by register; whether any changed."""
    changed = False
    for key, register in theirs.items():
        current = mine.get(key)
        winner = _later(current, register, encode)
        if winner is not current:
            assert winner is not None
            mine[key] = winner
            changed = True
    return changed


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)


# --- strict readers for states from elsewhere ---------------------------------------------
def _dict(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise StateError(f"{what} is not an object")
    return doc


def _pair(v: Any) -> bool:
    if not (isinstance(v, list) and len(v) == 2):
        raise StateError("a register is [value, stamp]")
    return True


def _register(doc: Any, read: Callable[[Any], T]) -> Register[T] | None:
    if doc is None:
        return None
    _pair(doc)
    return Register(read(doc[0]), Stamp.from_json(doc[1]))


def _registers(doc: Any, read: Callable[[Any], T]) -> dict[str, Register[T]]:
    registers = _dict(doc if doc is not None else {}, "registers")
    found: dict[str, Register[T]] = {}
    for key, value in registers.items():
        register = _register(value, read)
        assert register is not None
        found[_id(key)] = register
    return found


def _short_text(value: Any, empty: bool = False) -> bool:
    return isinstance(value, str) and (empty or value != "") and len(value) <= MAX_ID and (
        value.isprintable())


def _id(value: Any) -> str:
    if not _short_text(value):
        raise StateError("an id is 1 to 64 printable characters")
    return str(value)


def _track(value: Any) -> str:
    if not _short_text(value):
        raise StateError("a track id is 1 to 64 printable characters")
    return str(value)


def _device_id_or_none(value: Any) -> str | None:
    return None if value is None else _id(value)


def _whole(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise StateError(f"{what} is not a whole number of milliseconds")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise StateError(f"{what} is not true or false")
    return value


def _bool(value: Any) -> bool:
    return _flag(value, "shuffle")


def _repeat(value: Any) -> str:
    if value not in REPEAT_MODES:
        raise StateError("repeat is off, one or all")
    return str(value)


def _volume(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= 100:
        raise StateError("a volume is a whole number from 0 to 100")
    return value


def _place(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateError("a queue place is a finite number")
    return float(value)
