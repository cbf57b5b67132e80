"""The daemon's life: start, serve, reload on SIGHUP, drain on SIGTERM, stop.

    run()
      plugins: configure (done by PluginHost.load) -> metrics -> startup -> routes
      lifespan nursery: signals, watchdog
        connections nursery: listeners (bound), this process's side (its workers, or the
                             pipe from its main process)
          services nursery: ready hooks, plugin services, share probes, health
                            -> READY=1 ... serve ...
          SIGTERM: /healthz 503 draining -> drain hooks, wait for in-flight requests and the
                   workers (all under [node] drain_timeout_s) -> STOPPING=1 -> stop hooks
                   -> cancel services -> cancel connections -> exit 0
          second SIGTERM (or SIGINT): stop at once
      SIGHUP: RELOADING=1 -> new config, keys, plugin tables (all or nothing) -> READY=1

Every wait has a deadline; the shutdown steps that must run are shielded with their own. The
steps themselves live with their owners: the hooks in plugin_host, the worker pipe in workers,
share probing in storage; this module only puts them in order.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import signal
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import trio

from segue import __version__, config, play_reports, wiring
from segue.api import ReplicationSink, SessionsView
from segue.catalogue import ReplicationView
from segue.config import ConfigError, Settings, format_address
from segue.configured_keys import load_edge_keys, load_token_verifier, load_user_hash_salt
from segue.health import Health, worst
from segue.hook_failures import HookFailures
from segue.http import admin, player_files
from segue.http.app import EdgeRoutes
from segue.http.client_address import ClientAddresses
from segue.http.cors import Cors
from segue.http.router import Endpoint, Router
from segue.http.served import Reporter
from segue.http.server import serve
from segue.http.sessions import SessionRoutes, SessionsPort
from segue.lifecycle import Lifecycle, NodeState
from segue.metrics import Metrics
from segue.play_reports import PlayReports
from segue.plugin_host import Outcome, PluginHost
from segue.seal.manifest import is_track_id
from segue.sessions import ipc
from segue.sessions.ipc import RemoteSessions
from segue.sessions.state import SessionState
from segue.settings_view import settings_view
from segue.storage.probe import probe_all, probe_shares
from segue.systemd import Notifier, watchdog_interval
from segue.workers import MainSide, WorkerSide

log = structlog.get_logger("segue.node")

FULL_COLLECTION_EVERY = 100  # middle-generation collections per full one (CPython's default: 10)
# The [http] keys a reload applies at once; every other one is read at start-up (the sockets,
# the limits and timeouts the connections were made with, TLS) and needs a restart.
RELOADED_HTTP_KEYS = ("cors_origins", "trusted_proxies")


class Node:
    """One running edge node; plugins see it through the segue.NodeView protocol."""

    def __init__(self, settings: Settings, host: PluginHost, *,
                 overrides: Mapping[str, Any] | None = None, worker: bool = False) -> None:
        """A node; with `worker`, a serving worker that follows its main process.

        `overrides` are the command line's settings (listen, workers) that a reload keeps.
        """
        self._settings = settings
        self.overrides = dict(overrides or {})
        self.host = host
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.lifecycle = Lifecycle(self.metrics.streams_in_flight)
        self.serving = wiring.build(settings, self.metrics)
        self.tls = wiring.tls_context(settings)
        self._hook_failures = HookFailures(self.metrics)  # of the session hooks
        # Plugins that report plays hear of every track stream, from a queue of their own.
        self._plays = (PlayReports(host, self.metrics, load_user_hash_salt(settings))
                       if not worker and host.implemented(play_reports.HOOK) else None)
        self.side: MainSide | WorkerSide = (
            WorkerSide(self._publish_health, self.metrics) if worker
            else MainSide(settings.http.workers, settings.path,
                          None if self._plays is None else self._plays.report))
        self._replication = ReplicationView(self.serving.catalogue)
        self.ticket_key = wiring.ticket_key(settings)
        # The main process owns the sessions; a worker reaches them through it.
        self._sessions = None if worker else wiring.open_sessions(settings, self.serving,
                                                                  self.metrics)
        if self._sessions is not None:
            self._sessions.observe_local(self._session_changed)
            self._sessions.observe_presence(self._session_presence)
        self._sessions_port: SessionsPort | None = (
            self._sessions or RemoteSessions.from_environment(is_track_id))
        self._addresses: list[tuple[str, int]] = []
        self._admin_addresses: list[tuple[str, int]] = []
        self._stop = trio.Event()
        self._cors: Cors | None = None  # made with the router, once the plugins' routes are in
        self._clients = ClientAddresses(settings.http.trusted_proxies)
        self._settings_view: Mapping[str, Mapping[str, Any]] | None = None

    # --- NodeView ---
    @property
    def node_id(self) -> str:
        return self._settings.node_id

    @property
    def version(self) -> str:
        return __version__

    @property
    def state(self) -> NodeState:
        return self.lifecycle.state

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(self._addresses)

    @property
    def streams_in_flight(self) -> int:
        return self.lifecycle.streams_in_flight

    @property
    def health(self) -> Health:
        return self.lifecycle.health

    @property
    def config_path(self) -> Path:
        return self._settings.path

    @property
    def settings(self) -> Mapping[str, Mapping[str, Any]]:
        if self._settings_view is None:  # made once per configuration, at the first asking
            self._settings_view = settings_view(self._settings)
        return self._settings_view

    @property
    def replication(self) -> ReplicationSink:
        return self._replication

    @property
    def catalogue(self) -> ReplicationSink:
        return self._replication

    @property
    def sessions(self) -> SessionsView:
        if self._sessions is None:
            raise RuntimeError("a serving worker has no sessions of its own")
        return self._sessions

    def plugin_config(self, name: str) -> Mapping[str, Any]:
        return self._settings.plugins.get(name, {})

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
        routes = await self.host.start(self, self.metrics.registry)
        if self._sessions is not None:
            await self._sessions.load()
        public, monitoring = admin.split(self._edge_routes().endpoints(),
                                         self._settings.http.admin_listen is not None)
        router = Router([*public, *self._session_routes(),
                         *player_files.PlayerFiles(player_files.load()).endpoints()], routes)
        self._cors = Cors(router, self._settings.http.cors_origins)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as lifespan:
                lifespan.start_soon(self._handle_signals, signals, lifespan.cancel_scope)
                lifespan.start_soon(self._watchdog)
                async with trio.open_nursery() as connections:
                    listeners = await connections.start(
                        functools.partial(serve, clients=self._clients, join=self.side.join),
                        self._cors.handle,
                        self.lifecycle, self.metrics, self._settings.http, self.tls)
                    self._addresses = [listener.socket.getsockname()[:2] for listener in listeners]
                    port = self._addresses[0][1]
                    admin_at = self._settings.http.admin_listen
                    if admin_at is not None and not self.side.join:  # the main process's alone
                        await connections.start(self._serve_admin, admin_at, Router(monitoring))
                    if self._sessions is not None and self._settings.http.workers > 1:
                        await connections.start(self._serve_sessions_to_workers)
                    await connections.start(self.side.run, (self._settings.http.listen.host, port),
                                            [route.path for route in routes], self._stop.set)
                    async with trio.open_nursery() as services:
                        await self._become_ready(services)
                        await self._stop.wait()
                        await self._drain_and_stop()
                        services.cancel_scope.cancel()
                    connections.cancel_scope.cancel()
                lifespan.cancel_scope.cancel()
        log.info("stopped")

    async def _serve_admin(self, address: config.Listen, router: Router,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The admin listener ([http] admin_listen): plain HTTP, one process."""
        settings = dataclasses.replace(self._settings.http, listen=address, workers=1)
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(serve, router.handle, self.lifecycle,
                                                self.metrics, settings)
            except OSError as e:
                raise admin.AdminListenError(e.errno, e.strerror) from e
            self._admin_addresses = [listener.socket.getsockname()[:2]
                                     for listener in listeners]
            task_status.started()

    def _session_routes(self) -> list[Endpoint]:
        if self._sessions_port is None:
            return []
        sessions = self._settings.sessions
        return SessionRoutes(
            sessions=self._sessions_port, auth=self.serving.auth, ticket_key=self.ticket_key,
            lifecycle=self.lifecycle, metrics=self.metrics, heartbeat_s=sessions.heartbeat_s,
            max_subscribers=sessions.max_subscribers).endpoints()

    def _session_changed(self, user: str, delta: SessionState) -> None:
        """A change accepted here: the transports carry it to the other nodes."""
        if self.host.implemented("segue_session_changed"):
            self._record_failures("segue_session_changed", self.host.call(
                "segue_session_changed", node=self, user=user, delta=delta.to_json()))

    def _session_presence(self, user: str, present: bool) -> None:
        """A listener arrived on this node or left it: transports that follow some listeners
        only follow these."""
        if self.host.implemented("segue_session_presence"):
            self._record_failures("segue_session_presence", self.host.call(
                "segue_session_presence", node=self, user=user, present=present))

    def _record_failures(self, hook: str, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.error is not None:
                self._hook_failures.record(outcome.plugin.name, hook, outcome.error)

    def _edge_routes(self) -> EdgeRoutes:
        return EdgeRoutes(node_id=self.node_id, lifecycle=self.lifecycle,
                          catalogue=self.serving.catalogue, library=self.serving.library,
                          auth=self.serving.auth, metrics=self.metrics,
                          limiter=self.serving.limiter, ticket_key=self.ticket_key,
                          plugins=self._describe_plugins, on_served=self._served_reporter())

    def _served_reporter(self) -> Reporter | None:
        """Who hears of each track stream's end: the plugins' queues here, or (in a worker)
        the pipe to the main process; None when no plugin implements segue_track_served."""
        if isinstance(self.side, WorkerSide):
            return self.side.served
        return None if self._plays is None else self._plays.report

    def _describe_plugins(self) -> list[dict[str, Any]]:
        """The plugins as /v1/status shows them: a worker repeats its main process's words."""
        if isinstance(self.side, WorkerSide):
            return self.side.plugins
        return self.host.describe()

    async def _serve_sessions_to_workers(
            self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The workers' way to the sessions: a unix socket in a private directory, named to
        them in the environment they inherit."""
        assert self._sessions is not None
        with tempfile.TemporaryDirectory(prefix="segue-sessions-") as private:
            path = Path(private) / "sessions.sock"
            os.environ[ipc.SOCKET_ENV] = str(path)
            await ipc.serve(self._sessions, path, task_status=task_status)

    async def _become_ready(self, services: trio.Nursery) -> None:
        await self.host.ready(self, services, self._publish_health)
        if self._plays is not None:
            services.start_soon(self._plays.run)
        if self._sessions is not None:
            services.start_soon(self._sessions.run)
        # A share without its store marker (a CIFS mount point left empty) must fail the
        # node's health before the first /healthz says ok.
        await probe_all(self.serving.library.shares, self._settings.store.read_timeout_s)
        await self._check_health()
        services.start_soon(self._health_loop)
        services.start_soon(probe_shares, self.serving.library.shares,
                            self._settings.store.read_timeout_s, self._publish_health)
        self.lifecycle.ready()
        _freeze_startup_objects()
        self.notifier.ready(self._status_line())
        log.info("listening", node_id=self.node_id,
                 addresses=[format_address(a) for a in self._addresses],
                 admin_addresses=[format_address(a) for a in self._admin_addresses],
                 config=str(self._settings.path), plugins=[p.name for p in self.host.plugins])

    async def _health_loop(self) -> None:
        while True:
            await trio.sleep(self._settings.plugin_host.health_interval_s)
            await self._check_health()

    async def _check_health(self) -> None:
        await self.host.check_health(self)
        self._publish_health()

    def _publish_health(self) -> None:
        """The node's health from its sources, to everyone who reports it."""
        shares = self.serving.library.shares
        health = worst([shares.health(), self.host.health(), self.side.health()])
        if health != self.lifecycle.health:  # HTTP clients see the short reason alone
            log.info("health", status=health.status, detail=health.described)
        self.lifecycle.set_health(health)
        self.side.publish(self.lifecycle.state, health, self._describe_plugins())
        for share in shares.shares:
            self.metrics.share_up.labels(share.name).set(1 if share.healthy else 0)
        for plugin in self.host.plugins:
            self.metrics.set_plugin_status(plugin.name, plugin.status)
        if self.lifecycle.state == NodeState.READY:
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        health = self.lifecycle.health
        # STATUS= keeps the detail: it stays on this host (`systemctl status`), like the
        # configuration file it comes from (docs/security.md).
        detail = f" ({health.described})" if health.described else ""
        return (f"{self.lifecycle.state}; {self.lifecycle.streams_in_flight} streams; "
                f"health {health.status}{detail}")

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
                if self.lifecycle.state == NodeState.READY:
                    await self._reload()
                else:
                    log.warning("reload ignored", state=self.lifecycle.state,
                                reason="the node reloads only while it is ready")
            elif not self._stop.is_set():
                log.info("draining", signal=signal.Signals(signum).name,
                         deadline_s=self._settings.drain_timeout_s)
                self._stop.set()
            else:
                log.warning("stopping at once", signal=signal.Signals(signum).name)
                self.notifier.stopping()
                lifespan.cancel()

    async def _drain_and_stop(self) -> None:
        """Drain under the deadline, then STOPPING=1 and the stop hooks.

        Not shielded: the only thing that cancels it is a second SIGTERM, which means "now".
        """
        deadline_s = self._settings.drain_timeout_s
        self.lifecycle.start_draining()
        self.notifier.status(self._status_line())
        with trio.move_on_after(deadline_s) as waited:
            async with trio.open_nursery() as draining:
                draining.start_soon(self.host.drain, self, deadline_s)
                draining.start_soon(self.lifecycle.wait_idle)
                draining.start_soon(self.side.drain, self.lifecycle.health)
        if waited.cancelled_caught:
            log.warning("drain deadline passed",
                        streams_in_flight=self.lifecycle.streams_in_flight)
        self.lifecycle.stopping()
        self.notifier.stopping()
        await self.host.stop(self)

    async def _reload(self) -> None:
        """SIGHUP: take a new configuration whole, or keep the old one whole."""
        self.notifier.reloading()
        old = self._settings
        try:
            new = await trio.to_thread.run_sync(
                functools.partial(config.load, old.path, **self.overrides))
            keys = await trio.to_thread.run_sync(load_edge_keys, new)
            tokens = await trio.to_thread.run_sync(load_token_verifier, new)
            error = self.host.reconfigure(new)
            if error is not None:
                raise ConfigError([error])
        except ConfigError as e:
            log.error("reload refused; the old configuration keeps serving", errors=e.errors)
            self.notifier.ready(self._status_line())
            return
        except Exception as e:  # whatever a new configuration does, the old one keeps serving
            log.exception("reload refused; the old configuration keeps serving",
                          errors=[f"{type(e).__name__}: {e}"])
            self.notifier.ready(self._status_line())
            return
        for field in dataclasses.fields(new.http):
            if field.name not in RELOADED_HTTP_KEYS \
                    and getattr(new.http, field.name) != getattr(old.http, field.name):
                log.warning("setting needs a restart to take effect", key=f"http.{field.name}")
        self._settings = new
        self._settings_view = None
        self.serving.auth.use(tokens)
        self.serving.library.set_keys(keys)
        if self._cors is not None:
            self._cors.allow(new.http.cors_origins)
        self._clients.trust(new.http.trusted_proxies)
        self.side.reload()
        await self.host.reloaded(self)
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


async def run(settings: Settings, host: PluginHost,
              overrides: Mapping[str, Any] | None = None) -> None:
    """Run one node until it is stopped; `overrides` as config.load takes them."""
    await Node(settings, host, overrides=overrides).run()
