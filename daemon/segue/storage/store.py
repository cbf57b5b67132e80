"""What every chunk store backend provides (a local path, an SMB share)."""

from __future__ import annotations

from typing import Protocol


class ChunkStore(Protocol):
    """Blocking access to the track layout on one share; called from worker threads.

    Reads raise NotInStoreError for a file that is not there and StoreError for a share that
    cannot be read.
    """

    @property
    def root(self) -> object:
        """Where the store is, for people: a path or an smb:// URL."""
        ...

    def read_manifest(self, track_id: str) -> bytes: ...

    def read_chunk_into(self, track_id: str, index: int, buf: bytearray) -> int: ...

    def read_chunk_cached(self, track_id: str, index: int, buf: bytearray) -> int | None:
        """read_chunk_into, but only when it needs no I/O and no wait (the event loop calls
        it, not a thread); None when that cannot be done, for any reason: the caller then uses
        read_chunk_into in a thread, which reports what is wrong."""
        ...

    def has_manifest(self, track_id: str) -> bool: ...

    def write_chunk(self, track_id: str, index: int, data: bytes) -> None: ...

    def write_manifest(self, track_id: str, data: bytes) -> None: ...

    def track_ids(self) -> list[str]: ...

    def remove_track(self, track_id: str) -> None:
        """Delete the track's files, its manifest last, then its folder; files already gone
        are fine, so a removal that stopped half way can be run again."""
        ...

    def read_marker(self) -> bytes:
        """The store marker at the root (segue.storage.marker); NotInStoreError without one."""
        ...

    def write_marker(self, data: bytes) -> None: ...

    def probe(self) -> None: ...

    def reset(self) -> None:
        """Drop pooled connections after a read timed out (a no-op for local paths)."""
        ...
