"""Benchmark: playback sessions between two edge nodes on NATS JetStream (the segue_nats plugin).

This prints figures; it judges nothing. On loopback:

* a NATS cluster: --replicas 3 starts three nats-server processes routed to each other, and
  the stream and bucket are made with 3 replicas, as in production; --replicas 1 starts one
  server and 1 replica (for a machine that cannot hold three). Each server has its HTTP
  monitoring port, read for the consumers it holds.
* two segued nodes, A (which creates the stream and the bucket) and B, from one template so
  that a token works on both, with [plugins.nats], `[sessions] commands_per_s` high enough
  that the load is never rate limited and `device_timeout_s` longer than the run.
* following, in --steps: listeners get a device on node B (one `ping` command each, over 32
  keep-alive connections), so that B follows them (a bucket read and a replay each; the node
  has one consumer of the whole stream whatever the number of listeners). At
  each step: the time from the first ping to B's `segue_nats_followed_listeners` reaching the
  step, B's RSS, the consumers on the servers, each server's RSS, and the CPU each process
  uses over 5 s with no load (what following costs by itself). Then every listener gets
  a device on node A too (A follows them all: a listener with a device on both nodes is the
  case that needs the bus).
* commands: --rate commands a second in all (`set_shuffle`, toggled) to node A, spread over
  all --users listeners, for --seconds, while --sample listeners hold an event stream
  (/v1/session/events) on node B. Reported: the time from a command's request to its event
  on B (p50, p99, max) for the sample, the rate achieved, errors, events that never came,
  and the CPU time of each node, each server and this generator.

Everything shares the machine's cores (nothing is pinned): the servers, both nodes and this
trio generator. Tokens are minted in-process (sessions.mint_tokens). The generator's HTTP and
event-stream code is bench/sessions.py's.

    /path/to/venv/bin/python bench/nats_sessions.py [--users 10000] [--steps 1000,5000,10000]
        [--rate 1000] [--seconds 30] [--sample 300] [--replicas 3] [--json]

Needs nats-server (Debian's nats-server, 2.9 or later) and a venv with the segue_nats plugin
(nats-py). segued runs as `python -m segue` with this Python and its PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from common import (
    BenchError,
    first_line,
    free_ports,
    get,
    log,
    machine,
    need,
    run,
    run_in_temp_dir,
    stop,
    wait_ready,
)
from sessions import Stream, _cpu_s, _rss_mib, _summary, mint_tokens, post_command

CONNECTIONS = 32
FOLLOW_TIMEOUT_S = 900.0
IDLE_S = 5.0
RECEIVED = ("applied", "unchanged", "own", "duplicate", "malformed")


# --- the NATS servers ------------------------------------------------------------------------


@dataclass
class NatsServer:
    root: Path
    port: int
    monitor: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def jsz(self) -> dict:
        """The server's JetStream monitoring document (/jsz)."""
        status, body = get(self.monitor, "/jsz")
        if status != 200:
            raise BenchError(f"GET /jsz on port {self.monitor} answered {status}")
        return json.loads(body)


def start_servers(binary: str, t: Path, count: int) -> list[NatsServer]:
    """`count` nats-server processes with JetStream; routed to each other when more than one."""
    ports = free_ports(3 * count)
    servers = [NatsServer(t / f"nats{i}", ports[i], ports[count + i]) for i in range(count)]
    for i, server in enumerate(servers):
        server.root.mkdir()
        routes = ", ".join(f'"nats-route://127.0.0.1:{ports[2 * count + j]}"'
                           for j in range(count) if j != i)
        cluster = (f"cluster {{ name: segue-bench, listen: 127.0.0.1:{ports[2 * count + i]}, "
                   f"routes: [{routes}] }}\n" if count > 1 else "")
        conf = server.root / "nats.conf"
        conf.write_text(f"server_name: n{i}\nlisten: 127.0.0.1:{server.port}\n"
                        f"http: 127.0.0.1:{server.monitor}\n"
                        f'jetstream {{ store_dir: "{server.root / "store"}", '
                        "max_memory_store: 2GB, max_file_store: 8GB }\n" + cluster)
        with (server.root / "nats.log").open("ab") as out:
            server.proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=out, start_new_session=True)
    for server in servers:
        assert server.proc is not None
        wait_ready(server.proc, server.monitor, "/healthz", server.root / "nats.log")
    return servers


