"""The gossip plugin's wire formats, without agents: Serf's RPC framing fed byte by byte, session
changes in and out of 512-byte events, the sealed peer channel and the [plugins.gossip] table."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import segue
from segue.sessions.hlc import Stamp
from segue.sessions.state import QueueItem, Register, SessionState
from segue_gossip import digests, payload, peer
from segue_gossip import settings as gossip_settings
from segue_gossip.serf_codec import Record, Reply, SerfCodec, SerfProtocolError
from test_sessions_model import states

NAME = "segue-session"


# --- Serf RPC framing ---------------------------------------------------------------------
def feed(codec: SerfCodec, data: bytes, step: int) -> list[Reply | Record]:
    out = []
    for i in range(0, len(data), step):
        codec.receive_data(data[i:i + step])
        while (item := codec.next_event()) is not None:
            out.append(item)
    return out


def pack(*objs: object) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_replies_bodies_and_stream_records_are_paired_by_seq_in_any_chunking(step: int) -> None:
    codec = SerfCodec()
    handshake, _ = codec.request("handshake", {"Version": 1})
    members, _ = codec.request("members")
    stream, _ = codec.request("stream", {"Type": "user:x"})
    event, _ = codec.request("event", {"Name": "x", "Payload": b"", "Coalesce": False})
    record = {"Event": "user", "Name": "x", "Payload": b"\x00\x01", "LTime": 3,
              "Coalesce": False}
    data = pack({"Seq": handshake, "Error": ""},
                {"Seq": members, "Error": ""}, {"Members": [{"Name": "a"}]},
                {"Seq": stream, "Error": ""},
                {"Seq": event, "Error": ""},
                {"Seq": stream, "Error": ""}, record)
    assert feed(codec, data, step) == [
        Reply(handshake, "", None), Reply(members, "", {"Members": [{"Name": "a"}]}),
        Reply(stream, "", None), Reply(event, "", None), Record(stream, record)]


def test_a_bare_error_where_a_body_was_expected_does_not_swallow_the_next_reply() -> None:
    codec = SerfCodec()
    keys, _ = codec.request("list-keys")
    tags, _ = codec.request("tags", {"Tags": {}, "DeleteTags": []})
    out = feed(codec, pack({"Seq": keys, "Error": "Authentication required"},
                           {"Seq": tags, "Error": ""}), 1000)
    assert out == [Reply(keys, "Authentication required", None), Reply(tags, "", None)]


@pytest.mark.parametrize("garbage", [b"\xc1", pack({"Members": []}), pack({"Seq": "1",
                                                                              "Error": ""})])
def test_what_the_protocol_does_not_allow_is_an_error(garbage: bytes) -> None:
    codec = SerfCodec()
    codec.request("members")
    with pytest.raises(SerfProtocolError):
        codec.receive_data(garbage)


# --- session changes in events --------------------------------------------------------------
def big_queues(n: int) -> SessionState:
    stamp = Stamp(1_796_322_064_558, 0, "edge-a")
    return SessionState(
        queue={f"{i:016x}": QueueItem("0123456789abcdef" * 2, stamp) for i in range(n)},
        order={f"{i:016x}": Register(float(i), stamp) for i in range(n)})


@settings(max_examples=200, deadline=None)
@given(states, st.sampled_from(["alice", "a" * 200]))
def test_every_change_arrives_whole_in_events_that_fit_or_is_announced(
        delta: SessionState, user: str) -> None:
    doc = delta.to_json()
    events = payload.encode_change("edge-a", user, doc, len(NAME))
    assert all(len(e) + len(NAME) + payload.ENCODING_OVERHEAD <= payload.EVENT_LIMIT
               for e in events)
    if not events:  # announced instead: the announcement fits
        assert payload.encode_announcement("edge-a", user, "ab" * 16, len(NAME)) is not None
        return
    joined = SessionState()
    for data in events:
        change = payload.decode(data)
        assert isinstance(change, payload.Change)
        assert (change.origin, change.user) == ("edge-a", user)
        joined.merge(SessionState.from_json(change.delta))
    assert joined.to_json() == SessionState.from_json(doc).to_json()


def test_a_long_queue_is_split_then_announced() -> None:
    assert 2 <= len(payload.encode_change("edge-a", "alice", big_queues(6).to_json(),
                                          len(NAME))) <= payload.MAX_EVENTS_PER_CHANGE
    assert payload.encode_change("edge-a", "alice", big_queues(120).to_json(), len(NAME)) == []
    announcement = payload.decode(payload.encode_announcement("edge-a", "alice", "ab" * 16,
                                                              len(NAME)) or b"")
    assert announcement == payload.Announcement("edge-a", "alice", "ab" * 16)


WORDS = st.integers(-(2**63), 2**64 - 1)  # what msgpack can hold


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.builds(
    msgpack.packb, st.lists(st.none() | WORDS | st.text(max_size=5) | st.binary(
        max_size=20) | st.dictionaries(st.integers(-2, 30) | st.text(max_size=3),
                                       WORDS | st.binary(max_size=9)), max_size=5)))
def test_anything_else_is_a_payload_error_never_another_exception(data: bytes) -> None:
    try:
        message = payload.decode(data)
    except payload.PayloadError:
        return
    assert isinstance(message, payload.Change | payload.Announcement)


# --- anti-entropy digests ---------------------------------------------------------------------
def test_only_the_listeners_that_differ_are_sent_and_fetched() -> None:
    mine = {f"user{i}": f"{i:032x}" for i in range(1000)}
    theirs = {**mine, "user1": "f" * 32, "new": "e" * 32}
    del theirs["user2"]
    changed = digests.differing(digests.bucket_hashes(mine), digests.bucket_hashes(theirs))
    assert 1 <= len(changed) <= 3
    push, pull = digests.plan(digests.in_buckets(mine, changed),
                              digests.in_buckets(theirs, changed))
    assert (push, pull) == (["user1", "user2"], ["new", "user1"])


# --- the sealed peer channel --------------------------------------------------------------------
async def exchange(server_keys: list[bytes], client_keys: list[bytes]) -> dict:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def answer(request: dict) -> dict:
        return {"echo": request["n"] + 1}

    result: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.serve_connection, server_stream,
                           lambda: peer.derive(server_keys), answer, 2.0)
        channel = peer.Sealed(client_stream, peer.derive(client_keys), 2.0)
        await channel.send({"n": 41}, peer._REQUEST)
        try:
            result = await channel.receive(peer._ANSWER) or {}
        finally:
            await client_stream.aclose()
    return result


def test_a_frame_sealed_with_any_installed_key_opens_and_a_foreign_one_is_refused() -> None:
    old, new, foreign = os.urandom(32), os.urandom(32), os.urandom(32)
    assert trio.run(exchange, [old, new], [new]) == {"echo": 42}  # mid-rotation
    with pytest.raises(BaseExceptionGroup) as refused:
        trio.run(exchange, [old, new], [foreign])
    assert refused.group_contains(peer.PeerError, match="no installed keyring key opens")


def test_an_answer_cannot_be_replayed_as_a_request() -> None:
    key = peer.derive([os.urandom(32)])

    async def main() -> None:
        a, b = trio.testing.memory_stream_pair()
        await peer.Sealed(a, key, 1.0).send({"states": {}}, peer._ANSWER)
        with pytest.raises(peer.PeerError):
            await peer.Sealed(b, key, 1.0).receive(peer._REQUEST)

    trio.run(main)


# --- the table ----------------------------------------------------------------------------------
def test_a_bad_table_names_each_key(tmp_path: Path) -> None:
    with pytest.raises(segue.PluginConfigError) as e:
        gossip_settings.parse({"rpc_adress": "x", "peer_listen": "nowhere", "event_name": "a b",
                               "anti_entropy_interval_s": 0, "rpc_auth_file": "missing"},
                              tmp_path / "segued.toml")
    text = str(e.value)
    for expected in ("unknown key 'rpc_adress'; did you mean 'rpc_address'?", "peer_listen",
                     "event_name", "anti_entropy_interval_s", "rpc_auth_file"):
        assert expected in text
    ok = gossip_settings.parse({"peer_listen": "[::]:7380", "peer_advertise": "10.0.0.5"},
                               tmp_path / "segued.toml")
    assert (ok.peer_host, ok.peer_port, ok.advertise_host, ok.advertise_port) == (
        "::", 7380, "10.0.0.5", None)
