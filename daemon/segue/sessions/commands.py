"""Player commands: parsed strictly from JSON, then turned into a delta of the session.

Parsing says what is malformed (400, naming the field); applying says what cannot apply to the
session as it is (409: seeking past the end, skipping with an empty queue, moving to a device
that is not there). Applying is pure: the service hands in the stamp, the time, the track
lengths it knows and fresh item ids, and merges the delta that comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segue.sessions.hlc import Stamp
from segue.sessions.state import (
    MAX_ID,
    REPEAT_MODES,
    Device,
    Playback,
    QueueItem,
    Register,
    SessionState,
)

MAX_QUEUE = 500
#: "play here": the new device starts this long after the command at the least, so that the
#: old device hears the change before it must stop (Jellyfin SyncPlay's scheduled unpause).
HANDOFF_MIN_MS = 300
# The fields each command takes beyond type, device, command_id, device_name, device_kind.
FIELDS: dict[str, frozenset[str]] = {
    "play": frozenset({"track", "position_ms", "queue"}),
    "pause": frozenset(),
    "resume": frozenset(),
    "seek": frozenset({"position_ms"}),
    "next": frozenset(),
    "previous": frozenset(),
    "queue_add": frozenset({"track", "after"}),
    "queue_remove": frozenset({"item"}),
    "queue_move": frozenset({"item", "after"}),
    "transfer": frozenset({"to"}),
    "set_volume": frozenset({"volume", "target"}),
    "set_shuffle": frozenset({"shuffle"}),
    "set_repeat": frozenset({"repeat"}),
    "ping": frozenset({"echo_ms"}),
}
COMMON = frozenset({"type", "device", "command_id", "device_name", "device_kind"})


class CommandError(Exception):
    """A command that is malformed (400) or cannot apply now (409); the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Command:
    """One parsed command."""

    type: str
    device: str
    args: dict[str, Any]
    command_id: str | None = None
    device_name: str | None = None
    device_kind: str | None = None

    def tracks(self) -> list[str]:
        """The tracks the command names (the token must grant each)."""
        return [*([self.args["track"]] if "track" in self.args else []),
                *self.args.get("queue", [])]


def parse(doc: Any, is_track: Callable[[str], bool]) -> Command:
    """A Command from a JSON document; CommandError(400) naming the first bad field."""
    if not isinstance(doc, dict):
        raise CommandError(400, "a command is a JSON object")
    kind = doc.get("type")
    if kind not in FIELDS:
        raise CommandError(400, f"type: one of {', '.join(sorted(FIELDS))}")
    unknown = sorted(set(doc) - COMMON - FIELDS[kind])
    if unknown:
        raise CommandError(400, f"{unknown[0]}: not a field of {kind}")
    args: dict[str, Any] = {}
    if "track" in FIELDS[kind]:
        args["track"] = _track(doc.get("track"), "track", is_track)
    if "position_ms" in FIELDS[kind]:
        args["position_ms"] = _millis(doc.get("position_ms", 0 if kind == "play" else None),
                                      "position_ms")
    if kind == "play" and doc.get("queue") is not None:
        queue = doc["queue"]
        if not isinstance(queue, list) or len(queue) > MAX_QUEUE:
            raise CommandError(400, f"queue: a list of at most {MAX_QUEUE} track ids")
        args["queue"] = [_track(t, "queue", is_track) for t in queue]
    for name in ("item", "to"):
        if name in FIELDS[kind]:
            args[name] = _id(doc.get(name), name)
    if "after" in FIELDS[kind]:
        args["after"] = None if doc.get("after") is None else _id(doc["after"], "after")
    if kind == "set_volume":
        volume = doc.get("volume")
        if type(volume) is not int or not 0 <= volume <= 100:
            raise CommandError(400, "volume: a whole number from 0 to 100")
        args["volume"] = volume
        args["target"] = _id(doc.get("target", doc.get("device")), "target")
    if kind == "set_shuffle":
        if not isinstance(doc.get("shuffle"), bool):
            raise CommandError(400, "shuffle: true or false")
        args["shuffle"] = doc["shuffle"]
    if kind == "set_repeat":
        if doc.get("repeat") not in REPEAT_MODES:
            raise CommandError(400, f"repeat: one of {', '.join(REPEAT_MODES)}")
        args["repeat"] = doc["repeat"]
    if kind == "ping" and doc.get("echo_ms") is not None:
        args["echo_ms"] = _millis(doc["echo_ms"], "echo_ms")
    return Command(
        kind, _id(doc.get("device"), "device"), args,
        command_id=_optional_id(doc.get("command_id"), "command_id"),
        device_name=_optional_text(doc.get("device_name"), "device_name"),
        device_kind=_optional_text(doc.get("device_kind"), "device_kind"))


