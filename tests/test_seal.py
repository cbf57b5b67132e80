"""The seal, without I/O: what packs reads back exactly, and every tampering is refused."""

from __future__ import annotations

import json
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segue.seal import keys
from segue.seal.chunks import ChunkCipher, derive_chunk_key
from segue.seal.errors import (
    ChunkAuthenticationError,
    ManifestError,
    NoRecipientKeyError,
    RollbackError,
)
from segue.seal.manifest import SIGNATURE_LABEL, TrackMeta, b64d, b64e
from segue.seal.track import OpenedTrack, TrackSealer, open_track, rewrap
from segue.seal.wrap import unwrap

TRACK = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@cache
def keyset() -> dict:
    """One set of keys for the whole module: RSA generation is slow."""
    return {
        "x25519": keys.generate("x25519"),
        "rsa": keys.generate("rsa"),
        "p256": keys.generate("p256"),
        "packager": keys.generate("ed25519"),
        "packager_p256": keys.generate("p256"),
        "stranger": keys.generate("ed25519"),
    }


def trusted() -> dict:
    k = keyset()
    return {keys.key_id(p.public_key()): p.public_key()
            for p in (k["packager"], k["packager_p256"])}


def edge_private(*names: str) -> dict:
    k = keyset()
    return {keys.key_id(k[n].public_key()): k[n] for n in names}


def seal(data: bytes, chunk_size: int, track_id: str = TRACK, signer: str = "packager",
         recipients: tuple[str, ...] = ("x25519", "rsa", "p256"),
         version: int = 1) -> tuple[bytes, list[bytes]]:
    k = keyset()
    sealer = TrackSealer(track_id, len(data), chunk_size, version=version)
    chunks = [sealer.seal_chunk(i, data[i * chunk_size:(i + 1) * chunk_size])
              for i in range(sealer.count)]
    manifest = sealer.manifest(TrackMeta(title="t"), [k[r].public_key() for r in recipients],
                               k[signer])
    return manifest, chunks


def open_all(manifest: bytes, chunks: list[bytes], accepted: int | None = None,
             private: dict | None = None) -> bytes:
    opened: OpenedTrack = open_track(manifest, trusted(), private or edge_private("x25519"),
                                     accepted)
    assert len(chunks) == opened.manifest.chunk_count, "chunk count differs from the manifest"
    return b"".join(opened.cipher.open(i, c) for i, c in enumerate(chunks))


sizes = st.integers(min_value=0, max_value=5000)
chunk_sizes = st.integers(min_value=1, max_value=1200)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=5000), chunk_size=chunk_sizes)
def test_pack_then_read_returns_the_exact_bytes(data: bytes, chunk_size: int) -> None:
    manifest, chunks = seal(data, chunk_size)
    assert open_all(manifest, chunks) == data


@pytest.mark.parametrize("recipient", ["x25519", "rsa", "p256"])
def test_every_recipient_type_opens_the_track(recipient: str) -> None:
    manifest, chunks = seal(b"abc" * 1000, 700)
    assert open_all(manifest, chunks, private=edge_private(recipient)) == b"abc" * 1000


def test_a_node_without_a_recipient_key_cannot_open() -> None:
    manifest, chunks = seal(b"x" * 100, 64, recipients=("rsa",))
    with pytest.raises(NoRecipientKeyError):
        open_all(manifest, chunks, private=edge_private("x25519", "p256"))


def test_p256_packager_signatures_verify() -> None:
    manifest, chunks = seal(b"y" * 999, 100, signer="packager_p256")
    assert open_all(manifest, chunks) == b"y" * 999


def test_untrusted_packager_is_refused() -> None:
    manifest, chunks = seal(b"z" * 10, 4, signer="stranger")
    with pytest.raises(ManifestError, match="no valid signature"):
        open_all(manifest, chunks)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=3000), chunk_size=chunk_sizes, pick=st.data())
