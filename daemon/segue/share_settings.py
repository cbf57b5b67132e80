"""The node's [store] and [limits] settings as share specs for storage, which knows no config.

Errors come back as ConfigError naming the file and the setting, as people wrote them.
"""

from __future__ import annotations

from segue.config import ConfigError, Settings, ShareSettings
from segue.storage import backends
from segue.storage.errors import StoreConfigError
from segue.storage.shares import ShareSet


def open_shares(settings: Settings) -> ShareSet:
    """The shares named in [store] (or the single [store] path); raises ConfigError."""
    store = settings.store
    configured = store.shares or (
        ShareSettings("local", str(store.path), None, False, True),)
    specs = [backends.ShareSpec(
        name=share.name, url=share.url, threads=settings.limits.worker_threads,
        timeout_s=store.read_timeout_s, password_file=share.password_file,
        encrypt=share.encrypt, require_signing=share.require_signing,
    ) for share in configured]
    try:
        return backends.open_shares(specs, store.replicas)
    except StoreConfigError as e:
        raise ConfigError([
            f"{settings.path}: {f'store.shares {name}' if store.shares else 'store.path'}: {what}"
            for name, what in e.problems]) from None
