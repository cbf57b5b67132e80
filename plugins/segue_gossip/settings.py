"""The [plugins.gossip] table, validated: every problem names its key and the fix."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segue

_DEFAULTS: dict[str, Any] = {
    "rpc_address": "127.0.0.1:7373",
    "rpc_auth_file": None,
    "event_name": "segue-session",
    "anti_entropy_interval_s": 30.0,
    "peer_listen": "0.0.0.0:7380",
    "peer_advertise": None,
    "timeout_s": 5.0,
    "max_queue": 4096,
}
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")


@dataclass(frozen=True)
class GossipSettings:
    rpc_host: str
    rpc_port: int
    rpc_auth: str | None
    event_name: str
    anti_entropy_interval_s: float
    peer_host: str
    peer_port: int
    advertise_host: str | None
    advertise_port: int | None
    timeout_s: float
    max_queue: int

    @property
    def rpc_address(self) -> str:
        return f"{self.rpc_host}:{self.rpc_port}"


def split_address(value: Any, *, port_optional: bool = False) -> tuple[str, int | None]:
    """"host:port", "[v6]:port" (or a bare host when `port_optional`); ValueError otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError("not text")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    if not host or port is None or (not port and not port_optional):
        raise ValueError("not host:port")
    if not port:
        return host, None
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("the port is not a number from 0 to 65535")
    return host, int(port)


def parse(table: Mapping[str, Any], config_path: Path) -> GossipSettings:
    problems = []
    for key in sorted(set(table) - set(_DEFAULTS)):
        close = difflib.get_close_matches(key, sorted(_DEFAULTS), n=1)
        problems.append(f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    values = {**_DEFAULTS, **table}
    addresses: dict[str, tuple[str, int | None]] = {}
    for key, optional in (("rpc_address", False), ("peer_listen", False),
                          ("peer_advertise", True)):
        if values[key] is None:
            continue
        try:
            addresses[key] = split_address(values[key], port_optional=optional)
        except ValueError as e:
            problems.append(f"{key} = {values[key]!r}: {e} (write HOST:PORT)")
    if not isinstance(values["event_name"], str) or not _EVENT_NAME.fullmatch(
            values["event_name"]):
        problems.append("event_name must be 1 to 40 letters, digits, '-', '_' or '.' (it is "
                        "sent with every event, within Serf's 512 bytes)")
    for key in ("anti_entropy_interval_s", "timeout_s"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            problems.append(f"{key} must be a positive number of seconds")
    if (isinstance(values["max_queue"], bool) or not isinstance(values["max_queue"], int)
            or not 1 <= values["max_queue"] <= 1_000_000):
        problems.append("max_queue must be a whole number from 1 to 1000000")
    auth = None
    if values["rpc_auth_file"] is not None:
        try:
            auth = segue.read_secret(segue.resolve_path(str(values["rpc_auth_file"]),
                                                        config_path.parent))
        except Exception as e:
            problems.append(f"rpc_auth_file: {e}")
    if problems:
        raise segue.PluginConfigError(*problems)
    rpc_host, rpc_port = addresses["rpc_address"]
    peer_host, peer_port = addresses["peer_listen"]
    advertise = addresses.get("peer_advertise")
    assert rpc_port is not None and peer_port is not None
    return GossipSettings(
        rpc_host=rpc_host, rpc_port=rpc_port, rpc_auth=auth, event_name=values["event_name"],
        anti_entropy_interval_s=float(values["anti_entropy_interval_s"]),
        peer_host=peer_host, peer_port=peer_port,
        advertise_host=advertise[0] if advertise else None,
        advertise_port=advertise[1] if advertise else None,
        timeout_s=float(values["timeout_s"]), max_queue=int(values["max_queue"]))
