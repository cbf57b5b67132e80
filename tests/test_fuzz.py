"""Fuzzing every parser that sees untrusted bytes: each target is fed generated and mutated
input and may only answer the way its contract says (a value, or its own error), never crash,
hang or raise anything else.

`make test` runs a short round of each target (FUZZ_EXAMPLES, 200 by default); `make fuzz`
runs long rounds (FUZZ_EXAMPLES=1000000, or what you set), keeping hypothesis's database of
interesting inputs in .hypothesis/ as the corpus, so later runs start from what earlier ones
found.

Targets: the request head and the sans-I/O connection, Range, player tokens (JWT), sealed
chunks, the configuration, session commands and session states from other nodes (the
transport messages), Serf user events as the gossip plugin decodes them and the Serf RPC
framing, and a WAV's RIFF INFO tags. Manifests have their own in tests/test_hardening.py.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import struct
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from segue import config
from segue.http import ranges
from segue.http.connection import CLOSED, END_OF_REQUEST, NEED_DATA, Data, ServerConnection
from segue.http.wire import ProtocolError, RequestHead
from segue.riff_info import FIELDS, RiffInfoError, read_info
from segue.seal.chunks import ChunkCipher
from segue.seal.errors import ChunkAuthenticationError
from segue.seal.keys import key_id
from segue.seal.tokens import TokenError, TokenVerifier, issue
from segue.sessions import commands
from segue.sessions.commands import CommandError
from segue.sessions.state import SessionState, StateError
from segue_gossip import payload
from segue_gossip.serf_codec import SerfCodec, SerfProtocolError
from segue_mysql import rows
from segue_mysql.schema import COLUMNS

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GOOD_REQUEST = (b"GET /v1/tracks/0123456789abcdef HTTP/1.1\r\nHost: edge\r\n"
                b"Range: bytes=0-1023\r\nAuthorization: Bearer abc\r\n\r\n")
POST_REQUEST = (b"POST /v1/session/commands HTTP/1.1\r\nHost: edge\r\nContent-Length: 17\r\n"
                b"Expect: 100-continue\r\n\r\n{\"type\": \"pause\"}")


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """`seed` with bytes flipped, cut, repeated or inserted: near-misses of valid input."""
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(0, 8))):
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
            if kind == "flip" and data:
                data[at] = draw(st.integers(0, 255))
            elif kind == "cut":
                del data[at:at + draw(st.integers(1, 16))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(max_size=16))
            else:
                data[at:at] = data[at:at + draw(st.integers(1, 32))] * draw(st.integers(1, 4))
        return bytes(data)
    return build()


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(GOOD_REQUEST), mutated(POST_REQUEST),
                 mutated(GOOD_REQUEST + POST_REQUEST)),
       st.integers(1, 64))
def test_the_connection_takes_any_bytes(data: bytes, piece: int) -> None:
    """Bytes in any pieces: events in their order, or ProtocolError with a 4xx/5xx status."""
    connection = ServerConnection(max_head_bytes=1024, max_body_bytes=64)
    in_request = False
    try:
        for at in range(0, len(data) + 1, piece):
            connection.receive_data(data[at:at + piece] if at < len(data) else b"")
            while True:
                event = connection.next_event()
                if event is NEED_DATA or event is CLOSED:
                    break
                if isinstance(event, RequestHead):
                    assert not in_request
                    in_request = True
                elif isinstance(event, Data):
                    assert in_request and len(event.data) <= 64
                elif event is END_OF_REQUEST:
                    assert in_request
                    in_request = False
                    connection.start_response(204, [], "GET", None, body=b"")
                    connection.end_response()
                    if not connection.keep_alive:
                        return
                    connection.next_cycle()
            if event is CLOSED:
                return
    except ProtocolError as e:
        assert e.status in (400, 413, 431, 501, 505)
        assert str(e).isprintable()  # names the rule, never echoes the bytes


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=80),
                 st.builds(lambda a, b: f"bytes={a}-{b}",
                           st.one_of(st.just(""), st.integers(-5, 2**70).map(str)),
                           st.one_of(st.just(""), st.integers(-5, 2**70).map(str)))),
       st.integers(0, 2**40), st.one_of(st.none(), st.text(max_size=20)))
def test_range_takes_any_header(header: str | None, size: int, if_range: str | None) -> None:
    chosen = ranges.select(header, size, if_range=if_range, etag='"x"')
    if isinstance(chosen, ranges.ByteRange):
        assert 0 <= chosen.first <= chosen.last < size
    else:
        assert chosen is None or isinstance(chosen, ranges.Unsatisfiable)


_KEY = Ed25519PrivateKey.generate()
_VERIFIER = TokenVerifier({key_id(_KEY.public_key()): _KEY.public_key()}, audience="segue")
_TOKEN = issue(_KEY, "alice", ttl=3600, tracks=None, audience="segue")


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20)


@FUZZ
@given(st.one_of(st.text(max_size=400), mutated(_TOKEN.encode()).map(
    lambda b: b.decode("latin-1")),
    st.builds(lambda h, p, s: f"{_b64(h)}.{_b64(p)}.{s}", json_values, json_values,
              st.text(alphabet="abcXYZ-_0123", max_size=90))))
def test_tokens_of_any_shape_are_refused_with_token_error(token: str) -> None:
    try:
        grant = _VERIFIER.verify(token)
    except TokenError:
        return
    assert token == _TOKEN and grant.user == "alice"  # only the real token passes


_CIPHER = ChunkCipher("0123456789abcdef", bytes(32), 1, 4)
_SEALED = _CIPHER.seal(1, b"plaintext chunk " * 64)


@FUZZ
@given(st.one_of(mutated(_SEALED), st.binary(max_size=2048)), st.integers(0, 3))
def test_a_chunk_of_any_bytes_is_refused_unless_it_is_the_sealed_one(sealed: bytes,
                                                                     index: int) -> None:
    out = bytearray(4096)
    try:
        length = _CIPHER.open_into(index, sealed, out)
    except ChunkAuthenticationError:
        return
    assert sealed == _SEALED and index == 1 and bytes(out[:length]) == b"plaintext chunk " * 64


@FUZZ
@given(st.dictionaries(st.sampled_from(["node", "http", "store", "seal", "auth", "cache",
                                        "sessions", "log", "limits", "plugin_host", "nope"]),
                       st.dictionaries(st.text(max_size=20), json_values, max_size=5)
                       | json_values, max_size=4))
def test_any_configuration_is_settings_or_config_error(raw: dict) -> None:
    try:
        config.from_mapping(raw, Path("/etc/segue/segued.toml"))
    except config.ConfigError as e:
        assert e.errors and all(line.startswith("/etc/segue/segued.toml") for line in e.errors)


@FUZZ
@given(st.one_of(json_values, st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(commands.FIELDS)), "device": json_values},
    optional={"track": json_values, "position_ms": json_values, "queue": json_values,
              "item": json_values, "after": json_values, "to": json_values,
              "volume": json_values, "shuffle": json_values, "repeat": json_values,
              "echo_ms": json_values, "command_id": json_values})))
def test_any_command_parses_or_is_refused_with_400(doc: object) -> None:
    try:
        commands.parse(doc, lambda t: isinstance(t, str) and len(t) == 16)
    except CommandError as e:
        assert e.status == 400


@FUZZ
@given(json_values)
def test_any_transport_message_is_a_state_or_state_error(doc: object) -> None:
    try:
        state = SessionState.from_json(doc)
    except StateError:
        return
    assert SessionState().merge(state) in (True, False)


_GOSSIP_EVENT = payload.encode_change("edge-a", "alice", {
    "playback": [{"track_id": "0123456789abcdef" * 2, "position_ms": 1000, "at_ms": 5,
                  "rate": 1.0, "playing": True}, [1_796_322_064_558, 0, "edge-a"]],
    "queue": {"00000000000000ab": ["0123456789abcdef" * 2, [1_796_322_064_558, 0, "edge-a"]]}},
    len("segue-session"))[0]


@FUZZ
@given(st.one_of(mutated(_GOSSIP_EVENT), st.binary(max_size=600)))
def test_any_gossip_event_is_a_change_an_announcement_or_payload_error(data: bytes) -> None:
    try:
        message = payload.decode(data)
    except payload.PayloadError:
        return
    if isinstance(message, payload.Change):
        with contextlib.suppress(StateError):  # what the receiving node then does with it
            SessionState.from_json(message.delta)


_SERF_REPLIES = msgpack.packb({"Seq": 0, "Error": ""}) + msgpack.packb(
    {"Seq": 1, "Error": ""}) + msgpack.packb({"Members": [{"Name": "a", "Tags": {}}]})


@FUZZ
@given(st.one_of(mutated(_SERF_REPLIES), st.binary(max_size=512)), st.integers(1, 64))
def test_the_serf_rpc_codec_takes_any_bytes(data: bytes, piece: int) -> None:
    codec = SerfCodec()
    codec.request("handshake", {"Version": 1})
    codec.request("members")
    try:
        for i in range(0, len(data), piece):
            codec.receive_data(data[i:i + piece])
            while codec.next_event() is not None:
                pass
    except SerfProtocolError:
        return


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    return struct.pack("<4sI", chunk_id, len(body)) + body + b"\0" * (len(body) & 1)


# A WAV as ffmpeg tags it: fmt, LIST/INFO (odd sizes padded), then the audio.
_INFO = b"INFO" + _chunk(b"IART", "Zoë\0".encode()) + _chunk(b"INAM", "Déjà vu\0".encode()) \
    + _chunk(b"IPRD", b"Album\0") + _chunk(b"ISFT", b"Lavf59.27.100\0")
_WAV_BODY = b"WAVE" + _chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 44100, 88200, 2, 16)) \
    + _chunk(b"LIST", _INFO) + _chunk(b"data", bytes(64))
_WAV = b"RIFF" + struct.pack("<I", len(_WAV_BODY)) + _WAV_BODY


@FUZZ
@given(st.one_of(mutated(_WAV), st.binary(max_size=1024)))
def test_any_wav_has_info_tags_or_riff_info_error(data: bytes) -> None:
    try:
        tags = read_info(io.BytesIO(data), len(data))
    except RiffInfoError:
        return
    assert set(tags) <= set(FIELDS.values()) and all(isinstance(v, str) and v for v in
                                                      tags.values())
    if data == _WAV:
        assert tags == {"title": "Déjà vu", "artist": "Zoë", "album": "Album"}


class _Column:
    """A table-map column as mysql-replication describes one."""

    def __init__(self, name: str, type_: int, **meta: object) -> None:
        self.name, self.type, self.unsigned, self.character_set_name = name, type_, False, "utf8mb4"
        self.__dict__.update(meta)


# The tracks table's columns as its table map gives them (VARCHAR 15, LONGLONG 8, DOUBLE 5,
# LONG 3, TIMESTAMP2 17), and two rows of an update as the binlog writes them.
_TRACK_COLUMNS = [_Column("track_id", 15, max_length=256), _Column("keyspace_id", 8, unsigned=True),
                  *(_Column(c, 15, max_length=2048) for c in ("title", "artist", "album")),
                  _Column("duration_s", 5), _Column("mime", 15, max_length=256),
                  _Column("bytes", 8), _Column("chunks", 3), _Column("manifest_version", 3),
                  _Column("updated_at", 17, fsp=6)]
_TRACK_ROW = (b"\x00\x00" + b"\x04\x00t001" + bytes(8) + b"\x05\x00Title\x00\x00\x05\x00Album"
              + struct.pack("<d", 12.5) + b"\x0a\x00audio/mpeg"
              + struct.pack("<qii", 10**6, 4, 1) + bytes(7))


@FUZZ
@given(st.one_of(mutated(_TRACK_ROW * 4), st.binary(max_size=512)), st.integers(1, 2))
@example(_TRACK_ROW * 4, 2)
def test_any_rows_event_body_is_images_or_rows_error(data: bytes, per_row: int) -> None:
    decoder = rows.RowDecoder.plan(_TRACK_COLUMNS, COLUMNS)
    assert decoder is not None
    try:
        images = decoder.images(data, per_row)
    except rows.RowsError:
        return
    assert all(len(row) == per_row and all(len(image) == len(COLUMNS) for image in row)
               for row in images)
    if data == _TRACK_ROW * 4:
        assert len(images) == 4 // per_row
        assert images[0][0] == ("t001", "Title", "", "Album", 12.5, "audio/mpeg", 10**6, 4)
