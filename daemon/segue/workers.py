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

The other way, when a plugin implements segue_track_served, each worker tells the main process
of every track stream that ended, one JSON line per stream on a pipe of its own (its number in
SEGUE_SERVED_FD): plugins run in the main process only. A worker queues them (bounded; a full
queue drops and counts) and a task of its own writes them, so no stream waits on the pipe.

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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from segue.config import format_address
from segue.health import Health
from segue.http.served import OUTCOMES, Reporter
from segue.lifecycle import NodeState
from segue.metrics import Metrics, forget_process
from segue.plugin_host import StartupError

log = structlog.get_logger("segue.workers")

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
HEALTHY_RUN_S = 60.0
SEND_TIMEOUT_S = 5.0
SERVED_FD_ENV = "SEGUE_SERVED_FD"
SERVED_QUEUE = 4096  # stream ends a worker holds while the pipe is full
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


def served_line(track_id: str, user: str, bytes_sent: int, outcome: str) -> bytes:
    """One line of a worker's side: a track stream that ended (segue_track_served's event)."""
    return json.dumps([track_id, user, bytes_sent, outcome]).encode() + b"\n"


def parse_served(line: bytes) -> tuple[str, str, int, str]:
    """The event of one served_line; raises ValueError (or TypeError) otherwise."""
    track_id, user, bytes_sent, outcome = json.loads(line)
    if not (isinstance(track_id, str) and isinstance(user, str) and type(bytes_sent) is int
            and outcome in OUTCOMES):
        raise TypeError("not a served stream")
    return track_id, user, bytes_sent, outcome


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
    """The main process's serving workers: started, kept running, told, stopped; and, with
    `on_served`, heard (each worker's track streams that ended)."""

    def __init__(self, count: int, config_path: Path, address: tuple[str, int],
                 on_served: Reporter | None = None) -> None:
        listen = format_address(address)
        self.workers = [
            Worker(i, [sys.executable, "-m", "segue.worker", "--config", str(config_path),
                       "--listen", listen, "--index", str(i), "--workers", str(count)])
            for i in range(1, count)
        ]
        self.env = {k: v for k, v in os.environ.items() if k not in _MAIN_ONLY_ENV}
        self._on_served = on_served
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
            heard: int | None = None
            told: int | None = None  # the pipe's end the worker tells its streams' ends on
            try:
                env = self.env
                if self._on_served is not None:
                    heard, told = os.pipe()
                    env = {**self.env, SERVED_FD_ENV: str(told)}
                process = worker.process = await trio.lowlevel.open_process(
                    worker.command, stdin=subprocess.PIPE, env=env,
                    pass_fds=() if told is None else (told,))
            except OSError as e:
                if heard is not None:
                    os.close(heard)
                # Out of file descriptors or memory: the node keeps serving with the processes
                # it has, and tries again later.
                log.error("cannot start a worker", worker=worker.index, error=str(e),
                          retry_in_s=delay)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_S)
                continue
            finally:
                if told is not None:
                    os.close(told)  # the worker has its own copy; its exit ends the pipe
            assert process.stdin is not None
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            log.info("worker started", worker=worker.index, pid=process.pid)
            try:
                async with trio.open_nursery() as hearing:
                    if heard is not None:
                        hearing.start_soon(self._hear, worker.index, heard)
                    async with trio.open_nursery() as feeding:
                        feeding.start_soon(worker.feed, process.stdin)
                        code = await process.wait()
                        feeding.cancel_scope.cancel()
                    # What the worker wrote before it exited is still in the pipe: read it.
                    hearing.cancel_scope.deadline = trio.current_time() + SEND_TIMEOUT_S
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

    async def _hear(self, index: int, fd: int) -> None:
        """A worker's stream ends, handed to the main process's plugins, until its pipe ends."""
        assert self._on_served is not None
        async with trio.lowlevel.FdStream(fd) as pipe:
            async for line in _lines(pipe):
                try:
                    self._on_served(*parse_served(line))
                except (ValueError, TypeError) as e:
                    log.error("unreadable line from a worker", worker=index, error=str(e))

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

    def __init__(self, count: int, config_path: Path, on_served: Reporter | None = None) -> None:
        """`on_served`: where the workers' track stream ends go (None: no plugin wants them)."""
        self._count = count
        self._config_path = config_path
        self._on_served = on_served
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
        self._pool = WorkerPool(self._count, self._config_path, address, self._on_served)
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
    """The side of a serving worker: its health and its drain come from the main process,
    and (with SEGUE_SERVED_FD) its track streams' ends go to it."""

    join = True

    def __init__(self, on_health: Callable[[], None], metrics: Metrics) -> None:
        self._main_health = Health.ok()
        self._on_health = on_health
        self._metrics = metrics
        self.plugins: list[dict[str, Any]] = []  # as the main process last described them
        fd = os.environ.get(SERVED_FD_ENV)
        self._served_fd = int(fd) if fd else None
        self._served, self._to_send = trio.open_memory_channel[tuple[str, str, int, str]](
            SERVED_QUEUE)

    def health(self) -> Health:
        return self._main_health

    @property
    def served(self) -> Reporter | None:
        """What the track endpoint tells of each stream's end; None when the main process
        has no plugin that wants to know."""
        return None if self._served_fd is None else self._queue_served

    def _queue_served(self, track_id: str, user: str, bytes_sent: int, outcome: str) -> None:
        try:
            self._served.send_nowait((track_id, user, bytes_sent, outcome))
        except trio.WouldBlock:
            self._metrics.child(self._metrics.plugin_events_dropped, "segue_track_served",
                                "").inc()

    async def run(self, address: tuple[str, int], routes: list[str], stop: Callable[[], None],
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the main process's lines on stdin; `stop` when it drains or is gone."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            if self._served_fd is not None:
                nursery.start_soon(self._send_served, self._served_fd)
            await self._follow(stop)
            nursery.cancel_scope.cancel()

    async def _follow(self, stop: Callable[[], None]) -> None:
        async with trio.lowlevel.FdStream(os.dup(0)) as main:
            async for line in _lines(main):
                try:
                    state, self._main_health, self.plugins = parse(line)
                except (ValueError, KeyError, TypeError) as e:
                    log.error("unreadable line from the main process", error=str(e))
                    continue
                self._on_health()
                if state in (NodeState.DRAINING, NodeState.STOPPING):
                    stop()
        log.warning("the main process is gone; draining")
        stop()

    async def _send_served(self, fd: int) -> None:
        """Write queued stream ends to the main process, as many at once as are waiting.

        No deadline on the write: one cut short would leave half a line in the pipe. A main
        process that does not read costs this task alone (the queue in front of it drops,
        counted), and one that is gone breaks the pipe.
        """
        async with trio.lowlevel.FdStream(fd) as pipe:
            async for event in self._to_send:
                batch = [served_line(*event)]
                while len(batch) < SERVED_QUEUE:
                    try:
                        batch.append(served_line(*self._to_send.receive_nowait()))
                    except trio.WouldBlock:
                        break
                try:
                    await pipe.send_all(b"".join(batch))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    log.warning("the main process does not hear of streams any more")
                    return

    def publish(self, state: NodeState, health: Health, plugins: list[dict[str, Any]]) -> None:
        pass  # nobody listens to a worker

    def reload(self) -> None:
        pass  # each worker gets its own SIGHUP from the main process

    async def drain(self, health: Health) -> None:
        pass


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    """The lines of `stream` until it ends (or breaks, or holds a line over MAX_LINE_BYTES)."""
    pending = b""
    while True:
        try:
            data = await stream.receive_some(4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data or len(pending) > MAX_LINE_BYTES:
            return
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            yield line
