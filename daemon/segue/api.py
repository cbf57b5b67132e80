"""The public surface for plugin authors: Protocols and values, nothing that runs.

A plugin imports what it needs from ``segue`` (which re-exports this module) and receives the
rest as hook arguments. Everything here is covered by the plugin API version in
``segue.hookspecs.PLUGIN_API_VERSION``; docs/plugins.md documents it.

The node hands plugins narrow views rather than its own objects: ``NodeView`` to read the
node's state, and ``ReplicationSink`` (``node.replication``) to write replicated catalogue
rows. A plugin never needs, and never gets, the concrete SQLite catalogue or the node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from segue.catalogue import TrackRecord
from segue.health import Health, HealthStatus
from segue.http.messages import Request, Response
from segue.lifecycle import NodeState

__all__ = [
    "Handler",
    "Health",
    "HealthStatus",
    "NodeState",
    "NodeView",
    "PluginConfigError",
    "ReplicationSink",
    "Request",
    "Response",
    "Route",
    "SessionsView",
    "TrackRecord",
]

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """An HTTP route a plugin adds: `method` and an exact `path`, or a prefix ending in "/".

    "/" (the web player) and paths under /v1/, /player/, /healthz and /metrics belong to Segue
    and are refused (a prefix "/" would take them all). The handler does its own
    authorisation: plugin routes are not behind player tokens.
    """

    method: str
    path: str
    handler: Handler

    def matches(self, method: str, path: str) -> bool:
        if method != self.method and not (method == "HEAD" and self.method == "GET"):
            return False
        return path.startswith(self.path) if self.path.endswith("/") else path == self.path


class PluginConfigError(Exception):
    """Raised by `segue_configure`: the plugin's [plugins.NAME] table is not acceptable.

    Each message should name the key and the fix; the host prefixes file and table.
    """

    def __init__(self, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.messages = list(messages)


class ReplicationSink(Protocol):
    """Where a replication plugin writes catalogue rows, with its position, atomically.

    Both methods block (SQLite): call them from a worker thread.
    """

    def apply_replicated(self, source: str, upserts: Iterable[TrackRecord],
                         deletes: Iterable[str], position: str, *,
                         replace: bool = False) -> None:
        """Write `upserts`, delete the track ids in `deletes` and record `position` for
        `source`, all in one transaction; with `replace`, the rows of `source` not in
        `upserts` go (a fresh snapshot)."""
        ...

    def replication_position(self, source: str) -> str | None:
        """The position last recorded for `source`, or None before its first snapshot."""
        ...


class SessionsView(Protocol):
    """The node's playback sessions, as a session transport sees them (since API version 2).

    Deltas and states travel in their JSON form: stamped with hybrid logical clocks, merged by
    rules under which duplicates, reordering and whole states are all harmless.
    """

    def apply_remote(self, user: str, delta: Mapping[str, Any]) -> bool:
        """Merge a delta (or a whole state) from another node into `user`'s session; False
        when it is malformed (dropped and counted). Stamps too far ahead are clamped."""
        ...

    def merge_remote(self, user: str, delta: Mapping[str, Any]) -> str:
        """``apply_remote``, saying what the merge did (since API version 5): "applied" (the
        session changed), "unchanged" (this node held it already) or "malformed"."""
        ...

    def digests(self) -> dict[str, str]:
        """Each listener's state digest: two nodes hold the same state iff digests match."""
        ...

    def digest(self, user: str) -> str | None:
        """One listener's digest, or None when this node holds no state for them (since API
        version 3: cheaper than ``digests()`` for one listener)."""
        ...

    def export(self, user: str) -> dict[str, Any] | None:
        """A listener's whole state (send it to a peer whose digest differs)."""
        ...

    def local_listeners(self) -> set[str]:
        """The listeners with a device or an event stream on this node now (since API version
        3): a transport that follows only some listeners follows these
        (``segue_session_presence`` tells when the set changes)."""
        ...


class NodeView(Protocol):
    """What hooks may read about the node they run in."""

    @property
    def node_id(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def state(self) -> NodeState:
        """Starting, ready, draining or stopping (a str enum: compare with NodeState)."""
        ...

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs the node listens on (empty before it listens)."""
        ...

    @property
    def streams_in_flight(self) -> int:
        """Response bodies being sent right now."""
        ...

    @property
    def health(self) -> Health:
        """The node's overall health (storage and every plugin), as /healthz reports it."""
        ...

    @property
    def config_path(self) -> Path:
        """The configuration file the node runs with, as the command line named it (resolve a
        relative path of your own table against its folder, as ``segue_configure`` does). The
        same path ``segue_configure`` got. Read it, never write it: it is the sysadmin's (a
        root-owned conffile when installed); the settings in force are ``settings``."""
        ...

    @property
    def settings(self) -> Mapping[str, Mapping[str, Any]]:
        """The node's settings in force (since API version 4): ``settings["http"]["listen"]``.

        Every section of the configuration but ``[plugins]``, every key with its default filled
        in and the command line's overrides applied; read-only (mappings that cannot be
        changed, sequences as tuples), paths and addresses as strings. File paths only, never
        what key or password files hold. A new object after each reload.
        """
        ...

    @property
    def replication(self) -> ReplicationSink:
        """Where replicated catalogue rows go (since API version 2)."""
        ...

    @property
    def catalogue(self) -> ReplicationSink:
        """The same as ``replication`` (API version 1's name, kept for old plugins)."""
        ...

    @property
    def sessions(self) -> SessionsView:
        """The playback sessions: the session transports' door (since API version 2)."""
        ...

    def plugin_config(self, name: str) -> Mapping[str, Any]:
        """The raw [plugins.NAME] table of the configuration now in force."""
        ...
