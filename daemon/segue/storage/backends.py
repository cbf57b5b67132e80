"""Opening shares from plain specs: the backend is picked by the scheme of each share's URL.

A new backend is one module whose store class has `from_spec(spec)` (ValueError for a spec it
cannot open), and one line in STORES.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import trio

from segue.storage.errors import StoreConfigError
from segue.storage.local import LocalStore
from segue.storage.shares import Share, ShareSet
from segue.storage.smb import SmbStore
from segue.storage.store import ChunkStore


@dataclass(frozen=True)
class ShareSpec:
    """What opening one share needs: plain values, whoever read them from where."""

    name: str
    url: str  # a local path (or CIFS mount), or smb://USER@HOST[:PORT]/SHARE[/PATH]
    threads: int  # worker threads that may wait on this share at once
    timeout_s: float  # the deadline of each wait on it (connecting included)
    password_file: Path | None = None
    encrypt: bool = False
    require_signing: bool = True


#: URL scheme -> backend; "" is a local path.
STORES: dict[str, Callable[[ShareSpec], ChunkStore]] = {
    "": LocalStore.from_spec,
    "smb": SmbStore.from_spec,
}


def open_shares(specs: Sequence[ShareSpec], replicas: int) -> ShareSet:
    """The shares `specs` name, each with its backend and limiter; raises StoreConfigError
    naming every share that cannot be opened (a bad URL, no such folder, no password)."""
    problems: list[tuple[str, str]] = []
    shares: list[Share] = []
    for spec in specs:
        scheme = urlsplit(spec.url).scheme if "://" in spec.url else ""
        backend = STORES.get(scheme)
        try:
            if backend is None:
                raise ValueError(f"{spec.url!r}: no backend for {scheme}:// (known: "
                                 f"{', '.join(s for s in STORES if s)} or a path)")
            store = backend(spec)
        except ValueError as e:
            problems.append((spec.name, str(e)))
            continue
        shares.append(Share(spec.name, store, trio.CapacityLimiter(spec.threads)))
    if problems:
        raise StoreConfigError(problems)
    return ShareSet(shares, replicas)
