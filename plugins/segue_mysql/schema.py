"""The central catalogue's schema on every shard (docs/catalogue.md) and the shard map."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

DATABASE = "segue_catalogue"

TRACKS_DDL = f"""
CREATE TABLE IF NOT EXISTS {DATABASE}.tracks (
    track_id         VARCHAR(64)     NOT NULL PRIMARY KEY,
    keyspace_id      BIGINT UNSIGNED NOT NULL,
    title            VARCHAR(512)    NOT NULL,
    artist           VARCHAR(512)    NOT NULL DEFAULT '',
    album            VARCHAR(512)    NOT NULL DEFAULT '',
    duration_s       DOUBLE          NOT NULL DEFAULT 0,
    mime             VARCHAR(64)     NOT NULL,
    bytes            BIGINT          NOT NULL,
    chunks           INT             NOT NULL,
    manifest_version INT             NOT NULL DEFAULT 1,
    updated_at       TIMESTAMP(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                                     ON UPDATE CURRENT_TIMESTAMP(6),
    KEY by_keyspace (keyspace_id),
    KEY by_artist (artist(64)),
    KEY by_album (album(64))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

COLUMNS = ("track_id", "title", "artist", "album", "duration_s", "mime", "bytes", "chunks")


def keyspace_id(track_id: str) -> int:
    """A stable 64-bit hash of the track id: the first 8 bytes of SHA-256, big-endian."""
    return int.from_bytes(hashlib.sha256(track_id.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class KeyRange:
    """A half-open range of keyspace ids written as hex prefixes: "-80", "80-", "40-80"."""

    start: int
    end: int  # exclusive; 2**64 for the open end

    @classmethod
    def parse(cls, text: str) -> KeyRange:
        low, sep, high = text.partition("-")
        if not sep:
            raise ValueError(f"{text!r} is not a range like -80, 40-80 or 80-")

        def bound(hexa: str, default: int) -> int:
            if not hexa:
                return default
            if len(hexa) > 16 or any(c not in "0123456789abcdef" for c in hexa):
                raise ValueError(f"{hexa!r} is not a lowercase hex prefix of up to 16 digits")
            return int(hexa.ljust(16, "0"), 16)

        start, end = bound(low, 0), bound(high, 2**64)
        if start >= end:
            raise ValueError(f"range {text!r} is empty")
        return cls(start, end)

    def __contains__(self, key: int) -> bool:
        return self.start <= key < self.end


def check_cover(ranges: Sequence[KeyRange]) -> None:
    """The ranges must cover the whole keyspace exactly once; raises ValueError otherwise."""
    ordered = sorted(ranges, key=lambda r: r.start)
    position = 0
    for r in ordered:
        if r.start != position:
            raise ValueError(f"shard ranges leave a gap or overlap at {position:016x}")
        position = r.end
    if position != 2**64:
        raise ValueError("shard ranges do not reach the end of the keyspace (ff...)")


def shard_for(track_id: str, ranges: Sequence[KeyRange]) -> int:
    """The index (in `ranges` sorted by start) of the shard holding `track_id`."""
    starts = [r.start for r in ranges]
    return bisect.bisect_right(starts, keyspace_id(track_id)) - 1
