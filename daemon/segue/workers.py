"""Serving workers: `[http] workers = N` runs N processes on one port (SO_REUSEPORT).

A trio node is one thread of Python, so it uses one core. With N > 1 the node's main process
(the one systemd started, which runs the plugins, talks to systemd and owns the node's life)
starts N - 1 serving workers. Each worker is a node without plugins: it binds its own socket to
the same address, and the kernel spreads new connections over all N accept queues.

The main process tells its workers what only it knows through each worker's stdin, one JSON
line per change: the node's health (plugins included) and when to drain. A worker whose stdin
reaches end of file has lost its main process and drains itself, so workers never outlive the
node. SIGHUP is passed on, so every process reloads. A worker that dies is started again with
backoff (0.5 s, doubling to 30 s; reset once a worker has run for a minute).

Both ends of that pipe live here, as the two sides a node can be: `MainSide` (starts and tells
the workers; with one process it does nothing) and `WorkerSide` (follows its main process). A
node runs the same life either way; its side is where the two differ.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from segue.config import format_address
from segue.health import Health
from segue.lifecycle import NodeState
from segue.metrics import forget_process
from segue.plugin_host import StartupError

log = structlog.get_logger("segue.workers")

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
HEALTHY_RUN_S = 60.0
SEND_TIMEOUT_S = 5.0
# Variables that belong to the main process alone: systemd must hear one voice.
_MAIN_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


MAX_LINE_BYTES = 65536


def message(state: NodeState, health: Health, plugins: list[dict[str, Any]]) -> bytes:
    """One line of the main process's side of the pipe: the node's state and health, and its
    plugins' public description (a worker runs no plugin, yet answers /v1/status)."""
    return json.dumps({"state": state, "health": health.to_json(),
                       "plugins": plugins}).encode() + b"\n"


def parse(line: bytes) -> tuple[NodeState, Health, list[dict[str, Any]]]:
    """(state, health, plugins) from one line; raises ValueError (or KeyError, TypeError)
    otherwise."""
    doc: Any = json.loads(line)
    plugins = doc.get("plugins", [])
    if not isinstance(plugins, list):
        raise TypeError("plugins is not a list")
    return NodeState(doc["state"]), Health.from_json(doc["health"]), plugins


class Worker:
    """One serving worker process, as the main process sees it.

    What it must be told is one line, the latest: a newer line replaces one not yet sent, so
    a stuck worker never makes the main process queue anything.
    """

    def __init__(self, index: int, command: list[str]) -> None:
        self.index = index
        self.command = command
        self.process: trio.Process | None = None
        self.line = b""
        self._changed = trio.Event()

    def update(self, line: bytes) -> None:
        if line != self.line:
            self.line = line
            self._changed.set()

    async def feed(self, stdin: trio.abc.SendStream) -> None:
        """Send the latest line whenever it changes, for as long as this process lives."""
        sent = b""
        while True:
            if self.line != sent:
                sent = self.line
                try:
                    with trio.fail_after(SEND_TIMEOUT_S):
                        await stdin.send_all(sent)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    log.warning("worker does not read what the main process says",
                                worker=self.index)
                    return
            self._changed = trio.Event()
            if self.line == sent:
                await self._changed.wait()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)


