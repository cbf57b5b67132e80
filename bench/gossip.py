"""Benchmark: playback sessions between edge nodes over Serf gossip, with 3, 10 and 30 agents.

This prints figures; it judges nothing. For each fleet size N (--agents), on loopback:

* N Serf agents (/usr/bin/serf, profile "lan" as in production, one keyring key, RPC auth),
  joined to the first; 3 segued nodes A, B, C, each with its own agent ([plugins.gossip],
  anti-entropy every hour, so that only gossip delivers during the run); and one observer
  process (bench/gossip_observer.py) streaming the session events from every agent but A's.
  Thirty segued nodes do not fit on 2 cores beside thirty agents; the observer sees what
  each agent hands out, which is what a segued there would get.
* idle: --idle seconds with nothing to carry: gossip bytes per node.
* latency: --rate commands a second (`set_shuffle`, toggled) to node A over HTTP, spread over
  --listeners listeners (tokens minted in-process), for --seconds. For each command, the time
  from its request going out to its event at every other agent (observer) and on each
  listener's event stream on nodes B and C (end to end: agent, plugin, merge, SSE). Bytes
  per node under that load.
* delivery: session events fired straight into agent A's RPC at each --rates rate for
  --step-seconds, realistic deltas (a play with a device and a queue item, ~280 bytes, a
  unique stamp each), then up to --drain seconds to arrive. Per rate: the fraction that
  arrived at every observed agent and in segued B and C (their
  `segue_gossip_events_received_total`), the agents' own warnings (broadcast queue depth,
  dropped messages), bytes per node. A rate is complete when every event arrived everywhere
  with p99 under 1 s; the ladder stops at the first rate that loses events, or at the second
  late one. The highest complete rate is the highest change rate that gossip alone delivers
  whole and on time.

Bytes are IP bytes (headers included) on the agents' gossip ports, counted by nftables rules
(counters only, in a table of this run's own, removed at the end): UDP by the port that sent
or received it, TCP (push/pull, fallback probes) by the listening side's port. RPC traffic
(segued and the observer to their agents) is on other ports and not counted.

Everything shares the machine's cores: the agents, segued, the observer and this generator.
Their CPU times are reported per phase.

    .venv/bin/python bench/gossip.py [--agents 3,10,30] [--rate 20] [--seconds 20]
        [--idle 30] [--rates 5,10,15,20,30,...] [--step-seconds 12] [--drain 10] [--json]

Needs the Debian packages serf and nftables, and root (nftables).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
from sessions import post_command

EVENT = "segue-session"
PROFILE = "lan"
SEGUED = 3
CONNECTIONS = 4  # keep-alive connections carrying the commands to node A
FIRE_TASKS = 8  # RPC requests in flight at once when firing events into agent A
DELIVERY_USERS = 1000  # listeners the fired changes are spread over
START_TIMEOUT_S = 60.0
LATE_MS = 1000.0  # a delivery rate is complete when every event arrives, p99 under this
LATENCY_DRAIN_S = 3.0  # after the last command, for its events to arrive
PAST_LATE = 2
# This Python's segue, as the tests run it: the `segue` script beside it may belong to another
# venv (its shebang), one without the gossip plugin's entry point.
SEGUE = [sys.executable, "-m", "segue"]
# The agents' warnings that say why an event may not arrive (patterns from serf 0.8's log).
WARNINGS = {
    "queue_depth": re.compile(rb"serf: \S+ queue depth: \d+"),
    "queue_dropped": re.compile(rb"queue depth \(\d+\) exceeds limit \(\d+\), dropping"),
    "handler_queue_full": re.compile(rb"memberlist: handler queue full"),
    "rpc_stream_dropped": re.compile(rb"agent.ipc: Dropping event"),
}


# --- numbers ---------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    return {"count": len(ms), "p50_ms": _round(_percentile(ms, 0.5)),
            "p99_ms": _round(_percentile(ms, 0.99)), "max_ms": _round(max(ms) if ms else None)}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the agents ------------------------------------------------------------------------------
class Agent:
    """One `serf agent` with its own gossip and RPC ports on loopback."""

    def __init__(self, serf: str, root: Path, name: str, ports: tuple[int, int], key: str,
                 auth: str, join: list[str]) -> None:
        root.mkdir(parents=True)
        self.serf = serf
        self.root = root
        self.name = name
        self.bind_port, self.rpc_port = ports
        self.auth = auth
        (root / "keyring.json").write_text(json.dumps([key]))
        (root / "keyring.json").chmod(0o600)
        (root / "serf.json").write_text(json.dumps({
            "node_name": name, "bind": f"127.0.0.1:{self.bind_port}",
            "rpc_addr": f"127.0.0.1:{self.rpc_port}", "rpc_auth": auth,
            "keyring_file": str(root / "keyring.json"), "profile": PROFILE,
            "log_level": "warn", "retry_join": join, "retry_interval": "1s"}))
        self.log = root / "serf.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.bind_port}"

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.serf, "agent", f"-config-file={self.root / 'serf.json'}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)

    def alive_members(self) -> int:
        """Members this agent sees alive (0 while its RPC does not answer yet)."""
        done = subprocess.run(
            [self.serf, "members", "-status=alive", f"-rpc-addr={self.rpc_address}",
             f"-rpc-auth={self.auth}"], capture_output=True, text=True, timeout=30, check=False)
        return len(done.stdout.splitlines()) if done.returncode == 0 else 0

    def warnings(self) -> dict[str, int]:
        """The warnings this agent logged since the last call, by kind."""
        with self.log.open("rb") as f:
            f.seek(self.log_offset)
            text = f.read()
        self.log_offset += len(text)
        return {kind: len(pattern.findall(text)) for kind, pattern in WARNINGS.items()}


def start_agents(serf: str, root: Path, count: int, key: str, auth: str,
                 agents: list[Agent]) -> None:
    """Start `count` agents into `agents` (so that the caller stops them whatever happens)
    and wait until the first sees them all alive."""
    ports = free_ports(2 * count)
    for i in range(count):
        join = [agents[0].address] if agents else []
        agents.append(Agent(serf, root / f"agent{i}", f"serf-{i}", (ports[2 * i],
                                                                  ports[2 * i + 1]),
                            key, auth, join))
        agents[-1].start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while agents[0].alive_members() < count:
        for agent in agents:
            if agent.proc is not None and agent.proc.poll() is not None:
                raise BenchError(f"serf agent {agent.name} exited: {agent.log.read_text()[-800:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"{count} serf agents did not all join in {START_TIMEOUT_S:.0f} s "
                             f"(see {agents[0].log})")
        time.sleep(0.2)


# --- byte counters ---------------------------------------------------------------------------
class Counters:
    """nftables counters on each agent's gossip port, in a table of this run's own."""

    def __init__(self, nft: str, ports: list[int]) -> None:
        self.nft = nft
        self.table = f"segue_bench_gossip_{os.getpid()}"
        self.ports = ports
        script = [f"add table inet {self.table}",
                  f"add chain inet {self.table} out {{ type filter hook output priority 0; "
                  "policy accept; }"]
        # Loopback packets pass the output hook once each: each is counted once per rule.
        for port in ports:
            for proto in ("udp", "tcp"):
                for side, field in (("out", "sport"), ("in", "dport")):
                    script.append(f"add rule inet {self.table} out ip daddr 127.0.0.1 "
                                  f"{proto} {field} {port} counter comment "
                                  f'"{port} {proto} {side}"')
        self._apply("\n".join(script))

    def _apply(self, script: str) -> None:
        done = subprocess.run([self.nft, "-f", "-"], input=script, capture_output=True,
                              text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise BenchError(f"nft refused the counters (root is needed): {done.stderr.strip()}")

    def read(self) -> dict[int, dict[str, int]]:
        """port -> {"udp out": bytes, ..., "packets": n} now."""
        doc = json.loads(run([self.nft, "-j", "list", "table", "inet", self.table],
                             timeout=30).stdout)
        found: dict[int, dict[str, int]] = {p: {"packets": 0} for p in self.ports}
        for item in doc.get("nftables", []):
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            port, proto, side = rule["comment"].split()
            counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
            found[int(port)][f"{proto} {side}"] = counter["bytes"]
            found[int(port)]["packets"] += counter["packets"]
        return found

    def close(self) -> None:
        subprocess.run([self.nft, "delete", "table", "inet", self.table], capture_output=True,
                       timeout=30, check=False)


def traffic(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]],
            seconds: float) -> dict[str, Any]:
    """Bytes a second per node, sent plus received.

    UDP is exact per node (sent from its port, or to it). A TCP connection is counted on its
    listening side's port only, so each TCP byte is given to both ends here: the mean is
    exact, the per-node maximum is over UDP alone."""
    def delta(port: int, key: str) -> int:
        return after[port].get(key, 0) - before[port].get(key, 0)

    ports = list(after)
    udp = [delta(p, "udp out") + delta(p, "udp in") for p in ports]
    tcp = sum(delta(p, "tcp out") + delta(p, "tcp in") for p in ports)
    packets = sum(delta(p, "packets") for p in ports)
    n = len(ports)
    return {"seconds": round(seconds, 1),
            "bytes_per_s_per_node": round((sum(udp) + 2 * tcp) / n / seconds),
            "udp_bytes_per_s_per_node": round(sum(udp) / n / seconds),
            "udp_bytes_per_s_max_node": round(max(udp) / seconds),
            "tcp_bytes_per_s_per_node": round(2 * tcp / n / seconds),
            "packets_per_s_per_node": round(packets / n / seconds, 1)}


# --- segued nodes ----------------------------------------------------------------------------
class Segued:
    def __init__(self, template: Path, root: Path, name: str, port: int, agent: Agent,
                 auth_file: Path) -> None:
        shutil.copytree(template, root)
        self.name = name
        self.port = port
        self.conf = root / "segued.toml"
        text = self.conf.read_text().replace('listen = "127.0.0.1:0"',
                                             f'listen = "127.0.0.1:{port}"', 1)
        self.conf.write_text(text + f"""
