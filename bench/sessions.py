"""Benchmark: playback sessions on one worker: idle event streams, and commands to events.

This prints figures; it judges nothing. One segued (one process, `[sessions] heartbeat_s` as
--heartbeat, 15 s by default as in the product), on loopback, and a trio load generator in
this process:

* commands: --users listeners, each with one event stream, and --rate commands a second in
  all (`set_shuffle`, toggled, so every command changes the state), sent over 32 keep-alive
  connections for --seconds. Reported: the time from a command's request going out to its
  event arriving on that listener's stream (p50, p99, max), the rate achieved, errors.
* then idle: --subscribers event streams (`/v1/session/events`) spread over the listeners,
  opened over a ramp, then held for --hold heartbeat periods. Reported: the node's RSS with
  them open (and before), and how late each heartbeat came (the gap between two heartbeats
  on one stream, less heartbeat_s): p50, p99, max.

Tokens are minted in-process with the node's auth key (one per listener). The generator and
segued share the machine's cores; their CPU times are reported so the reader can tell who
was busy.

    .venv/bin/python bench/sessions.py [--subscribers 10000] [--users 1000] [--rate 1000]
        [--seconds 20] [--heartbeat 15] [--hold 3] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

from common import (
    BenchError,
    free_port,
    get,
    log,
    machine,
    pinning,
    run,
    run_in_temp_dir,
    stop,
    wait_ready,
)

CONNECTIONS = 32


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values_s: list[float]) -> dict[str, float | int | None]:
    ms = [v * 1000 for v in values_s]
    return {"count": len(ms), "p50_ms": _percentile(ms, 0.5), "p99_ms": _percentile(ms, 0.99),
            "max_ms": max(ms) if ms else None,
            "mean_ms": statistics.fmean(ms) if ms else None}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stream:
    """One event stream: heartbeat gaps and event arrival times, read from raw bytes."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.heartbeats: list[float] = []
        self.events = 0
        self.on_event: list[float] = []

    async def run(self, port: int, token: str, device: str,
                  ready: trio.MemorySendChannel[None], pending: dict[str, float]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = (f"GET /v1/session/events?device={device} HTTP/1.1\r\nHost: bench\r\n"
                   f"Authorization: Bearer {token}\r\n\r\n").encode()
        async with stream:
            await stream.send_all(request)
            buffer = b""
            announced = False
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                now = trio.current_time()
                for line in lines:
                    if line.startswith(b": heartbeat"):
                        self.heartbeats.append(now)
                    elif line.startswith(b"id: "):
                        self.events += 1
                        sent = pending.pop(self.user, None)
                        if sent is not None:
                            self.on_event.append(now - sent)
                        if not announced:
                            announced = True
                            await ready.send(None)


async def post_command(stream: trio.SocketStream, buffer: bytearray, token: str,
                       body: bytes) -> tuple[int, bytes]:
    """POST one session command on a keep-alive connection: (status, answer body)."""
    await stream.send_all(
        b"POST /v1/session/commands HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body)
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        data = await stream.receive_some(65536)
        if not data:
            raise BenchError("the node closed a command connection")
        buffer += data
    head = bytes(buffer[:end]).decode("latin-1")
    length = int(next(line.split(":", 1)[1] for line in head.split("\r\n")
                      if line.lower().startswith("content-length:")))
    while len(buffer) < end + 4 + length:
        buffer += await stream.receive_some(65536)
    answer = bytes(buffer[end + 4:end + 4 + length])
    del buffer[:end + 4 + length]
    return int(head.split(" ", 2)[1]), answer


async def _idle(port: int, pid: int, tokens: list[str], subscribers: int, heartbeat: float,
                hold: int) -> dict[str, object]:
    streams = [Stream(f"u{n % len(tokens)}") for n in range(subscribers)]
    rss_before = _rss_mib(pid)
    send, receive = trio.open_memory_channel[None](subscribers)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n, s in enumerate(streams):
            nursery.start_soon(s.run, port, tokens[n % len(tokens)], f"idle{n}", send, {})
            if n % 200 == 199:
                await trio.sleep(0.05)  # a ramp, as players arrive
        for _ in range(subscribers):
            await receive.receive()
        opened = trio.current_time() - started
        log(f"{subscribers} streams open after {opened:.1f} s; holding {hold} heartbeats")
        held_from = trio.current_time()
        await trio.sleep(heartbeat * hold + heartbeat / 2)
        rss = _rss_mib(pid)
        nursery.cancel_scope.cancel()
    late: list[float] = []
    missing = 0
    for s in streams:
        beats = [b for b in s.heartbeats if b >= held_from]
        if len(beats) < hold - 1:
            missing += 1
        late += [max(0.0, b - a - heartbeat) for a, b in itertools.pairwise(beats)]
    return {"subscribers": subscribers, "open_s": round(opened, 2),
            "rss_mib_before": round(rss_before, 1), "rss_mib": round(rss, 1),
            "rss_kib_per_stream": round((rss - rss_before) * 1024 / subscribers, 2),
            "heartbeat_late": _summary(late), "streams_missing_heartbeats": missing}


async def _commands(port: int, tokens: list[str], users: int, rate: float,
                    seconds: float) -> dict[str, object]:
    pending: dict[str, float] = {}
    streams = [Stream(f"u{n}") for n in range(users)]
    send, receive = trio.open_memory_channel[None](users)
    errors = 0
    sent = 0
    async with trio.open_nursery() as nursery:
        for n, s in enumerate(streams):
            nursery.start_soon(s.run, port, tokens[n], f"dev{n}", send, pending)
        for _ in range(users):
            await receive.receive()
        log(f"{users} listeners subscribed; {rate:g} commands/s for {seconds:g} s")
        shuffle = [False] * users
        interval = 1 / rate
        start = trio.current_time()
        total = int(rate * seconds)
        slots: list[int] = list(range(total))

        async def sender(index: int) -> None:
            nonlocal errors, sent
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            buffer = bytearray()
            async with stream:
                while slots:
                    n = slots.pop(0)
                    await trio.sleep_until(start + n * interval)
                    user = n % users
                    shuffle[user] = not shuffle[user]
                    body = json.dumps({"type": "set_shuffle", "device": f"dev{user}",
                                       "shuffle": shuffle[user]}).encode()
                    pending[f"u{user}"] = trio.current_time()
                    status, _ = await post_command(stream, buffer, tokens[user], body)
                    sent += 1
                    if status != 200:
                        errors += 1
                        pending.pop(f"u{user}", None)

        async with trio.open_nursery() as senders:
            for i in range(CONNECTIONS):
                senders.start_soon(sender, i)
        elapsed = trio.current_time() - start
        await trio.sleep(1)  # the last events
        nursery.cancel_scope.cancel()
    latencies = [v for s in streams for v in s.on_event]
    return {"users": users, "rate_wanted": rate, "rate_achieved": round(sent / elapsed, 1),
            "commands": sent, "errors": errors, "events_matched": len(latencies),
            "command_to_event": _summary(latencies)}


def _server_histogram(port: int) -> dict[str, float | None]:
    """segued's own command-to-event histogram: the upper bounds of the buckets holding the
    median and the 99th percentile (the node's side alone, without this generator's delays)."""
    status, body = get(port, "/metrics")
    buckets: list[tuple[float, float]] = []
    for line in body.decode().splitlines():
        if line.startswith("segue_session_command_to_event_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    if status != 200 or not buckets or not buckets[-1][1]:
        return {"p50_ms_at_most": None, "p99_ms_at_most": None}
    total = buckets[-1][1]

    def bound(q: float) -> float:
        return next(b for b, count in buckets if count >= q * total) * 1000

    return {"p50_ms_at_most": bound(0.5), "p99_ms_at_most": bound(0.99), "events": total}


def mint_tokens(conf: Path, users: int) -> list[str]:
    """Tokens for listeners u0 .. u{users-1}, signed in-process with the node's auth key (the
    `segue token` command would cost a process start each)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))
    from segue import config
    from segue.configured_keys import load_signing_key
    from segue.seal.tokens import issue

    settings = config.load(conf)
    key = load_signing_key(settings.auth.signing_key, "auth.signing_key", settings)
    return [issue(key, f"u{n}", ttl=86400, tracks=None, audience=settings.auth.audience,
                  issuer=settings.auth.issuer) for n in range(users)]


def bench(args: argparse.Namespace, t: Path) -> dict[str, object]:
    segue = Path(sys.executable).with_name("segue")
    # The generator and segued each hold one descriptor a stream (segued inherits the limit).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.subscribers + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise BenchError(f"the open-file limit is {hard}; {args.subscribers} streams need "
                         f"{wanted} (ulimit -Hn, or fewer --subscribers)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    node = t / "node"
    run([str(segue), "init", str(node), "--listen", f"127.0.0.1:{port}"], timeout=120)
    conf = node / "segued.toml"
    text = conf.read_text().replace(
        "[http]\n", f"[http]\nmax_connections = {args.subscribers + args.users + 1000}\n", 1)
    conf.write_text(text + f'\n[log]\nformat = "json"\nlevel = "warning"\n[sessions]\n'
                    f'heartbeat_s = {args.heartbeat}\nmax_subscribers = '
                    f'{args.subscribers + 1000}\ncommands_per_s = 100.0\n')
    users = max(args.users, 1)
    tokens = mint_tokens(conf, users)
    # segued on one CPU, this generator on the other (when there are two).
    pin_server, pin_self = pinning(not args.no_pin)
    if pin_self:
        os.sched_setaffinity(0, {int(pin_self[-1])})
    log_file = t / "segued.log"
    with log_file.open("ab") as out:
        proc = subprocess.Popen([*pin_server, str(segue), "run", "--config", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        wait_ready(proc, port, "/healthz", log_file)
        cpu_before = _cpu_s(proc.pid)
        results: dict[str, object] = {}
        wall = time.monotonic()
        # Commands first: streams the generator closes are noticed by segued at their next
        # heartbeat, so 10,000 just-closed idle streams would still weigh on the commands.
        if args.rate:
            results["commands"] = trio.run(_commands, port, tokens, users, args.rate,
                                           args.seconds)
        if args.subscribers:
            results["idle"] = trio.run(_idle, port, proc.pid, tokens, args.subscribers,
                                       args.heartbeat, args.hold)
        results["segued_cpu_s"] = round(_cpu_s(proc.pid) - cpu_before, 2)
        results["server_command_to_event"] = _server_histogram(port)  # the commands' events
        results["wall_s"] = round(time.monotonic() - wall, 2)
    finally:
        stop(proc, __import__("signal").SIGTERM)
    return {"machine": machine(os.getloadavg()[0], ("segue", "trio")),
            "setup": {"pinning": (f"segued on CPU {pin_server[-1]}, generator on CPU "
                                  f"{pin_self[-1]}" if pin_server else "none"),
                      "subscribers": args.subscribers, "users": users, "rate": args.rate,
                      "seconds": args.seconds, "heartbeat_s": args.heartbeat,
                      "hold_heartbeats": args.hold},
            "results": results}


def print_table(report: dict) -> None:
    r = report["results"]
    if "idle" in r:
        i = r["idle"]
        late = i["heartbeat_late"]
        print(f"idle: {i['subscribers']} streams open in {i['open_s']} s; segued RSS "
              f"{i['rss_mib_before']} -> {i['rss_mib']} MiB ({i['rss_kib_per_stream']} KiB a "
              f"stream); heartbeats late by p50 {late['p50_ms']:.1f} / p99 {late['p99_ms']:.1f}"
              f" / max {late['max_ms']:.1f} ms; {i['streams_missing_heartbeats']} streams "
              "missed heartbeats")
    if "commands" in r:
        c = r["commands"]
        e = c["command_to_event"]
        print(f"commands: {c['commands']} at {c['rate_achieved']}/s (wanted "
              f"{c['rate_wanted']:g}) over {c['users']} listeners, {c['errors']} errors; "
              f"command to event p50 {e['p50_ms']:.1f} / p99 {e['p99_ms']:.1f} / max "
              f"{e['max_ms']:.1f} ms ({c['events_matched']} matched)")
    server = r["server_command_to_event"]
    print(f"segued's own command to event (histogram buckets): p50 <= "
          f"{server['p50_ms_at_most']} ms, p99 <= {server['p99_ms_at_most']} ms")
    print(f"segued CPU {r['segued_cpu_s']} s over {r['wall_s']} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000,
                        help="idle event streams (0: skip that part)")
    parser.add_argument("--users", type=int, default=1000, help="listeners")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="commands a second in all (0: skip that part)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of commands")
    parser.add_argument("--heartbeat", type=float, default=15.0,
                        help="[sessions] heartbeat_s for the run")
    parser.add_argument("--hold", type=int, default=3, help="heartbeats the idle streams hold")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.subscribers < 0 or args.rate < 0 or args.users < 1 or args.hold < 2:
        parser.error("--subscribers and --rate must not be negative, --users at least 1, "
                     "--hold at least 2")
    return run_in_temp_dir("sessions", args, bench, print_table)


if __name__ == "__main__":
    sys.exit(main())
