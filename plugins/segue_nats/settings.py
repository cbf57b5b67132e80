"""The [plugins.nats] table, validated: every problem names its key and the fix."""

from __future__ import annotations

import difflib
import importlib.util
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segue

_DEFAULTS: dict[str, Any] = {
    "servers": None,
    "user": None,
    "password_file": None,
    "creds_file": None,
    "tls": False,
    "tls_ca_file": None,
    "user_key_file": None,
    "stream": "SEGUE_SESSIONS",
    "bucket": "segue_sessions",
    "subject_prefix": "segue.sessions",
    "create": False,
    "replicas": 3,
    "max_age_s": 7 * 24 * 3600,
    "max_msgs_per_subject": 1000,
    "positions_path": "nats-positions.sqlite",
    "timeout_s": 5.0,
    "max_queue": 4096,
}
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True)
class NatsSettings:
    servers: list[str]
    user: str | None
    password: str | None
    creds_file: str | None
    tls: ssl.SSLContext | None
    user_key: bytes
    stream: str
    bucket: str
    subject_prefix: str
    create: bool
    replicas: int
    max_age_s: float
    max_msgs_per_subject: int
    positions_path: Path
    timeout_s: float
    max_queue: int


def parse(table: Mapping[str, Any], config_path: Path) -> NatsSettings:
    base = config_path.parent
    problems = []
    for key in sorted(set(table) - set(_DEFAULTS)):
        close = difflib.get_close_matches(key, sorted(_DEFAULTS), n=1)
        problems.append(f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    v = {**_DEFAULTS, **table}
    servers = v["servers"]
    if (not isinstance(servers, list) or not servers
            or not all(isinstance(s, str) and s.startswith(("nats://", "tls://"))
                       for s in servers)):
        problems.append('servers is required: a list of "nats://HOST:PORT" (every server of '
                        'the cluster this node may use)')
    for key, pattern in (("stream", _NAME), ("bucket", _NAME), ("subject_prefix", _SUBJECT)):
        if not isinstance(v[key], str) or not pattern.fullmatch(v[key]):
            problems.append(f"{key} must be letters, digits, '-' or '_'"
                            + (" in dot-separated tokens" if key == "subject_prefix" else ""))
    for key, low, high in (("replicas", 1, 5), ("max_msgs_per_subject", 1, 10**9),
                           ("max_queue", 1, 10**6)):
        if isinstance(v[key], bool) or not isinstance(v[key], int) or not low <= v[key] <= high:
            problems.append(f"{key} must be a whole number from {low} to {high}")
    for key in ("max_age_s", "timeout_s"):
        if isinstance(v[key], bool) or not isinstance(v[key], int | float) or v[key] <= 0:
            problems.append(f"{key} must be a positive number of seconds")
    for key in ("create", "tls"):
        if not isinstance(v[key], bool):
            problems.append(f"{key} must be true or false")
    if v["user"] is not None and v["creds_file"] is not None:
        problems.append("user and creds_file: give one way to sign in, not both")
    if v["user"] is not None and v["password_file"] is None:
        problems.append("user needs password_file (a file, or credential:NAME)")

    def secret(key: str) -> str | None:
        if v[key] is None:
            return None
        try:
            return segue.read_secret(segue.resolve_path(str(v[key]), base))
        except Exception as e:
            problems.append(f"{key}: {e}")
            return None

    password = secret("password_file")
    key_text = secret("user_key_file")
    if v["user_key_file"] is None:
        problems.append("user_key_file is required: the fleet's shared secret that names "
                        "listeners on the bus by a keyed hash (make one with `head -c 32 "
                        "/dev/urandom | base64 > FILE; chmod 600 FILE`)")
    elif key_text is not None and len(key_text.encode()) < 16:
        problems.append("user_key_file: the key is too short (at least 16 bytes)")
    creds = None
    if v["creds_file"] is not None:
        creds = str(segue.resolve_path(str(v["creds_file"]), base))
        if not Path(creds).is_file():
            problems.append(f"creds_file: no file {creds}")
        if importlib.util.find_spec("nkeys") is None:
            # Not in Segue's own dependencies: its sdist does not build in the Debian
            # package's hash-checked, isolation-free install.
            problems.append("creds_file needs the Python package nkeys (pip install nkeys "
                            "into segue's environment), or use user and password_file")
    context = None
    if v["tls"] is True:
        try:
            ca = v["tls_ca_file"]
            context = ssl.create_default_context(
                cafile=None if ca is None else str(segue.resolve_path(str(ca), base)))
        except (OSError, ssl.SSLError) as e:
            problems.append(f"tls_ca_file: cannot load it as PEM CA certificates: {e}")
    if problems:
        raise segue.PluginConfigError(*problems)
    assert key_text is not None
    return NatsSettings(
        servers=list(servers), user=v["user"], password=password, creds_file=creds,
        tls=context, user_key=key_text.encode(), stream=v["stream"], bucket=v["bucket"],
        subject_prefix=v["subject_prefix"], create=v["create"], replicas=v["replicas"],
        max_age_s=float(v["max_age_s"]), max_msgs_per_subject=v["max_msgs_per_subject"],
        positions_path=segue.resolve_path(str(v["positions_path"]), base),
        timeout_s=float(v["timeout_s"]), max_queue=v["max_queue"])
