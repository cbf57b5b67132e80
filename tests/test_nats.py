"""Sessions between edge nodes on NATS JetStream: a real three-server NATS cluster and two real
segued nodes on loopback, each keeping only the deltas of the listeners it serves.

A listener's devices on two nodes must stay in step through a server's crash, the whole
cluster's absence and a node's restart, with no change lost and none merged twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

import segue
from conftest import MP3, Node, make_tone
from nats_cluster import PASSWORD, USER, NatsCluster
from segue_nats import settings as nats_settings
from serf import wait_until
from test_sessions import EventStream, call, command, paused

STREAM = "SEGUE_SESSIONS"


class Fleet:
    def __init__(self, root: Path) -> None:
        self.cluster = NatsCluster(root / "nats")
        template = Node.init(root / "template")
        (self.track,) = template.pack(make_tone(root / "t.mp3", MP3, seconds=20, title="Bus"))
        self.key_file = root / "user.key"
        self.key_file.write_bytes(os.urandom(32).hex().encode())
        self.key_file.chmod(0o600)
        self.nodes: list[Node] = []
        for name in ("edge-a", "edge-b"):
            shutil.copytree(template.root, root / name)
            node = Node(root / name)
            node.conf.write_text(node.conf.read_text() + f'\n[node]\nid = "{name}"\n'
                                 "\n[sessions]\nheartbeat_s = 1.0\n"
                                 + self.cluster.plugin_table(
                                     user_key_file=str(self.key_file), create=True,
                                     replicas=3, timeout_s=2.0))
            self.nodes.append(node)
        self.tokens = {u: template.token(u) for u in ("alice", "bob", "carol")}

    def key(self, user: str) -> str:
        """The listener's name on the bus (a keyed hash)."""
        return hmac.new(self.key_file.read_bytes().strip(), user.encode(),
                        hashlib.sha256).hexdigest()[:32]

    def subject(self, user: str) -> str:
        return f"segue.sessions.{self.key(user)}"


def metric(node: Node, name: str, **labels: str) -> float:
    with urllib.request.urlopen(node.base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search("^" + re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels
                                                 else "") + r" (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def status(node: Node) -> dict:
    with urllib.request.urlopen(node.base + "/v1/status", timeout=5) as r:
        plugins = json.loads(r.read())["plugins"]
    return next(p for p in plugins if p["name"] == "nats")["status"]


def same(view: dict) -> tuple:
    playback = {k: v for k, v in (view["playback"] or {}).items() if k != "position_now_ms"}
    return (view["stamp"], json.dumps(playback, sort_keys=True), json.dumps(view["queue"]),
            view["active_device"])


def until_converged(nodes: list[Node], token: str, timeout: float, what: str) -> tuple:
    def views() -> list[tuple]:
        return [same(call(n, token, "GET", "/v1/session")[1]) for n in nodes]
    return wait_until(lambda: len(set(views())) == 1 and views()[0], timeout, what,
                      explain=lambda: "\n".join(map(str, views())))


def bus(cluster: NatsCluster, work) -> object:
    """Run `work(js)` against the cluster as a separate NATS client (what an operator or a
    hostile publisher with credentials could do)."""
    async def main() -> object:
        async def quiet(e: Exception) -> None:
            pass  # a server the test killed: the client goes to the next

        nc = await nats.connect(servers=cluster.urls, user=USER, password=PASSWORD,
                                connect_timeout=2, error_cb=quiet)
        try:
            return await work(nc.jetstream(timeout=5))
        finally:
            await nc.close()
    return asyncio.run(main())


def stored_changes(fleet: Fleet, user: str) -> int:
    """How many changes the stream holds for `user`; -1 while the cluster cannot say (a
    server was just killed and JetStream is electing its leaders)."""
    async def count(js) -> int:
        info = await js.stream_info(STREAM, subjects_filter=fleet.subject(user))
        return (info.state.subjects or {}).get(fleet.subject(user), 0)
    try:
        return int(bus(fleet.cluster, count))
    except nats.errors.Error:
        return -1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("bus"))
    try:
        fleet.cluster.start()
        for node in fleet.nodes:
            node.start()
        for node in fleet.nodes:
            wait_until(lambda n=node: status(n)["connected"], 30, f"{node.root.name} on NATS")
        yield fleet
    finally:
        for node in fleet.nodes:
            node.stop()
        fleet.cluster.stop()


