"""Implements every Segue hook and records each call, so tests can check the order.

Its [plugins.example] table:
    record = "calls.jsonl"      # where each hook call is appended (one JSON object per line)
    health = "ok"               # what segue_health reports: ok, degraded or failing
    reason = ""                 # ...with this reason
    raise_in = []               # hooks that raise instead (startup, health, drain, ...)
    drain_wait_s = 0.0          # how long segue_drain waits, as a load balancer's would
    routes = true               # false: add no route (a node with [http] workers > 1)

Play reporting (segue_track_served) is what a real plugin would send to a statistics service;
this one keeps the plays in memory and shows them: counts by outcome in its status on
/v1/status, and every play at GET /example/plays.
"""

from __future__ import annotations

import json
import time
from collections import Counter as Tally
from pathlib import Path
from types import MappingProxyType

import trio
from prometheus_client import Counter

import segue
from segue import Health, PluginConfigError, Request, Response, Route

_KNOWN = {"record", "health", "reason", "raise_in", "drain_wait_s", "routes"}
settings: dict = {}
hello_count: Counter | None = None
hellos = 0
plays: list[dict] = []  # every segue_track_served, in order


def _record(hook: str, node: segue.NodeView | None = None, **extra: object) -> None:
    if hook in settings.get("raise_in", []):
        raise RuntimeError(f"example plugin told to fail in {hook}")
    path = settings.get("record")
    if path:
        entry = {"hook": hook, "time": time.time(), **extra}
        if node is not None:
            entry["state"] = node.state
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


@segue.hookimpl
def segue_configure(config, config_path: Path) -> None:
    unknown = set(config) - _KNOWN
    if unknown:
        raise PluginConfigError(*(f"unknown key {k!r}" for k in sorted(unknown)))
    if config.get("health", "ok") not in ("ok", "degraded", "failing"):
        raise PluginConfigError("health must be ok, degraded or failing")
    settings.clear()
    settings.update(config)
    if "record" in settings:
        settings["record"] = str(config_path.parent / settings["record"])
    _record("segue_configure", config_keys=sorted(config))


@segue.hookimpl
def segue_metrics(registry) -> None:
    global hello_count
    hello_count = Counter("segue_example_hellos", "Hellos answered.", registry=registry)
    _record("segue_metrics")


@segue.hookimpl
async def segue_startup(node) -> None:
    await trio.sleep(0)
    _record("segue_startup", node)


@segue.hookimpl
def segue_routes(node):
    async def hello(request: Request) -> Response:
        global hellos
        hellos += 1
        if hello_count is not None:
            hello_count.inc()
        body = f"hello from {node.node_id}\n".encode()
        return Response(200, [("Content-Type", "text/plain")], body)

    async def block(request: Request) -> Response:
        # Blocks the event loop on purpose: the watchdog test needs a stuck loop.
        time.sleep(float(request.query_one("seconds") or "1"))
        return Response(200, [("Content-Type", "text/plain")], b"unblocked\n")

    async def apply_session(request: Request) -> Response:
        # A session transport's receiving end, reachable over HTTP for the tests: a real one
        # gets deltas from its bus or gossip instead.
        doc = json.loads(request.body)
        applied = node.sessions.apply_remote(doc["user"], doc["delta"])
        return Response(200 if applied else 400, [("Content-Type", "application/json")],
                        json.dumps({"applied": applied,
                                    "digest": node.sessions.digests().get(doc["user"])}
                                   ).encode())

    async def played(request: Request) -> Response:
        return Response(200, [("Content-Type", "application/json")], json.dumps(plays).encode())

    async def node_settings(request: Request) -> Response:
        # What a plugin may read of the node's configuration, and whether it could change it.
        try:
            node.settings["http"]["listen"] = "0.0.0.0:1"  # type: ignore[index]
            writable = True
        except TypeError:
            writable = False
        doc = {"settings": _plain(node.settings), "writable": writable,
               "config_path": str(node.config_path)}
        return Response(200, [("Content-Type", "application/json")], json.dumps(doc).encode())

    _record("segue_routes", node)
    if not settings.get("routes", True):
        return []
    return [Route("GET", "/example/hello", hello), Route("GET", "/example/block", block),
            Route("POST", "/example/sessions/apply", apply_session),
            Route("GET", "/example/plays", played),
            Route("GET", "/example/settings", node_settings)]


def _plain(value: object) -> object:
    """node.settings as JSON: its read-only mappings as objects, its tuples as lists."""
    if isinstance(value, MappingProxyType):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


@segue.hookimpl
async def segue_ready(node) -> None:
    _record("segue_ready", node, addresses=node.addresses)


@segue.hookimpl
def segue_services(node):
    async def heartbeat() -> None:
        _record("service_started", node)
        await trio.sleep_forever()

    _record("segue_services", node)
    return [heartbeat]


@segue.hookimpl
def segue_health(node) -> Health:
    _record("segue_health", node)
    return Health(settings.get("health", "ok"), settings.get("reason", ""))


@segue.hookimpl
def segue_status() -> dict:
    # Public facts only: counts, never who said hello or who played what.
    return {"hellos": hellos, "plays": dict(Tally(play["outcome"] for play in plays))}


@segue.hookimpl
async def segue_reload(node) -> None:
    _record("segue_reload", node)


@segue.hookimpl
async def segue_drain(node, deadline_s: float) -> None:
    _record("segue_drain", node, deadline_s=deadline_s, streams=node.streams_in_flight)
    await trio.sleep(float(settings.get("drain_wait_s", 0.0)))


@segue.hookimpl
async def segue_stop(node) -> None:
    _record("segue_stop", node, streams=node.streams_in_flight)


@segue.hookimpl
def segue_catalogue_init() -> list[str]:
    _record("segue_catalogue_init")
    return ["example catalogue ready"]


@segue.hookimpl
def segue_track_packed(track, manifest_version: int) -> None:
    _record("segue_track_packed", track_id=track.track_id, manifest_version=manifest_version)


@segue.hookimpl
def segue_track_removed(track_id: str) -> None:
    _record("segue_track_removed", track_id=track_id)


@segue.hookimpl
def segue_session_changed(node, user: str, delta) -> None:
    _record("segue_session_changed", node, user=user, delta=delta)


@segue.hookimpl
def segue_session_presence(node, user: str, present: bool) -> None:
    _record("segue_session_presence", node, user=user, present=present,
            here=sorted(node.sessions.local_listeners()))


@segue.hookimpl
def segue_track_served(track_id: str, user_hash: str, bytes_sent: int, outcome: str) -> None:
    _record("segue_track_served", track_id=track_id, outcome=outcome)
    plays.append({"track_id": track_id, "user_hash": user_hash, "bytes_sent": bytes_sent,
                  "outcome": outcome})
