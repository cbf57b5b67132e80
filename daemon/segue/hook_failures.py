"""Failures of the hooks called for every event (a play, a session change): each one counted
in `segue_plugin_hook_failures_total`, and logged with the plugin's name at most once a minute
per plugin and hook, with how many failed since the last line. A plugin that fails on every
call must neither flood the log nor fail in silence."""

from __future__ import annotations

import math
import time

import structlog

from segue.metrics import Metrics

log = structlog.get_logger("segue.plugins")

FAILURE_LOG_EVERY_S = 60.0


class HookFailures:
    """The failures of per-event hooks, counted and logged (see the module's docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._unlogged: dict[tuple[str, str], int] = {}
        self._quiet_until: dict[tuple[str, str], float] = {}

    def record(self, plugin: str, hook: str, error: BaseException) -> None:
        self._metrics.child(self._metrics.plugin_hook_failures, hook, plugin).inc()
        key = (plugin, hook)
        self._unlogged[key] = self._unlogged.get(key, 0) + 1
        now = time.monotonic()
        if now >= self._quiet_until.get(key, -math.inf):
            log.error("plugin hook failed", plugin=plugin, hook=hook,
                      failures=self._unlogged.pop(key), error=f"{type(error).__name__}: {error}")
            self._quiet_until[key] = now + FAILURE_LOG_EVERY_S