[node]
id = "{name}"

[log]
format = "json"
level = "warning"

[sessions]
heartbeat_s = 1.0

[plugins.gossip]
rpc_address = "{agent.rpc_address}"
rpc_auth_file = "{auth_file}"
anti_entropy_interval_s = 3600
peer_listen = "127.0.0.1:0"
""")
        self.log = root / "segued.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*SEGUE, "run", "--config", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)

    def gossip_health(self) -> str:
        status, body = get(self.port, "/v1/status")
        if status != 200:
            return f"status {status}"
        plugin: dict[str, Any] = next((p for p in json.loads(body).get("plugins", [])
                                       if p.get("name") == "gossip"), {})
        return str((plugin.get("health") or {}).get("status"))

    def sent(self) -> tuple[int, int]:
        """Session events this node sent (all kinds), and their payload bytes."""
        text = self._metrics()
        events = sum(float(v) for v in re.findall(
            r"^segue_gossip_events_sent_total\{[^}]*\} (\S+)$", text, re.M))
        found = re.search(r"^segue_gossip_event_bytes_sent_total (\S+)$", text, re.M)
        return int(events), int(float(found.group(1))) if found else 0

    def _metrics(self) -> str:
        status, body = get(self.port, "/metrics")
        if status != 200:
            raise BenchError(f"{self.name}: /metrics answered {status}")
        return body.decode()

    def received(self) -> int:
        """Session events this node's plugin took from its agent, its own excepted."""
        total = 0
        for line in self._metrics().splitlines():
            found = re.match(r'segue_gossip_events_received_total\{outcome="(\w+)"\} (\S+)',
                             line)
            if found and found.group(1) != "own":
                total += int(float(found.group(2)))
        return total


