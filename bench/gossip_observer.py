"""A stand-in for a segued node in the gossip benchmark: it streams one user event name from
many Serf agents over their RPC ports and notes when each agent handed out each event.

bench/gossip.py runs 30 agents but only 3 segued nodes (each is a Python process with its
SQLite store and HTTP server; 30 would not fit on 2 cores beside the agents). What the other
agents deliver is what this program sees. It runs in its own process so that its CPU time is
its own and its event loop does not delay the load generator's, and it uses the gossip
plugin's own RPC client, so that it reads the agents as segued does.

    python bench/gossip_observer.py --auth-file FILE --event NAME HOST:PORT [HOST:PORT ...]

It prints "ready" once every stream is open. Each "report" line on stdin makes it print one
JSON line with what arrived since the previous report:

    {"arrivals": [[agent index, "USER STAMP", monotonic seconds], ...],
     "dropped": [records the client dropped, per agent], "undecodable": n}

Every session payload carries its user and stamps; "USER STAMP" (the latest stamp in the
delta, written as the SSE event id writes it) names one change. End of stdin ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import trio

from segue_gossip.serf_client import SerfClient, connect

TIMEOUT_S = 10.0


def _stamps(value: Any) -> list[tuple[int, int, str]]:
    """Every stamp ([wall_ms, counter, node]) inside a compact delta."""
    if isinstance(value, list):
        if (len(value) == 3 and type(value[0]) is int and type(value[1]) is int
                and isinstance(value[2], str)):
            return [(value[0], value[1], value[2])]
        return [s for v in value for s in _stamps(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _stamps(v)]
    return []


def change_key(data: bytes) -> str | None:
    """"USER STAMP" for a session payload ([kind, origin, user, delta]); None otherwise."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        user, stamps = doc[2], _stamps(doc[3])
    except Exception:  # msgpack raises several types; a foreign payload is only counted
        return None
    if not isinstance(user, str) or not stamps:
        return None
    wall, counter, node = max(stamps)
    return f"{user} {wall:x}.{counter:x}.{node}"


class Observer:
    def __init__(self, addresses: list[tuple[str, int]], auth: str, event: str) -> None:
        self.addresses = addresses
        self.auth = auth
        self.event = event
        self.arrivals: list[tuple[int, str, float]] = []
        self.undecodable = 0
        self.clients: list[SerfClient | None] = [None] * len(addresses)

    async def watch(self, index: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.addresses[index]
        async with connect(host, port, self.auth, TIMEOUT_S) as client, \
                client.stream(f"user:{self.event}") as events:
            self.clients[index] = client
            task_status.started()
            async for event in events:
                now = time.monotonic()
                key = change_key(event.get("Payload") or b"")
                if key is None:
                    self.undecodable += 1
                else:
                    self.arrivals.append((index, key, round(now, 6)))

    def report(self) -> str:
        doc = {"arrivals": self.arrivals, "undecodable": self.undecodable,
               "dropped": [c.dropped if c else 0 for c in self.clients]}
        self.arrivals = []
        return json.dumps(doc, separators=(",", ":"))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for index in range(len(self.addresses)):
                await nursery.start(self.watch, index)
            print("ready", flush=True)
            commands = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buffer = b""
            while data := await commands.receive_some(4096):
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip() == b"report":
                        sys.stdout.write(self.report() + "\n")
                        sys.stdout.flush()
            nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--auth-file", required=True, type=Path, help="the agents' RPC key")
    parser.add_argument("--event", required=True, help="the user event name to stream")
    parser.add_argument("agents", nargs="+", help="HOST:PORT of each agent's RPC")
    args = parser.parse_args()
    addresses = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in args.agents]
    observer = Observer(addresses, args.auth_file.read_text().strip(), args.event)
    trio.run(observer.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
