"""Sessions between edge nodes over Serf: real Serf agents and real segued processes on
loopback, three nodes each with its own agent (as on three edge hosts).

A listener's devices reach different nodes; what one commands must show on the others' event
streams, and the nodes must agree after crashes, partitions and key rotations.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from conftest import MP3, Node, make_tone
from serf import SerfAgent, gossip_table, new_key, wait_until
from test_sessions import EventStream, call, command, paused

ANTI_ENTROPY_S = 2.0


class Edge:
    """One edge host: a Serf agent and a segued node that talks to it."""

    def __init__(self, root: Path, name: str, template: Path, keys: list[str],
                 join: list[str], workers: int = 1) -> None:
        self.name = name
        shutil.copytree(template, root / "node")
        self.agent = SerfAgent(root / "serf", f"serf-{name}", keys, join)
        self.node = Node(root / "node")
        self.node.conf.write_text(self.node.conf.read_text().replace(
            "[http]", f"[http]\nworkers = {workers}", 1)
            + "\n[sessions]\nheartbeat_s = 1.0\n" + gossip_table(self.agent, name, ANTI_ENTROPY_S))

    def start(self) -> None:
        self.agent.start()
        self.node.start()

    def stop(self) -> None:
        self.node.stop()
        self.agent.stop()

    def status(self) -> dict:
        with urllib.request.urlopen(self.node.base + "/v1/status", timeout=5) as r:
            doc = json.loads(r.read())
        return next(p for p in doc["plugins"] if p["name"] == "gossip")

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.node.base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "")
        found = re.search(r"^" + pattern + r" (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def view(self, token: str) -> dict:
        status, view = call(self.node, token, "GET", "/v1/session")
        assert status == 200, view
        return view


def same_state(view: dict) -> tuple:
    """What must be equal on every node (the time of the answer is not)."""
    playback = {k: v for k, v in (view["playback"] or {}).items() if k != "position_now_ms"}
    return (view["stamp"], json.dumps(playback, sort_keys=True),
            json.dumps(view["queue"]), view["active_device"],
            json.dumps(view["devices"], sort_keys=True))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Edge], str, str]]:
    root = tmp_path_factory.mktemp("fleet")
    template = Node.init(root / "template")
    (track,) = template.pack(make_tone(root / "t.mp3", MP3, seconds=20, title="Fleet"))
    token = template.token("alice")
    keys = [new_key()]
    edges: list[Edge] = []
    for name in ("edge-a", "edge-b", "edge-c"):
        join = [edges[0].agent.address] if edges else []
        # Node C serves with two processes: its players' commands and streams reach the
        # sessions (and the plugin) in its main process through the worker socket.
        edges.append(Edge(root / name, name, template.root, keys, join,
                          workers=2 if name == "edge-c" else 1))
    try:
        for edge in edges:
            edge.start()
        for edge in edges:
            wait_until(lambda e=edge: e.status()["health"]["status"] == "ok", 15,
                       f"{edge.name} sees its peers")
        yield edges, track, token
    finally:
        for edge in edges:
            edge.stop()


def converged(edges: list[Edge], token: str) -> tuple | None:
    states = {same_state(e.view(token)) for e in edges}
    return states.pop() if len(states) == 1 else None


def until_converged(edges: list[Edge], token: str, timeout: float, what: str) -> tuple:
    return wait_until(lambda: converged(edges, token), timeout, what,
                      explain=lambda: "\n".join(f"{e.name}: {same_state(e.view(token))}"
                                                for e in edges))


def test_a_pause_on_node_a_reaches_an_event_stream_on_node_c_within_1_s(fleet) -> None:
    (a, b, c), track, token = fleet
    assert a.status()["status"] == {"agent": "up",
                                    "members": {"alive": 3, "leaving": 0, "left": 0, "failed": 0}}
    assert a.metric("segue_gossip_members", status="alive") == 3
    assert a.metric("segue_gossip_agent_up") == 1  # health gauges: 1 when up
    assert command(a.node, token, type="play", device="laptop", track=track)[0] == 200
    phone = EventStream(f"{c.node.base}/v1/session/events?device=phone",
                        {"Authorization": f"Bearer {token}"})
    try:
        phone.wait_for(lambda v: v["playback"] and v["playback"]["playing"], timeout=5)
        sent = time.monotonic()
        status, view = command(a.node, token, type="pause", device="laptop")
        assert status == 200
        arrived, seen = phone.wait_for(paused, timeout=5)
        assert arrived - sent < 1.0, f"the pause took {arrived - sent:.3f} s to reach node C"
        assert seen["stamp"] == view["stamp"]
    finally:
        phone.close()
    assert a.metric("segue_gossip_events_sent_total", kind="delta") >= 2
    for edge in (b, c):
        # Both events merged: "unchanged" when an anti-entropy round brought the change first.
        assert sum(edge.metric("segue_gossip_events_received_total", outcome=outcome)
                   for outcome in ("applied", "unchanged")) >= 2


def test_conflicting_commands_on_two_nodes_end_in_the_same_state(fleet) -> None:
    (a, b, c), track, token = fleet
    command(a.node, token, type="play", device="laptop", track=track)
    until_converged([a, b, c], token, 5, "the play reaches every node")

    def send(barrier: threading.Barrier, edge: Edge, doc: dict) -> None:
        barrier.wait()
        command(edge.node, token, **doc)

    for _ in range(5):
        barrier = threading.Barrier(2)
        seek = {"type": "seek", "device": "laptop", "position_ms": 9000}
        pause = {"type": "pause", "device": "phone"}
        threads = [threading.Thread(target=send, args=(barrier, a, seek)),
                   threading.Thread(target=send, args=(barrier, b, pause))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = until_converged([a, b, c], token, 5, "the nodes agree after conflicting commands")
        playback = json.loads(state[1])
        # One of the two won whole: never a mix of the seek's position and the pause's.
        assert playback["position_ms"] == 9000 or not playback["playing"]


def test_a_change_too_large_for_one_event_is_split_or_pulled(fleet) -> None:
    (a, b, c), track, token = fleet
    sent_before = a.metric("segue_gossip_events_sent_total", kind="delta")
    status, view = command(a.node, token, type="play", device="laptop", track=track,
                           queue=[track] * 6)
    assert status == 200 and len(view["queue"]) == 6
    until_converged([a, b, c], token, 3, "a six-item queue reaches every node")
    assert a.metric("segue_gossip_events_sent_total", kind="delta") - sent_before >= 2
    # A long queue is announced, and the other nodes pull it from node A's peer port.
    def announcements_at_b() -> float:
        # An anti-entropy round may carry the queue to B before the announcement arrives;
        # B then counts the announcement as "unchanged" rather than pulling.
        return sum(b.metric("segue_gossip_events_received_total", outcome=outcome)
                   for outcome in ("announced", "unchanged"))
    announcements_before = announcements_at_b()
    status, view = command(a.node, token, type="play", device="laptop", track=track,
                           queue=[track] * 120)
    assert status == 200 and len(view["queue"]) == 120
    until_converged([a, b, c], token, 1.5, "a long queue reaches every node")
    assert a.metric("segue_gossip_events_sent_total", kind="announce") >= 1
    wait_until(lambda: announcements_at_b() > announcements_before, 3,
               "node B receives the announcement")


def test_a_hostile_event_is_dropped_counted_and_never_applied_unclamped(fleet) -> None:
    (a, b, c), track, token = fleet
    command(a.node, token, type="play", device="laptop", track=track)
    until_converged([a, b, c], token, 5, "the nodes agree")
    malformed_before = b.metric("segue_gossip_events_received_total", outcome="malformed")
    clamped_before = b.metric("segue_session_remote_deltas_total", outcome="clamped")
    future_ms = int(time.time() * 1000) + 3_600_000  # an hour ahead
    hostile = [
        b"\xc1not msgpack",
        msgpack.packb([1, "edge-x", "alice", {"playback": "not a register"}]),
        msgpack.packb([7, "edge-x", "alice", {}]),
        msgpack.packb([1, "edge-x", "alice", {4: {"d" * 80: [{}, [1, 0, "edge-x"]]}}]),  # long id
        msgpack.packb([1, "edge-x", "alice", {0: [
            {9: bytes.fromhex(track), 10: 0, 11: future_ms, 12: 1.0, 13: False},
            [future_ms, 0, "edge-x"]]}]),
    ]
    for data in hostile:
        a.agent.send_event("segue-session", data)
    wait_until(lambda: b.metric("segue_gossip_events_received_total", outcome="malformed")
               - malformed_before >= 4, 5, "four malformed events counted on node B")
    wait_until(lambda: b.metric("segue_session_remote_deltas_total", outcome="clamped")
               > clamped_before, 5, "the stamp an hour ahead clamped")
    # The forged pause won (it is later than anything), but only by two seconds, not an hour:
    # a real command a few seconds on beats it again everywhere.
    forged = b.view(token)["stamp"]
    assert int(forged.split(".")[0], 16) < time.time() * 1000 + 5000
    time.sleep(2.5)
    assert command(b.node, token, type="resume", device="phone")[0] == 200
    state = until_converged([a, b, c], token, 5, "the nodes agree again")
    assert json.loads(state[1])["playing"]
    for edge in (a, b, c):
        assert edge.node.proc is not None and edge.node.proc.poll() is None
        assert edge.status()["status"]["agent"] == "up"


def test_a_keyring_rotation_while_commands_flow_loses_nothing(fleet) -> None:
    (a, b, c), track, token = fleet
    old = a.agent.keys()
    new = new_key()
    stop = threading.Event()
    sent: list[int] = []

    def flow() -> None:
        position = 0
        while not stop.is_set():
            position += 1000
            status, _ = command(a.node, token, type="seek", device="laptop",
                                position_ms=position % 15000)
            if status == 200:
                sent.append(position % 15000)
            time.sleep(0.05)

    command(a.node, token, type="play", device="laptop", track=track)
    worker = threading.Thread(target=flow)
    worker.start()
    try:
        a.agent.keyring("install", new)
        time.sleep(0.5)
        a.agent.keyring("use", new)
        time.sleep(0.5)
        for key in old:
            a.agent.keyring("remove", key)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert len(sent) > 20
    assert a.agent.keys() == [new]
    state = until_converged([a, b, c], token, 3, "every node holds the last seek")
    assert json.loads(state[1])["position_ms"] == sent[-1]
    # Anti-entropy still opens its frames under the new key.
    before = c.metric("segue_gossip_anti_entropy_rounds_total", outcome="ok")
    wait_until(lambda: c.metric("segue_gossip_anti_entropy_rounds_total", outcome="ok")
               > before, 3 * ANTI_ENTROPY_S + 5, "an anti-entropy round after the rotation")


def members(edge: Edge) -> dict[str, int]:
    return edge.status()["status"]["members"]


def test_a_node_killed_is_shown_failed_and_catches_up_when_it_returns(fleet) -> None:
    (a, b, c), track, token = fleet
    command(a.node, token, type="play", device="laptop", track=track)
    until_converged([a, b, c], token, 5, "the nodes agree")
    assert b.node.proc is not None and b.agent.proc is not None
    b.node.proc.kill()
    b.agent.proc.kill()
    b.node.proc.wait(timeout=10)
    b.node.proc = None
    try:
        for edge in (a, c):
            # Serf's suspicion starts at its longest (6 x 3 s with the local profile) and
            # shrinks only as other members confirm: with three members there may be none
            # to ("0 peer confirmations"), so a failure can take 18 s and more to show.
            wait_until(lambda e=edge: (m := members(e))["failed"] == 1 and m["alive"] == 2,
                       35, f"{edge.name} shows node B failed",
                       explain=lambda e=edge: str([members(e) for _ in range(6)]))
            assert edge.status()["health"]["status"] == "ok"  # two nodes are still a fleet
        # Commands keep flowing between A and C.
        for doc in ({"type": "seek", "position_ms": 4000}, {"type": "pause"},
                    {"type": "queue_add", "track": track}):
            assert command(c.node, token, device="phone", **doc)[0] == 200
            until_converged([a, c], token, 1, f"{doc['type']} on C reaches A")
    finally:
        # B returns and its devices see the current state within one anti-entropy period.
        b.agent.start()
        b.node.start()
    started = time.monotonic()
    until_converged([a, b, c], token, ANTI_ENTROPY_S * 1.2 + 1, "node B catches up")
    assert time.monotonic() - started < ANTI_ENTROPY_S * 1.2 + 1
    for edge in (a, c):
        wait_until(lambda e=edge: members(e)["alive"] == 3, 10, f"{edge.name} sees B alive")


def test_a_partition_heals_without_anyone_acting(fleet) -> None:
    (a, b, c), track, token = fleet
    bob = a.node.token("bob")
    command(a.node, token, type="play", device="laptop", track=track)
    until_converged([a, b, c], token, 5, "the nodes agree")
    c.agent.signal(signal.SIGSTOP)  # node C's agent hangs: C is cut off from the fleet
    try:
        wait_until(lambda: members(a)["failed"] == 1, 35, "node A suspects, then fails C")
        # Both sides go on: alice pauses on A; bob starts playing on C.
        assert command(a.node, token, type="pause", device="laptop")[0] == 200
        assert command(c.node, bob, type="play", device="radio", track=track)[0] == 200
        wait_until(lambda: c.status()["health"]["status"] == "degraded", 10,
                   "node C degraded while its agent does not answer")
        assert c.view(token)["playback"]["playing"]  # C has not heard of the pause
    finally:
        c.agent.signal(signal.SIGCONT)
    until_converged([a, b, c], token, 15, "alice's pause reaches C after the partition")
    until_converged([a, b, c], bob, 15, "bob's play on C reaches A and B")
    for edge in (a, b, c):
        wait_until(lambda e=edge: members(e)["alive"] == 3, 15, f"{edge.name} sees 3 alive")