def start_segued(template: Path, root: Path, agents: list[Agent], auth_file: Path,
                 nodes: list[Segued]) -> None:
    """Start the segued nodes into `nodes` and wait until each sees the others over Serf."""
    ports = free_ports(SEGUED)
    for i in range(SEGUED):
        nodes.append(Segued(template, root / f"segued-{chr(97 + i)}", f"edge-{chr(97 + i)}",
                            ports[i], agents[i], auth_file))
        nodes[-1].start()
    for node in nodes:
        assert node.proc is not None
        wait_ready(node.proc, node.port, "/healthz", node.log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while any(n.gossip_health() != "ok" for n in nodes):
        if time.monotonic() > deadline:
            raise BenchError("segued nodes do not see each other over Serf: "
                             + ", ".join(f"{n.name} {n.gossip_health()}" for n in nodes))
        time.sleep(0.2)


# --- the observer ----------------------------------------------------------------------------
class ObserverProcess:
    def __init__(self, agents: list[Agent], auth_file: Path, log_file: Path) -> None:
        script = Path(__file__).with_name("gossip_observer.py")
        with log_file.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), "--auth-file", str(auth_file), "--event", EVENT,
                 *(a.rpc_address for a in agents)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise BenchError(f"the observer did not start: {log_file.read_text()[-800:]}")

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("the observer exited")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def first_arrivals(report: dict[str, Any]) -> dict[tuple[int, str], float]:
    """(agent index, change key) -> when that agent first handed the change out."""
    found: dict[tuple[int, str], float] = {}
    for index, key, at in report["arrivals"]:
        found.setdefault((index, key), at)
    return found


