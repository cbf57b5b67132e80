"""Segue: an edge-node daemon that serves encrypted music tracks to players.

The public plugin API is what this package exports: ``hookimpl``, ``PLUGIN_API_VERSION``,
``Health``, ``Route``, ``Request``, ``Response``, ``PluginConfigError``, ``NodeView``,
``resolve_path`` and ``read_secret``
(see docs/plugins.md and segue/hookspecs.py).
"""

__version__ = "0.1.0"

from segue.catalogue import TrackRecord
from segue.config import resolve_path
from segue.hookspecs import PLUGIN_API_VERSION, hookimpl
from segue.http.messages import Request, Response
from segue.plugin_types import Health, NodeView, PluginConfigError, Route
from segue.seal.keys import read_secret

__all__ = [
    "PLUGIN_API_VERSION",
    "Health",
    "NodeView",
    "PluginConfigError",
    "Request",
    "Response",
    "Route",
    "TrackRecord",
    "__version__",
    "hookimpl",
    "read_secret",
    "resolve_path",
]