# --- the segued nodes ------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "segued.toml"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log_file = self.root / "segued.log"
        with log_file.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "segue", "run", "--config",
                                          str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, start_new_session=True)
        wait_ready(self.proc, self.port, "/healthz", log_file)
        deadline = time.monotonic() + 60
        while not self.nats_status().get("connected"):
            if time.monotonic() > deadline:
                raise BenchError(f"node {self.name} not on NATS after 60 s: "
                                 f"{self.nats_status()}; see {log_file}")
            time.sleep(0.2)

    def nats_status(self) -> dict:
        status, body = get(self.port, "/v1/status")
        plugins = json.loads(body).get("plugins", []) if status == 200 else []
        return next((p.get("status") or {} for p in plugins if p.get("name") == "nats"), {})

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metric(self, name: str, text: str | None = None, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        found = re.search("^" + re.escape(name) + (r"\{" + re.escape(wanted) + r"\}"
                                                     if labels else "") + r" (\S+)$",
                          text if text is not None else self.metrics(), re.M)
        return float(found.group(1)) if found else 0.0


def make_nodes(t: Path, servers: list[NatsServer], replicas: int, sample: int) -> list[Node]:
    """Nodes A and B from one `segue init` template (so they share the auth key)."""
    template = t / "template"
    run([sys.executable, "-m", "segue", "init", str(template), "--listen", "127.0.0.1:0"],
        timeout=120)
    key_file = t / "user.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    urls = ", ".join(f'"{s.url}"' for s in servers)
    nodes = []
    for name, port in zip(("edge-a", "edge-b"), free_ports(2), strict=True):
        root = t / name
        shutil.copytree(template, root)
        node = Node(name, root, port)
        text = node.conf.read_text()
        if 'listen = "127.0.0.1:0"' not in text:
            raise BenchError(f"segue init wrote no listen line: {node.conf}")
        text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1)
        node.conf.write_text(
            text + f'\n[node]\nid = "{name}"\n'
            '\n[log]\nformat = "json"\nlevel = "warning"\n'
            # Every listener's commands come at most every few seconds; 1,000 a second keeps
            # the per-listener limit out of the figures.
            f"\n[sessions]\ncommands_per_s = 1000.0\ndevice_timeout_s = 86400.0\n"
            f"max_subscribers = {sample + 1000}\n"
            f"\n[plugins.nats]\nservers = [{urls}]\nuser_key_file = \"{key_file}\"\n"
            f"create = {'true' if name == 'edge-a' else 'false'}\nreplicas = {replicas}\n")
        nodes.append(node)
    return nodes


# --- load ------------------------------------------------------------------------------------


async def _pings(port: int, tokens: list[str], users: range, device: str) -> dict[str, object]:
    """One `ping` per listener in `users` (device `device`N), as fast as the node answers."""
    todo: Iterator[int] = iter(users)
    statuses: dict[int, int] = {}

    async def worker() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        async with stream:
            for n in todo:
                body = json.dumps({"type": "ping", "device": f"{device}{n}"}).encode()
                status, _ = await post_command(stream, buffer, tokens[n], body)
                statuses[status] = statuses.get(status, 0) + 1

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(CONNECTIONS):
            nursery.start_soon(worker)
    return {"pings": len(users), "seconds": round(trio.current_time() - started, 2),
            "errors": sum(c for s, c in statuses.items() if s != 200)}


