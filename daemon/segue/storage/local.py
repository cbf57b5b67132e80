"""A chunk store on a local path: a plain directory, or a CIFS share mounted by the kernel.

All methods block; the server calls them from worker threads.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from segue.seal.manifest import is_track_id
from segue.storage import layout
from segue.storage.errors import BadCopyError, NotInStoreError, StoreError

if TYPE_CHECKING:
    from segue.storage.backends import ShareSpec


class LocalStore:
    """Reads and writes the track layout below one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_spec(cls, spec: ShareSpec) -> LocalStore:
        """The store at the spec's path; ValueError unless it is a directory."""
        path = Path(spec.url)
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory")
        return cls(path)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def read_manifest(self, track_id: str) -> bytes:
        """The manifest file, refused (StoreError) past layout.MANIFEST_MAX_BYTES."""
        return layout.read_manifest(self._read_into, track_id)

    def read_chunk_into(self, track_id: str, index: int, buf: bytearray) -> int:
        """Read a chunk file into `buf`; returns its length (len(buf) means "too large")."""
        return self._read_into(layout.chunk_path(track_id, index),
                               f"chunk {index} of track {track_id}", buf)

    def _read_into(self, rel: PurePosixPath, what: str, buf: bytearray) -> int:
        """Read a regular file into `buf`, at most len(buf) bytes; returns the length read.

        Anything but a regular file is refused before it is read: a FIFO would block the
        thread forever and a device (a link to /dev/zero) never end.
        """
        path = self.root / rel
        try:
            # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for
            # one; regular files ignore the flag.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotInStoreError(f"{what} is not in {self.root}") from None
        except OSError as e:
            raise layout.file_failure(
                self.probe, f"cannot read {what} from {path}: {e.strerror}") from None
        try:
            with open(fd, "rb", buffering=0) as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise BadCopyError(f"cannot read {what} from {path}: not a regular file")
                return layout.fill(f, buf)
        except OSError as e:
            raise layout.file_failure(
                self.probe, f"cannot read {what} from {path}: {e.strerror}") from None

    def has_manifest(self, track_id: str) -> bool:
        return (self.root / layout.manifest_path(track_id)).is_file()

    def write_chunk(self, track_id: str, index: int, data: bytes) -> None:
        self._write(layout.chunk_path(track_id, index), data)

    def write_manifest(self, track_id: str, data: bytes) -> None:
        """Write the manifest last: its presence says the track's chunks are all in place."""
        self._write(layout.manifest_path(track_id), data)

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
        """Every track with a folder in this store (for fsck); other names are skipped."""
        tracks = self.root / "tracks"
        if not tracks.is_dir():
            return []
        return sorted(p.name for prefix in tracks.iterdir() if prefix.is_dir()
                      for p in prefix.iterdir() if is_track_id(p.name) and p.is_dir())

    def reset(self) -> None:
        """Nothing is pooled for a local path."""

    def probe(self) -> None:
        """Raise StoreError unless the store's root can be listed."""
        try:
            next(os.scandir(self.root), None)
        except OSError as e:
            raise StoreError(f"cannot list {self.root}: {e.strerror}") from None
