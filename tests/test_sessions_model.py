"""The session model's laws, on states and deltas hypothesis makes up (no I/O, no clock)."""

from __future__ import annotations

import contextlib
import itertools
import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from segue.sessions import commands
from segue.sessions.hlc import Clock, Stamp
from segue.sessions.state import (
    Device,
    Playback,
    QueueItem,
    Register,
    SessionState,
    StateError,
)

NODES = ["a", "b", "c"]
IDS = ["d1", "d2", "i1", "i2", "i3"]
TRACK = "0123456789abcdef"
# Few distinct stamps, so that equal stamps (and ties) happen often.
stamps = st.builds(Stamp, st.integers(0, 3), st.integers(0, 2), st.sampled_from(NODES))
playbacks = st.builds(Playback, st.sampled_from([None, TRACK, "fedcba9876543210"]),
                      st.integers(0, 5000), st.integers(0, 5000),
                      st.sampled_from([1.0, 1.5]), st.booleans())
devices = st.builds(Device, st.sampled_from(["phone", "laptop"]), st.just("web"),
                    st.sampled_from(NODES), st.booleans())


def registers(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(Register, values, stamps)


states = st.builds(
    SessionState,
    playback=st.none() | registers(playbacks),
    active_device=st.none() | registers(st.sampled_from([None, "d1", "d2"])),
    shuffle=st.none() | registers(st.booleans()),
    repeat=st.none() | registers(st.sampled_from(["off", "one", "all"])),
    devices=st.dictionaries(st.sampled_from(IDS[:2]), registers(devices), max_size=2),
    volumes=st.dictionaries(st.sampled_from(IDS[:2]), registers(st.integers(0, 100)),
                            max_size=2),
    queue=st.dictionaries(st.sampled_from(IDS[2:]),
                          st.builds(QueueItem, st.sampled_from([TRACK, "x" * 16]), stamps),
                          max_size=3),
    removed=st.dictionaries(st.sampled_from(IDS[2:]), stamps, max_size=2),
    order=st.dictionaries(st.sampled_from(IDS[2:]), registers(st.sampled_from([0.0, 1.0])),
                          max_size=3),
)


def merged(*parts: SessionState) -> dict:
    state = SessionState()
    for part in parts:
        state.merge(part.copy())
    return state.to_json()


@given(states, states)
def test_merge_is_commutative(a: SessionState, b: SessionState) -> None:
    assert merged(a, b) == merged(b, a)


@given(states, states, states)
def test_merge_is_associative(a: SessionState, b: SessionState, c: SessionState) -> None:
    ab = SessionState()
    ab.merge(a.copy())
    ab.merge(b.copy())
    bc = SessionState()
    bc.merge(b.copy())
    bc.merge(c.copy())
    assert merged(ab, c) == merged(a, bc)


@given(states)
def test_merge_is_idempotent(a: SessionState) -> None:
    state = SessionState()
    state.merge(a.copy())
    once = state.to_json()
    assert not state.merge(a.copy())
    assert state.to_json() == once


@given(states)
def test_the_json_form_round_trips(a: SessionState) -> None:
    doc = json.loads(json.dumps(merged(a)))
    assert SessionState.from_json(doc).to_json() == doc


class Node:
    """A node of the simulation: its clock, its state and the deltas it made."""

    def __init__(self, name: str, skew_ms: int, now: list[int]) -> None:
        self.clock = Clock(name, lambda: now[0] + skew_ms)
        self.state = SessionState()
        self.name = name
        self.ids = itertools.count()

    def command(self, doc: dict) -> SessionState | None:
        cmd = commands.parse(doc, lambda t: len(t) >= 8)
        ctx = commands.Context(self.clock.tick(), self.clock.now_ms(), self.name,
                               duration_ms=lambda t: 600_000,
                               new_id=lambda: f"{self.name}{next(self.ids)}",
                               rtt_ms=lambda d: 20)
        try:
            delta = commands.apply(self.state, cmd, ctx)
        except commands.CommandError:
            return None
        self.state.merge(delta)
        return delta


command_docs = st.sampled_from([
    {"type": "play", "track": TRACK, "position_ms": 1000},
    {"type": "pause"}, {"type": "resume"}, {"type": "seek", "position_ms": 5000},
    {"type": "next"}, {"type": "previous"},
    {"type": "queue_add", "track": TRACK}, {"type": "queue_add", "track": "b" * 16},
    {"type": "set_shuffle", "shuffle": True}, {"type": "set_repeat", "repeat": "all"},
    {"type": "set_volume", "volume": 30}, {"type": "transfer", "to": "d1"},
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(3)), st.sampled_from(["d1", "d2"]),
                          command_docs, st.integers(0, 400)), min_size=1, max_size=25),
       st.randoms(use_true_random=False))
def test_any_delivery_order_and_duplication_converges(script, rng: random.Random) -> None:
    now = [1_000_000]
    nodes = [Node(name, skew, now) for name, skew in zip(NODES, (0, -250, 250), strict=True)]
    deltas: list[SessionState] = []
    for node_index, device, doc, elapsed in script:
        now[0] += elapsed
        node = nodes[node_index]
        # Each node sees some of the others' deltas before it acts, in any order.
        for delta in rng.sample(deltas, k=min(len(deltas), rng.randint(0, 3))):
            node.state.merge(delta.copy())
        made = node.command({**doc, "device": device})
        if made is not None:
            deltas.append(made)
    finals = []
    for node in nodes:
        shuffled = deltas + rng.sample(deltas, k=len(deltas) // 2)  # duplicates too
        rng.shuffle(shuffled)
        for delta in shuffled:
            node.state.merge(delta.copy())
        finals.append(node.state.digest())
    assert len(set(finals)) == 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 4), st.integers(1, 500))
def test_a_queue_add_is_never_lost_to_a_removal_that_did_not_see_it(existing: int,
                                                                    gap_ms: int) -> None:
    now = [5_000_000]
    a, b = Node("a", 0, now), Node("b", 0, now)
    for n in range(existing):  # both nodes know these items
        delta = a.command({"type": "queue_add", "device": "d1", "track": f"{n:016d}"})
        assert delta is not None
        b.state.merge(delta.copy())
    now[0] += gap_ms
    added = a.command({"type": "queue_add", "device": "d1", "track": "f" * 16})
    assert added is not None
    # b removes every item it has seen, later than the addition, without having seen it.
    removals = [b.command({"type": "queue_remove", "device": "d2", "item": item})
                for item, _ in b.state.queue_items()]
    for node in (a, b):
        node.state.merge(added.copy())
        for removal in removals:
            assert removal is not None
            node.state.merge(removal.copy())
    for node in (a, b):
        assert [t for _, t in node.state.queue_items()] == ["f" * 16]


@given(st.integers(0, 10**12), st.integers(0, 2**40), st.integers(0, 100))
def test_stamps_from_far_ahead_are_clamped(now_ms: int, ahead_ms: int, counter: int) -> None:
    clock = Clock("here", lambda: now_ms)
    remote = Stamp(now_ms + ahead_ms, counter, "there")
    seen = clock.observe(remote)
    assert seen.wall_ms <= now_ms + clock.max_ahead_ms
    assert seen == remote or ahead_ms > clock.max_ahead_ms
    later = clock.tick()
    assert later > seen and later.wall_ms <= now_ms + clock.max_ahead_ms


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20))
def test_anything_else_is_a_state_error(doc: object) -> None:
    """A transport's garbage is refused with StateError, never another exception."""
    with contextlib.suppress(StateError):
        SessionState.from_json(doc)