@dataclass(frozen=True)
class Context:
    """What applying a command needs from the node."""

    stamp: Stamp
    now_ms: int
    node: str
    duration_ms: Callable[[str], int | None]  # a track's length, None when unknown
    new_id: Callable[[], str]  # a fresh queue item id
    rtt_ms: Callable[[str], int]  # a device's measured round trip (0 when unmeasured)


def apply(state: SessionState, command: Command, ctx: Context) -> SessionState:
    """The delta `command` makes to `state`; CommandError(409) when it cannot apply."""
    delta = SessionState()
    _register_device(state, command, ctx, delta)
    handler = _APPLY[command.type]
    handler(state, command, ctx, delta)
    return delta


def _register_device(state: SessionState, command: Command, ctx: Context,
                     delta: SessionState) -> None:
    """A command is also the device saying it is here: add it, or update its name."""
    known = state.devices.get(command.device)
    current = known.value if known is not None else None
    wanted = Device(
        command.device_name or (current.name if current else command.device),
        command.device_kind or (current.kind if current else "unknown"),
        ctx.node)
    if current != wanted:
        delta.devices[command.device] = Register(wanted, ctx.stamp)


def _playing(state: SessionState) -> Playback:
    if state.playback is None or state.playback.value.track_id is None:
        raise CommandError(409, "nothing is playing")
    return state.playback.value


def _set_playback(delta: SessionState, ctx: Context, playback: Playback) -> None:
    delta.playback = Register(playback, ctx.stamp)


def _check_position(track: str, position_ms: int, ctx: Context) -> None:
    length = ctx.duration_ms(track)
    if length is not None and position_ms > length:
        raise CommandError(409, f"position_ms: {position_ms} is past the end of the track "
                                f"({length} ms)")