class WorkerPool:
    """The main process's serving workers: started, kept running, told, stopped."""

    def __init__(self, count: int, config_path: Path, address: tuple[str, int]) -> None:
        listen = format_address(address)
        self.workers = [
            Worker(i, [sys.executable, "-m", "segue.worker", "--config", str(config_path),
                       "--listen", listen, "--index", str(i), "--workers", str(count)])
            for i in range(1, count)
        ]
        self.env = {k: v for k, v in os.environ.items() if k not in _MAIN_ONLY_ENV}
        self._stopping = False

    async def run(self, nursery: trio.Nursery) -> None:
        """Start every worker (in `nursery`) and keep it running until drain()."""
        for worker in self.workers:
            await nursery.start(self._keep, worker)

    async def _keep(self, worker: Worker,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        delay = RESTART_FIRST_S
        while not self._stopping:
            started = trio.current_time()
            try:
                process = worker.process = await trio.lowlevel.open_process(
                    worker.command, stdin=subprocess.PIPE, env=self.env)
            except OSError as e:
                # Out of file descriptors or memory: the node keeps serving with the processes
                # it has, and tries again later.
                log.error("cannot start a worker", worker=worker.index, error=str(e),
                          retry_in_s=delay)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_S)
                continue
            assert process.stdin is not None
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            log.info("worker started", worker=worker.index, pid=process.pid)
            try:
                async with trio.open_nursery() as feeding:
                    feeding.start_soon(worker.feed, process.stdin)
                    code = await process.wait()
                    feeding.cancel_scope.cancel()
            finally:
                if process.returncode is None:  # cancelled: the node stops at once
                    process.kill()
                forget_process(process.pid)
            if self._stopping:
                return
            if trio.current_time() - started > HEALTHY_RUN_S:
                delay = RESTART_FIRST_S
            log.error("worker exited; starting it again", worker=worker.index, status=code,
                      restart_in_s=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    def update(self, line: bytes) -> None:
        """What every worker is to hear next (the latest state and health)."""
        for worker in self.workers:
            worker.update(line)

    def reload(self) -> None:
        for worker in self.workers:
            worker.signal(signal.SIGHUP)

    async def drain(self, line: bytes) -> None:
        """Tell every worker to drain, and return once all have exited."""
        self._stopping = True
        self.update(line)
        for worker in self.workers:
            if worker.process is not None:
                await worker.process.wait()


class MainSide:
    """The side of a node's main process: with [http] workers = N > 1, its N - 1 workers.

    With one process every method is a no-op, so the node's life reads the same either way.
    """

    join = False  # the main process holds the port; workers join it

    def __init__(self, count: int, config_path: Path) -> None:
        self._count = count
        self._config_path = config_path
        self._pool: WorkerPool | None = None
        self._plugins: list[dict[str, Any]] = []

    def health(self) -> Health:
        return Health.ok()  # the main process's health is the node's: nothing to add

    async def run(self, address: tuple[str, int], routes: list[str], stop: Callable[[], None],
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers (their first start before `task_status.started()`), keep them."""
        if self._count == 1:
            task_status.started()
            return
        if routes:
            raise StartupError(
                f"plugins add HTTP routes ({', '.join(routes)}), which only the main process "
                f"could serve: set [http] workers = 1")
        self._pool = WorkerPool(self._count, self._config_path, address)
        async with trio.open_nursery() as nursery:
            await self._pool.run(nursery)
            task_status.started()

    def publish(self, state: NodeState, health: Health, plugins: list[dict[str, Any]]) -> None:
        self._plugins = plugins
        if self._pool is not None:
            self._pool.update(message(state, health, plugins))

    def reload(self) -> None:
        if self._pool is not None:
            self._pool.reload()

    async def drain(self, health: Health) -> None:
        """Tell the workers to drain; return once every one has exited."""
        if self._pool is not None:
            await self._pool.drain(message(NodeState.DRAINING, health, self._plugins))


class WorkerSide:
    """The side of a serving worker: its health and its drain come from the main process."""

    join = True

    def __init__(self, on_health: Callable[[], None]) -> None:
        self._main_health = Health.ok()
        self._on_health = on_health
        self.plugins: list[dict[str, Any]] = []  # as the main process last described them

    def health(self) -> Health:
        return self._main_health

    async def run(self, address: tuple[str, int], routes: list[str], stop: Callable[[], None],
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the main process's lines on stdin; `stop` when it drains or is gone."""
        task_status.started()
        pending = b""
        async with trio.lowlevel.FdStream(os.dup(0)) as main:
            while True:
                try:
                    data = await main.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data or len(pending) > MAX_LINE_BYTES:
                    log.warning("the main process is gone; draining")
                    stop()
                    return
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    try:
                        state, self._main_health, self.plugins = parse(line)
                    except (ValueError, KeyError, TypeError) as e:
                        log.error("unreadable line from the main process", error=str(e))
                        continue
                    self._on_health()
                    if state in (NodeState.DRAINING, NodeState.STOPPING):
                        stop()

    def publish(self, state: NodeState, health: Health, plugins: list[dict[str, Any]]) -> None:
        pass  # nobody listens to a worker

    def reload(self) -> None:
        pass  # each worker gets its own SIGHUP from the main process

    async def drain(self, health: Health) -> None:
        pass
