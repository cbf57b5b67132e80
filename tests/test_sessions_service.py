"""The sessions service in-process: what it keeps per listener stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from segue.metrics import Metrics
from segue.sessions import service
from segue.sessions.service import RateLimited, Sessions
from segue.sessions.store import SessionStore


async def no_length(track: str) -> int | None:
    return None


def test_a_listener_silent_for_ten_minutes_leaves_nothing_behind_but_its_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: now[0])
    sessions = Sessions("n1", SessionStore(tmp_path / "s.sqlite"), Metrics(),
                        device_timeout_s=3600, commands_per_s=0.001, command_burst=2,
                        duration_ms=no_length, is_track=lambda t: len(t) == 16)

    async def main() -> None:
        for user in ("alice", "bob"):
            for _ in range(2):
                await sessions.command(user, {"type": "ping", "device": "d1",
                                              "command_id": "c1"})
            with pytest.raises(RateLimited):  # the burst of two is spent
                await sessions.command(user, {"type": "ping", "device": "d1"})
        now[0] += service.FORGET_IDLE_S + 1  # 0.6 tokens refilled at this rate: not one
        sessions._forget_idle_listeners()
        assert not sessions._buckets and not sessions._recent
        # Their sessions stay; their buckets are full again when they come back.
        assert sessions.view("alice")["devices"][0]["device_id"] == "d1"
        await sessions.command("alice", {"type": "ping", "device": "d1"})
        await sessions.command("alice", {"type": "ping", "device": "d1"})
        assert set(sessions._buckets) == {"alice"}

    trio.run(main)


def test_a_remote_merge_says_whether_it_changed_the_session(tmp_path: Path) -> None:
    def node(name: str) -> Sessions:
        return Sessions(name, SessionStore(tmp_path / f"{name}.sqlite"), Metrics(),
                        device_timeout_s=3600, commands_per_s=100, command_burst=100,
                        duration_ms=no_length, is_track=lambda t: len(t) == 16)

    here, there = node("n1"), node("n2")

    async def main() -> None:
        await there.command("alice", {"type": "ping", "device": "phone"})
        await there.command("alice", {"type": "set_shuffle", "device": "phone",
                                      "shuffle": True})

    trio.run(main)
    state = there.export("alice")
    assert here.merge_remote("alice", state) == "applied"
    assert here.export("alice") == state
    assert here.merge_remote("alice", state) == "unchanged"  # a duplicate
    assert here.apply_remote("alice", state)  # the older call, the same merge
    assert here.merge_remote("alice", {"playback": "no"}) == "malformed"
    assert not here.apply_remote("alice", {"playback": "no"})
    assert here.merge_remote("", state) == "malformed"
    assert here.export("alice") == state
