"""Chunk encryption: AES-256-GCM under a per-track key, one chunk file per plaintext slice.

A track's plaintext is cut into fixed-size slices (the last may be shorter). Chunk i is sealed
with a nonce that carries i and a last-chunk flag, and associated data that binds the track id,
the content version and the chunk count, so that a chunk moved to another index, another track,
another encryption of the same track, or a truncated or extended track fails authentication.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from segue.seal.errors import ChunkAuthenticationError

CONTENT_KEY_BYTES = 32
SALT_BYTES = 32
TAG_BYTES = 16
MAX_CHUNKS = 2**32 - 1
DEFAULT_CHUNK_SIZE = 256 * 1024

_KEY_INFO = b"segue/v1 chunk key\x00"
_AAD_LABEL = b"segue/v1 chunk\x00"
_NONCE_PAD = bytes(7)


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a plaintext of `size` bytes takes; an empty file is one empty chunk."""
    if chunk_size <= 0:
        raise ValueError("chunk size must be positive")
    return max(1, -(-size // chunk_size))


def slice_length(size: int, chunk_size: int, index: int) -> int:
    """Plaintext bytes in chunk `index` of a `size`-byte track: a full slice or the remainder."""
    return max(0, min(chunk_size, size - index * chunk_size))


def derive_chunk_key(content_key: bytes, salt: bytes, track_id: str) -> bytes:
    """HKDF-SHA256(ikm=content key, salt, info="segue/v1 chunk key" 0x00 track id) -> 32 bytes."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=salt,
        info=_KEY_INFO + track_id.encode("ascii"),
    )
    return hkdf.derive(content_key)


def chunk_nonce(index: int, last: bool) -> bytes:
    """7 zero bytes, the chunk index as big-endian u32, then 0x01 for the last chunk else 0x00."""
    return _NONCE_PAD + struct.pack(">IB", index, 1 if last else 0)


def chunk_aad(track_id: str, content_version: int, count: int) -> bytes:
    """The associated data shared by every chunk of one encryption of a track."""
    return (
        _AAD_LABEL
        + track_id.encode("ascii")
        + b"\x00"
        + struct.pack(">QI", content_version, count)
    )


class ChunkCipher:
    """Seals and opens the chunks of one encryption of one track."""

    __slots__ = ("_aad", "_aead", "count", "track_id")

    def __init__(
        self, track_id: str, chunk_key: bytes, content_version: int, count: int
    ) -> None:
        if not 1 <= count <= MAX_CHUNKS:
            raise ValueError(f"chunk count {count} out of range")
        self.track_id = track_id
        self.count = count
        self._aead = AESGCM(chunk_key)
        self._aad = chunk_aad(track_id, content_version, count)

    def seal(self, index: int, plaintext: bytes) -> bytes:
        """Encrypt chunk `index`; returns ciphertext followed by the 16-byte tag."""
        return self._aead.encrypt(self._nonce(index), plaintext, self._aad)

    def open(self, index: int, sealed: bytes) -> bytes:
        """Verify and decrypt chunk `index`; raises ChunkAuthenticationError if it was altered."""
        try:
            return self._aead.decrypt(self._nonce(index), sealed, self._aad)
        except InvalidTag:
            raise ChunkAuthenticationError(self.track_id, index) from None

    def open_into(self, index: int, sealed: bytes | memoryview, out: bytearray) -> int:
        """Like `open`, writing the plaintext into `out`; returns its length.

        `out` must hold at least len(sealed) - 16 bytes. On failure its contents are undefined
        and must not be used.
        """
        length = len(sealed) - TAG_BYTES
        if length < 0:
            raise ChunkAuthenticationError(self.track_id, index)
        try:
            with memoryview(out) as view:
                self._aead.decrypt_into(self._nonce(index), sealed, self._aad, view[:length])
        except InvalidTag:
            raise ChunkAuthenticationError(self.track_id, index) from None
        return length

    def _nonce(self, index: int) -> bytes:
        if not 0 <= index < self.count:
            raise ChunkAuthenticationError(self.track_id, index)
        return chunk_nonce(index, index == self.count - 1)
