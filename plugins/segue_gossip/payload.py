"""What a session change looks like inside a Serf user event, and back.

Serf refuses a user event whose name and payload together pass 512 bytes, so a delta travels as
compact msgpack: the field names of the session's JSON form become small integers, and
lowercase hex strings (track and queue-item ids) travel as their bytes. Both are bijections,
so the decoded delta is exactly the JSON form that was encoded.

A change that does not fit in one event is split along its parts (any part of a delta is a
delta, and the parts merge in any order to the whole). One that needs more than
`MAX_EVENTS_PER_CHANGE` events, or whose single part is too large (a very long user name),
is announced instead: the event names the user and the digest of the state on the origin, and
peers whose digest differs pull that state from the origin's peer port.

Event payloads (msgpack arrays):

    [1, origin, user, delta]     a change (or part of one), delta in the compact form
    [2, origin, user, digest]    "the origin holds this state for user": pull it if yours differs
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack

DELTA = 1
ANNOUNCE = 2
EVENT_LIMIT = 512  # Serf's UserEventSizeLimit: name plus payload, before encoding
# Serf 0.8 also checks the encoded message against the same limit: measured against a real
# agent, its framing (type, Lamport time, field names) took 30 to 32 bytes beside the name and
# payload; 40 leaves room for a Lamport time that has grown to eight bytes.
ENCODING_OVERHEAD = 40
MAX_EVENTS_PER_CHANGE = 4
MAX_USER = 256

# Field names of the session state's JSON form (segue.sessions.state), in a fixed order: the
# position is the code. Append only: a code, once shipped, keeps its meaning.
FIELDS = ("playback", "active_device", "shuffle", "repeat", "devices", "volumes", "order",
          "queue", "removed", "track_id", "position_ms", "at_ms", "rate", "playing", "name",
          "kind", "node", "present")
_CODE = {name: i for i, name in enumerate(FIELDS)}
_SCALARS = FIELDS[:4]
_MAPS = FIELDS[4:9]
_HEX = re.compile(r"(?:[0-9a-f]{2}){8,}")


class PayloadError(ValueError):
    """An event payload that is not one of ours, or is malformed: drop it and count it."""


@dataclass(frozen=True, slots=True)
class Change:
    origin: str
    user: str
    delta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Announcement:
    origin: str
    user: str
    digest: str


# --- the compact form -------------------------------------------------------------------------
def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        return {_CODE.get(k, k): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, str) and _HEX.fullmatch(value):
        return bytes.fromhex(value)
    return value


def _expand(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        raise PayloadError("nested too deeply")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, int) and not isinstance(k, bool):
                if not 0 <= k < len(FIELDS):
                    raise PayloadError(f"unknown field code {k}")
                k = FIELDS[k]
            elif not isinstance(k, str):
                raise PayloadError("a map key that is neither a field code nor text")
            out[k] = _expand(v, depth + 1)
        return out
    if isinstance(value, list):
        return [_expand(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        if len(value) < 8:
            raise PayloadError("an id shorter than 8 bytes")
        return value.hex()
    return value


def _pack(doc: list[Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


# --- encoding ---------------------------------------------------------------------------------
def encode_change(origin: str, user: str, delta: dict[str, Any], name_length: int) -> list[bytes]:
    """The payloads that carry `delta`: one, a few parts, or one announcement (empty list if
    even that cannot fit, which only an absurd user or node name causes)."""
    budget = _budget(name_length)
    whole = _pack([DELTA, origin, user, _compact(delta)])
    if len(whole) <= budget:
        return [whole]
    payloads: list[bytes] = []
    current: dict[str, Any] = {}
    for part in _parts(delta):
        candidate = _join(current, part)
        if len(_pack([DELTA, origin, user, _compact(candidate)])) <= budget:
            current = candidate
            continue
        if not current:
            return []  # a single part does not fit: announce
        payloads.append(_pack([DELTA, origin, user, _compact(current)]))
        current = part
        if len(_pack([DELTA, origin, user, _compact(current)])) > budget:
            return []
    if current:
        payloads.append(_pack([DELTA, origin, user, _compact(current)]))
    return payloads if len(payloads) <= MAX_EVENTS_PER_CHANGE else []


def encode_announcement(origin: str, user: str, digest: str, name_length: int) -> bytes | None:
    payload = _pack([ANNOUNCE, origin, user, bytes.fromhex(digest)])
    return payload if len(payload) <= _budget(name_length) else None


def _budget(name_length: int) -> int:
    """The most payload bytes an event named with `name_length` bytes can carry."""
    return EVENT_LIMIT - ENCODING_OVERHEAD - name_length


def _parts(delta: dict[str, Any]) -> list[dict[str, Any]]:
    """The smallest deltas that join back to `delta`: each register, each map entry."""
    parts: list[dict[str, Any]] = [{name: delta[name]} for name in _SCALARS if name in delta]
    for name in _MAPS:
        for key, value in (delta.get(name) or {}).items():
            parts.append({name: {key: value}})
    return parts


def _join(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) and k in _MAPS else v) for k, v in a.items()}
    for name, value in b.items():
        if name in _MAPS:
            out.setdefault(name, {}).update(value)
        else:
            out[name] = value
    return out


# --- decoding ---------------------------------------------------------------------------------
def decode(payload: bytes) -> Change | Announcement:
    """One event payload; PayloadError for anything else (never another exception)."""
    if len(payload) > EVENT_LIMIT:
        raise PayloadError(f"{len(payload)} bytes, more than an event can hold")
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True,
                              max_str_len=EVENT_LIMIT, max_bin_len=EVENT_LIMIT,
                              max_array_len=EVENT_LIMIT, max_map_len=EVENT_LIMIT)
    except Exception as e:  # msgpack raises several types for bad input
        raise PayloadError(f"not msgpack: {type(e).__name__}") from None
    if not isinstance(doc, list) or len(doc) != 4:
        raise PayloadError("not a [kind, origin, user, body] array")
    kind, origin, user, body = doc
    if not isinstance(origin, str) or not 0 < len(origin) <= 64:
        raise PayloadError("origin is not a node id")
    if not isinstance(user, str) or not 0 < len(user) <= MAX_USER:
        raise PayloadError("user is not a listener id")
    if kind == DELTA:
        delta = _expand(body)
        if not isinstance(delta, dict):
            raise PayloadError("the delta is not a map")
        return Change(origin, user, delta)
    if kind == ANNOUNCE:
        if not isinstance(body, bytes) or len(body) != 16:
            raise PayloadError("an announcement's digest is 16 bytes")
        return Announcement(origin, user, body.hex())
    raise PayloadError(f"unknown kind {kind!r}")
