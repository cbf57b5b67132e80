"""The daemon's life: build the node from its settings, listen, serve, stop on a signal.

    run(settings)
      load keys, token verifier, catalogue, store   (ConfigError -> exit 2)
      lifespan nursery
        connections: serve() on the configured address   -> state "ready"
        signals: SIGTERM / SIGINT                        -> state "draining", cancel
"""

from __future__ import annotations

import signal

import structlog
import trio

from segue.catalogue import Catalogue
from segue.config import ConfigError, Settings
from segue.http.app import EdgeApp, NodeState
from segue.http.server import serve
from segue.library import Library
from segue.metrics import Metrics
from segue.seal.keyring import load_edge_keys, load_token_verifier
from segue.storage.local import LocalStore

log = structlog.get_logger("segue.node")


def build_app(settings: Settings) -> EdgeApp:
    """Everything a node serves with, loaded and checked; raises ConfigError."""
    errors: list[str] = []
    try:
        keys = load_edge_keys(settings)
    except ConfigError as e:
        errors += e.errors
    try:
        tokens = load_token_verifier(settings)
    except ConfigError as e:
        errors += e.errors
    if not settings.store_path.is_dir():
        errors.append(f"{settings.path}: store.path {settings.store_path} is not a directory")
    if errors:
        raise ConfigError(errors)
    catalogue = Catalogue.create(settings.catalogue_path)
    limiter = trio.CapacityLimiter(settings.limits.worker_threads)
    metrics = Metrics()
    library = Library(
        LocalStore(settings.store_path),
        catalogue,
        keys,
        limiter,
        open_tracks=settings.limits.open_tracks,
        on_auth_failure=lambda track, chunk: metrics.chunk_auth_failures.inc(),
    )
    return EdgeApp(
        node_id=settings.node_id,
        catalogue=catalogue,
        library=library,
        tokens=tokens,
        metrics=metrics,
        limiter=limiter,
    )


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    app = build_app(settings)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as lifespan:
            listeners = await lifespan.start(serve, app, settings.http)
            app.state = NodeState.READY
            log.info(
                "listening",
                node_id=settings.node_id,
                addresses=[_address(listener) for listener in listeners],
                config=str(settings.path),
            )
            async for signum in signals:
                log.info("stopping", signal=signal.Signals(signum).name)
                app.state = NodeState.DRAINING
                lifespan.cancel_scope.cancel()
                break
    log.info("stopped")


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