# --- phase 1: commands to node A, events everywhere ------------------------------------------


async def _events(port: int, token: str, device: str, user: str, node: str,
                  arrivals: list[tuple[str, str, float]],
                  ready: trio.MemorySendChannel[None]) -> None:
    """One listener's event stream on one node: (node, "USER STAMP", when) for each event."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET /v1/session/events?device={device} HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode())
        buffer = b""
        announced = False
        while data := await stream.receive_some(65536):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            now = time.monotonic()
            for line in lines:
                if line.startswith(b"id: "):
                    arrivals.append((node, f"{user} {line[4:].decode().strip()}", now))
                    if not announced:
                        announced = True
                        await ready.send(None)


async def _latency(a: Segued, watchers: list[Segued], tokens: list[str], rate: float,
                   seconds: float, drain: float) -> dict[str, Any]:
    listeners = len(tokens)
    sent: dict[str, float] = {}
    arrivals: list[tuple[str, str, float]] = []
    errors = 0
    send, receive = trio.open_memory_channel[None](listeners * len(watchers))
    async with trio.open_nursery() as nursery:
        for node in watchers:
            for n, token in enumerate(tokens):
                nursery.start_soon(_events, node.port, token, f"{node.name}-{n}", f"u{n}",
                                   node.name, arrivals, send)
        for _ in range(listeners * len(watchers)):
            await receive.receive()
        log(f"{listeners} listeners subscribed on {', '.join(w.name for w in watchers)}; "
            f"{rate:g} commands/s to {a.name} for {seconds:g} s")
        shuffle = [False] * listeners
        start = time.monotonic()
        slots = list(range(int(rate * seconds)))

        async def sender() -> None:
            nonlocal errors
            stream = await trio.open_tcp_stream("127.0.0.1", a.port)
            buffer = bytearray()
            async with stream:
                while slots:
                    k = slots.pop(0)
                    await trio.sleep(max(0.0, start + k / rate - time.monotonic()))
                    user = k % listeners
                    shuffle[user] = not shuffle[user]
                    body = json.dumps({"type": "set_shuffle", "device": f"{a.name}-{user}",
                                       "shuffle": shuffle[user]}).encode()
                    at = time.monotonic()
                    status, answer = await post_command(stream, buffer, tokens[user], body)
                    if status != 200:
                        errors += 1
                        continue
                    sent[f"u{user} {json.loads(answer)['stamp']}"] = at

        async with trio.open_nursery() as senders:
            for _ in range(CONNECTIONS):
                senders.start_soon(sender)
        elapsed = time.monotonic() - start
        await trio.sleep(drain)
        nursery.cancel_scope.cancel()
    return {"sent": sent, "arrivals": arrivals, "errors": errors,
            "rate_achieved": round(len(sent) / elapsed, 1)}


def latency_phase(a: Segued, watchers: list[Segued], observer: ObserverProcess,
                  observed: int, tokens: list[str], args: argparse.Namespace) -> dict[str, Any]:
    observer.report()  # what came before (joins, devices) is not part of it
    events_before, bytes_before = a.sent()
    found = trio.run(_latency, a, watchers, tokens, args.rate, args.seconds, LATENCY_DRAIN_S)
    seen = first_arrivals(observer.report())
    events, payload_bytes = (x - y for x, y in zip(a.sent(), (events_before, bytes_before),
                                                  strict=True))
    sent: dict[str, float] = found["sent"]
    at_agents = [seen[(i, key)] - t for key, t in sent.items() for i in range(observed)
                 if (i, key) in seen]
    on_streams: dict[tuple[str, str], float] = {}
    for node, key, at in found["arrivals"]:
        on_streams.setdefault((node, key), at)
    at_segued = [on_streams[(w.name, key)] - t for key, t in sent.items() for w in watchers
                 if (w.name, key) in on_streams]
    return {"commands": len(sent), "errors": found["errors"],
            "rate_achieved": found["rate_achieved"], "events_sent": events,
            "payload_bytes": round(payload_bytes / events) if events else None,
            "at_agents": {**_summary(at_agents),
                          "missing": len(sent) * observed - len(at_agents)},
            "at_segued_streams": {**_summary(at_segued),
                                  "missing": len(sent) * len(watchers) - len(at_segued)},
            "at_every_node": _summary(at_agents + at_segued)}


# --- phase 2: events fired into agent A at a rate --------------------------------------------
def realistic_delta(user: int, wall_ms: int, counter: int) -> dict[str, Any]:
    """A change as a play command makes it: playback, the device, its queue item.

    Track and queue-item ids are random, as real ones (SHA-256, random) are: memberlist
    compresses its packets, and repeated ids would make the bytes on the wire too few."""
    stamp = [wall_ms, counter, "bench"]
    device = f"phone-{user:04d}"
    track = secrets.token_hex(32)
    return {"playback": [{"track_id": track, "position_ms": 61_250, "at_ms": wall_ms,
                          "rate": 1.0, "playing": True}, stamp],
            "active_device": [device, stamp],
            "devices": {device: [{"name": "Pixel 8", "kind": "phone", "node": "edge-a",
                                  "present": True}, stamp]},
            "queue": {secrets.token_hex(16): [track, stamp]}}


async def _fire(host: str, port: int, auth: str, rate: float, seconds: float,
                first: int) -> dict[str, Any]:
    from segue_gossip import payload
    from segue_gossip.serf_client import SerfError, connect

    sent: dict[str, float] = {}
    sizes: list[int] = []
    refused = 0
    total = int(rate * seconds)
    slots = list(range(total))
    async with connect(host, port, auth, 10.0) as client:
        start = time.monotonic()

        async def sender() -> None:
            nonlocal refused
            while slots:
                k = slots.pop(0)
                await trio.sleep(max(0.0, start + k / rate - time.monotonic()))
                counter = first + k
                wall = int(time.time() * 1000)
                user = f"d{counter % DELIVERY_USERS}"
                (data,) = payload.encode_change(
                    "bench", user, realistic_delta(counter % DELIVERY_USERS, wall, counter),
                    len(EVENT))
                sizes.append(len(data))
                at = time.monotonic()
                try:
                    await client.event(EVENT, data)
                except SerfError:
                    refused += 1
                    continue
                sent[f"{user} {wall:x}.{counter:x}.bench"] = at

        async with trio.open_nursery() as nursery:
            for _ in range(FIRE_TASKS):
                nursery.start_soon(sender)
        elapsed = time.monotonic() - start
    return {"sent": sent, "refused": refused, "elapsed": elapsed,
            "payload_bytes": round(statistics.fmean(sizes)) if sizes else None}


def delivery_step(rate: float, first: int, agents: list[Agent], watchers: list[Segued],
                  observer: ObserverProcess, counters: Counters,
                  args: argparse.Namespace) -> dict[str, Any]:
    """One rate: fire, then wait (up to --drain seconds) until every event is everywhere."""
    observed = len(agents) - 1
    observer.report()
    for agent in agents:
        agent.warnings()
    received_before = [w.received() for w in watchers]
    bytes_before, started = counters.read(), time.monotonic()
    cpu_before = _cpu(agents, watchers, observer)
    fired = trio.run(_fire, "127.0.0.1", agents[0].rpc_port, agents[0].auth, rate,
                     args.step_seconds, first)
    bytes_after, ended = counters.read(), time.monotonic()
    sent: dict[str, float] = fired["sent"]
    seen: dict[tuple[int, str], float] = {}
    deadline = ended + args.drain
    while True:
        for key, at in first_arrivals(observer.report()).items():
            seen.setdefault(key, at)
        received = [w.received() - b for w, b in zip(watchers, received_before, strict=True)]
        everywhere = (sum(1 for i, key in seen if key in sent) == len(sent) * observed
                      and all(n >= len(sent) for n in received))
        if everywhere or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    cpu = _cpu_delta(cpu_before, _cpu(agents, watchers, observer), time.monotonic() - started)
    per_agent = [sum(1 for key in sent if (i, key) in seen) for i in range(observed)]
    delays = [seen[(i, key)] - t for key, t in sent.items() for i in range(observed)
              if (i, key) in seen]
    warnings: dict[str, int] = dict.fromkeys(WARNINGS, 0)
    for agent in agents:
        for kind, count in agent.warnings().items():
            warnings[kind] += count
    delay = _summary(delays)
    whole = fired["refused"] == 0 and everywhere
    return {"rate": rate, "sent": len(sent), "refused": fired["refused"],
            "rate_achieved": round(len(sent) / fired["elapsed"], 1),
            "payload_bytes": fired["payload_bytes"],
            "delivered_fraction_min": round(min(per_agent) / len(sent), 4) if sent else None,
            "agents_missing_some": sum(1 for n in per_agent if n < len(sent)),
            "segued_received": received, "delivered_whole": whole,
            "complete": whole and (delay["p99_ms"] or 0) < LATE_MS,
            "delay": delay, "warnings": warnings,
            "traffic": traffic(bytes_before, bytes_after, ended - started), "cpu": cpu}


def delivery_phase(agents: list[Agent], watchers: list[Segued], observer: ObserverProcess,
                   counters: Counters, args: argparse.Namespace) -> dict[str, Any]:
    """The rates in order, until one loses events or PAST_LATE rates in a row are late: the
    rates past the highest complete one show whether Serf delays or drops."""
    steps = []
    first = 0
    highest = None
    late = 0
    for rate in args.rates:
        log(f"delivery: {rate:g} events/s into agent 0 for {args.step_seconds:g} s")
        step = delivery_step(rate, first, agents, watchers, observer, counters, args)
        first += int(rate * args.step_seconds) + 1
        steps.append(step)
        log(f"  {step['sent']} sent at {step['rate_achieved']}/s; least delivered "
            f"{step['delivered_fraction_min']}, segued {step['segued_received']}, delay "
            f"{_ms(step['delay'])} ms, warnings {step['warnings']}")
        if step["complete"]:
            highest = rate
            continue
        late += 1
        if not step["delivered_whole"] or late >= PAST_LATE:
            break
    return {"steps": steps, "highest_complete_rate": highest}


# --- CPU --------------------------------------------------------------------------------------
def _cpu(agents: list[Agent], nodes: list[Segued], observer: ObserverProcess
         ) -> dict[str, float]:
    return {"agents": sum(_cpu_s(a.proc.pid) for a in agents if a.proc),
            "segued": sum(_cpu_s(n.proc.pid) for n in nodes if n.proc),
            "observer": _cpu_s(observer.proc.pid), "generator": _self_cpu_s()}


def _cpu_delta(before: dict[str, float], after: dict[str, float], wall: float
               ) -> dict[str, float]:
    """CPU seconds each part used over `wall` seconds, and the cores that makes in all."""
    used = {k: round(after[k] - before[k], 2) for k in before}
    return {**used, "wall_s": round(wall, 1), "cores_busy": round(sum(used.values()) / wall, 2)}


# --- one fleet --------------------------------------------------------------------------------
def fleet(n: int, t: Path, tools: dict[str, str], template: Path, tokens: list[str],
          args: argparse.Namespace) -> dict[str, Any]:
    root = t / f"fleet-{n}"
    key = base64.b64encode(os.urandom(32)).decode()
    auth = base64.b64encode(os.urandom(18)).decode()
    auth_file = root / "rpc-auth"
    root.mkdir()
    auth_file.write_text(auth + "\n")
    auth_file.chmod(0o600)
    agents: list[Agent] = []
    nodes: list[Segued] = []
    observer = None
    counters = None
    try:
        log(f"fleet of {n}: starting {n} serf agents")
        started = time.monotonic()
        start_agents(tools["serf"], root, n, key, auth, agents)
        joined = time.monotonic() - started
        counters = Counters(tools["nft"], [a.bind_port for a in agents])
        start_segued(template, root, agents, auth_file, nodes)
        observer = ObserverProcess(agents[1:], auth_file, root / "observer.log")
        log(f"fleet of {n}: joined in {joined:.1f} s; 3 segued nodes linked; idle "
            f"{args.idle:g} s")
        time.sleep(2)  # the segued nodes' own first events (tags, devices) settle
        before, cpu_before, at = counters.read(), _cpu(agents, nodes, observer), time.monotonic()
        time.sleep(args.idle)
        idle = {"traffic": traffic(before, counters.read(), time.monotonic() - at),
                "cpu": _cpu_delta(cpu_before, _cpu(agents, nodes, observer),
                                  time.monotonic() - at),
                "agent_rss_mib_median": round(statistics.median(
                    _rss_mib(a.proc.pid) for a in agents if a.proc), 1)}
        before, cpu_before, at = counters.read(), _cpu(agents, nodes, observer), time.monotonic()
        latency = latency_phase(nodes[0], nodes[1:], observer, n - 1, tokens, args)
        latency["traffic"] = traffic(before, counters.read(), time.monotonic() - at)
        latency["cpu"] = _cpu_delta(cpu_before, _cpu(agents, nodes, observer),
                                    time.monotonic() - at)
        time.sleep(3)  # the streams' devices leave (heartbeat 1 s) before the delivery phase
        delivery = delivery_phase(agents, nodes[1:], observer, counters, args)
        return {"agents": n, "segued": SEGUED, "observed_agents": n - 1,
                "join_s": round(joined, 1), "idle": idle, "latency": latency,
                "delivery": delivery}
    finally:
        if observer is not None:
            observer.close()
        for node in nodes:
            stop(node.proc, signal.SIGTERM)
        for agent in agents:
            stop(agent.proc, signal.SIGTERM)  # no graceful leave: nothing to measure there
        if counters is not None:
            counters.close()


def bench(args: argparse.Namespace, t: Path) -> dict[str, Any]:
    tools = {"serf": need("serf", "serf"), "nft": need("nft", "nftables")}
    load = os.getloadavg()[0]
    template = t / "template"
    run([*SEGUE, "init", str(template), "--listen", "127.0.0.1:0"], timeout=120)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))
    from segue import config
    from segue.configured_keys import load_signing_key
    from segue.seal.tokens import issue

    settings = config.load(template / "segued.toml")
    signing = load_signing_key(settings.auth.signing_key, "auth.signing_key", settings)
    tokens = [issue(signing, f"u{n}", ttl=86400, tracks=None, audience=settings.auth.audience,
                    issuer=settings.auth.issuer) for n in range(args.listeners)]
    wall = time.monotonic()
    fleets = [fleet(n, t, tools, template, tokens, args) for n in args.agents]
    serf_version = first_line([tools["serf"], "version"]).removeprefix("Serf ")
    return {"machine": machine(load, ("segue", "trio", "msgpack"), serf=serf_version),
            "setup": {"agents": args.agents, "segued": SEGUED, "profile": PROFILE,
                      "listeners": args.listeners, "rate": args.rate,
                      "seconds": args.seconds, "idle_s": args.idle, "rates": args.rates,
                      "step_seconds": args.step_seconds, "drain_s": args.drain,
                      "anti_entropy_interval_s": 3600,
                      "pinning": "none: agents, segued, observer and generator share "
                                 f"{len(os.sched_getaffinity(0))} CPUs"},
            "results": {"fleets": fleets, "wall_s": round(time.monotonic() - wall, 1)}}


# --- the report -------------------------------------------------------------------------------
def _ms(summary: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        return "n/a" if v is None else f"{v:,.1f}"
    return f"{one(summary['p50_ms'])} / {one(summary['p99_ms'])} / {one(summary['max_ms'])}"


def print_table(report: dict[str, Any]) -> None:
    rows: list[Iterable[str]] = []
    for f in report["results"]["fleets"]:
        lat = f["latency"]
        rows.append([str(f["agents"]), f"{lat['commands']} ({lat['rate_achieved']}/s)",
                     _ms(lat["at_agents"]), str(lat["at_agents"]["missing"]),
                     _ms(lat["at_segued_streams"]), str(lat["at_segued_streams"]["missing"]),
                     f"{f['idle']['traffic']['bytes_per_s_per_node']:,}",
                     f"{lat['traffic']['bytes_per_s_per_node']:,}",
                     str(f["delivery"]["highest_complete_rate"])])
    heads = ["agents", "commands", "at agents p50/p99/max ms", "missing",
             "on B, C streams p50/p99/max ms", "missing", "idle B/s/node", "load B/s/node",
             "highest complete events/s"]
    print(" | ".join(heads))
    for row in rows:
        print(" | ".join(row))
    for f in report["results"]["fleets"]:
        print(f"\ndelivery, {f['agents']} agents:")
        for s in f["delivery"]["steps"]:
            print(f"  {s['rate']:>6g}/s: {s['sent']} sent at {s['rate_achieved']}/s, "
                  f"{s['payload_bytes']} B; least delivered {s['delivered_fraction_min']}, "
                  f"{s['agents_missing_some']} agents missing some, segued "
                  f"{s['segued_received']}; delay {_ms(s['delay'])} ms; "
                  f"{s['traffic']['bytes_per_s_per_node']:,} B/s/node; warnings "
                  f"{s['warnings']}; CPU {s['cpu']}")
        print(f"  idle CPU {f['idle']['cpu']}; latency phase CPU {f['latency']['cpu']}")


def _numbers(text: str, kind: type) -> list[Any]:
    return [kind(v) for v in text.split(",") if v.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=lambda s: _numbers(s, int), default=[3, 10, 30],
                        help="fleet sizes, comma-separated (each at least 3)")
    parser.add_argument("--listeners", type=int, default=40, help="listeners for the commands")
    parser.add_argument("--rate", type=float, default=20.0, help="commands a second to node A")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of commands")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds measured idle (30: one push/pull round of each agent)")
    parser.add_argument("--rates", type=lambda s: _numbers(s, float),
                        default=[5, 10, 15, 20, 30, 40, 60, 80, 120, 160],
                        help="events/s fired into agent A, in order; stops at the first rate "
                             "not delivered whole with p99 under 1 s")
    parser.add_argument("--step-seconds", type=float, default=12.0,
                        help="seconds of each delivery rate")
    parser.add_argument("--drain", type=float, default=10.0,
                        help="seconds the last events of a rate may take to arrive")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if not args.agents or min(args.agents) < SEGUED:
        parser.error(f"--agents: each fleet needs at least {SEGUED} agents (one per segued)")
    if args.listeners < 1 or args.rate <= 0 or args.rate / args.listeners > 10:
        parser.error("--rate must be positive and at most 10 a second per listener (each "
                     "listener may send 20 commands a second)")
    return run_in_temp_dir("gossip", args, bench, print_table)


if __name__ == "__main__":
    sys.exit(main())
