"""`segue keys rewrap`: wrap every track's content key for the configured recipients again.

Adding an edge key (a new node) or removing one (a node retired or compromised) changes who can
open tracks. The chunks never change: only each manifest is written again, as its next version,
with the content key wrapped for exactly `[packer] recipients`, so the work is a few KiB a
track. The configuration is the one statement of who should be a recipient, which makes the
command resumable: a manifest already wrapped for exactly that set is left alone, so running it
again after an interruption finishes the rest, and running it twice does nothing the second time.
A manifest signed by another packager key than `[packer] signing_key` is signed again too, so
the same command rotates the packager key (docs/security.md).

Unwrapping needs a private key of one of a manifest's current recipients (`[seal] edge_keys`),
and the new manifest is signed with `[packer] signing_key`: run it where both are (a
self-contained node, or a packaging host given one edge key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from segue.seal import manifest as mf
from segue.seal.errors import SealError
from segue.seal.keys import key_id
from segue.seal.track import rewrap
from segue.storage.errors import StoreError
from segue.storage.shares import ShareSet


@dataclass
class Outcome:
    """Track ids by what happened to them."""

    rewrapped: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def rewrap_all(
    shares: ShareSet,
    trusted: Mapping[str, PublicKeyTypes],
    private_keys: Mapping[str, PrivateKeyTypes],
    recipients: Sequence[PublicKeyTypes],
    signer: PrivateKeyTypes,
    *,
    report: Callable[[str, str], None],
    rewrapped: Callable[[str, int], None],
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Outcome:
    """Rewrap every track on the shares whose newest valid manifest is not wrapped for exactly
    `recipients`; `report(track_id, what)` after each track that needed work,
    `rewrapped(track_id, version)` after its new version is on every share, and
    `progress(done, total)` after every track looked at (most need nothing, and say nothing)."""
    wanted = {key_id(r) for r in recipients}
    signer_id = key_id(signer.public_key())
    outcome = Outcome()
    found: set[str] = set()
    for share in shares.shares:
        found.update(share.store.track_ids())
    for done, track_id in enumerate(sorted(found)):
        progress(done, len(found))
        newest = _newest(shares, trusted, track_id)
        if newest is None:
            outcome.failed.append(track_id)
            report(track_id, "no valid manifest on any share (segue fsck --track says why)")
            continue
        data, manifest = newest
        if ({w.key_id for w in manifest.recipients} == wanted
                and mf.signer_ids(data) == [signer_id]):
            outcome.current.append(track_id)
            continue
        try:
            renewed = rewrap(data, trusted, private_keys, recipients, signer)
            for share in shares.shares:
                share.store.write_manifest(track_id, renewed)
        except (SealError, StoreError) as e:
            outcome.failed.append(track_id)
            report(track_id, f"not rewrapped: {e}")
            continue
        outcome.rewrapped.append(track_id)
        rewrapped(track_id, manifest.version + 1)
        report(track_id, f"rewrapped: manifest version {manifest.version + 1}")
    return outcome


def _newest(shares: ShareSet, trusted: Mapping[str, PublicKeyTypes],
            track_id: str) -> tuple[bytes, mf.Manifest] | None:
    """The newest copy of the track's manifest that verifies and names the track."""
    best: tuple[bytes, mf.Manifest] | None = None
    for share in shares.shares:
        try:
            data = share.store.read_manifest(track_id)
            manifest = mf.verify(data, trusted)
        except (StoreError, SealError):
            continue
        if manifest.track_id == track_id and (best is None or manifest.version > best[1].version):
            best = (data, manifest)
    return best
