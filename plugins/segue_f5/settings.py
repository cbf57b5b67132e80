"""The [plugins.f5] table, validated."""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import segue

_DEFAULTS: dict[str, Any] = {
    "partition": "Common",
    "member_address": None,
    "member_port": None,
    "verify_tls": True,
    "ca_bundle": None,
    "allow_plain_http": False,
    "ephemeral": False,
    "create_monitor": False,
    "monitor_name": "segue_healthz",
    "reconcile": "fix",
    "reconcile_interval_s": 10.0,
    "request_timeout_s": 5.0,
    "retry_deadline_s": 20.0,
    "token_timeout_s": 3600,
}
_REQUIRED = ("management_url", "username", "password_file", "pool")


def _unknown(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")


@dataclass(frozen=True)
class F5Settings:
    management_url: str
    username: str
    password_file: Path
    pool: str
    partition: str
    member_address: str | None
    member_port: int | None
    verify_tls: bool
    ca_bundle: Path | None
    ephemeral: bool
    create_monitor: bool
    monitor_name: str
    reconcile: str
    reconcile_interval_s: float
    request_timeout_s: float
    retry_deadline_s: float
    token_timeout_s: int


def parse(table: Mapping[str, Any], config_path: Path) -> F5Settings:
    """Validate the table; raises segue.PluginConfigError listing every problem."""
    known = set(_DEFAULTS) | set(_REQUIRED)
    problems = [_unknown(k, known) for k in sorted(set(table) - known)]
    problems += [f"{k} is required" for k in _REQUIRED if k not in table]
    values = {**_DEFAULTS, **table}
    url = urlsplit(str(values.get("management_url", "")))
    if "management_url" in table and (url.scheme not in ("https", "http") or not url.hostname):
        problems.append("management_url must be https://HOST[:PORT]")
    elif url.scheme == "http" and values["allow_plain_http"] is not True:
        # The password goes out on the first call, the token on every one after it.
        problems.append("management_url is http://: the password and the auth token would "
                        "cross the network in clear; use https://HOST (or, for a lab F5 on a "
                        "network of your own only, set allow_plain_http = true)")
    if not isinstance(values["allow_plain_http"], bool):
        problems.append("allow_plain_http must be true or false")
    if values["reconcile"] not in ("fix", "report"):
        problems.append('reconcile must be "fix" (put a hand-changed member back) or "report"')
    if not 1 <= int(values["token_timeout_s"]) <= 36000:
        problems.append("token_timeout_s must be 1 to 36000 (F5's maximum)")
    if values["member_address"] is not None:
        try:
            ipaddress.ip_address(values["member_address"])
        except ValueError:
            problems.append("member_address must be an IP address")
    for key in ("reconcile_interval_s", "request_timeout_s", "retry_deadline_s"):
        if not isinstance(values[key], int | float) or values[key] <= 0:
            problems.append(f"{key} must be a positive number")
    paths: dict[str, Path | None] = {}
    for key in ("password_file", "ca_bundle"):
        try:
            paths[key] = (None if values.get(key) is None
                          else segue.resolve_path(values[key], config_path.parent))
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if problems:
        raise segue.PluginConfigError(*problems)
    password_file = paths["password_file"]
    assert password_file is not None
    return F5Settings(
        management_url=str(values["management_url"]).rstrip("/"),
        username=str(values["username"]),
        password_file=password_file,
        pool=str(values["pool"]),
        partition=str(values["partition"]),
        member_address=values["member_address"],
        member_port=None if values["member_port"] is None else int(values["member_port"]),
        verify_tls=bool(values["verify_tls"]),
        ca_bundle=paths["ca_bundle"],
        ephemeral=bool(values["ephemeral"]),
        create_monitor=bool(values["create_monitor"]),
        monitor_name=str(values["monitor_name"]),
        reconcile=str(values["reconcile"]),
        reconcile_interval_s=float(values["reconcile_interval_s"]),
        request_timeout_s=float(values["request_timeout_s"]),
        retry_deadline_s=float(values["retry_deadline_s"]),
        token_timeout_s=int(values["token_timeout_s"]),
    )
