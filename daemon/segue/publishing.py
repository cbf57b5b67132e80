"""Publishing packed tracks to the central catalogue, and remembering what was not published.

`segue pack` seals a track, then hands it to the plugins that publish (`segue_track_packed`).
When one cannot (its database is down), the track is packed but not published, and packing
the file again must not take "already packed" for "done": the local catalogue records the
version packed here and whether it was published, so the next `segue pack` of the file, or
`segue catalogue publish`, publishes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from segue.catalogue import Catalogue, TrackRecord
from segue.plugin_host import PluginHost

HOOK = "segue_track_packed"


class Publisher:
    """The plugins that publish, and the local record of what they have."""

    def __init__(self, host: PluginHost, catalogue: Catalogue, configured: Iterable[str]) -> None:
        """`configured`: the plugins with a [plugins.NAME] table."""
        self.host = host
        self.catalogue = catalogue
        self._configured = set(configured)

    @property
    def active(self) -> bool:
        """Whether a plugin that publishes is configured. Built-in plugins do nothing without
        their table (segue_mysql's hook returns at once), so an installed one alone would
        make every track count as published to a catalogue that never saw it."""
        return any(HOOK in self.host.hooks_of(p) and p.name in self._configured
                   for p in self.host.plugins)

    def packed_version(self, track_id: str,
                       current_version: Callable[[str], int]) -> tuple[int, bool]:
        """(the manifest version packed here, whether it was published). A track packed
        before versions were recorded here counts as unpublished, with `current_version(id)`,
        the newest in the store (publishing is an upsert: once more does no harm)."""
        state = self.catalogue.packed_version(track_id)
        if state is None:
            state = (current_version(track_id), False)
            self.catalogue.record_packed(track_id, state[0])
        return state

    def publish(self, record: TrackRecord, version: int) -> list[str]:
        """Hand the track to every publishing plugin; the errors, one line per plugin that
        failed (none: it is recorded as published, if a publisher is configured)."""
        errors = [f"plugin {outcome.plugin.name!r} could not publish track {record.track_id}: "
                  f"{outcome.error}"
                  for outcome in self.host.call(HOOK, track=record, manifest_version=version)
                  if outcome.error is not None]
        if not errors and self.active:
            self.catalogue.mark_published(record.track_id, version)
        return errors
