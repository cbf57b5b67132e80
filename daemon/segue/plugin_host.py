"""The plugin host: finds plugins, loads each in isolation, configures them and calls hooks.

Plugins come from the ``segue.plugins`` entry-point group. One that fails to import, to
register, or to accept its configuration is named in one clear error; start-up stops (exit 2)
unless ``[plugin_host] optional`` lists it, in which case it is disabled with a log line.
Allow and deny lists come from the configuration and from SEGUE_PLUGINS_ALLOW /
SEGUE_PLUGINS_DENY (comma-separated names). SEGUE_TRACE_PLUGINS=1 or ``trace = true`` logs
every hook call with its duration.

Hooks are called one plugin at a time (``call``) so that a failure is always attributed to
its plugin and the hook's contract decides what it means. The node's life calls the hooks
through the methods below, one per step (start, ready, health, reload, drain, stop), each of
which applies its hook's documented contract.

Because the host calls each plugin's implementation itself, pluggy's ordering and wrapping
options (``tryfirst``, ``trylast``, ``wrapper``, ``hookwrapper``) would mean nothing here; a
plugin that uses them is refused at load with a line that says so, rather than silently
running in an order it did not ask for.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy
import structlog
import trio
from prometheus_client import CollectorRegistry

from segue import hookspecs
from segue.api import NodeView, PluginConfigError, Route
from segue.config import ConfigError, Settings
from segue.health import Health, worst

log = structlog.get_logger("segue.plugins")

ENTRY_POINT_GROUP = "segue.plugins"
#: Paths a plugin's routes may not take: they are Segue's own.
RESERVED_PREFIXES = ("/v1/", "/healthz", "/metrics", "/player/")
#: hookimpl options the host cannot honour (it calls one plugin at a time, in load order).
UNSUPPORTED_OPTIONS = ("tryfirst", "trylast", "wrapper", "hookwrapper")


class StartupError(Exception):
    """The node cannot start (a plugin's startup failed); exit status 1."""


@dataclass
class Plugin:
    """One loaded plugin and what the host knows of it."""

    name: str
    version: str
    distribution: str
    module: object
    optional: bool
    health: Health = field(default_factory=Health.ok)  # as the plugin (or the host) said it
    active: bool = True  # False: no [plugins.NAME] table, so it has nothing to do

    @property
    def node_health(self) -> Health:
        """The plugin's health as the node reports it: the public reason names the plugin and
        its status alone; the plugin's own words (which may name hosts, users, commands) are
        the detail."""
        if self.health.status == "ok":
            return Health.ok()
        return Health(self.health.status, f"plugin {self.name} {self.health.status}",
                      f"{self.name}: {self.health.described}")

    @property
    def status(self) -> str:
        """ok, degraded or failing; "inactive" for an installed plugin without its table,
        which is not "ok": it is doing nothing."""
        return self.health.status if self.active else "inactive"

    def to_json(self, hooks: list[str], status: Any = None) -> dict[str, Any]:
        doc = {
            "name": self.name,
            "version": self.version,
            "distribution": self.distribution,
            "hooks": hooks,
            "active": self.active,
            "health": (self.node_health.to_json() if self.active
                       else {"status": self.status, "reason": ""}),
        }
        if status is not None:
            doc["status"] = status
        return doc


@dataclass(frozen=True)
class Outcome:
    """What one plugin's hook returned, or the exception it raised."""

    plugin: Plugin
    value: Any = None
    error: BaseException | None = None


def _env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


class PluginHost:
    """The loaded plugins of one node, in load order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[Plugin] = []
        self.trace = settings.plugin_host.trace or os.environ.get("SEGUE_TRACE_PLUGINS") == "1"

    @classmethod
    def load(
        cls,
        settings: Settings,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> PluginHost:
        """Load, register and configure every enabled plugin; raises ConfigError (exit 2)."""
        host = cls(settings)
        found = list(
            entry_points
            if entry_points is not None
            else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        )
        allow = set(settings.plugin_host.allow) | _env_list("SEGUE_PLUGINS_ALLOW")
        deny = set(settings.plugin_host.deny) | _env_list("SEGUE_PLUGINS_DENY")
        errors: list[str] = []
        names = {ep.name for ep in found}
        for table in settings.plugins:
            if table not in names:
                close = difflib.get_close_matches(table, sorted(names), n=1)
                hint = f"; did you mean [plugins.{close[0]}]?" if close else (
                    f"; installed plugins: {', '.join(sorted(names)) or 'none'}")
                errors.append(f"{settings.path}: [plugins.{table}]: no plugin named {table!r} "
                              f"is installed{hint}")
        seen: set[str] = set()
        for ep in found:
            if ep.name in seen:
                errors.append(f"plugin {ep.name!r} is registered twice in {ENTRY_POINT_GROUP}")
                continue
            seen.add(ep.name)
            if ep.name in deny or (allow and ep.name not in allow):
                log.info("plugin not loaded", plugin=ep.name,
                         reason="denied" if ep.name in deny else "not in the allow list")
                continue
            error = host._load_one(ep)
            if error is not None:
                errors.append(error)
        if errors:
            raise ConfigError(errors)
        return host

    def _load_one(self, ep: importlib.metadata.EntryPoint) -> str | None:
        """Import, register and configure one plugin; returns an error line, or None."""
        optional = ep.name in self.settings.plugin_host.optional
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            obj = ep.load()
            if inspect.isclass(obj):
                obj = obj()
        except Exception as e:  # any import-time failure belongs to the plugin
            return self._refuse(ep.name, optional, f"cannot be imported ({ep.value}): "
                                f"{type(e).__name__}: {e}")
        try:
            self.pm.register(obj, name=ep.name)
            self.pm.check_pending()
            _refuse_unsupported_options(self.pm, obj)
        except (pluggy.PluginValidationError, ValueError) as e:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            return self._refuse(ep.name, optional, f"does not fit plugin API "
                                f"{hookspecs.PLUGIN_API_VERSION}: {e}")
        plugin = Plugin(ep.name, version, dist, obj, optional)
        self.plugins.append(plugin)
        error = self.configure(plugin, self.settings)
        if error is not None:
            self.disable(plugin)
            return self._refuse(ep.name, optional, error)
        log.debug("plugin loaded", plugin=ep.name, version=version)
        return None

    def _refuse(self, name: str, optional: bool, reason: str) -> str | None:
        if optional:
            log.warning("optional plugin disabled", plugin=name, reason=reason)
            return None
        return f"plugin {name!r} {reason}"

    def configure(self, plugin: Plugin, settings: Settings) -> str | None:
        """Hand a plugin its [plugins.NAME] table; returns the error line if it refuses it."""
        table = settings.plugins.get(plugin.name, {})
        outcome = self.call_one(plugin, "segue_configure", config=table,
                                config_path=settings.path)
        if outcome.error is None:
            plugin.active = plugin.name in settings.plugins
            return None
        if isinstance(outcome.error, PluginConfigError):
            return "; ".join(f"{settings.path}: [plugins.{plugin.name}] {m}"
                             for m in outcome.error.messages)
        return (f"rejected its configuration with {type(outcome.error).__name__}: "
                f"{outcome.error}")

    def disable(self, plugin: Plugin) -> None:
        self.pm.unregister(plugin.module)
        self.plugins.remove(plugin)

    def hooks_of(self, plugin: Plugin) -> list[str]:
        callers = self.pm.get_hookcallers(plugin.module) or []
        return sorted(caller.name for caller in callers)

    def _impl(self, plugin: Plugin, hook: str) -> pluggy.HookImpl | None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == plugin.name:
                return impl
        return None

    def call_one(self, plugin: Plugin, hook: str, **kwargs: Any) -> Outcome:
        """Call one plugin's implementation of `hook` (synchronously), capturing a failure."""
        impl = self._impl(plugin, hook)
        if impl is None:
            return Outcome(plugin)
        started = time.perf_counter()
        try:
            value = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception as e:
            return Outcome(plugin, error=e)
        finally:
            if self.trace:
                log.info("hook called", plugin=plugin.name, hook=hook,
                         duration_ms=round((time.perf_counter() - started) * 1000, 3))
        return Outcome(plugin, value)

    def implemented(self, hook: str) -> bool:
        """Whether any loaded plugin implements `hook` (so a caller can skip building its
        arguments on a hot path)."""
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def implementing(self, hook: str) -> list[Plugin]:
        """The loaded plugins that implement `hook`, in load order."""
        return [p for p in self.plugins if self._impl(p, hook) is not None]

    def call(self, hook: str, **kwargs: Any) -> list[Outcome]:
        """Call `hook` on every plugin, in load order; failures are returned, not raised."""
        return [self.call_one(p, hook, **kwargs) for p in list(self.plugins)]

    async def call_awaited(self, plugin: Plugin, hook: str, timeout: float,
                           **kwargs: Any) -> Outcome:
        """One plugin's `hook`, its awaitable result (if any) awaited under `timeout`; a
        failure or timeout comes back in the outcome."""
        outcome = self.call_one(plugin, hook, **kwargs)
        if outcome.error is None and inspect.isawaitable(outcome.value):
            started = time.perf_counter()
            try:
                with trio.fail_after(timeout):
                    outcome = Outcome(plugin, await outcome.value)
            except trio.TooSlowError:
                outcome = Outcome(plugin, error=TimeoutError(
                    f"{hook} did not finish within {timeout:g} s"))
            except Exception as e:
                outcome = Outcome(plugin, error=e)
            if self.trace:
                log.info("hook awaited", plugin=plugin.name, hook=hook,
                         duration_ms=round((time.perf_counter() - started) * 1000, 3))
        return outcome

    async def call_async(self, hook: str, timeout: float, **kwargs: Any) -> list[Outcome]:
        """Call `hook` on every plugin concurrently, awaiting awaitable results under `timeout`.

        Failures and timeouts are logged with the plugin's name and returned as outcomes; what
        they mean is the caller's (the hook's contract's) business.
        """
        outcomes: dict[str, Outcome] = {}

        async def one(plugin: Plugin) -> None:
            outcome = await self.call_awaited(plugin, hook, timeout, **kwargs)
            if outcome.error is not None:
                log.error("plugin hook failed", plugin=plugin.name, hook=hook,
                          error=f"{type(outcome.error).__name__}: {outcome.error}")
            outcomes[plugin.name] = outcome

        async with trio.open_nursery() as nursery:
            for plugin in list(self.plugins):
                nursery.start_soon(one, plugin)
        return [outcomes[p.name] for p in self.plugins if p.name in outcomes]

    def health(self) -> Health:
        """The worst health of all plugins, with the plugin's name in the reason."""
        return worst(p.node_health for p in self.plugins)

    def describe(self) -> list[dict[str, Any]]:
        """Name, version, hooks and health of each plugin (`segue plugins`, /v1/status)."""
        return [p.to_json(self.hooks_of(p), self._status(p)) for p in self.plugins]

    def _status(self, plugin: Plugin) -> Any:
        outcome = self.call_one(plugin, "segue_status")
        if outcome.error is not None:
            log.error("plugin status failed", plugin=plugin.name, error=str(outcome.error))
            return None
        return outcome.value

    # --- the node's life, one method per step -------------------------------------------------

    async def start(self, node: NodeView, registry: CollectorRegistry) -> list[Route]:
        """segue_metrics, segue_startup and segue_routes; the routes plugins add.

        Raises StartupError when a required plugin fails to start or to list its routes, and
        ConfigError for a route outside the plugins' space.
        """
        # Only for plugins with their table: an inactive plugin's gauges would read 0, and a
        # "gossip agent up" of 0 on every node that runs no gossip is an alert for nothing.
        for plugin in [p for p in self.plugins if p.active]:
            outcome = self.call_one(plugin, "segue_metrics", registry=registry)
            if outcome.error is not None:
                log.error("plugin metrics failed", plugin=outcome.plugin.name,
                          error=str(outcome.error))
        timeout = self.settings.plugin_host.hook_timeout_s
        for outcome in await self.call_async("segue_startup", timeout, node=node):
            if outcome.error is None:
                continue
            if outcome.plugin.optional:
                log.warning("optional plugin disabled", plugin=outcome.plugin.name,
                            reason=f"startup failed: {outcome.error}")
                self.disable(outcome.plugin)
                continue
            raise StartupError(f"plugin {outcome.plugin.name!r} failed to start: "
                               f"{type(outcome.error).__name__}: {outcome.error}")
        routes: list[Route] = []
        for outcome in self.call("segue_routes", node=node):
            if outcome.error is not None:
                raise StartupError(f"plugin {outcome.plugin.name!r} failed to list its routes: "
                                   f"{outcome.error}")
            for route in outcome.value or ():
                # "/" is the web player's page (and, as a prefix, would take every path).
                if not isinstance(route, Route) or route.path == "/" or \
                        route.path.startswith(RESERVED_PREFIXES):
                    raise ConfigError([f"plugin {outcome.plugin.name!r} route {route!r} is not "
                                       f"a segue.Route outside /, "
                                       f"{', '.join(RESERVED_PREFIXES)}"])
                routes.append(route)
        return routes

    async def ready(self, node: NodeView, services: trio.Nursery,
                    on_change: Callable[[], None]) -> None:
        """segue_ready, then each plugin's segue_services started in `services`.

        A services hook or a service that fails degrades its plugin (`on_change` is told);
        the node goes on serving.
        """
        await self.call_async("segue_ready", self.settings.plugin_host.hook_timeout_s,
                              node=node)
        for outcome in self.call("segue_services", node=node):
            if outcome.error is not None:
                self._degrade(outcome.plugin, f"services hook failed: {outcome.error}")
                on_change()
                continue
            for service in outcome.value or ():
                services.start_soon(self._run_service, outcome.plugin, service, on_change)

    async def _run_service(self, plugin: Plugin, service: Callable[[], Awaitable[None]],
                           on_change: Callable[[], None]) -> None:
        try:
            await service()
        except Exception as e:
            log.exception("plugin service failed", plugin=plugin.name)
            self._degrade(plugin, f"service {getattr(service, '__name__', '?')} failed: {e}")
            on_change()

    def _degrade(self, plugin: Plugin, reason: str) -> None:
        plugin.health = Health("degraded", reason)

    async def check_health(self, node: NodeView) -> None:
        """segue_health of every plugin; one that raises, times out or answers nonsense is
        reported degraded with that reason."""
        timeout = self.settings.plugin_host.hook_timeout_s
        for outcome in await self.call_async("segue_health", timeout, node=node):
            if outcome.error is not None:
                health = Health("degraded", f"health check failed: {outcome.error}")
            elif outcome.value is None:
                health = Health.ok()
            elif isinstance(outcome.value, Health):
                health = outcome.value
            else:
                health = Health("degraded", f"health hook returned {outcome.value!r}")
            outcome.plugin.health = health

    def reconfigure(self, new: Settings) -> str | None:
        """Every plugin takes its table from `new`, or none does: the error line, or None.

        On a refusal the plugins that had accepted are handed their old tables back, so the old
        configuration keeps serving whole.
        """
        old = self.settings
        accepted: list[Plugin] = []
        for plugin in list(self.plugins):
            error = self.configure(plugin, new)
            if error is not None:
                for earlier in accepted:
                    self.configure(earlier, old)
                return f"plugin {plugin.name!r}: {error}"
            accepted.append(plugin)
        self.settings = new
        return None

    async def reloaded(self, node: NodeView) -> None:
        await self.call_async("segue_reload", self.settings.plugin_host.hook_timeout_s,
                              node=node)

    async def drain(self, node: NodeView, deadline_s: float) -> None:
        await self.call_async("segue_drain", deadline_s, node=node, deadline_s=deadline_s)

    async def stop(self, node: NodeView) -> None:
        await self.call_async("segue_stop", self.settings.plugin_host.hook_timeout_s, node=node)


def _refuse_unsupported_options(pm: pluggy.PluginManager, plugin: object) -> None:
    """ValueError for a hookimpl option the host would silently ignore."""
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            used = [option for option in UNSUPPORTED_OPTIONS if getattr(impl, option, False)]
            if used:
                raise ValueError(
                    f"hook {caller.name} uses {', '.join(used)}, which Segue does not honour "
                    f"(hooks run one plugin at a time, in load order); remove the option")
