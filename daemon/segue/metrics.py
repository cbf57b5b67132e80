"""Prometheus metrics of one node, in a registry owned by the node (no global state).

A node with several serving processes ([http] workers) shares its values between them through
prometheus_client's multiprocess mode: every process writes its values to files in one
directory, and /metrics, whichever process answers it, adds up the files. So a scrape sees the
node, not the one process the kernel happened to hand the connection to.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import prometheus_client.values
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from segue import __version__
from segue.hookspecs import PLUGIN_API_VERSION

SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The route label of a request no route answered (404, a CORS preflight).
NO_ROUTE = "none"
#: What segue_plugin_health_status says a plugin is: one series each, 1 for the current one.
PLUGIN_STATUSES = ("ok", "degraded", "failing", "inactive")


def share_between_processes(directory: Path) -> None:
    """Make every metric created from now on (here and in the children, which inherit the
    environment) write its value into `directory`, for /metrics to add up.

    prometheus_client picks its value class when it is imported, from this variable; the main
    process has imported it already when it learns from its configuration that it will have
    workers, so it swaps the class too. Call before the node's Metrics are made.
    """
    os.environ[SHARED_DIR_ENV] = str(directory)
    prometheus_client.values.ValueClass = prometheus_client.values.MultiProcessValue()


def forget_process(pid: int) -> None:
    """A serving process has exited: drop its live gauges (its counters still count)."""
    directory = os.environ.get(SHARED_DIR_ENV)
    if directory:
        mark_process_dead(pid, directory)


class Metrics:
    """The node's counters, gauges and histograms."""

    def __init__(self) -> None:
        # A counter's `_created` series (when this process made it) doubles the page and tells
        # a scrape nothing that process_start_time does not; multiprocess mode never has one.
        # prometheus_client decides it for the whole process, which is this node's.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Gauge(
            "segue_build_info", "Always 1; the labels say which Segue, Python and plugin API "
            "version this node runs.", ["version", "python", "plugin_api"],
            registry=self.registry, multiprocess_mode="livemax",
        )
        self.build_info.labels(__version__, platform.python_version(),
                               str(PLUGIN_API_VERSION)).set(1)
        self.requests = Counter(
            "segue_http_requests", "HTTP requests answered, by route (the path pattern that "
            "answered) and status.", ["route", "status"], registry=self.registry,
        )
        self.response_bytes = Counter(
            "segue_http_response_bytes", "Body bytes sent, by route and status.",
            ["route", "status"], registry=self.registry,
        )
        # Labelled children looked up once: labels() takes a lock and builds a tuple on every
        # call, which the serving profile showed for each request.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.streams_in_flight = Gauge(
            "segue_streams_in_flight", "Track bodies being sent right now.",
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.time_to_first_byte = Histogram(
            "segue_time_to_first_byte_seconds",
            "From a track request's arrival to its first body byte handed to the socket.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.chunk_auth_failures = Counter(
            "segue_chunk_auth_failures",
            "Chunks that failed verification (tampered or corrupt) and were not served.",
            registry=self.registry,
        )
        self.bad_requests = Counter(
            "segue_http_protocol_errors", "Connections closed for malformed HTTP.",
            registry=self.registry,
        )

        # One series per plugin and status, 1 for the status it has: like every health gauge
        # here, 1 is the good news on {status="ok"} (and alerts match {status!="ok"} == 1).
        self.plugin_health = Gauge(
            "segue_plugin_health_status", "1 for each plugin's health status now (ok, "
            "degraded, failing, or inactive: no [plugins.NAME] table), 0 for the others.",
            ["plugin", "status"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.plugin_events_dropped = Counter(
            "segue_plugin_events_dropped", "Events a plugin hook did not get because a "
            "bounded queue was full (per plugin; plugin=\"\" while still in a worker).",
            ["hook", "plugin"], registry=self.registry,
        )
        self.plugin_hook_failures = Counter(
            "segue_plugin_hook_failures", "Calls of per-event hooks that raised or timed out.",
            ["hook", "plugin"], registry=self.registry,
        )
        self.open_tracks = Counter(
            "segue_open_track_lookups",
            "Track opens by outcome: hit (verified manifest and key cached) or miss.",
            ["outcome"], registry=self.registry,
        )

        self.store_reads = Counter(
            "segue_store_reads", "Chunk copy reads by share and outcome "
            "(ok, missing, error, timeout, corrupt).", ["share", "outcome"],
            registry=self.registry,
        )
        self.store_reads_in_loop = Counter(
            "segue_chunk_reads_in_loop", "Chunk copy reads (counted in segue_store_reads too) "
            "that needed no worker thread: the kernel held the file's name and bytes.",
            ["share"], registry=self.registry,
        )
        self.failovers = Counter(
            "segue_store_failovers", "Chunk reads that went on to another copy.",
            registry=self.registry,
        )
        self.share_up = Gauge(
            "segue_share_up", "1 while a share answers, 0 while it is marked down.", ["share"],
            registry=self.registry, multiprocess_mode="livemin",
        )

        self.cache_lookups = Counter(
            "segue_chunk_cache_lookups", "Decrypted-chunk cache lookups by outcome (hit, miss).",
            ["outcome"], registry=self.registry,
        )
        self.cache_evictions = Counter(
            "segue_chunk_cache_evictions", "Chunks evicted from the decrypted-chunk cache.",
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "segue_chunk_cache_bytes", "Bytes of chunk buffers held by the decrypted-chunk cache.",
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.read_ahead = Counter(
            "segue_read_ahead_chunks", "Chunks read ahead of sequential streams, by outcome "
            "(started, skipped: no capacity).", ["outcome"], registry=self.registry,
        )

        self.sessions = Gauge(
            "segue_sessions", "Listeners' sessions this node holds.",
            registry=self.registry, multiprocess_mode="livemax",
        )
        self.session_devices = Gauge(
            "segue_session_devices", "Devices present in the sessions this node holds.",
            registry=self.registry, multiprocess_mode="livemax",
        )
        self.session_subscribers = Gauge(
            "segue_session_subscribers", "Session event streams open now.",
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.session_commands = Counter(
            "segue_session_commands", "Session commands by outcome (applied, duplicate, "
            "invalid, conflict, limited).", ["outcome"], registry=self.registry,
        )
        self.session_remote = Counter(
            "segue_session_remote_deltas", "Session deltas from other nodes by outcome "
            "(applied, unchanged, malformed, clamped).", ["outcome"], registry=self.registry,
        )
        self.command_to_event = Histogram(
            "segue_session_command_to_event_seconds",
            "From a session change accepted to its event written to a subscriber's socket.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_response(self, route: str, status: int, body_bytes: int) -> None:
        """One answered request and the body bytes it sent, under its route and status."""
        labels = (route or NO_ROUTE, str(status))
        self.child(self.requests, *labels).inc()
        self.child(self.response_bytes, *labels).inc(body_bytes)

    def set_plugin_status(self, plugin: str, status: str) -> None:
        """segue_plugin_health_status: 1 on `status`, 0 on the plugin's other statuses."""
        for each in PLUGIN_STATUSES:
            self.child(self.plugin_health, plugin, each).set(1 if each == status else 0)

    @property
    def shared(self) -> bool:
        """Whether several serving processes share these metrics ([http] workers > 1)."""
        return bool(os.environ.get(SHARED_DIR_ENV))

    def node_streams_in_flight(self) -> int:
        """Track bodies every serving process of the node is sending, added up from the
        shared files (`shared` only). Blocks: call it in a thread."""
        directory = os.environ[SHARED_DIR_ENV]
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process, path=directory)
        return int(sum(sample.value for family in every_process.collect()
                       if family.name == "segue_streams_in_flight"
                       for sample in family.samples))

    def render(self) -> bytes:
        directory = os.environ.get(SHARED_DIR_ENV)
        if not directory:
            return generate_latest(self.registry)
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process, path=directory)
        return generate_latest(every_process)
