"""Writing to the central catalogue: its schema on every shard, and packed tracks."""

from __future__ import annotations

from collections.abc import Sequence

import segue
from segue_mysql.replicator import Shard
from segue_mysql.schema import DATABASE, TRACKS_DDL, KeyRange, keyspace_id


def create_schema(shard: Shard) -> str:
    conn = shard.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4")
            cur.execute(TRACKS_DDL)
    finally:
        conn.close()
    return f"shard {shard.name} ({shard.host}:{shard.port}): {DATABASE}.tracks ready"


def _home(shards: Sequence[Shard], ranges: Sequence[KeyRange], track_id: str) -> Shard:
    """The shard whose range holds the track's keyspace id."""
    key = keyspace_id(track_id)
    return next(s for s, r in zip(shards, ranges, strict=True) if key in r)


def unpublish(shards: Sequence[Shard], ranges: Sequence[KeyRange], track_id: str) -> None:
    """Delete the track's row (none is fine); replication carries the delete to the edges."""
    conn = _home(shards, ranges, track_id).connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DELETE FROM {DATABASE}.tracks WHERE track_id = %s",  # noqa: S608
                        (track_id,))
    finally:
        conn.close()


def publish(shards: Sequence[Shard], ranges: Sequence[KeyRange], track: segue.TrackRecord,
            manifest_version: int) -> None:
    """Upsert the track on the shard whose range holds its keyspace id."""
    key = keyspace_id(track.track_id)
    conn = _home(shards, ranges, track.track_id).connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {DATABASE}.tracks (track_id, keyspace_id, title, artist, album, "  # noqa: S608
                "duration_s, mime, bytes, chunks, manifest_version) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                "title = VALUES(title), artist = VALUES(artist), album = VALUES(album), "
                "duration_s = VALUES(duration_s), mime = VALUES(mime), bytes = VALUES(bytes), "
                "chunks = VALUES(chunks), manifest_version = VALUES(manifest_version)",
                (track.track_id, key, track.title, track.artist, track.album, track.duration_s,
                 track.mime, track.bytes, track.chunks, manifest_version))
    finally:
        conn.close()