def test_a_pause_on_node_a_reaches_an_event_stream_on_node_b_within_200_ms(fleet) -> None:
    a, b = fleet.nodes
    token = fleet.tokens["alice"]
    phone = EventStream(f"{b.base}/v1/session/events?device=phone",
                        {"Authorization": f"Bearer {token}"})
    try:
        wait_until(lambda: status(b)["followed"] == 1, 5, "node B follows alice")
        assert status(a)["followed"] == 0  # nobody of alice's is on node A yet
        # A health gauge is 1 when up, as everywhere on /metrics.
        assert metric(a, "segue_nats_connected") == metric(b, "segue_nats_connected") == 1
        assert command(a, token, type="play", device="laptop", track=fleet.track)[0] == 200
        phone.wait_for(lambda v: v["playback"] and v["playback"]["playing"], timeout=5)
        latencies = []
        for _ in range(5):
            sent = time.monotonic()
            _, view = command(a, token, type="pause", device="laptop")
            arrived, seen = phone.wait_for(lambda v, s=view["stamp"]: v["stamp"] == s)
            latencies.append(arrived - sent)
            assert paused(seen)
            _, resumed = command(a, token, type="resume", device="laptop")
            phone.wait_for(lambda v, s=resumed["stamp"]: v["stamp"] == s)
        print(f"pause on A -> event on B: {sorted(latencies)}")
        assert max(latencies) < 0.2, latencies
    finally:
        phone.close()
    # The bus never names the listener: only the keyed hash.
    assert stored_changes(fleet, "alice") >= 11


