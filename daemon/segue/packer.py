"""Packing: audio file -> sealed chunks and a signed manifest in the store, plus a catalogue row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from segue.catalogue import Catalogue, TrackRecord
from segue.media import MediaError, probe, track_id_of
from segue.seal.chunks import chunk_count
from segue.seal.manifest import peek_version
from segue.seal.track import TrackSealer
from segue.storage.errors import StoreError
from segue.storage.local import LocalStore


@dataclass(frozen=True)
class Packed:
    """The outcome of packing one file."""

    record: TrackRecord
    source: Path
    already_packed: bool


@dataclass(frozen=True)
class Packer:
    """Everything packing needs: where to put tracks, whom to wrap keys for, who signs."""

    store: LocalStore
    catalogue: Catalogue
    signer: PrivateKeyTypes
    recipients: Sequence[PublicKeyTypes]
    chunk_size: int

    def pack(self, path: Path, progress: Callable[[int], None] | None = None) -> Packed:
        """Pack one file; packing a file that is already packed changes nothing.

        `progress` is called with the number of plaintext bytes sealed after each chunk.
        """
        if not path.is_file():
            raise MediaError(f"{path}: no such file")
        meta = probe(path)
        track_id = track_id_of(path)
        existing = self.catalogue.get(track_id)
        if existing is not None and self.store.has_manifest(track_id):
            return Packed(existing, path, already_packed=True)
        size = path.stat().st_size
        # A new sealing must be newer than anything an edge may have accepted for this track,
        # or edges would refuse it as a rollback.
        version = self._next_version(track_id)
        sealer = TrackSealer(track_id, size, self.chunk_size, version=version,
                             content_version=version)
        with open(path, "rb") as f:
            for index in range(chunk_count(size, self.chunk_size)):
                plaintext = f.read(self.chunk_size)
                self.store.write_chunk(track_id, index, sealer.seal_chunk(index, plaintext))
                if progress is not None:
                    progress(len(plaintext))
        self.store.write_manifest(track_id, sealer.manifest(meta, self.recipients, self.signer))
        record = TrackRecord(
            track_id=track_id,
            title=meta.title,
            artist=meta.artist,
            album=meta.album,
            duration_s=meta.duration_s,
            mime=meta.mime,
            bytes=size,
            chunks=sealer.count,
        )
        self.catalogue.put(record)
        return Packed(record, path, already_packed=False)

    def _next_version(self, track_id: str) -> int:
        accepted = self.catalogue.accepted_version(track_id) or 0
        try:
            existing = peek_version(self.store.read_manifest(track_id))
        except StoreError:
            existing = 0
        return max(accepted, existing) + 1
