"""Segue: an edge-node daemon that serves encrypted music tracks to players.

The public plugin API is what this package exports: ``hookimpl`` and ``PLUGIN_API_VERSION``
(segue/hookspecs.py), the Protocols and values of segue/api.py, ``resolve_path`` and
``read_secret`` (see docs/plugins.md).
"""

__version__ = "0.1.0"

from segue import api
from segue.api import *  # noqa: F403 - the public values and Protocols, listed in api.__all__
from segue.config import resolve_path
from segue.hookspecs import PLUGIN_API_VERSION, hookimpl
from segue.seal.keys import read_secret

__all__ = [
    *api.__all__,
    "PLUGIN_API_VERSION",
    "__version__",
    "hookimpl",
    "read_secret",
    "resolve_path",
]
