"""Packing: audio file -> sealed chunks and a signed manifest in the store, plus a catalogue row."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from segue.catalogue import Catalogue, TrackRecord
from segue.media import MediaError, probe, track_id_of
from segue.seal.chunks import chunk_count
from segue.seal.errors import ManifestError
from segue.seal.manifest import verify
from segue.seal.track import TrackSealer
from segue.storage.errors import NotInStoreError
from segue.storage.placement import placement
from segue.storage.shares import Share, ShareSet

log = structlog.get_logger("segue.packer")


@dataclass(frozen=True)
class Packed:
    """The outcome of packing one file."""

    record: TrackRecord
    source: Path
    already_packed: bool
    manifest_version: int = 0


@dataclass(frozen=True)
class Packer:
    """Everything packing needs: where to put tracks, whom to wrap keys for, who signs, and
    whose manifests already in the store count when numbering a new version (`trusted`)."""

    shares: ShareSet
    catalogue: Catalogue
    signer: PrivateKeyTypes
    recipients: Sequence[PublicKeyTypes]
    chunk_size: int
    trusted: Mapping[str, PublicKeyTypes]

    def pack(self, path: Path, progress: Callable[[int], None] | None = None) -> Packed:
        """Pack one file; packing a file that is already packed changes nothing.

        `progress` is called with the number of plaintext bytes sealed after each chunk.
        """
        if not path.is_file():
            raise MediaError(f"{path}: no such file")
        meta = probe(path)
        track_id = track_id_of(path)
        existing = self.catalogue.get(track_id)
        if existing is not None and all(s.store.has_manifest(track_id)
                                        for s in self.shares.shares):
            return Packed(existing, path, already_packed=True)
        size = path.stat().st_size
        # A new sealing must be newer than anything an edge may have accepted for this track,
        # or edges would refuse it as a rollback.
        version = self.current_version(track_id) + 1
        sealer = TrackSealer(track_id, size, self.chunk_size, version=version,
                             content_version=version)
        layout = self.shares.placement_doc()
        with open(path, "rb") as f:
            for index in range(chunk_count(size, self.chunk_size)):
                plaintext = f.read(self.chunk_size)
                sealed = sealer.seal_chunk(index, plaintext)
                for name in placement(layout["shares"], layout["replicas"], track_id, index):
                    self._share(name).store.write_chunk(track_id, index, sealed)
                if progress is not None:
                    progress(len(plaintext))
        manifest = sealer.manifest(meta, self.recipients, self.signer,
                                   extra={"placement": layout})
        # The manifest goes on every share, last: its presence says the chunks are in place.
        for share in self.shares.shares:
            share.store.write_manifest(track_id, manifest)
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
        self.catalogue.record_packed(track_id, version)
        return Packed(record, path, already_packed=False, manifest_version=version)

    def _share(self, name: str) -> Share:
        share = self.shares.get(name)
        assert share is not None, name
        return share

    def current_version(self, track_id: str) -> int:
        """The highest of the version the catalogue accepted and those of the track's manifests
        in the store that verify against the trusted packager keys (0 for none). An unverified
        manifest does not count: anyone who can write to a share could plant a huge version."""
        versions = [self.catalogue.accepted_version(track_id) or 0]
        for share in self.shares.shares:
            try:
                manifest = verify(share.store.read_manifest(track_id), self.trusted)
            except NotInStoreError:
                continue
            except ManifestError as e:
                log.warning("manifest in the store ignored for the version number",
                            track=track_id, share=share.name, error=str(e))
                continue
            if manifest.track_id == track_id:
                versions.append(manifest.version)
        return max(versions)
