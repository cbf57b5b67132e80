"""The node's settings as plugins read them (`node.settings`): frozen, plain, and secret-free.

A plugin that reports, registers or replicates often needs a setting of the node (where it
listens, its drain deadline, its store's shares) and had only the configuration file to parse
again, which gives neither the defaults nor the command line's overrides. This is the
configuration in force, every section of `etc/segue/segued.toml` but [plugins] (a plugin's own
table is `node.plugin_config(name)`), with the defaults filled in: mappings that cannot be
changed (MappingProxyType), sequences as tuples, file paths and listen addresses as strings.

Secret-free by construction: Segue's settings name the files that hold keys and passwords and
never hold one themselves, so the view has paths, never what those files contain. (A share's
smb:// URL names its user, not its password.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from segue.config import SCHEMA, Listen, Settings


def settings_view(settings: Settings) -> Mapping[str, Mapping[str, Any]]:
    """section -> key -> value, read-only, for the settings in force."""
    sections: dict[str, dict[str, Any]] = {
        "node": {"id": settings.node_id, "drain_timeout_s": settings.drain_timeout_s},
        "catalogue": {"path": settings.catalogue_path},
    }
    for name, keys in SCHEMA.items():
        if name not in sections:
            part = getattr(settings, name)
            sections[name] = {key: getattr(part, key) for key in keys}
    return MappingProxyType({name: _plain(values) for name, values in sections.items()})


def _plain(value: Any) -> Any:
    """`value` as a frozen plain value: mappings read-only, sequences tuples, paths and
    addresses strings."""
    if isinstance(value, Path | Listen):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return MappingProxyType({key: _plain(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_plain(item) for item in value)
    return value
