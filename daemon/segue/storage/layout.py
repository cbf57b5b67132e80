"""Where a track's files sit on a share: tracks/<first two chars>/<id>/{manifest.json,N.chunk}.

Track ids are validated before they become paths, so no request can name a file outside the
track's own folder.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from segue.seal.manifest import is_track_id

MANIFEST_NAME = "manifest.json"


def track_dir(track_id: str) -> PurePosixPath:
    """The track's folder, relative to the share root."""
    if not is_track_id(track_id):
        raise ValueError(f"invalid track id {track_id!r}")
    return PurePosixPath("tracks", track_id[:2], track_id)


def manifest_path(track_id: str) -> PurePosixPath:
    return track_dir(track_id) / MANIFEST_NAME


def chunk_path(track_id: str, index: int) -> PurePosixPath:
    if index < 0:
        raise ValueError(f"invalid chunk index {index}")
    return track_dir(track_id) / f"{index}.chunk"
