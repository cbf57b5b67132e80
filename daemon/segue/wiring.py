"""What a node serves with, built from its settings: the one place where the configuration
becomes the plain values and objects that storage, seal and http take.

`segue check-config` builds the same things to prove a configuration would start.
"""

from __future__ import annotations

import functools
import sqlite3
import ssl
from dataclasses import dataclass

import trio

from segue.catalogue import Catalogue
from segue.config import ConfigError, Settings, ShareSettings
from segue.configured_keys import load_edge_keys, load_token_verifier
from segue.http.app import CATALOGUE_TIMEOUT_S
from segue.http.auth import Authorizer
from segue.metrics import Metrics
from segue.seal import tickets
from segue.seal.errors import KeyFileError
from segue.seal.keys import check_private_file
from segue.seal.manifest import is_track_id
from segue.sessions.service import Sessions
from segue.sessions.store import SessionStore
from segue.storage import backends
from segue.storage.errors import StoreConfigError
from segue.storage.library import Library
from segue.storage.shares import ShareSet
from segue.threads import in_thread


@dataclass(frozen=True)
class Serving:
    """The objects requests are answered with."""

    catalogue: Catalogue
    library: Library
    auth: Authorizer
    # Catalogue queries and /metrics rendering; share reads have their own limiters.
    limiter: trio.CapacityLimiter


def build(settings: Settings, metrics: Metrics | None = None) -> Serving:
    """Everything a node serves with, loaded and checked; raises ConfigError listing every
    problem."""
    errors: list[str] = []
    try:
        keys = load_edge_keys(settings)
    except ConfigError as e:
        errors += e.errors
    try:
        tokens = load_token_verifier(settings)
    except ConfigError as e:
        errors += e.errors
    try:
        shares = open_shares(settings)
    except ConfigError as e:
        errors += e.errors
    if errors:
        raise ConfigError(errors)
    metrics = metrics or Metrics()
    catalogue = Catalogue.create(settings.catalogue_path)
    limiter = trio.CapacityLimiter(settings.limits.worker_threads)
    library = Library(
        shares,
        keys,
        accepted_version=catalogue.accepted_version,
        accept_version=catalogue.accept_version,
        versions_limiter=limiter,
        versions_timeout_s=CATALOGUE_TIMEOUT_S,
        worker_threads=settings.limits.worker_threads,
        open_tracks=settings.limits.open_tracks,
        metrics=metrics,
        read_timeout_s=settings.store.read_timeout_s,
        cache_bytes=settings.cache.bytes,
        read_ahead_chunks=settings.cache.read_ahead_chunks,
    )
    return Serving(catalogue, library, Authorizer(tokens), limiter)


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


async def track_length_ms(catalogue: Catalogue, limiter: trio.CapacityLimiter,
                          track_id: str) -> int | None:
    """A track's length from the catalogue (None when unknown); KeyError for no such track."""
    record = await in_thread(catalogue.get, track_id, limiter=limiter,
                             timeout_s=CATALOGUE_TIMEOUT_S)
    if record is None:
        raise KeyError(track_id)
    return int(record.duration_s * 1000) if record.duration_s > 0 else None


def open_sessions(settings: Settings, serving: Serving, metrics: Metrics) -> Sessions:
    """The node's sessions (the main process's); raises ConfigError."""
    path = settings.sessions.path
    try:
        store = SessionStore(path)
    except (OSError, sqlite3.Error) as e:
        raise ConfigError([f"{settings.path}: sessions.path: cannot open {path}: {e}"]) from None
    return Sessions(
        settings.node_id, store, metrics,
        device_timeout_s=settings.sessions.device_timeout_s,
        commands_per_s=settings.sessions.commands_per_s,
        command_burst=settings.sessions.command_burst,
        duration_ms=functools.partial(track_length_ms, serving.catalogue, serving.limiter),
        is_track=is_track_id)


def ticket_key(settings: Settings) -> bytes:
    """The key of the tickets for event streams and tracks ([sessions] ticket_key, made when
    missing)."""
    try:
        return tickets.load_or_create_key(settings.sessions.ticket_key)
    except (OSError, ValueError) as e:
        raise ConfigError([f"{settings.path}: sessions.ticket_key: {e}"]) from None


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context when [http] names a certificate and key; raises ConfigError."""
    http = settings.http
    if http.tls_certificate is None and http.tls_key is None:
        return None
    if http.tls_certificate is None or http.tls_key is None:
        raise ConfigError([f"{settings.path}: http.tls_certificate and http.tls_key go together"])
    try:
        check_private_file(http.tls_key, "TLS key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(http.tls_certificate, http.tls_key)
    except KeyFileError as e:
        raise ConfigError([f"{settings.path}: http.tls_key: {e}"]) from None
    except (OSError, ssl.SSLError) as e:
        raise ConfigError([f"{settings.path}: http.tls_certificate / tls_key: {e}"]) from None
    return context
