"""Removing a track everywhere it is known, in the order that keeps every step safe to stop.

First the central catalogue (through the plugins' `segue_track_removed`), so no node is offered
the track any more; if a plugin cannot, nothing else is touched. Then the local catalogue, so
search stops finding it. Then the files on every share, each share's manifest after its chunks:
while a manifest is there, the track's folder is still found by `segue fsck` and by running
the removal again, which finishes what an interrupted one left.
"""

from __future__ import annotations

from dataclasses import dataclass

from segue.catalogue import Catalogue
from segue.plugin_host import PluginHost
from segue.storage.shares import ShareSet

HOOK = "segue_track_removed"


@dataclass(frozen=True)
class Removed:
    """What a removal found: whether the local catalogue had the track, and which shares
    held a manifest of it."""

    catalogued: bool
    on_shares: list[str]


def remove_track(track_id: str, *, host: PluginHost, catalogue: Catalogue,
                 shares: ShareSet) -> Removed | list[str]:
    """Remove the track; the plugins' errors (one line each) if the central catalogue could
    not drop it, in which case nothing was removed. StoreError from a share that refuses."""
    errors = [f"plugin {outcome.plugin.name!r} could not remove track {track_id} from the "
              f"central catalogue: {outcome.error}"
              for outcome in host.call(HOOK, track_id=track_id) if outcome.error is not None]
    if errors:
        return errors
    catalogued = catalogue.remove(track_id)
    on_shares = [s.name for s in shares.shares if s.store.has_manifest(track_id)]
    for share in shares.shares:
        share.store.remove_track(track_id)
    return Removed(catalogued, on_shares)