def test_flipping_any_bit_of_any_chunk_is_refused(data, chunk_size, pick) -> None:
    manifest, chunks = seal(data, chunk_size)
    index = pick.draw(st.integers(0, len(chunks) - 1))
    bit = pick.draw(st.integers(0, len(chunks[index]) * 8 - 1))
    damaged = bytearray(chunks[index])
    damaged[bit // 8] ^= 1 << (bit % 8)
    chunks[index] = bytes(damaged)
    with pytest.raises(ChunkAuthenticationError) as caught:
        open_all(manifest, chunks)
    assert caught.value.index == index


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=2000), pick=st.data())
def test_flipping_any_bit_of_the_signed_payload_is_refused(data, pick) -> None:
    manifest, chunks = seal(data, 256)
    envelope = json.loads(manifest)
    payload = bytearray(b64d(envelope["payload"]))
    bit = pick.draw(st.integers(0, len(payload) * 8 - 1))
    payload[bit // 8] ^= 1 << (bit % 8)
    envelope["payload"] = b64e(bytes(payload))
    with pytest.raises(ManifestError):
        open_all(json.dumps(envelope).encode(), chunks)


@settings(max_examples=30, deadline=None)
@given(pick=st.data())
def test_flipping_any_bit_of_the_signature_is_refused(pick) -> None:
    manifest, chunks = seal(b"q" * 500, 128)
    envelope = json.loads(manifest)
    sig = bytearray(b64d(envelope["signatures"][0]["sig"]))
    bit = pick.draw(st.integers(0, len(sig) * 8 - 1))
    sig[bit // 8] ^= 1 << (bit % 8)
    envelope["signatures"][0]["sig"] = b64e(bytes(sig))
    with pytest.raises(ManifestError):
        open_all(json.dumps(envelope).encode(), chunks)


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=3, max_size=3000), pick=st.data())
def test_reordering_chunks_is_refused(data, pick) -> None:
    chunk_size = pick.draw(st.integers(1, max(1, len(data) // 2)))
    manifest, chunks = seal(data, chunk_size)
    i, j = pick.draw(st.lists(st.integers(0, len(chunks) - 1), min_size=2, max_size=2,
                              unique=True))
    chunks[i], chunks[j] = chunks[j], chunks[i]
    with pytest.raises(ChunkAuthenticationError):
        open_all(manifest, chunks)


def _chunk_key(manifest: bytes) -> bytes:
    """The per-track chunk key, as an edge derives it from the manifest."""
    opened = open_track(manifest, trusted(), edge_private("x25519"), None)
    content_key = unwrap(list(opened.manifest.recipients), edge_private("x25519"), TRACK)
    return derive_chunk_key(content_key, opened.manifest.salt, TRACK)


def test_dropping_the_last_chunk_is_refused() -> None:
    """A track cut after chunk n-2 fails: that chunk was not sealed as the last one, and the
    count of every chunk's associated data says n."""
    manifest, chunks = seal(b"a" * 1000, 300)
    n = len(chunks)
    assert n == 4
    with pytest.raises(AssertionError, match="chunk count"):
        open_all(manifest, chunks[:-1])
    truncated = ChunkCipher(TRACK, _chunk_key(manifest), 1, n - 1)
    for i in range(n - 1):
        with pytest.raises(ChunkAuthenticationError):
            truncated.open(i, chunks[i])


def test_appending_a_chunk_is_refused() -> None:
    """An extra chunk has no place: its index is past the count bound into every chunk."""
    manifest, chunks = seal(b"b" * 1000, 300)
    opened = open_track(manifest, trusted(), edge_private("x25519"), None)
    with pytest.raises(ChunkAuthenticationError):
        opened.cipher.open(len(chunks), chunks[-1])
    with pytest.raises(AssertionError, match="chunk count"):
        open_all(manifest, [*chunks, chunks[0]])


def test_swapping_in_a_chunk_of_another_track_is_refused() -> None:
    data = bytes(range(256)) * 8
    manifest, chunks = seal(data, 512, track_id=TRACK)
    _, foreign = seal(data, 512, track_id=OTHER)
    chunks[1] = foreign[1]
    with pytest.raises(ChunkAuthenticationError):
        open_all(manifest, chunks)


def test_resealing_the_same_track_gives_unrelated_chunks() -> None:
    data = b"same audio" * 100
    manifest_a, chunks_a = seal(data, 128)
    _, chunks_b = seal(data, 128)
    assert not set(chunks_a) & set(chunks_b)
    chunks_a[0] = chunks_b[0]
    with pytest.raises(ChunkAuthenticationError):
        open_all(manifest_a, chunks_a)


def test_replaying_an_older_manifest_is_refused() -> None:
    k = keyset()
    manifest_v1, chunks = seal(b"c" * 2000, 512)
    manifest_v2 = rewrap(manifest_v1, trusted(), edge_private("x25519"),
                         [k["x25519"].public_key()], k["packager"])
    opened_v2 = open_track(manifest_v2, trusted(), edge_private("x25519"), accepted_version=1)
    assert opened_v2.manifest.version == 2
    # The chunks did not change: the new manifest opens them.
    assert open_all(manifest_v2, chunks) == b"c" * 2000
    with pytest.raises(RollbackError, match="older"):
        open_track(manifest_v1, trusted(), edge_private("x25519"), accepted_version=2)


def test_rewrap_removes_a_recipient() -> None:
    k = keyset()
    manifest_v1, chunks = seal(b"d" * 300, 100)
    manifest_v2 = rewrap(manifest_v1, trusted(), edge_private("x25519"),
                         [k["rsa"].public_key()], k["packager"])
    assert open_all(manifest_v2, chunks, private=edge_private("rsa")) == b"d" * 300
    with pytest.raises(NoRecipientKeyError):
        open_all(manifest_v2, chunks, private=edge_private("x25519"))


def test_a_manifest_whose_chunk_count_does_not_fit_its_size_is_refused() -> None:
    k = keyset()
    manifest, _ = seal(b"e" * 1000, 100)
    envelope = json.loads(manifest)
    payload = json.loads(b64d(envelope["payload"]))
    payload["size"] = 5000  # claims more bytes than its 10 chunks can hold
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    envelope["payload"] = b64e(raw)
    envelope["signatures"][0]["sig"] = b64e(k["packager"].sign(SIGNATURE_LABEL + raw))
    with pytest.raises(ManifestError, match="need 50 chunks"):
        open_all(json.dumps(envelope).encode(), [])


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=4000), chunk_size=chunk_sizes, pick=st.data())
def test_open_into_a_reused_buffer_gives_the_same_bytes(data, chunk_size, pick) -> None:
    manifest, chunks = seal(data, chunk_size)
    opened = open_track(manifest, trusted(), edge_private("x25519"), None)
    buf = bytearray(chunk_size + pick.draw(st.integers(0, 64)))
    out = b""
    for i, sealed in enumerate(chunks):
        length = opened.cipher.open_into(i, sealed, buf)
        out += bytes(buf[:length])
    assert out == data
    if chunks[0]:
        with pytest.raises(ChunkAuthenticationError):
            opened.cipher.open_into(0, chunks[0][:-1] + bytes([chunks[0][-1] ^ 1]), buf)
