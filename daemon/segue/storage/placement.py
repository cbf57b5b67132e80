"""Which shares hold a chunk: rendezvous (highest-random-weight) hashing.

Each (track, chunk) ranks every share by SHA-256(share name, track id, chunk index); the first
R shares of that ranking hold the chunk. Adding or removing a share moves only the chunks whose
top R it enters or leaves, and any node computes the same answer from the names alone.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence


def rank(shares: Sequence[str], track_id: str, index: int) -> list[str]:
    """All shares, best first, for chunk `index` of `track_id`."""
    def score(share: str) -> bytes:
        return hashlib.sha256(
            b"segue/v1 placement\x00" + share.encode() + b"\x00" + track_id.encode()
            + struct.pack(">I", index)
        ).digest()

    return sorted(shares, key=score, reverse=True)


def placement(shares: Sequence[str], replicas: int, track_id: str, index: int) -> list[str]:
    """The `replicas` shares that hold chunk `index` of `track_id`, best first."""
    return rank(shares, track_id, index)[:max(1, min(replicas, len(shares)))]
