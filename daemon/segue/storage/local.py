"""A chunk store on a local path: a plain directory, or a CIFS share mounted by the kernel.

All methods but read_chunk_cached block; the server calls them from worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from segue.seal.manifest import is_track_id
from segue.storage import layout
from segue.storage.cached_read import CachedReader
from segue.storage.errors import BadCopyError, NotInStoreError, StoreError

if TYPE_CHECKING:
    from segue.storage.backends import ShareSpec


class LocalStore:
    """Reads and writes the track layout below one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cached = CachedReader(root)

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

    def read_chunk_cached(self, track_id: str, index: int, buf: bytearray) -> int | None:
        """The chunk read on the caller's thread when the kernel holds its name and bytes
        (segue.storage.cached_read); None otherwise: until a probe of the share has found
        it able to, after a failed one, and always on a network filesystem."""
        return self._cached.read(os.fsencode(layout.chunk_name(track_id, index)), buf)

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

    def read_marker(self) -> bytes:
        """The marker; also what the root is now, for reads without a thread (the probe
        service reads every share's marker at start and every few seconds, in a thread)."""
        try:
            data = layout.read_marker(self._read_into)
        except Exception:
            self._cached.stop()
            raise
        self._cached.follow(os.fsencode(str(layout.MARKER_PATH)), len(data))
        return data

    def write_marker(self, data: bytes) -> None:
        """Mark the store, and give it its tracks folder: a marked store is a whole one."""
        (self.root / layout.TRACKS_FOLDER).mkdir(exist_ok=True)
        self._write(layout.MARKER_PATH, data)

    def write_chunk(self, track_id: str, index: int, data: bytes) -> None:
        self._write(layout.chunk_path(track_id, index), data)

    def write_manifest(self, track_id: str, data: bytes) -> None:
        """Write the manifest last: its presence says the track's chunks are all in place."""
        self._write(layout.manifest_path(track_id), data)

    def _write(self, rel: PurePosixPath, data: bytes) -> None:
        """Write through a temporary name and rename, so readers never see half a file.

        Nothing below the root is followed if it is a link: each folder is opened relative to
        its parent's descriptor with O_NOFOLLOW, and the file is created O_EXCL | O_NOFOLLOW
        in the last one. Whoever can write to a share could otherwise link a track folder to
        /etc and have `segue fsck --repair`, run as root, write there. (The root itself is the
        configured path, links and all.)
        """
        path = self.root / rel
        folder = self._open_folder(rel.parent)
        tmp = layout.temp_name(rel.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666, dir_fd=folder)
            try:
                with open(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, rel.name, src_dir_fd=folder, dst_dir_fd=folder)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=folder)
                raise
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror}") from None
        finally:
            os.close(folder)

    def _open_folder(self, rel: PurePosixPath) -> int:
        """A descriptor of the folder `rel` below the root, each missing folder made; raises
        StoreError naming a link (or a file) where a folder should be."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise StoreError(f"cannot open {self.root}: {e.strerror}") from None
        where = self.root
        try:
            for part in rel.parts:
                where = where / part
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(f"refusing to write below {where}: it is a symbolic link or not "
                                 "a folder; Segue writes only into real folders below the share "
                                 "root (replace it with a folder)") from None
            raise StoreError(f"cannot make or open {where}: {e.strerror}") from None
        return fd

    def remove_track(self, track_id: str) -> None:
        folder = self.root / layout.track_dir(track_id)
        manifest = layout.manifest_path(track_id).name
        try:
            names = sorted(os.listdir(folder), key=lambda name: name == manifest)
            for name in names:  # the manifest last: while it is there, so is the track
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot remove track {track_id} from {folder}: {e.strerror}") \
                from None

    def track_ids(self) -> list[str]:
        """Every track with a folder in this store (for fsck); other names are skipped."""
        tracks = self.root / layout.TRACKS_FOLDER
        if not tracks.is_dir():
            return []
        return sorted(p.name for prefix in tracks.iterdir() if prefix.is_dir()
                      for p in prefix.iterdir() if is_track_id(p.name) and p.is_dir())

    def reset(self) -> None:
        """Nothing is pooled for a local path."""

    def probe(self) -> None:
        """Raise StoreError unless the store's root can be listed and holds its marker or its
        tracks folder.

        A CIFS share mounted at the root that goes away leaves an empty folder there: listing
        it works, and every file would merely be missing.
        """
        try:
            next(os.scandir(self.root), None)
        except OSError as e:
            raise StoreError(f"cannot list {self.root}: {e.strerror}") from None
        if not ((self.root / layout.TRACKS_FOLDER).is_dir()
                or (self.root / layout.MARKER_PATH).is_file()):
            raise StoreError(f"no store marker ({layout.MARKER_PATH}) and no "
                             f"{layout.TRACKS_FOLDER} folder in {self.root}: the share is not "
                             "mounted, or this is not a Segue store (if it holds the tracks, "
                             f"run `{layout.MARK_COMMAND}`)")
