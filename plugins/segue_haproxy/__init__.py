"""Segue's HAProxy plugin: the node registers itself with HAProxy, and drains from it.

Three ways to be a server of a backend (``mode``):
- ``template``: claim a ``server-template`` slot: ``set server BE/S addr A port P`` then
  ``state ready``;
- ``add``: ``add server BE/S A:P check`` (HAProxy 2.6+), then ``enable health`` and
  ``state ready``; deleted again at stop;
- ``agent``: answer HAProxy's agent-check on ``agent_port`` with ready, drain or maint, never
  touching the admin socket.

On SIGTERM the server goes to ``drain`` at once; once ``show stat`` counts no session on it and
the node has no stream in flight (or the drain deadline is near), it goes to ``maint``.
HAProxy being away never stops the node from serving: registration is retried in the
background and reported as ``degraded`` health.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import structlog
import trio

import segue
from segue_haproxy import settings as hap_settings
from segue_haproxy.runtime import HAProxyError, RuntimeApi

log = structlog.get_logger("segue_haproxy")

FINAL_STEP_S = 2.0


class HAProxyPlugin:
    """One instance per node (the entry point names this class)."""

    def __init__(self) -> None:
        self.settings: hap_settings.HAProxySettings | None = None
        self.api: RuntimeApi | None = None
        self.address: tuple[str, int] | None = None
        self.registered = False
        self.draining = False
        self.last_error = ""
        self._loop: trio.CancelScope | None = None

    @segue.hookimpl
    def segue_configure(self, config, config_path: Path) -> None:
        self.settings = hap_settings.parse(config, config_path) if config else None

    @segue.hookimpl
    def segue_ready(self, node) -> None:
        if self.settings is None:
            return
        host, port = node.addresses[0]
        self.address = (self.settings.address or host, self.settings.port or port)
        if self.settings.mode != "agent":
            assert self.settings.admin_socket is not None
            self.api = RuntimeApi(self.settings.admin_socket, self.settings.timeout_s)

    @segue.hookimpl
    def segue_services(self, node):
        if self.settings is None:
            return []
        if self.settings.mode == "agent":
            return [lambda: self._agent(node)]
        return [lambda: self._register_forever(node)]

    @property
    def _name(self) -> str:
        assert self.settings is not None
        return f"{self.settings.backend}/{self.settings.server}"

    async def _register_forever(self, node) -> None:
        """Make HAProxy send players here once the node is ready; retry while it is away
        (until draining, which cancels this loop so that it cannot undo the drain)."""
        with trio.CancelScope() as self._loop:
            await self._register_loop(node)

    async def _register_loop(self, node) -> None:
        assert self.settings is not None and self.api is not None
        while not self.draining:
            try:
                if not self.registered and node.state == "ready":
                    await self._register()
                elif self.registered:
                    stat = await self.api.stat(self.settings.backend, self.settings.server)
                    if stat is None or stat.status.startswith("MAINT"):
                        log.warning("HAProxy server lost its registration", server=self._name)
                        self.registered = False
                        continue
                self.last_error = ""
            except HAProxyError as e:
                self.last_error = str(e)
                log.warning("HAProxy registration failed; retrying", error=str(e))
            except Exception as e:  # an answer HAProxy should not give: keep trying, say so
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("HAProxy registration failed unexpectedly; retrying")
            await trio.sleep(0.2 if not self.registered else self.settings.reconcile_interval_s)

    async def _register(self) -> None:
        assert self.settings is not None and self.api is not None and self.address is not None
        host, port = self.address
        if self.settings.mode == "add":
            await self.api.checked(f"add server {self._name} {host}:{port} "
                                   f"{self.settings.add_options}".strip(),
                                   "New server registered", "Already exists")
            if "check" in self.settings.add_options.split():
                await self.api.checked(f"enable health {self._name}")
        else:
            await self.api.checked(f"set server {self._name} addr {host} port {port}",
                                   "no need to change", "IP changed", "port changed")
        await self.api.checked(f"set server {self._name} state ready")
        self.registered = True
        log.info("HAProxy server ready", server=self._name, address=f"{host}:{port}")

    async def _agent(self, node) -> None:
        """Answer agent-checks: HAProxy connects, reads one line, and disconnects."""
        assert self.settings is not None and self.settings.agent_port is not None

        async def answer(stream: trio.SocketStream) -> None:
            if node.state == "ready":
                word = "up ready" if node.health.status != "failing" else "down"
            elif node.state == "draining":
                word = "drain"
            else:
                word = "maint"
            with trio.move_on_after(self.settings.timeout_s if self.settings else 2.0):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(word.encode() + b"\n")
            await stream.aclose()

        await trio.serve_tcp(answer, self.settings.agent_port, host=self.settings.agent_address)

    @segue.hookimpl
    def segue_health(self, node):
        if self.last_error:
            return segue.Health("degraded", f"HAProxy: {self.last_error}")
        return segue.Health.ok()

    @segue.hookimpl
    async def segue_drain(self, node, deadline_s: float) -> None:
        self.draining = True
        if self._loop is not None:
            self._loop.cancel()
        if self.settings is None or self.api is None:
            return  # agent mode: the agent answers "drain" from now on
        final = trio.current_time() + max(deadline_s - FINAL_STEP_S, 0)
        with trio.move_on_at(final):
            try:
                await self.api.checked(f"set server {self._name} state drain")
                log.info("HAProxy server draining", server=self._name)
                while True:
                    stat = await self.api.stat(self.settings.backend, self.settings.server)
                    if (stat is None or stat.sessions == 0) and node.streams_in_flight == 0:
                        break
                    await trio.sleep(0.2)
            except HAProxyError as e:
                log.warning("HAProxy drain step failed", error=str(e))
        with trio.move_on_after(FINAL_STEP_S), contextlib.suppress(HAProxyError):
            await self.api.checked(f"set server {self._name} state maint")
            log.info("HAProxy server in maintenance", server=self._name)
            if self.settings.mode == "add":
                await self.api.checked(f"del server {self._name}", "Server deleted")
