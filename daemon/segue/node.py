"""The daemon's life: start, serve, reload on SIGHUP, drain on SIGTERM, stop.

    run()
      plugins: configure (already done by PluginHost.load) -> metrics -> startup -> routes
      lifespan nursery: signals, watchdog, health
        connections nursery: listeners (bound) -> ready hooks
          services nursery: plugin services -> READY=1 ... serve ...
          SIGTERM: /healthz 503 draining -> drain hooks, wait for in-flight requests
                   (both under [node] drain_timeout_s) -> STOPPING=1 -> stop hooks
                   -> cancel services -> cancel connections -> exit 0
          second SIGTERM (or SIGINT): stop at once
      SIGHUP: RELOADING=1 -> new config, keys, plugin tables (all or nothing) -> READY=1

Every wait has a deadline; the shutdown steps that must run are shielded with their own.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
import trio

from segue import __version__, config, workers
from segue.catalogue import Catalogue
from segue.config import ConfigError, Settings
from segue.http.app import CATALOGUE_TIMEOUT_S, EdgeApp, NodeState
from segue.http.server import serve
from segue.metrics import Metrics
from segue.plugin_types import Health, Route
from segue.plugins import Plugin, PluginHost
from segue.seal.errors import KeyFileError
from segue.seal.keyring import load_edge_keys, load_token_verifier
from segue.seal.keys import check_private_file
from segue.share_settings import open_shares
from segue.storage.library import Library
from segue.storage.probe import probe_shares
from segue.systemd import Notifier, watchdog_interval

log = structlog.get_logger("segue.node")

RESERVED_PREFIXES = ("/v1/", "/healthz", "/metrics")
FULL_COLLECTION_EVERY = 100  # middle-generation collections per full one (CPython's default: 10)
_HEALTH_GAUGE = {"ok": 0, "degraded": 1, "failing": 2}


class StartupError(Exception):
    """The node cannot start (a plugin's startup failed); exit status 1."""


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


def build_app(settings: Settings, metrics: Metrics | None = None) -> EdgeApp:
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
    return EdgeApp(
        node_id=settings.node_id,
        catalogue=catalogue,
        library=library,
        tokens=tokens,
        metrics=metrics,
        limiter=limiter,
    )


class Node:
    """One running edge node; plugins see it through the NodeView protocol."""

    def __init__(self, settings: Settings, host: PluginHost, *,
                 worker_index: int | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        """A node; with `worker_index` a serving worker that follows its main process.

        `overrides` are the command line's settings (listen, workers) that a reload keeps.
        """
        self.settings = settings
        self.overrides = dict(overrides or {})
        self.host = host
        self.worker_index = worker_index
        self._pool: workers.WorkerPool | None = None
        self._main_health = Health.ok()
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.app = build_app(settings, self.metrics)
        self.tls = tls_context(settings)
        self.app.plugins = host.describe
        self._addresses: list[tuple[str, int]] = []
        self._stop = trio.Event()

    # --- NodeView ---
    @property
    def node_id(self) -> str:
        return self.settings.node_id

    @property
    def version(self) -> str:
        return __version__

    @property
    def state(self) -> str:
        return self.app.state

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(self._addresses)

    @property
    def streams_in_flight(self) -> int:
        return self.app.in_flight

    @property
    def health(self) -> Health:
        return self.app.health

    @property
    def config_path(self) -> Path:
        return self.settings.path

    @property
    def catalogue(self) -> Catalogue:
        return self.app.catalogue

    def plugin_config(self, name: str) -> Mapping[str, Any]:
        return self.settings.plugins.get(name, {})

    # --- life ---
    async def run(self) -> None:
        """Start, serve until asked to stop, drain, stop."""
        try:
            await self._live()
        finally:
            # Give the interpreter a normal heap back before it shuts down: with the start-up
            # objects still frozen, exit crashed (SIGSEGV) about every other time while worker
            # threads were still inside C code (seen in the replication tests).
            gc.unfreeze()

    async def _live(self) -> None:
        await self._start_plugins()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as lifespan:
                lifespan.start_soon(self._handle_signals, signals, lifespan.cancel_scope)
                lifespan.start_soon(self._watchdog)
                if self.worker_index is not None:
                    lifespan.start_soon(self._follow_main)
                async with trio.open_nursery() as connections:
                    listeners = await connections.start(
                        functools.partial(serve, join=self.worker_index is not None),
                        self.app, self.settings.http, self.tls)
                    self._addresses = [listener.socket.getsockname()[:2] for listener in listeners]
                    await self._start_workers(connections)
                    async with trio.open_nursery() as services:
                        await self._become_ready(services)
                        await self._stop.wait()
                        await self._drain_and_stop()
                        services.cancel_scope.cancel()
                    connections.cancel_scope.cancel()
                lifespan.cancel_scope.cancel()
        log.info("stopped")

    async def _start_plugins(self) -> None:
        for outcome in self.host.call("segue_metrics", registry=self.metrics.registry):
            if outcome.error is not None:
                log.error("plugin metrics failed", plugin=outcome.plugin.name,
                          error=str(outcome.error))
        timeout = self.settings.plugin_host.hook_timeout_s
        for outcome in await self.host.call_async("segue_startup", timeout, node=self):
            if outcome.error is None:
                continue
            if outcome.plugin.optional:
                log.warning("optional plugin disabled", plugin=outcome.plugin.name,
                            reason=f"startup failed: {outcome.error}")
                self.host.disable(outcome.plugin)
                continue
            raise StartupError(f"plugin {outcome.plugin.name!r} failed to start: "
                               f"{type(outcome.error).__name__}: {outcome.error}")
        routes: list[Route] = []
        for outcome in self.host.call("segue_routes", node=self):
            if outcome.error is not None:
                raise StartupError(f"plugin {outcome.plugin.name!r} failed to list its routes: "
                                   f"{outcome.error}")
            for route in outcome.value or ():
                if not isinstance(route, Route) or route.path.startswith(RESERVED_PREFIXES):
                    raise ConfigError([f"plugin {outcome.plugin.name!r} route {route!r} is not "
                                       f"a segue.Route outside {', '.join(RESERVED_PREFIXES)}"])
                routes.append(route)
        self.app.routes = routes

    async def _start_workers(self, nursery: trio.Nursery) -> None:
        """The main process of a node with [http] workers > 1 starts the other workers."""
        count = self.settings.http.workers
        if self.worker_index is not None or count == 1:
            return
        if self.app.routes:
            raise StartupError(
                f"plugins add HTTP routes ({', '.join(r.path for r in self.app.routes)}), which "
                f"only the main process could serve: set [http] workers = 1")
        port = self._addresses[0][1]
        self._pool = workers.WorkerPool(count, self.settings.path,
                                        (self.settings.http.listen.host, port))
        self._pool.update(workers.message(self.app.state, self.app.health))
        await self._pool.run(nursery)

    async def _follow_main(self) -> None:
        """A worker: take the main process's health, and drain when it drains or is gone."""
        pending = b""
        async with trio.lowlevel.FdStream(os.dup(0)) as main:
            while True:
                try:
                    data = await main.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data or len(pending) > 65536:
                    log.warning("the main process is gone; draining")
                    self._stop.set()
                    return
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    try:
                        state, self._main_health = workers.parse(line)
                    except (ValueError, KeyError, TypeError) as e:
                        log.error("unreadable line from the main process", error=str(e))
                        continue
                    self._publish_health()
                    if state in (NodeState.DRAINING, NodeState.STOPPING):
                        self._stop.set()

    async def _become_ready(self, services: trio.Nursery) -> None:
        timeout = self.settings.plugin_host.hook_timeout_s
        await self.host.call_async("segue_ready", timeout, node=self)
        for outcome in self.host.call("segue_services", node=self):
            if outcome.error is not None:
                self._degrade(outcome.plugin.name, f"services hook failed: {outcome.error}")
                continue
            for service in outcome.value or ():
                services.start_soon(self._run_service, outcome.plugin.name, service)
        services.start_soon(self.app.library.prefetch.run)
        await self._check_health()
        services.start_soon(self._health_loop)
        services.start_soon(probe_shares, self.app.library.shares,
                            self.settings.store.read_timeout_s, self._publish_health)
        self.app.state = NodeState.READY
        _freeze_startup_objects()
        self.notifier.ready(self._status_line())
        log.info("listening", node_id=self.node_id, addresses=[_format(a) for a in self._addresses],
                 config=str(self.settings.path), plugins=[p.name for p in self.host.plugins])

    async def _run_service(self, plugin: str, service: Callable[[], Awaitable[None]]) -> None:
        try:
            await service()
        except Exception as e:
            log.exception("plugin service failed", plugin=plugin)
            self._degrade(plugin, f"service {getattr(service, '__name__', '?')} failed: {e}")

    def _degrade(self, name: str, reason: str) -> None:
        for plugin in self.host.plugins:
            if plugin.name == name:
                plugin.health = Health("degraded", reason)
        self._publish_health()

    async def _health_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.plugin_host.health_interval_s)
            await self._check_health()

    async def _check_health(self) -> None:
        timeout = self.settings.plugin_host.hook_timeout_s
        for outcome in await self.host.call_async("segue_health", timeout, node=self):
            if outcome.error is not None:
                health = Health("degraded", f"health check failed: {outcome.error}")
            elif outcome.value is None:
                health = Health.ok()
            elif isinstance(outcome.value, Health):
                health = outcome.value
            else:
                health = Health("degraded", f"health hook returned {outcome.value!r}")
            outcome.plugin.health = health
        self._publish_health()

    def _publish_health(self) -> None:
        shares = self.app.library.shares
        health = shares.health()
        for other in (self.host.health(), self._main_health):
            if other.worse_than(health):
                health = other
        self.app.health = health
        if self._pool is not None:
            self._pool.update(workers.message(self.app.state, health))
        for share in shares.shares:
            self.metrics.share_up.labels(share.name).set(1 if share.healthy else 0)
        for plugin in self.host.plugins:
            self.metrics.plugin_health.labels(plugin.name).set(_HEALTH_GAUGE[plugin.health.status])
        if self.app.state == NodeState.READY:
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        health = self.app.health
        detail = f" ({health.reason})" if health.reason else ""
        return (f"{self.app.state}; {self.app.in_flight} streams; health {health.status}"
                f"{detail}")

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: a blocked loop stops the pings."""
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    async def _handle_signals(self, signals: Any, lifespan: trio.CancelScope) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                if self.app.state == NodeState.READY:
                    await self._reload()
                else:
                    log.warning("reload ignored", state=self.app.state,
                                reason="the node reloads only while it is ready")
            elif not self._stop.is_set():
                log.info("draining", signal=signal.Signals(signum).name,
                         deadline_s=self.settings.drain_timeout_s)
                self._stop.set()
            else:
                log.warning("stopping at once", signal=signal.Signals(signum).name)
                self.notifier.stopping()
                lifespan.cancel()

    async def _drain_and_stop(self) -> None:
        """Drain under the deadline, then STOPPING=1 and the stop hooks.

        Not shielded: the only thing that cancels it is a second SIGTERM, which means "now".
        """
        deadline = trio.current_time() + self.settings.drain_timeout_s
        self.app.start_draining()
        self.notifier.status(self._status_line())
        with trio.move_on_at(deadline) as waited:
            async with trio.open_nursery() as draining:
                draining.start_soon(self._drain_hooks, self.settings.drain_timeout_s)
                draining.start_soon(self.app.wait_idle)
                if self._pool is not None:
                    draining.start_soon(self._pool.drain,
                                        workers.message(NodeState.DRAINING, self.app.health))
        if waited.cancelled_caught:
            log.warning("drain deadline passed", streams_in_flight=self.app.in_flight)
        self.app.state = NodeState.STOPPING
        self.notifier.stopping()
        await self.host.call_async("segue_stop", self.settings.plugin_host.hook_timeout_s,
                                   node=self)

    async def _drain_hooks(self, deadline_s: float) -> None:
        await self.host.call_async("segue_drain", deadline_s, node=self, deadline_s=deadline_s)

    async def _reload(self) -> None:
        """SIGHUP: take a new configuration whole, or keep the old one whole."""
        self.notifier.reloading()
        old = self.settings
        try:
            new = await trio.to_thread.run_sync(
                functools.partial(config.load, old.path, **self.overrides))
            keys = await trio.to_thread.run_sync(load_edge_keys, new)
            tokens = await trio.to_thread.run_sync(load_token_verifier, new)
        except ConfigError as e:
            log.error("reload refused; the old configuration keeps serving", errors=e.errors)
            self.notifier.ready(self._status_line())
            return
        except Exception as e:  # whatever a new configuration does, the old one keeps serving
            log.exception("reload refused; the old configuration keeps serving",
                          errors=[f"{type(e).__name__}: {e}"])
            self.notifier.ready(self._status_line())
            return
        accepted: list[Plugin] = []
        for plugin in list(self.host.plugins):
            error = self.host.configure(plugin, new)
            if error is not None:
                for earlier in accepted:
                    self.host.configure(earlier, old)
                log.error("reload refused; the old configuration keeps serving",
                          plugin=plugin.name, errors=[error])
                self.notifier.ready(self._status_line())
                return
            accepted.append(plugin)
        for key in ("listen", "max_connections", "workers"):
            if getattr(new.http, key) != getattr(old.http, key):
                log.warning("setting needs a restart to take effect", key=f"http.{key}")
        self.settings = new
        self.host.settings = new
        self.app.tokens = tokens
        self.app.library.set_keys(keys)
        if self._pool is not None:
            self._pool.reload()
        await self.host.call_async("segue_reload", new.plugin_host.hook_timeout_s, node=self)
        log.info("configuration reloaded", config=str(new.path))
        self.notifier.ready(self._status_line())


def _freeze_startup_objects() -> None:
    """Keep what start-up built (modules, plugins, keys, config) out of later collections.

    Python's full garbage collection walks every tracked object while the event loop waits.
    With 2,000 players connected, the bench measured pauses of 150 ms, which became those
    players' worst time to first byte; most of the objects walked were the ones import and
    start-up made, which live as long as the process. gc.freeze() moves them to a generation
    no collection visits.

    What a full collection still walks is the connections' own objects (about 150 per
    streaming player), so full collections are also made ten times rarer: the oldest
    generation is collected after 100 collections of the middle one instead of 10. Young
    cycles (a cancelled request's exception and frames) are still collected as before; the
    price is that garbage which survived into the oldest generation waits longer (measured
    with 2,000 players: the same RSS, the slowest first byte 41 ms instead of 71 ms).
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def _format(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run(settings: Settings, host: PluginHost,
              overrides: Mapping[str, Any] | None = None) -> None:
    """Run one node until it is stopped; `overrides` as config.load takes them."""
    await Node(settings, host, overrides=overrides).run()