def _wait_followed(node: Node, count: int, since: float) -> float:
    """Seconds from `since` until the node follows `count` listeners."""
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while node.metric("segue_nats_followed_listeners") < count:
        if time.monotonic() > deadline:
            raise BenchError(f"node {node.name} followed "
                             f"{node.metric('segue_nats_followed_listeners'):.0f} of {count} "
                             f"listeners after {FOLLOW_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - since


def follow(node: Node, tokens: list[str], users: range, device: str) -> dict[str, object]:
    """Give `users` a device on `node`; how long until it follows them all."""
    cpu = _cpu_s(node.pid)
    started = time.monotonic()
    pings = trio.run(_pings, node.port, tokens, users, device)
    seconds = _wait_followed(node, users.stop, started)
    return {"listeners": users.stop, "new": len(users), "ping_s": pings["seconds"],
            "ping_errors": pings["errors"], "follow_s": round(seconds, 2),
            "follows_per_s": round(len(users) / seconds, 1),
            "node_cpu_s": round(_cpu_s(node.pid) - cpu, 2)}


def bus_figures(nodes: list[Node], servers: list[NatsServer]) -> dict[str, object]:
    """Memory of the nodes and servers, and the consumers the servers hold."""
    jsz = [s.jsz() for s in servers]
    assert all(s.proc is not None for s in servers)
    return {"node_rss_mib": {n.name: round(_rss_mib(n.pid), 1) for n in nodes},
            "server_rss_mib": [round(_rss_mib(s.proc.pid), 1) for s in servers
                               if s.proc is not None],
            "server_consumers": [int(j.get("consumers", 0)) for j in jsz],
            "server_memory_store_mib": [round(int(j.get("memory", 0)) / 2**20, 1)
                                        for j in jsz]}


def idle_cpu(procs: dict[str, int], seconds: float) -> dict[str, float]:
    """The share of a core each process used over `seconds` with no load: what following
    costs by itself (the consumers' heartbeats and the client's timers)."""
    before = {k: _cpu_s(pid) for k, pid in procs.items()}
    time.sleep(seconds)
    return {k: round((_cpu_s(pid) - before[k]) / seconds, 3) for k, pid in procs.items()}


async def _commands(a: Node, b: Node, tokens: list[str], users: int, sample: list[int],
                    rate: float, seconds: float) -> dict[str, object]:
    pending: dict[str, float] = {}
    sampled = set(sample)
    streams = [Stream(f"u{n}") for n in sample]
    send, receive = trio.open_memory_channel[None](len(sample))
    errors: dict[int, int] = {}
    sent = to_sample = 0
    async with trio.open_nursery() as nursery:
        for n, s in zip(sample, streams, strict=True):
            nursery.start_soon(s.run, b.port, tokens[n], f"phone{n}", send, pending)
        for _ in sample:
            await receive.receive()
        log(f"{len(sample)} event streams open on B; {rate:g} commands/s to A for "
            f"{seconds:g} s over {users} listeners")
        shuffle = [False] * users
        interval = 1 / rate
        total = int(rate * seconds)
        slots = iter(range(total))
        start = trio.current_time()

        async def sender() -> None:
            nonlocal sent, to_sample
            stream = await trio.open_tcp_stream("127.0.0.1", a.port)
            buffer = bytearray()
            async with stream:
                for i in slots:
                    await trio.sleep_until(start + i * interval)
                    # A stride that is prime to `users` spreads neighbours in time apart.
                    user = (i * 7919) % users
                    shuffle[user] = not shuffle[user]
                    body = json.dumps({"type": "set_shuffle", "device": f"laptop{user}",
                                       "shuffle": shuffle[user]}).encode()
                    if user in sampled:
                        pending[f"u{user}"] = trio.current_time()
                    status, _ = await post_command(stream, buffer, tokens[user], body)
                    sent += 1
                    if status != 200:
                        errors[status] = errors.get(status, 0) + 1
                        pending.pop(f"u{user}", None)
                    elif user in sampled:
                        to_sample += 1

        async with trio.open_nursery() as senders:
            for _ in range(CONNECTIONS):
                senders.start_soon(sender)
        elapsed = trio.current_time() - start
        await trio.sleep(3)  # the last events
        nursery.cancel_scope.cancel()
    latencies = [v for s in streams for v in s.on_event]
    return {"rate_wanted": rate, "rate_achieved": round(sent / elapsed, 1), "commands": sent,
            "seconds": round(elapsed, 2), "errors": sum(errors.values()),
            "errors_by_status": {str(k): v for k, v in sorted(errors.items())},
            "to_sample": to_sample, "events_matched": len(latencies),
            "events_missing": to_sample - len(latencies),
            "command_to_event": _summary(latencies)}


def _counters(node: Node, name: str, label: str, values: tuple[str, ...]) -> dict[str, int]:
    text = node.metrics()
    return {v: int(node.metric(name, text, **{label: v})) for v in values}


def bench(args: argparse.Namespace, t: Path) -> dict[str, object]:
    binary = need("nats-server", "nats-server", "/usr/sbin/nats-server")
    for module, fix in (("nats", "pip install nats-py"),
                        ("segue_nats", "put the repo's plugins/ on PYTHONPATH")):
        if importlib.util.find_spec(module) is None:
            raise BenchError(f"the nodes need {module} importable with {sys.executable}: {fix}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit it
    load_before = os.getloadavg()[0]
    servers = start_servers(binary, t, args.replicas)
    nodes: list[Node] = []
    try:
        nodes = make_nodes(t, servers, args.replicas, args.sample)
        a, b = nodes
        tokens = mint_tokens(a.conf, args.users)
        a.start()  # A makes the stream and the bucket
        b.start()
        procs = {"edge-a": a.pid, "edge-b": b.pid,
                 **{f"nats{i}": s.proc.pid for i, s in enumerate(servers)
                    if s.proc is not None}}
        idle = {**bus_figures(nodes, servers), "idle_cores": idle_cpu(procs, IDLE_S)}
        steps = []
        done = 0
        for step in args.steps:
            log(f"{step - done} more listeners get a device on B ({step} in all)")
            figures = follow(b, tokens, range(done, step), "phone")
            figures.update(bus_figures(nodes, servers), idle_cores=idle_cpu(procs, IDLE_S))
            log(f"B follows {step} listeners: {figures}")
            steps.append(figures)
            done = step
        log(f"every listener gets a device on A too ({args.users})")
        on_a = follow(a, tokens, range(args.users), "laptop")
        on_a.update(bus_figures(nodes, servers), idle_cores=idle_cpu(procs, IDLE_S))
        log(f"A follows {args.users} listeners: {on_a}")
        commands: dict[str, object] = {}
        if args.rate:
            cpu = {k: _cpu_s(pid) for k, pid in procs.items()}
            mine = resource.getrusage(resource.RUSAGE_SELF)
            stride = max(1, args.users // args.sample)
            sample = list(range(0, args.users, stride))[:args.sample]
            commands = trio.run(_commands, a, b, tokens, args.users, sample, args.rate,
                                args.seconds)
            after = resource.getrusage(resource.RUSAGE_SELF)
            commands["cpu_s"] = {
                **{k: round(_cpu_s(pid) - cpu[k], 2) for k, pid in procs.items()},
                "generator": round(after.ru_utime + after.ru_stime - mine.ru_utime
                                   - mine.ru_stime, 2)}
            commands["published"] = _counters(
                a, "segue_nats_deltas_published_total", "outcome",
                ("ok", "failed", "queue_full"))
            commands["received_on_b"] = _counters(b, "segue_nats_deltas_received_total",
                                                  "outcome", RECEIVED)
            commands["state_writes_on_a"] = _counters(a, "segue_nats_state_writes_total",
                                                      "outcome", ("ok", "conflict", "failed"))
            commands.update(bus_figures(nodes, servers))
        load_after = os.getloadavg()[0]
    finally:
        for node in nodes:
            stop(node.proc, signal.SIGTERM)
        for server in servers:
            stop(server.proc, signal.SIGTERM)
    report_machine = machine(load_before, ("segue", "trio", "nats-py"),
                             nats_server=first_line([binary, "--version"]))
    report_machine["loadavg_1m_after"] = round(load_after, 2)
    return {"machine": report_machine,
            "setup": {"servers": args.replicas, "replicas": args.replicas,
                      "users": args.users, "steps": args.steps, "rate": args.rate,
                      "seconds": args.seconds, "sample": args.sample, "pinning": "none"},
            "results": {"idle": idle, "steps": steps, "on_a": on_a, "commands": commands}}


def _cores(idle: dict[str, float]) -> str:
    servers = sum(v for k, v in idle.items() if k.startswith("nats"))
    return f"{idle['edge-a']:.2f} / {idle['edge-b']:.2f} / {servers:.2f}"


def print_table(report: dict) -> None:
    r = report["results"]
    m = report["machine"]
    s = report["setup"]
    print(f"{s['servers']} nats-server(s), replicas {s['replicas']}; load average "
          f"{m['loadavg_1m_before']} before, {m['loadavg_1m_after']} after")
    print(f"{'node':<7} {'listeners':>9} {'follow s':>8} {'/s':>7} {'node RSS MiB':>12} "
          f"{'consumers':>9} {'servers RSS MiB':>22} {'idle cores A / B / servers':>27}")
    for name, step in [*(("B", x) for x in r["steps"]), ("A", r["on_a"])]:
        rss = step["node_rss_mib"]["edge-b" if name == "B" else "edge-a"]
        print(f"{name:<7} {step['listeners']:>9} {step['follow_s']:>8} "
              f"{step['follows_per_s']:>7} {rss:>12} {sum(step['server_consumers']):>9} "
              f"{' / '.join(str(x) for x in step['server_rss_mib']):>22} "
              f"{_cores(step['idle_cores']):>27}")
    c = r["commands"]
    if c:
        e = c["command_to_event"]
        print(f"commands: {c['commands']} at {c['rate_achieved']}/s (wanted "
              f"{c['rate_wanted']:g}), {c['errors']} errors; command on A to event on B "
              f"p50 {e['p50_ms']:.1f} / p99 {e['p99_ms']:.1f} / max {e['max_ms']:.1f} ms "
              f"({c['events_matched']} matched, {c['events_missing']} missing)")
        print("CPU s: " + ", ".join(f"{k} {v}" for k, v in c["cpu_s"].items())
              + f" over {c['seconds']} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="listeners in all")
    parser.add_argument("--steps", default="1000,5000,10000",
                        help="listeners B follows at each step (comma list; --users is the "
                             "last)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="commands a second to node A (0: skip the commands)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of commands")
    parser.add_argument("--sample", type=int, default=300,
                        help="listeners with an event stream on node B")
    parser.add_argument("--replicas", type=int, choices=(1, 3), default=3,
                        help="3: three servers, R3 (production); 1: one server, R1")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    try:
        steps = sorted({int(x) for x in args.steps.split(",") if x.strip()})
    except ValueError:
        parser.error("--steps: a comma list of whole numbers")
    if args.users < 1 or args.rate < 0 or not 0 < args.sample <= args.users:
        parser.error("--users at least 1, --rate not negative, --sample from 1 to --users")
    args.steps = [x for x in steps if 0 < x < args.users] + [args.users]
    return run_in_temp_dir("nats", args, bench, print_table)


if __name__ == "__main__":
    sys.exit(main())
