"""A chunk store on a local path: a plain directory, or a CIFS share mounted by the kernel.

All methods block; the server calls them from worker threads.
"""

from __future__ import annotations

import os
from pathlib import Path

from segue.storage import layout
from segue.storage.errors import NotInStoreError, StoreError


class LocalStore:
    """Reads and writes the track layout below one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def read_manifest(self, track_id: str) -> bytes:
        return self._read(layout.manifest_path(track_id), f"manifest of track {track_id}")

    def read_chunk(self, track_id: str, index: int) -> bytes:
        return self._read(layout.chunk_path(track_id, index), f"chunk {index} of track {track_id}")

    def read_chunk_into(self, track_id: str, index: int, buf: bytearray) -> int:
        """Read a chunk file into `buf`; returns its length (len(buf) means "too large")."""
        path = self.root / layout.chunk_path(track_id, index)
        what = f"chunk {index} of track {track_id}"
        try:
            with open(path, "rb", buffering=0) as f:
                view = memoryview(buf)
                filled = 0
                while filled < len(buf) and (n := f.readinto(view[filled:])):
                    filled += n
                return filled
        except FileNotFoundError:
            raise NotInStoreError(f"{what} is not in {self.root}") from None
        except OSError as e:
            raise StoreError(f"cannot read {what} from {path}: {e.strerror}") from None

    def has_manifest(self, track_id: str) -> bool:
        return (self.root / layout.manifest_path(track_id)).is_file()

    def write_chunk(self, track_id: str, index: int, data: bytes) -> None:
        self._write(layout.chunk_path(track_id, index), data)

    def write_manifest(self, track_id: str, data: bytes) -> None:
        """Write the manifest last: its presence says the track's chunks are all in place."""
        self._write(layout.manifest_path(track_id), data)

    def _read(self, rel: os.PathLike[str], what: str) -> bytes:
        path = self.root / rel
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotInStoreError(f"{what} is not in {self.root}") from None
        except OSError as e:
            raise StoreError(f"cannot read {what} from {path}: {e.strerror}") from None

    def _write(self, rel: os.PathLike[str], data: bytes) -> None:
        """Write through a temporary name and rename, so readers never see half a file."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {path}: {e.strerror}") from None

    def track_ids(self) -> list[str]:
        """Every track with a folder in this store (for fsck)."""
        tracks = self.root / "tracks"
        if not tracks.is_dir():
            return []
        return sorted(p.name for prefix in tracks.iterdir() if prefix.is_dir()
                      for p in prefix.iterdir() if p.is_dir())

    def reset(self) -> None:
        """Nothing is pooled for a local path."""

    def probe(self) -> None:
        """Raise StoreError unless the store's root can be listed."""
        try:
            next(os.scandir(self.root), None)
        except OSError as e:
            raise StoreError(f"cannot list {self.root}: {e.strerror}") from None