def test_conflicting_commands_on_two_nodes_end_in_the_same_state(fleet) -> None:
    a, b = fleet.nodes
    token = fleet.tokens["alice"]
    command(a, token, type="play", device="laptop", track=fleet.track)
    for _ in range(5):
        barrier = threading.Barrier(2)

        def send(node: Node, doc: dict, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            command(node, token, **doc)

        threads = [threading.Thread(target=send, args=(a, {"type": "seek", "device": "laptop",
                                                          "position_ms": 9000})),
                   threading.Thread(target=send, args=(b, {"type": "pause", "device": "phone"}))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = until_converged([a, b], token, 5, "the nodes agree")
        playback = json.loads(state[1])
        assert playback["position_ms"] == 9000 or not playback["playing"]


def test_a_server_killed_while_commands_flow_loses_none_and_stores_none_twice(fleet) -> None:
    a, b = fleet.nodes
    token = fleet.tokens["alice"]
    command(b, token, type="ping", device="phone")  # alice has a device on both nodes
    command(a, token, type="play", device="laptop", track=fleet.track)
    until_converged([a, b], token, 5, "the nodes agree")
    before = stored_changes(fleet, "alice")
    sent: list[int] = []
    stop = threading.Event()

    def flow() -> None:
        while not stop.is_set():
            position = (len(sent) * 97) % 15000
            if command(a, token, type="seek", device="laptop", position_ms=position)[0] == 200:
                sent.append(position)
            time.sleep(0.02)

    worker = threading.Thread(target=flow)
    worker.start()
    try:
        time.sleep(0.5)
        fleet.cluster.servers[0].kill()
        time.sleep(2.0)
    finally:
        stop.set()
        worker.join()
    try:
        state = until_converged([a, b], token, 15, "the last seek reaches node B")
        assert json.loads(state[1])["position_ms"] == sent[-1]
        # Every accepted command is on the bus exactly once, retries included.
        wait_until(lambda: stored_changes(fleet, "alice") - before == len(sent), 30,
                   f"{len(sent)} changes stored once each",
                   explain=lambda: f"stored {stored_changes(fleet, 'alice') - before}")
    finally:
        fleet.cluster.servers[0].start()


def test_with_every_server_down_commands_apply_locally_and_converge_after(fleet) -> None:
    a, b = fleet.nodes
    alice, bob = fleet.tokens["alice"], fleet.tokens["bob"]
    command(b, alice, type="ping", device="phone")
    command(b, bob, type="ping", device="radio")  # bob has a device on B only
    command(a, bob, type="ping", device="car")  # ... and one on A
    fleet.cluster.stop()
    try:
        wait_until(lambda: not status(a)["connected"] and not status(b)["connected"], 15,
                   "both nodes see NATS gone")
        wait_until(lambda: urllib.request.urlopen(a.base + "/healthz", timeout=5).read()
                   == b"degraded: plugin nats degraded\n", 15,
                   "node A degraded (still serving: 200) while NATS is away")
        assert command(a, alice, type="seek", device="laptop", position_ms=3333)[0] == 200
        assert command(b, bob, type="play", device="radio", track=fleet.track,
                       position_ms=4444)[0] == 200
    finally:
        fleet.cluster.start()
    wait_until(lambda: status(a)["connected"] and status(b)["connected"], 30,
               "both nodes back on NATS")
    # After a whole cluster's restart, each node's consumers are made again once their
    # heartbeats are missed: seconds, more on a loaded machine.
    state = until_converged([a, b], alice, 40, "alice's seek on A reaches B")
    assert json.loads(state[1])["position_ms"] == 3333
    state = until_converged([a, b], bob, 40, "bob's play on B reaches A")
    assert json.loads(state[1])["position_ms"] == 4444


def test_a_restarted_node_resumes_where_it_got_to(fleet) -> None:
    a, b = fleet.nodes
    token = fleet.tokens["alice"]
    command(b, token, type="ping", device="phone")
    for position in range(1000, 11000, 1000):
        assert command(a, token, type="seek", device="laptop", position_ms=position)[0] == 200
    until_converged([a, b], token, 10, "the nodes agree")
    time.sleep(1.5)  # node B writes where it got to behind its merges
    b.stop()
    command(a, token, type="seek", device="laptop", position_ms=12345)
    b.start()
    state = until_converged([a, b], token, 15, "node B catches up after its restart")
    assert json.loads(state[1])["position_ms"] == 12345
    # It took the latest state from the bucket and what came after where it got to, not
    # alice's whole history again (more than 20 changes).
    received = sum(metric(b, "segue_nats_deltas_received_total", outcome=o)
                   for o in ("applied", "unchanged", "own", "duplicate", "malformed"))
    assert received <= 2, received
    assert stored_changes(fleet, "alice") > 20


def test_one_consumer_a_node_and_a_listener_arriving_gets_the_changes_that_went_by(
        fleet) -> None:
    a, b = fleet.nodes
    carol = fleet.tokens["carol"]
    dropped = metric(b, "segue_nats_deltas_received_total", outcome="not_served")
    # Carol listens on node A only: node B's consumer brings her changes and B drops them.
    command(a, carol, type="play", device="laptop", track=fleet.track)
    for position in range(1000, 6000, 1000):
        assert command(a, carol, type="seek", device="laptop", position_ms=position)[0] == 200
    wait_until(lambda: stored_changes(fleet, "carol") >= 6, 10, "carol's changes stored")
    wait_until(lambda: metric(b, "segue_nats_deltas_received_total", outcome="not_served")
               - dropped >= 6, 5, "node B counts carol's changes as not served there")
    time.sleep(0.5)  # node A merges them into the bucket behind the publishing

    async def forget(js) -> None:
        # The bucket without carol, as if its writes had lagged: what B learns of her must
        # come from the stream.
        await (await js.key_value("segue_sessions")).purge(fleet.key("carol"))

    bus(fleet.cluster, forget)
    assert command(b, carol, type="ping", device="phone")[0] == 200
    state = until_converged([a, b], carol, 10, "node B replays carol's changes")
    assert json.loads(state[1])["position_ms"] == 5000

    async def consumers(js) -> list[str]:
        return [c.config.filter_subject for c in await js.consumers_info(STREAM)]

    # Every listener's changes reach each node through one consumer of the whole stream, not
    # one consumer per listener. (The servers remove a consumer left by a node restarted in
    # an earlier test once nobody listens on its delivery subject, within seconds.)
    assert status(b)["followed"] >= 2 and status(a)["followed"] >= 1
    wait_until(lambda: bus(fleet.cluster, consumers) == ["segue.sessions.*"] * 2, 15,
               "one consumer a node", explain=lambda: str(bus(fleet.cluster, consumers)))


def test_a_malformed_message_on_the_subject_is_dropped_and_counted(fleet) -> None:
    a, b = fleet.nodes
    token = fleet.tokens["alice"]
    command(b, token, type="ping", device="phone")
    command(a, token, type="play", device="laptop", track=fleet.track)
    until_converged([a, b], token, 10, "the nodes agree")
    before = metric(b, "segue_nats_deltas_received_total", outcome="malformed")

    async def junk(js) -> None:
        for data in (b"\xff\xfe not json", b'{"o": "edge-x", "d": {"playback": 1}}', b"[]"):
            await js.publish(fleet.subject("alice"), data)

    bus(fleet.cluster, junk)
    wait_until(lambda: metric(b, "segue_nats_deltas_received_total", outcome="malformed")
               - before == 3, 5, "three malformed deltas counted on node B")
    assert command(a, token, type="pause", device="laptop")[0] == 200
    until_converged([a, b], token, 5, "changes still flow")
    assert b.proc is not None and b.proc.poll() is None


def test_a_bad_table_names_each_key(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(segue.PluginConfigError) as e:
        nats_settings.parse({"servers": ["localhost:4222"], "user": "segue", "replica": 3,
                        "user_key_file": str(short), "max_age_s": -1},
                       tmp_path / "segued.toml")
    text = str(e.value)
    for expected in ('servers is required: a list of "nats://HOST:PORT"',
                     "unknown key 'replica'; did you mean 'replicas'?",
                     "user needs password_file", "user_key_file: the key is too short",
                     "max_age_s must be a positive number"):
        assert expected in text, text
