"""The values that cross between Segue and its plugins: health, routes, config errors, and the
view of the node that hooks receive. Everything here is part of the public plugin API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from segue.catalogue import Catalogue
from segue.health import Health, HealthStatus
from segue.http.messages import Request, Response

__all__ = ["Health", "HealthStatus"]  # one Health for plugins and every room of the node

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """An HTTP route a plugin adds: `method` and an exact `path`, or a prefix ending in "/".

    Paths under /v1/, /healthz and /metrics belong to Segue and are refused. The handler does
    its own authorisation: plugin routes are not behind player tokens.
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


class NodeView(Protocol):
    """What hooks may read about the node they run in."""

    @property
    def node_id(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def state(self) -> str:
        """"starting", "ready", "draining" or "stopping"."""
        ...

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs the node listens on (empty before it listens)."""
        ...

    @property
    def streams_in_flight(self) -> int:
        """Track bodies being sent right now."""
        ...

    @property
    def health(self) -> Health:
        """The node's overall health (storage and every plugin), as /healthz reports it."""
        ...

    @property
    def config_path(self) -> Path: ...

    @property
    def catalogue(self) -> Catalogue:
        """The local catalogue. Replication plugins write it with
        ``apply_replicated(source, upserts, deletes, position, replace=False)`` and read their
        position with ``replication_position(source)``; both block (use a worker thread)."""
        ...

    def plugin_config(self, name: str) -> Mapping[str, Any]:
        """The raw [plugins.NAME] table of the configuration now in force."""
        ...
