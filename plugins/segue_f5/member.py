"""This node as a member of an LTM pool: upsert, state changes, connection count, removal."""

from __future__ import annotations

import ipaddress

from segue_f5.client import F5Client, F5Error
from segue_f5.settings import F5Settings
from segue_f5.state import WRITE, MemberState, cur_conns, patch_for, read_state, tilde


def member_name(address: str, port: int) -> str:
    """F5's member name: ADDRESS:PORT (IPv6 uses a dot: 2001:db8::5.8443)."""
    if ipaddress.ip_address(address).version == 6:
        return f"{address}.{port}"
    return f"{address}:{port}"


class PoolMember:
    """The pool member for one node."""

    def __init__(self, client: F5Client, settings: F5Settings, address: str, port: int,
                 description: str) -> None:
        self.client = client
        self.settings = settings
        self.address = address
        self.name = member_name(address, port)
        self.description = description
        self.pool_path = f"/mgmt/tm/ltm/pool/{tilde(settings.partition, settings.pool)}"
        self.path = f"{self.pool_path}/members/{tilde(settings.partition, self.name)}"

    async def read(self) -> dict | None:
        status, doc = await self.client.request("GET", self.path)
        if status == 404:
            return None
        _check(status, doc, "read the pool member")
        return doc

    async def ensure(self, desired: MemberState) -> tuple[MemberState, bool]:
        """Create the member if missing (disabled), then move it to `desired`.

        Returns the state it is in and whether anything had to change.
        """
        current = await self.read()
        changed = False
        if current is None:
            status, doc = await self.client.request("POST", f"{self.pool_path}/members", {
                "name": self.name, "partition": self.settings.partition,
                "address": self.address, "description": self.description,
                **WRITE["disabled"],
            })
            if status == 409:  # someone (or our own retried POST) made it meanwhile
                current = await self.read()
            else:
                _check(status, doc, "create the pool member")
                current = doc
            changed = True
        assert current is not None
        body = patch_for(current, desired)
        if body is not None:
            status, doc = await self.client.request("PATCH", self.path, body)
            _check(status, doc, f"set the pool member {desired}")
            current, changed = doc, True
        return read_state(current), changed

    async def connections(self) -> int:
        """serverside.curConns: connections F5 still has open to this member."""
        status, doc = await self.client.request("GET", f"{self.path}/stats")
        _check(status, doc, "read the member's stats")
        return cur_conns(doc)

    async def delete(self) -> None:
        status, doc = await self.client.request("DELETE", self.path)
        if status != 404:
            _check(status, doc, "delete the pool member")

    async def ensure_monitor(self) -> None:
        """An HTTP monitor on /healthz (up on "ok"), attached to the pool."""
        name = self.settings.monitor_name
        status, doc = await self.client.request("POST", "/mgmt/tm/ltm/monitor/http", {
            "name": name, "partition": self.settings.partition, "defaultsFrom": "/Common/http",
            "send": "GET /healthz HTTP/1.1\r\nHost: segue\r\nConnection: close\r\n\r\n",
            "recv": "^(ok|degraded)", "interval": 5, "timeout": 16,
        })
        if status != 409:
            _check(status, doc, "create the HTTP monitor")
        status, doc = await self.client.request(
            "PATCH", self.pool_path, {"monitor": f"/{self.settings.partition}/{name}"})
        _check(status, doc, "attach the monitor to the pool")


def _check(status: int, doc: object, doing: str) -> None:
    if status >= 400:
        message = doc.get("message", doc) if isinstance(doc, dict) else doc
        raise F5Error(status, f"cannot {doing}: {message}")
