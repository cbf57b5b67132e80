"""Where a track's files sit on a share: tracks/<first two chars>/<id>/{manifest.json,N.chunk}.

Track ids are validated before they become paths, so no request can name a file outside the
track's own folder.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Protocol

from segue.seal.manifest import is_track_id
from segue.storage.errors import BadCopyError, StoreError

MANIFEST_NAME = "manifest.json"
#: The store marker, at the root of a share (segue.storage.marker).
MARKER_PATH = PurePosixPath("segue-store.json")
MARKER_MAX_BYTES = 4096
#: What the errors tell people to run.
MARK_COMMAND = "segue store mark --config CONF"
#: The folder every share's root holds (`segue init` and `segue pack` make it). A root without
#: it is not a share as far as readers go: an unmounted CIFS share leaves its empty mount point.
TRACKS_FOLDER = "tracks"


def track_dir(track_id: str) -> PurePosixPath:
    """The track's folder, relative to the share root."""
    if not is_track_id(track_id):
        raise ValueError(f"invalid track id {track_id!r}")
    return PurePosixPath(TRACKS_FOLDER, track_id[:2], track_id)


def manifest_path(track_id: str) -> PurePosixPath:
    return track_dir(track_id) / MANIFEST_NAME


def chunk_path(track_id: str, index: int) -> PurePosixPath:
    return PurePosixPath(chunk_name(track_id, index))


def chunk_name(track_id: str, index: int) -> str:
    """chunk_path as a string: what the event loop's reads use (pathlib costs ~5 us a path)."""
    if index < 0:
        raise ValueError(f"invalid chunk index {index}")
    if not is_track_id(track_id):
        raise ValueError(f"invalid track id {track_id!r}")
    return f"{TRACKS_FOLDER}/{track_id[:2]}/{track_id}/{index}.chunk"


def temp_name(name: str) -> str:
    """The temporary name a file `name` is written under before it is renamed into place:
    hidden, and unique to this process and this write (its PID and a random part), so writers
    on several hosts or processes (a node's fsck, a packer) never write into one another's."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"


#: A signed manifest is a few KiB (its chunk digests: 65 bytes a chunk, about 250 KiB for a
#: 1 GiB track); a larger file is not one, and reading it whole (a link to /dev/zero) would
#: exhaust memory.
MANIFEST_MAX_BYTES = 1024 * 1024


def read_manifest(read_into: Callable[[PurePosixPath, str, bytearray], int],
                  track_id: str) -> bytes:
    """A track's manifest through a store's `read_into(path, what, buf)`; BadCopyError for a
    file larger than MANIFEST_MAX_BYTES, which is not read further."""
    buf = bytearray(MANIFEST_MAX_BYTES + 1)
    length = read_into(manifest_path(track_id), f"manifest of track {track_id}", buf)
    if length > MANIFEST_MAX_BYTES:
        raise BadCopyError(f"manifest of track {track_id} is larger than "
                         f"{MANIFEST_MAX_BYTES} bytes: not a manifest")
    return bytes(memoryview(buf)[:length])


def read_marker(read_into: Callable[[PurePosixPath, str, bytearray], int]) -> bytes:
    """The store marker through a store's `read_into`; BadCopyError past MARKER_MAX_BYTES."""
    buf = bytearray(MARKER_MAX_BYTES + 1)
    length = read_into(MARKER_PATH, "store marker", buf)
    if length > MARKER_MAX_BYTES:
        raise BadCopyError(f"{MARKER_PATH} is larger than {MARKER_MAX_BYTES} bytes: not a marker")
    return bytes(buf[:length])


def file_failure(probe: Callable[[], None], message: str) -> StoreError:
    """The error for one file a store failed to read (`message` says which and why).

    One unreadable file (EACCES, EIO, EISDIR, ELOOP on one chunk or manifest) is that copy's
    failure, not its share's: marking the share down for it (and, on SMB, dropping every pooled
    connection) would let a token holder replaying one damaged track keep the node out of its
    pool. So the share itself is asked: BadCopyError (the next copy is tried, the share stays
    up) while `probe()` (the store's own probe) still answers; StoreError (the share is marked
    down) when it does not (a mount gone, a server away).
    """
    try:
        probe()
    except StoreError as e:
        return StoreError(f"{message}; {e}")
    return BadCopyError(message)


class _Readable(Protocol):
    def readinto(self, buf: memoryview) -> int | None: ...


def fill(f: _Readable, buf: bytearray) -> int:
    """Read from `f` into `buf` until it is full or the file ends; the bytes read. (One read
    may return fewer bytes than asked, on a network share especially.)"""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf) and (n := f.readinto(view[filled:])):
        filled += n
    return filled
