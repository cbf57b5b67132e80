"""The [plugins.haproxy] table, validated."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segue

MODES = ("template", "add", "agent")
_DEFAULTS: dict[str, Any] = {
    "admin_socket": None,
    "mode": "template",
    "address": None,
    "port": None,
    "add_options": "check",
    "agent_port": None,
    "agent_address": "127.0.0.1",
    "timeout_s": 2.0,
    "reconcile_interval_s": 5.0,
}
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


def _unknown(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")


@dataclass(frozen=True)
class HAProxySettings:
    admin_socket: str | None
    backend: str
    server: str
    mode: str
    address: str | None
    port: int | None
    add_options: str
    agent_port: int | None
    agent_address: str
    timeout_s: float
    reconcile_interval_s: float


def parse(table: Mapping[str, Any], config_path: Path) -> HAProxySettings:
    known = set(_DEFAULTS) | {"backend", "server"}
    problems = [_unknown(k, known) for k in sorted(set(table) - known)]
    values = {**_DEFAULTS, **table}
    if values["mode"] not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}")
    for key in ("backend", "server"):
        if not isinstance(table.get(key), str) or not _NAME.fullmatch(table[key]):
            problems.append(f"{key} is required: the HAProxy {key} name")
    if values["mode"] == "agent":
        if not isinstance(values["agent_port"], int) or not 0 < values["agent_port"] < 65536:
            problems.append("agent mode needs agent_port, the port HAProxy's agent-check uses")
    elif not isinstance(values["admin_socket"], str) or not values["admin_socket"]:
        problems.append("admin_socket is required: a UNIX socket path or HOST:PORT "
                        "(stats socket ... level admin)")
    if any(c in str(values["add_options"]) for c in ";\n"):
        problems.append("add_options must be one line of server options, without ';'")
    socket = values["admin_socket"]
    if isinstance(socket, str) and ":" in socket and not socket.startswith("/"):
        port = socket.rpartition(":")[2]
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append("admin_socket HOST:PORT needs a port number")
    if values["address"] is not None:
        try:
            ipaddress.ip_address(values["address"])
        except ValueError:
            problems.append("address must be an IP address")
    try:
        if not isinstance(values["agent_address"], str):
            raise ValueError(values["agent_address"])
        ipaddress.ip_address(values["agent_address"])
    except ValueError:
        problems.append("agent_address must be an IP address of this host (where HAProxy's "
                        "agent-check connects), such as 127.0.0.1 or 10.0.0.5")
    if problems:
        raise segue.PluginConfigError(*problems)
    socket = values["admin_socket"]
    if isinstance(socket, str) and not socket.startswith("/") and ":" not in socket:
        socket = str(segue.resolve_path(socket, config_path.parent))
    return HAProxySettings(
        admin_socket=socket,
        backend=table["backend"],
        server=table["server"],
        mode=values["mode"],
        address=values["address"],
        port=values["port"],
        add_options=str(values["add_options"]),
        agent_port=values["agent_port"],
        agent_address=values["agent_address"],
        timeout_s=float(values["timeout_s"]),
        reconcile_interval_s=float(values["reconcile_interval_s"]),
    )
