"""The plugin host: finds plugins, loads each in isolation, configures them and calls hooks.

Plugins come from the ``segue.plugins`` entry-point group. One that fails to import, to
register, or to accept its configuration is named in one clear error; start-up stops (exit 2)
unless ``[plugin_host] optional`` lists it, in which case it is disabled with a log line.
Allow and deny lists come from the configuration and from SEGUE_PLUGINS_ALLOW /
SEGUE_PLUGINS_DENY (comma-separated names). SEGUE_TRACE_PLUGINS=1 or ``trace = true`` logs
every hook call with its duration.

Hooks are called one plugin at a time (``call``) so that a failure is always attributed to
its plugin and the hook's contract decides what it means.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy
import structlog
import trio

from segue import hookspecs
from segue.config import ConfigError, Settings
from segue.plugin_types import Health, PluginConfigError

log = structlog.get_logger("segue.plugins")

ENTRY_POINT_GROUP = "segue.plugins"


@dataclass
class Plugin:
    """One loaded plugin and what the host knows of it."""

    name: str
    version: str
    distribution: str
    module: object
    optional: bool
    health: Health = field(default_factory=Health.ok)

    def to_json(self, hooks: list[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "distribution": self.distribution,
            "hooks": hooks,
            "health": {"status": self.health.status, "reason": self.health.reason},
        }


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

    def call(self, hook: str, **kwargs: Any) -> list[Outcome]:
        """Call `hook` on every plugin, in load order; failures are returned, not raised."""
        return [self.call_one(p, hook, **kwargs) for p in list(self.plugins)]

    async def call_async(self, hook: str, timeout: float, **kwargs: Any) -> list[Outcome]:
        """Call `hook` on every plugin concurrently, awaiting awaitable results under `timeout`.

        Failures and timeouts are logged with the plugin's name and returned as outcomes; what
        they mean is the caller's (the hook's contract's) business.
        """
        outcomes: dict[str, Outcome] = {}

        async def one(plugin: Plugin) -> None:
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
        worst = Health.ok()
        for plugin in self.plugins:
            if plugin.health.worse_than(worst):
                worst = Health(plugin.health.status, f"{plugin.name}: {plugin.health.reason}")
        return worst

    def describe(self) -> list[dict[str, Any]]:
        """Name, version, hooks and health of each plugin (`segue plugins`, /v1/status)."""
        return [p.to_json(self.hooks_of(p)) for p in self.plugins]

    def config_table(self, name: str) -> Mapping[str, Any]:
        return self.settings.plugins.get(name, {})
