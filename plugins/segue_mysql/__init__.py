"""Segue's MySQL/MariaDB plugin: replicate the sharded central catalogue into the local one.

For each shard (a server holding one key range of the catalogue, docs/catalogue.md): a
consistent snapshot, then the binlog followed with mysql-replication, each source transaction
applied to the local SQLite catalogue together with its position. A shard that is down or
slow leaves the node serving and searching from what it has (health ``degraded``, lag growing);
a purged binlog position leads to a fresh snapshot; a server whose settings would lose changes
is refused with the variable named.

[plugins.mysql]
server_id = 7001            # base of this node's replication server ids (one per shard)
heartbeat_s = 2.0
tls = true                  # TLS required, certificate and host name verified...
tls_ca_file = "/etc/segue/mysql-ca.pem"       # ...against this CA (default: the system's)
[[plugins.mysql.shards]]
name = "s0"                 # stable: the local catalogue keeps its position under this name
range = "-80"               # the keyspace range (hex prefixes of the 64-bit keyspace id)
host = "10.0.0.7"
port = 3306
user = "segue_replicator"   # SELECT, REPLICATION SLAVE, REPLICATION CLIENT
password_file = "credential:mysql.password"   # optional
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import structlog
import trio
from prometheus_client import Counter, Gauge

import segue
from segue_mysql import publish, replicator
from segue_mysql.schema import KeyRange, check_cover

log = structlog.get_logger("segue_mysql")

_SHARD_KEYS = {"name", "range", "host", "port", "user", "password_file"}
BACKOFF_MAX_S = 10.0


def _tls_context(config: dict, config_path: Path, problems: list[str]) -> ssl.SSLContext | None:
    """The TLS every shard connection requires with `tls = true`: the server's certificate
    and host name verified (against `tls_ca_file`, else the system's CAs) unless `tls_verify =
    false`. None without `tls`: PyMySQL then uses TLS only if the server offers it, unverified,
    which stops no one who can answer in the server's place."""
    tls, verify, ca_file = (config.get("tls", False), config.get("tls_verify", True),
                            config.get("tls_ca_file"))
    for key, value in (("tls", tls), ("tls_verify", verify)):
        if not isinstance(value, bool):
            problems.append(f"{key} must be true or false")
    if tls is not True:
        if ca_file is not None:
            problems.append("tls_ca_file needs tls = true")
        return None
    try:
        context = ssl.create_default_context(
            cafile=None if ca_file is None else segue.resolve_path(ca_file, config_path.parent))
    except (OSError, ssl.SSLError, ValueError) as e:
        problems.append(f"tls_ca_file: cannot load {ca_file!r} as PEM CA certificates: {e}")
        return None
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class MySQLPlugin:
    def __init__(self) -> None:
        self.shards: list[replicator.Shard] = []
        self.ranges: list[KeyRange] = []
        self.heartbeat_s = 2.0
        self.lag: Gauge | None = None
        self.rows: Counter | None = None
        self._rows_counted: dict[str, int] = {}  # what self.rows has been told, per shard
        self._stop = threading.Event()

    @segue.hookimpl
    def segue_configure(self, config, config_path: Path) -> None:
        if not config:
            self.shards = []
            return
        problems = [f"unknown key {k!r}" for k in sorted(set(config) - {
            "server_id", "heartbeat_s", "shards", "tls", "tls_verify", "tls_ca_file"})]
        tls = _tls_context(config, config_path, problems)
        tables = config.get("shards")
        if not isinstance(tables, list) or not tables:
            problems.append("shards is required: [[plugins.mysql.shards]] tables")
            tables = []
        base_id = config.get("server_id", 7001)
        heartbeat = config.get("heartbeat_s", 2.0)
        if not isinstance(base_id, int) or not 1 <= base_id < 2**32 - len(tables):
            problems.append("server_id must be a whole number (unique among the servers' "
                            "replicas)")
        if not isinstance(heartbeat, int | float) or heartbeat <= 0:
            problems.append("heartbeat_s must be a positive number")
        shards, ranges = [], []
        for i, table in enumerate(tables):
            where = f"shards #{i + 1}"
            unknown = set(table) - _SHARD_KEYS
            missing = {"name", "range", "host", "user"} - set(table)
            if unknown or missing:
                problems.append(f"{where}: unknown {sorted(unknown)} / missing {sorted(missing)}")
                continue
            try:
                ranges.append(KeyRange.parse(str(table["range"])))
                password = ("" if "password_file" not in table else segue.read_secret(
                    segue.resolve_path(table["password_file"], config_path.parent)))
            except Exception as e:
                problems.append(f"{where} ({table['name']}): {e}")
                continue
            shards.append(replicator.Shard(
                name=str(table["name"]), host=str(table["host"]),
                port=int(table.get("port", 3306)), user=str(table["user"]), password=password,
                server_id=int(base_id) + i, heartbeat_s=float(heartbeat), tls=tls))
        if not problems:
            try:
                check_cover(ranges)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise segue.PluginConfigError(*problems)
        self.shards = shards
        self.ranges = ranges
        self.heartbeat_s = float(heartbeat)

    @segue.hookimpl
    def segue_metrics(self, registry) -> None:
        # livemax: with [http] workers only the main process sets it (see docs/plugins.md).
        self.lag = Gauge("segue_replication_lag_seconds",
                         "Seconds behind each catalogue shard.", ["shard"], registry=registry,
                         multiprocess_mode="livemax")
        self.rows = Counter("segue_replication_rows_applied",
                            "Rows applied from each shard.", ["shard"], registry=registry)

    @segue.hookimpl
    async def segue_startup(self, node) -> None:
        """Refuse a shard whose settings would lose changes (if it answers now)."""
        for shard in self.shards:
            try:
                with trio.fail_after(5):
                    await trio.to_thread.run_sync(replicator.check_settings, shard,
                                                  abandon_on_cancel=True)
            except replicator.SettingsError:
                raise
            except Exception as e:  # down now: replication will retry; the node serves
                shard.last_error = f"{type(e).__name__}: {e}"

    @segue.hookimpl
    def segue_services(self, node):
        return [lambda shard=shard: self._replicate(node, shard) for shard in self.shards]

    async def _replicate(self, node, shard: replicator.Shard) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                await trio.to_thread.run_sync(self._run_once, node, shard,
                                              abandon_on_cancel=True)
                backoff = 0.5
            except replicator.BinlogPurged as e:
                log.warning("taking a fresh snapshot", shard=shard.name, reason=str(e))
                try:
                    await trio.to_thread.run_sync(replicator.snapshot, shard, node,
                                                  abandon_on_cancel=True)
                    log.info("snapshot applied", shard=shard.name)
                except Exception as snap_error:
                    shard.last_error = f"snapshot: {type(snap_error).__name__}: {snap_error}"
                    log.warning("snapshot failed", shard=shard.name, error=shard.last_error,
                                retry_in_s=backoff)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
            except Exception as e:  # down, slow, refused: serve from what we have, retry
                shard.last_error = f"{type(e).__name__}: {e}"
                log.warning("shard replication interrupted", shard=shard.name,
                            error=shard.last_error, retry_in_s=backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _run_once(self, node, shard: replicator.Shard) -> None:
        replicator.check_settings(shard)
        replicator.stream(shard, node, self._stop)

    @segue.hookimpl
    def segue_health(self, node):
        for shard in self.shards:
            if self.lag is not None:
                self.lag.labels(shard.name).set(shard.lag_s)
            if self.rows is not None:
                # The replicator counts in its thread; the counter catches up here.
                applied = shard.rows_applied
                self.rows.labels(shard.name).inc(applied - self._rows_counted.get(shard.name, 0))
                self._rows_counted[shard.name] = applied
        down = [s for s in self.shards if not s.connected]
        if down:
            return segue.Health("degraded", "; ".join(
                f"shard {s.name} not replicating ({s.last_error or 'connecting'}), "
                f"{s.lag_s:.0f} s behind" for s in down))
        return segue.Health.ok()

    @segue.hookimpl
    def segue_stop(self, node) -> None:
        self._stop.set()

    @segue.hookimpl
    def segue_catalogue_init(self) -> list[str]:
        return [publish.create_schema(shard) for shard in self.shards]

    @segue.hookimpl
    def segue_track_packed(self, track: segue.TrackRecord, manifest_version: int) -> None:
        if self.shards:
            publish.publish(self.shards, self.ranges, track, manifest_version)

    @segue.hookimpl
    def segue_track_removed(self, track_id: str) -> None:
        if self.shards:
            publish.unpublish(self.shards, self.ranges, track_id)
