"""What a node serves with, built from its settings: the one place where the configuration
becomes the plain values and objects that storage, seal and http take.

`segue check-config` builds the same things to prove a configuration would start.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from segue.catalogue import Catalogue
from segue.config import ConfigError, Settings, ShareSettings
from segue.configured_keys import load_edge_keys, load_token_verifier
from segue.http.app import CATALOGUE_TIMEOUT_S
from segue.http.auth import Authorizer
from segue.metrics import Metrics
from segue.seal.errors import KeyFileError
from segue.seal.keys import check_private_file
from segue.storage import backends
from segue.storage.errors import StoreConfigError
from segue.storage.library import Library
from segue.storage.shares import ShareSet


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
