"""Anti-entropy over the peer channel: both sides of one round, on the node's sessions.

A round (the asking side):

    buckets  -> the peer's answer names the buckets that differ, with its digests in them
    exchange -> ours that differ go over; theirs that differ come back (batches of peer.BATCH)

Each side merges what it receives with ``node.sessions.apply_remote``, so after a round both
hold the join of the two for every listener that differed. The answering side validates every
request: a peer is trusted to hold the keyring, not to be bug-free.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import segue
from segue_gossip import digests
from segue_gossip.peer import BATCH

Call = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class RoundResult:
    sent: int = 0  # states sent to the peer
    received: int = 0  # states received from it
    changed: int = 0  # received states that changed ours (what gossip had not delivered)


class Sync:
    def __init__(self, sessions: segue.SessionsView) -> None:
        self.sessions = sessions

    # --- the answering side ---------------------------------------------------------------
    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "buckets":
            theirs = request.get("b")
            if not (isinstance(theirs, list) and len(theirs) == digests.BUCKETS
                    and all(isinstance(b, bytes) for b in theirs)):
                return {"error": "buckets: 256 hashes expected"}
            mine = self.sessions.digests()
            wanted = digests.differing(digests.bucket_hashes(mine), theirs)
            return {"d": digests.in_buckets(mine, wanted), "n": wanted}
        if op == "exchange":
            states, want = request.get("states", {}), request.get("want", [])
            if not (isinstance(states, dict) and isinstance(want, list)
                    and len(states) <= BATCH and len(want) <= BATCH):
                return {"error": f"exchange: at most {BATCH} states and {BATCH} wanted"}
            for user, state in states.items():
                self.sessions.apply_remote(str(user), state)  # malformed: dropped, counted
            found = {u: self.sessions.export(u) for u in want if isinstance(u, str)}
            return {"states": {u: s for u, s in found.items() if s is not None}}
        return {"error": f"unknown op {str(op)[:20]!r}"}

    # --- the asking side ------------------------------------------------------------------
    async def round(self, call: Call) -> RoundResult:
        mine = self.sessions.digests()
        answer = await call({"op": "buckets", "b": digests.bucket_hashes(mine)})
        theirs, buckets = answer.get("d"), answer.get("n")
        if not isinstance(theirs, dict) or not isinstance(buckets, list):
            raise ValueError("a buckets answer without digests")
        push, pull = digests.plan(digests.in_buckets(mine, buckets),
                                  {str(u): str(d) for u, d in theirs.items()})
        result = RoundResult()
        while push or pull:
            batch_push, push = push[:BATCH], push[BATCH:]
            batch_pull, pull = pull[:BATCH], pull[BATCH:]
            states = {u: s for u in batch_push if (s := self.sessions.export(u)) is not None}
            got = (await call({"op": "exchange", "states": states, "want": batch_pull}))
            result.sent += len(states)
            received = got.get("states")
            if not isinstance(received, dict):
                raise ValueError("an exchange answer without states")
            result.changed += self.merge(received)
            result.received += len(received)
        return result

    async def pull(self, call: Call, users: list[str]) -> int:
        """Fetch `users`' states (an announcement named them); how many changed ours."""
        got = await call({"op": "exchange", "states": {}, "want": users[:BATCH]})
        received = got.get("states")
        return self.merge(received) if isinstance(received, dict) else 0

    def merge(self, states: dict[Any, Any]) -> int:
        return sum(self.sessions.merge_remote(str(user), state) == "applied"
                   for user, state in states.items())
