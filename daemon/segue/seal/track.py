"""Sealing a whole track (the packer's side) and opening one (the edge's side)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from segue.seal import manifest as mf
from segue.seal.chunks import (
    CONTENT_KEY_BYTES,
    SALT_BYTES,
    ChunkCipher,
    chunk_count,
    derive_chunk_key,
    slice_length,
)
from segue.seal.wrap import unwrap, wrap


class TrackSealer:
    """Seals one track chunk by chunk, then writes its signed manifest.

    A fresh random content key and salt are drawn for every sealing, so two sealings of the
    same file never share a chunk key.
    """

    def __init__(
        self,
        track_id: str,
        size: int,
        chunk_size: int,
        *,
        version: int = 1,
        content_version: int = 1,
    ) -> None:
        self.track_id = track_id
        self.size = size
        self.chunk_size = chunk_size
        self.version = version
        self.content_version = content_version
        self.count = chunk_count(size, chunk_size)
        self._content_key = os.urandom(CONTENT_KEY_BYTES)
        self._salt = os.urandom(SALT_BYTES)
        self._cipher = ChunkCipher(
            track_id,
            derive_chunk_key(self._content_key, self._salt, track_id),
            content_version,
            self.count,
        )
        self._digests: list[str | None] = [None] * self.count

    def seal_chunk(self, index: int, plaintext: bytes) -> bytes:
        """Encrypt chunk `index` (its exact plaintext slice) and remember its digest."""
        expected = slice_length(self.size, self.chunk_size, index)
        if len(plaintext) != expected:
            raise ValueError(
                f"chunk {index} of {self.track_id} must be {expected} bytes, got {len(plaintext)}"
            )
        sealed = self._cipher.seal(index, plaintext)
        self._digests[index] = hashlib.sha256(sealed).hexdigest()
        return sealed

    def manifest(
        self,
        meta: mf.TrackMeta,
        recipients: Sequence[PublicKeyTypes],
        signer: PrivateKeyTypes,
        extra: Mapping[str, object] | None = None,
    ) -> bytes:
        """The signed manifest file, once every chunk has been sealed.

        `extra` holds further signed top-level fields (the chunk placement, say).
        """
        missing = [i for i, d in enumerate(self._digests) if d is None]
        if missing:
            raise ValueError(f"{self.track_id}: chunks {missing[:5]} were never sealed")
        if not recipients:
            raise ValueError("a track needs at least one recipient key")
        manifest = mf.Manifest(
            track_id=self.track_id,
            version=self.version,
            content_version=self.content_version,
            created=int(time.time()),
            size=self.size,
            chunk_size=self.chunk_size,
            salt=self._salt,
            chunk_digests=tuple(d for d in self._digests if d is not None),
            recipients=tuple(wrap(self._content_key, r, self.track_id) for r in recipients),
            meta=meta,
            extra=dict(extra or {}),
        )
        return mf.sign(manifest, signer)


@dataclass(frozen=True)
class OpenedTrack:
    """A verified manifest and the cipher that opens its chunks: what an edge caches."""

    manifest: mf.Manifest
    cipher: ChunkCipher

    def plaintext_length(self, index: int) -> int:
        """How many plaintext bytes chunk `index` holds: a full slice, or the remainder."""
        return slice_length(self.manifest.size, self.manifest.chunk_size, index)

    def chunk_range(self, first_byte: int, last_byte: int) -> range:
        """The chunk indexes holding plaintext bytes first_byte..last_byte (inclusive)."""
        size = self.manifest.chunk_size
        return range(first_byte // size, last_byte // size + 1)


def open_track(
    data: bytes,
    trusted: Mapping[str, PublicKeyTypes],
    private_keys: Mapping[str, PrivateKeyTypes],
    accepted_version: int | None,
) -> OpenedTrack:
    """Verify a manifest, refuse a rollback, and unwrap its content key with this node's keys."""
    manifest = mf.verify(data, trusted)
    mf.check_not_rolled_back(manifest, accepted_version)
    content_key = unwrap(list(manifest.recipients), dict(private_keys), manifest.track_id)
    chunk_key = derive_chunk_key(content_key, manifest.salt, manifest.track_id)
    cipher = ChunkCipher(
        manifest.track_id, chunk_key, manifest.content_version, manifest.chunk_count
    )
    return OpenedTrack(manifest, cipher)


def rewrap(
    data: bytes,
    trusted: Mapping[str, PublicKeyTypes],
    private_keys: Mapping[str, PrivateKeyTypes],
    recipients: Sequence[PublicKeyTypes],
    signer: PrivateKeyTypes,
) -> bytes:
    """A new manifest version wrapped for `recipients`; the chunks stay as they are."""
    manifest = mf.verify(data, trusted)
    content_key = unwrap(list(manifest.recipients), dict(private_keys), manifest.track_id)
    renewed = dataclasses.replace(
        manifest,
        version=manifest.version + 1,
        created=int(time.time()),
        recipients=tuple(wrap(content_key, r, manifest.track_id) for r in recipients),
    )
    return mf.sign(renewed, signer)