def _play(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    _check_position(c.args["track"], c.args["position_ms"], ctx)
    _set_playback(delta, ctx, Playback(c.args["track"], c.args["position_ms"], ctx.now_ms,
                                       1.0, True))
    delta.active_device = Register(c.device, ctx.stamp)
    if "queue" in c.args:
        for item_id in state.queue:
            delta.removed[item_id] = ctx.stamp
        for place, track in enumerate(c.args["queue"]):
            _add_item(delta, ctx, track, float(place))


def _pause(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    p = _playing(state)
    _set_playback(delta, ctx, Playback(p.track_id, p.position_at(ctx.now_ms),
                                       max(ctx.now_ms, p.at_ms), p.rate, False))


def _resume(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    p = _playing(state)
    _set_playback(delta, ctx, Playback(p.track_id, p.position_at(ctx.now_ms), ctx.now_ms,
                                       p.rate, True))
    if state.active_device is None or state.active_device.value is None:
        delta.active_device = Register(c.device, ctx.stamp)


def _seek(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    p = _playing(state)
    assert p.track_id is not None
    _check_position(p.track_id, c.args["position_ms"], ctx)
    _set_playback(delta, ctx, Playback(p.track_id, c.args["position_ms"], ctx.now_ms,
                                       p.rate, p.playing))


def _next(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    repeat = state.repeat.value if state.repeat else "off"
    if repeat == "one" and state.playback is not None and state.playback.value.track_id:
        p = state.playback.value
        _set_playback(delta, ctx, Playback(p.track_id, 0, ctx.now_ms, p.rate, True))
        return
    items = state.queue_items()
    if not items:
        raise CommandError(409, "the queue is empty")
    shuffle = bool(state.shuffle.value) if state.shuffle else False
    item_id, track = random.choice(items) if shuffle else items[0]  # noqa: S311
    delta.removed[item_id] = ctx.stamp
    if repeat == "all" and state.playback is not None and state.playback.value.track_id:
        last = max((r.value for r in state.order.values()), default=0.0)
        _add_item(delta, ctx, state.playback.value.track_id, last + 1)
    _set_playback(delta, ctx, Playback(track, 0, ctx.now_ms, 1.0, True))


def _previous(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    p = _playing(state)
    _set_playback(delta, ctx, Playback(p.track_id, 0, ctx.now_ms, p.rate, p.playing))


def _add_item(delta: SessionState, ctx: Context, track: str, place: float) -> str:
    item_id = ctx.new_id()
    delta.queue[item_id] = QueueItem(track, ctx.stamp)
    delta.order[item_id] = Register(place, ctx.stamp)
    return item_id


def _place_after(state: SessionState, after: str | None, moving: str | None = None) -> float:
    """A place just after item `after` (None: the front), before the item that follows it."""
    places = [(state.order[i].value if i in state.order else 0.0, i)
              for i, _ in state.queue_items() if i != moving]
    if after is None:
        return places[0][0] - 1.0 if places else 0.0
    index = next((n for n, (_, i) in enumerate(places) if i == after), None)
    if index is None:
        raise CommandError(409, f"after: no item {after} in the queue")
    here = places[index][0]
    if index + 1 == len(places):
        return here + 1.0
    return (here + places[index + 1][0]) / 2


def _queue_add(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    if len(state.queue) >= MAX_QUEUE:
        raise CommandError(409, f"the queue is full ({MAX_QUEUE} items)")
    after = c.args["after"]
    items = state.queue_items()
    if after is None and items:
        after = items[-1][0]  # no place given: the end
    _add_item(delta, ctx, c.args["track"], _place_after(state, after))


def _queue_remove(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    if c.args["item"] not in state.queue:
        raise CommandError(409, f"item: no item {c.args['item']} in the queue")
    delta.removed[c.args["item"]] = ctx.stamp


def _queue_move(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    item = c.args["item"]
    if item not in state.queue:
        raise CommandError(409, f"item: no item {item} in the queue")
    if c.args["after"] == item:
        raise CommandError(409, "after: an item cannot follow itself")
    delta.order[item] = Register(_place_after(state, c.args["after"], moving=item), ctx.stamp)


def _transfer(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    target = c.args["to"]
    if target not in state.present_devices():
        raise CommandError(409, f"to: device {target} is not one of this listener's devices")
    delta.active_device = Register(target, ctx.stamp)
    if state.playback is None or state.playback.value.track_id is None:
        return
    p = state.playback.value
    start = ctx.now_ms + max(2 * ctx.rtt_ms(target), HANDOFF_MIN_MS)
    # The old device stops, and the new one starts, at `start`, at the same position.
    _set_playback(delta, ctx, Playback(p.track_id, p.position_at(start), start, p.rate,
                                       p.playing))


def _set_volume(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    target = c.args["target"]
    if target != c.device and target not in state.present_devices():
        raise CommandError(409, f"target: device {target} is not one of this listener's "
                                f"devices")
    delta.volumes[target] = Register(c.args["volume"], ctx.stamp)


def _set_shuffle(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    delta.shuffle = Register(c.args["shuffle"], ctx.stamp)


def _set_repeat(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    delta.repeat = Register(c.args["repeat"], ctx.stamp)


def _ping(state: SessionState, c: Command, ctx: Context, delta: SessionState) -> None:
    pass  # the device is registered; the round trip is the service's (it is this node's)


_APPLY: dict[str, Callable[[SessionState, Command, Context, SessionState], None]] = {
    "play": _play, "pause": _pause, "resume": _resume, "seek": _seek, "next": _next,
    "previous": _previous, "queue_add": _queue_add, "queue_remove": _queue_remove,
    "queue_move": _queue_move, "transfer": _transfer, "set_volume": _set_volume,
    "set_shuffle": _set_shuffle, "set_repeat": _set_repeat, "ping": _ping,
}
assert set(_APPLY) == set(FIELDS)


def leave(state: SessionState, device: str, ctx: Context) -> SessionState:
    """The delta of `device` leaving (not seen for too long): it goes from the device list,
    and playback pauses at its extrapolated position if it was the active device."""
    delta = SessionState()
    known = state.devices.get(device)
    if known is None or not known.value.present:
        return delta
    d = known.value
    delta.devices[device] = Register(Device(d.name, d.kind, d.node, present=False), ctx.stamp)
    if state.active_device is not None and state.active_device.value == device:
        delta.active_device = Register(None, ctx.stamp)
        if state.playback is not None and state.playback.value.playing:
            p = state.playback.value
            delta.playback = Register(Playback(p.track_id, p.position_at(ctx.now_ms),
                                               max(ctx.now_ms, p.at_ms), p.rate, False),
                                      ctx.stamp)
    return delta


def _id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise CommandError(400, f"{name}: 1 to {MAX_ID} printable characters")
    return value


def _optional_id(value: Any, name: str) -> str | None:
    return None if value is None else _id(value, name)


def _optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_ID or not value.isprintable():
        raise CommandError(400, f"{name}: at most {MAX_ID} printable characters")
    return value


def _track(value: Any, name: str, is_track: Callable[[str], bool]) -> str:
    if not isinstance(value, str) or not is_track(value):
        raise CommandError(400, f"{name}: a track id (8 to 64 lowercase letters and digits)")
    return value


def _millis(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise CommandError(400, f"{name}: a whole number of milliseconds, 0 or more")
    return value
