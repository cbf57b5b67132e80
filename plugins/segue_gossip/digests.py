"""Comparing two nodes' sessions cheaply: listeners spread over 256 buckets by a hash of
their id, one hash per bucket over its (listener, digest) pairs.

Anti-entropy first swaps the 256 bucket hashes (4 KiB, whatever the number of listeners); only
the buckets that differ are opened listener by listener, and only the listeners whose digests
differ travel whole. Two nodes in step exchange 4 KiB a round.
"""

from __future__ import annotations

import hashlib

BUCKETS = 256


def bucket_of(user: str) -> int:
    return hashlib.sha256(user.encode()).digest()[0]


def bucket_hashes(digests: dict[str, str]) -> list[bytes]:
    """One 16-byte hash per bucket (an empty bucket hashes the empty string)."""
    lines: list[list[str]] = [[] for _ in range(BUCKETS)]
    for user, digest in digests.items():
        lines[bucket_of(user)].append(f"{user}\x00{digest}\n")
    return [hashlib.sha256("".join(sorted(b)).encode()).digest()[:16] for b in lines]


def differing(mine: list[bytes], theirs: list[bytes]) -> list[int]:
    """The buckets whose hashes differ."""
    return [i for i in range(BUCKETS) if mine[i] != theirs[i]]


def in_buckets(digests: dict[str, str], buckets: list[int]) -> dict[str, str]:
    wanted = set(buckets)
    return {u: d for u, d in digests.items() if bucket_of(u) in wanted}


def plan(mine: dict[str, str], theirs: dict[str, str]) -> tuple[list[str], list[str]]:
    """Within the differing buckets: the listeners to send (ours differs or they lack it) and
    the ones to fetch (theirs differs or we lack it). A listener both sides hold differently is
    in both lists: each side merges the other's state and both end with the join."""
    push = sorted(u for u, d in mine.items() if theirs.get(u) != d)
    pull = sorted(u for u, d in theirs.items() if mine.get(u) != d)
    return push, pull
