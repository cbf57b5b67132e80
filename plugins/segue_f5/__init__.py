"""Segue's F5 BIG-IP plugin: the node registers itself as an LTM pool member over iControl REST.

Life of the member: created disabled; enabled once the node is ready and healthy; disabled
while the node's health is failing; put back (or only reported) when changed by hand; on
SIGTERM disabled at once (graceful drain), then, once F5 has no connection to it and the node
no stream in flight (or the drain deadline is near), forced offline or deleted. F5 never stops
the node from serving: every failure here is retried in the background and reported as
``degraded`` health.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import structlog
import trio
from prometheus_client import Counter

import segue
from segue_f5 import settings as f5_settings
from segue_f5.client import F5Client, F5Error, F5Unreachable
from segue_f5.member import PoolMember
from segue_f5.state import MemberState, read_state

log = structlog.get_logger("segue_f5")

# The last part of the drain deadline is kept for forcing the member offline.
FINAL_STEP_S = 3.0


class F5Plugin:
    """One instance per node (the entry point names this class)."""

    def __init__(self) -> None:
        self.settings: f5_settings.F5Settings | None = None
        self.client: F5Client | None = None
        self.member: PoolMember | None = None
        self.calls: Counter | None = None
        self.last_error = ""
        self.draining = False
        self.state: MemberState | None = None
        self._loop: trio.CancelScope | None = None

    @segue.hookimpl
    def segue_configure(self, config, config_path: Path) -> None:
        if not config:
            self.settings = None  # no [plugins.f5] table: this node has no F5 to talk to
            return
        parsed = f5_settings.parse(config, config_path)
        try:
            segue.read_secret(parsed.password_file)
        except Exception as e:
            raise segue.PluginConfigError(f"password_file: {e}") from None
        self.settings = parsed

    @segue.hookimpl
    def segue_metrics(self, registry) -> None:
        self.calls = Counter("segue_f5_calls", "iControl REST calls by outcome.", ["outcome"],
                             registry=registry)

    def _count(self, outcome: str) -> None:
        if self.calls is not None:
            self.calls.labels(outcome).inc()

    @segue.hookimpl
    def segue_startup(self, node) -> None:
        if self.settings is None:
            return
        self.client = F5Client(self.settings, segue.read_secret(self.settings.password_file),
                               self._count)

    @segue.hookimpl
    def segue_ready(self, node) -> None:
        if self.settings is None or self.client is None:
            return
        host, port = node.addresses[0]
        address = self.settings.member_address or host
        if address in ("0.0.0.0", "::"):  # noqa: S104 - naming, not binding
            raise F5Error(0, "the node listens on all addresses: set member_address")
        self.member = PoolMember(self.client, self.settings, address,
                                 self.settings.member_port or port,
                                 f"managed-by=segue node={node.node_id}")

    @segue.hookimpl
    def segue_services(self, node):
        if self.member is None:
            return []
        return [lambda: self._reconcile_forever(node)]

    async def _reconcile_forever(self, node) -> None:
        """Keep the member as the node wants it, retrying while F5 is away (until draining,
        which cancels this loop so that no registration in progress can undo the drain)."""
        with trio.CancelScope() as self._loop:
            await self._reconcile(node)

    async def _reconcile(self, node) -> None:
        assert self.settings is not None
        first = True
        while not self.draining:
            desired: MemberState = (
                "enabled" if node.state == "ready" and node.health.status != "failing"
                else "disabled")
            try:
                if first and self.settings.create_monitor and self.member is not None:
                    await self.member.ensure_monitor()
                await self._converge(desired, first)
                first = False
                self.last_error = ""
            except (F5Unreachable, F5Error) as e:
                self.last_error = str(e)
                log.warning("F5 registration failed; retrying", error=str(e))
            except Exception as e:  # an answer F5 should not give: keep trying, say so
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("F5 registration failed unexpectedly; retrying")
            await trio.sleep(1.0 if first or self.last_error else
                             self.settings.reconcile_interval_s)

    async def _converge(self, desired: MemberState, first: bool) -> None:
        """Set the member to `desired` when the node's wish changed; otherwise put a member
        changed by hand back ("fix") or only say so ("report")."""
        assert self.member is not None and self.settings is not None
        if self.draining:
            return
        if self.settings.reconcile == "report" and not first and desired == self.state:
            current = await self.member.read()
            if current is None or read_state(current) != desired:
                log.warning("F5 member differs from what the node wants", desired=desired,
                            found=None if current is None else read_state(current))
            return
        state, changed = await self.member.ensure(desired)
        if changed or state != self.state:
            log.info("F5 member set", member=self.member.name, state=state)
        self.state = state

    @segue.hookimpl
    def segue_health(self, node):
        if self.last_error:
            return segue.Health("degraded", f"F5 unreachable or refusing: {self.last_error}")
        return segue.Health.ok()

    @segue.hookimpl
    async def segue_drain(self, node, deadline_s: float) -> None:
        """Disable at once, wait for F5's connections and our streams to end, then finish."""
        self.draining = True
        if self._loop is not None:
            self._loop.cancel()
        if self.member is None:
            return
        final = trio.current_time() + max(deadline_s - FINAL_STEP_S, 0)
        with trio.move_on_at(final):
            try:
                await self.member.ensure("disabled")
                log.info("F5 member disabled for draining", member=self.member.name)
                while await self.member.connections() > 0 or node.streams_in_flight > 0:
                    await trio.sleep(0.5)
            except (F5Unreachable, F5Error) as e:
                log.warning("F5 drain step failed", error=str(e))
        with trio.move_on_after(FINAL_STEP_S), contextlib.suppress(F5Unreachable, F5Error):
            if self.settings is not None and self.settings.ephemeral:
                await self.member.delete()
                log.info("F5 member deleted", member=self.member.name)
            else:
                await self.member.ensure("offline")
                log.info("F5 member forced offline", member=self.member.name)

    @segue.hookimpl
    async def segue_stop(self, node) -> None:
        if self.client is not None:
            await self.client.logout()

