"""The store marker: a small file at the root of every share that says "this is a Segue store".

An unmounted CIFS share is an empty folder, and an empty folder looks like a store that holds
no track: without a marker, a node would answer `200 ok`, 404 every play and fsck would find
nothing wrong. So a share counts only once its marker is read: serving needs it (a share
without one is down, and a node with no share left is failing), and so do pack and fsck, which
also need to write. `segue init` writes the marker; `segue store mark` writes it on a new share
or a store made before markers existed.

The marker names the store (a random id, the same on every node that mounts the share) and the
version of the layout below it, so a node refuses a store laid out by a newer Segue.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from segue.storage.errors import NotInStoreError, StoreError
from segue.storage.layout import MARK_COMMAND, MARKER_PATH
from segue.storage.store import ChunkStore

MARKER_NAME = MARKER_PATH.name
#: The layout version this Segue reads and writes (docs/format.md: tracks/XX/ID/...).
FORMAT = 1


class UnmarkedStoreError(StoreError):
    """A share without a valid marker: not mounted, not a Segue store, or one made before
    markers (the message says which command marks it)."""


class MissingMarkerError(UnmarkedStoreError):
    """The share answers and holds no marker file at all."""


@dataclass(frozen=True)
class StoreMarker:
    store_id: str
    format: int
    created: str

    def to_bytes(self) -> bytes:
        doc = {"segue_store": self.format, "store_id": self.store_id, "created": self.created}
        return (json.dumps(doc, indent=2) + "\n").encode()


def new_marker() -> StoreMarker:
    """A marker for a store made now."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return StoreMarker(store_id=uuid.uuid4().hex, format=FORMAT, created=created)


def parse(data: bytes, where: object) -> StoreMarker:
    """The marker in `data` (read from `where`); UnmarkedStoreError for anything else."""
    try:
        doc = json.loads(data)
        marker = StoreMarker(store_id=str(doc["store_id"]), format=doc["segue_store"],
                             created=str(doc.get("created", "")))
    except (ValueError, TypeError, KeyError):
        raise UnmarkedStoreError(f"{MARKER_NAME} in {where} is not a Segue store marker; "
                                 f"move it away and run `{MARK_COMMAND}`") from None
    if not isinstance(marker.format, int) or isinstance(marker.format, bool):
        raise UnmarkedStoreError(f"{MARKER_NAME} in {where}: segue_store is not a number")
    if marker.format > FORMAT:
        raise UnmarkedStoreError(f"{where} is laid out in store format {marker.format}; this "
                                 f"Segue reads format {FORMAT} only: upgrade Segue")
    return marker


def read(store: ChunkStore) -> StoreMarker:
    """The store's marker, after checking the share answers at all; raises StoreError (the
    share cannot be reached) or UnmarkedStoreError (it answers, but holds no valid marker)."""
    return parse(_read_raw(store), store.root)


def _read_raw(store: ChunkStore, *, probe: bool = True) -> bytes:
    if probe:
        store.probe()
    try:
        return store.read_marker()
    except NotInStoreError:
        raise MissingMarkerError(
            f"no store marker ({MARKER_NAME}) in {store.root}: the share is not mounted, or "
            f"this is not a Segue store, or one made before stores were marked (if it holds "
            f"the tracks, run `{MARK_COMMAND}`)") from None


def require_writable(store: ChunkStore) -> StoreMarker:
    """The marker of a store that commands will write to. It is written back in place (the
    same bytes), so a share mounted read-only, or not writable by this user, is named before
    any track is half packed; raises StoreError saying which."""
    data = _read_raw(store)
    marker = parse(data, store.root)
    try:
        store.write_marker(data)
    except StoreError as e:
        raise StoreError(f"{store.root} cannot be written ({e}): packing and repairs need the "
                         "share mounted read-write (serving needs only reads)") from None
    return marker


def mark(store: ChunkStore, *, new: bool) -> tuple[StoreMarker, bool]:
    """The store's marker, written first if it has none: (marker, whether it was written now).

    A folder without a marker that holds no track is refused unless `new` says it is a new
    share: it may as well be a mount point whose share is not mounted, and marking that would
    make the empty folder look like the store. A marker that is there but invalid is never
    overwritten. The share is not probed first: a new share has nothing a probe looks for
    (neither marker nor tracks folder) until it is marked."""
    try:
        return parse(_read_raw(store, probe=False), store.root), False
    except MissingMarkerError:
        pass
    if not new and not store.track_ids():
        raise UnmarkedStoreError(
            f"{store.root} holds no track: if it is a new share, mark it with --new; if it "
            "should hold tracks, the share is probably not mounted")
    made = new_marker()
    store.write_marker(made.to_bytes())
    return made, True
