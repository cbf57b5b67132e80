"""The F5 plugin against the fake iControl REST server: registration, drain, F5 misbehaving."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Node, make_tone, with_plugins
from fake_f5 import FakeF5

POOL = "edge_pool"


@pytest.fixture
def f5() -> Iterator[FakeF5]:
    fake = FakeF5(username="svc-segue", password="pw")
    fake.start()
    fake.add_pool(POOL)
    yield fake
    fake.stop()


def configure(node: Node, fake: FakeF5, **extra: object) -> None:
    secret = node.root / "f5.password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    table = {"management_url": fake.url, "allow_plain_http": True, "username": "svc-segue",
             "password_file": "f5.password", "pool": POOL, "reconcile_interval_s": 0.3,
             "request_timeout_s": 1.0, "retry_deadline_s": 3.0, **extra}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    node.conf.write_text(node.conf.read_text() + f"\n[plugins.f5]\n{lines}\n"
                         + "\n[plugin_host]\nhealth_interval_s = 0.3\n")


def member_of(node: Node) -> str:
    return node.base.removeprefix("http://")


def wait_until(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def session_of(fake: FakeF5, node: Node) -> str | None:
    member = fake.member(POOL, member_of(node))
    return None if member is None else member["session"]


def state_of(fake: FakeF5, node: Node) -> str | None:
    member = fake.member(POOL, member_of(node))
    return None if member is None else member["state"]


def writes(fake: FakeF5, node: Node) -> list[tuple[str, dict | None]]:
    """The member writes the node made, in order: POSTs and PATCHes of its member."""
    name = member_of(node)
    return [(c.method, c.body) for c in fake.calls
            if c.method in ("POST", "PATCH", "DELETE")
            and (c.path.endswith(f"~Common~{name}") or
                 (c.method == "POST" and c.path.endswith("/members")))]


def healthz(node: Node) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(node.base + "/healthz", timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


def test_created_disabled_enabled_when_ready_drained_then_forced_offline(
        fresh_node: Node, f5: FakeF5, tmp_path: Path) -> None:
    source = make_tone(tmp_path / "long.wav", ["-c:a", "pcm_s16le"], seconds=30, title="L")
    (track,) = fresh_node.pack(source)
    configure(fresh_node, f5)
    fresh_node.start()
    wait_until(lambda: session_of(f5, fresh_node) == "user-enabled")
    first_write, *later = writes(f5, fresh_node)
    assert first_write[0] == "POST"
    assert (first_write[1]["session"], first_write[1]["state"]) == ("user-disabled", "user-up")
    assert ("PATCH", {"session": "user-enabled", "state": "user-up"}) in later

    f5.set_cur_conns(POOL, member_of(fresh_node), 2)
    body = bytearray()
    done = threading.Event()

    def slow_player() -> None:
        with urllib.request.urlopen(fresh_node.url(track, fresh_node.token()), timeout=60) as r:
            while piece := r.read(32768):
                body.extend(piece)
                time.sleep(0.01)
        done.set()

    threading.Thread(target=slow_player, daemon=True).start()
    time.sleep(0.3)
    fresh_node.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: session_of(f5, fresh_node) == "user-disabled", timeout=5)
    assert state_of(f5, fresh_node) != "user-down"  # disabled, not yet forced offline
    time.sleep(1.0)
    assert state_of(f5, fresh_node) != "user-down", "F5 still has connections open"
    f5.set_cur_conns(POOL, member_of(fresh_node), 0)
    assert done.wait(60)
    assert fresh_node.proc.wait(timeout=30) == 0
    assert bytes(body) == source.read_bytes()
    member = f5.member(POOL, member_of(fresh_node))
    assert (member["session"], member["state"]) == ("user-disabled", "user-down")
    assert f5.tokens == {}  # the token was deleted at exit


def test_an_ephemeral_member_is_deleted_at_stop(fresh_node: Node, f5: FakeF5) -> None:
    configure(fresh_node, f5, ephemeral=True)
    fresh_node.start()
    wait_until(lambda: session_of(f5, fresh_node) == "user-enabled")
    assert fresh_node.stop() == 0
    assert f5.member(POOL, member_of(fresh_node)) is None


def test_f5_down_at_start_the_node_serves_and_registers_when_it_returns(
        fresh_node: Node, f5: FakeF5) -> None:
    f5.set_down(True)
    configure(fresh_node, f5)
    fresh_node.start()
    wait_until(lambda: healthz(fresh_node)[1] == "degraded: plugin f5 degraded")
    assert healthz(fresh_node)[0] == 200
    f5.set_down(False)
    wait_until(lambda: session_of(f5, fresh_node) == "user-enabled")
    wait_until(lambda: healthz(fresh_node) == (200, "ok"))


def test_a_token_expiring_mid_life_means_one_new_login(fresh_node: Node, f5: FakeF5) -> None:
    configure(fresh_node, f5)
    fresh_node.start()
    wait_until(lambda: session_of(f5, fresh_node) == "user-enabled")
    logins = sum(c.path == "/mgmt/shared/authn/login" for c in f5.calls)
    f5.expire_tokens()
    wait_until(lambda: sum(c.path == "/mgmt/shared/authn/login" for c in f5.calls) == logins + 1)
    time.sleep(1.0)
    assert sum(c.path == "/mgmt/shared/authn/login" for c in f5.calls) == logins + 1
    assert healthz(fresh_node) == (200, "ok")
    assert len(f5.tokens) == 1


def _direct(fake: FakeF5, method: str, path: str, body: dict | None = None) -> int:
    """A call by an operator (or another client) with a token of its own."""
    login = urllib.request.Request(fake.url + "/mgmt/shared/authn/login", method="POST",
                                   data=json.dumps({"username": "svc-segue", "password": "pw",
                                                    "loginProviderName": "tmos"}).encode(),
                                   headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=5) as r:
        token = json.load(r)["token"]["token"]
    request = urllib.request.Request(fake.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"X-F5-Auth-Token": token,
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_409_on_create_is_reconciled(fresh_node: Node, f5: FakeF5) -> None:
    configure(fresh_node, f5)
    # The node's first look at its member is slow; meanwhile someone else creates it.
    f5.delay_next(1, 0.7, path_contains="/members/~Common~")  # under request_timeout_s
    fresh_node.start()
    name = member_of(fresh_node)
    # The node's GET has arrived (and found nothing); its answer is on its way, slowly.
    wait_until(lambda: any(c.method == "GET" and c.path.endswith(name) for c in f5.calls))
    address = name.split(":")[0]
    assert _direct(f5, "POST", f"/mgmt/tm/ltm/pool/~Common~{POOL}/members",
                   {"name": name, "partition": "Common", "address": address,
                    "session": "user-disabled", "state": "user-down"}) == 200
    wait_until(lambda: session_of(f5, fresh_node) == "user-enabled")
    assert any(c.method == "POST" and c.status == 409 for c in f5.calls)


@pytest.mark.parametrize("mode", ["fix", "report"])
def test_a_member_edited_by_hand(fresh_node: Node, f5: FakeF5, mode: str) -> None:
    configure(fresh_node, f5, reconcile=mode)
    fresh_node.start()
    wait_until(lambda: session_of(f5, fresh_node) == "user-enabled")
    path = f"/mgmt/tm/ltm/pool/~Common~{POOL}/members/~Common~{member_of(fresh_node)}"
    assert _direct(f5, "PATCH", path, {"session": "user-disabled", "state": "user-up"}) == 200
    if mode == "fix":
        wait_until(lambda: session_of(f5, fresh_node) == "user-enabled", timeout=5)
    else:
        wait_until(lambda: any(e.get("event") == "F5 member differs from what the node wants"
                               for e in fresh_node.log_events()), timeout=5)
        assert session_of(f5, fresh_node) == "user-disabled"


def test_500s_and_timeouts_are_retried(fresh_node: Node, f5: FakeF5) -> None:
    f5.fail_next(3, 500, html=True)
    f5.delay_next(1, 2.0, path_contains="/members")
    configure(fresh_node, f5)
    fresh_node.start()
    wait_until(lambda: session_of(f5, fresh_node) == "user-enabled")
    with urllib.request.urlopen(fresh_node.base + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    retries = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith('segue_f5_calls_total{outcome="retry"}'))
    assert retries >= 4


def test_a_failing_node_disables_its_member(fresh_node: Node, f5: FakeF5, tmp_path: Path,
                                            plugin_path: str) -> None:
    configure(fresh_node, f5)
    fresh_node.conf.write_text(fresh_node.conf.read_text()
                               + '\n[plugins.example]\nhealth = "failing"\nreason = "test"\n')
    fresh_node.start(env={"PYTHONPATH": with_plugins(plugin_path),
                          "SEGUE_PLUGINS_ALLOW": "f5,example"},
                     wait=False)
    fresh_node.base = "http://" + fresh_node.wait_for_event("listening")["addresses"][0]
    wait_until(lambda: f5.member(POOL, member_of(fresh_node)) is not None)
    time.sleep(1.0)
    assert session_of(f5, fresh_node) == "user-disabled"


def test_an_http_monitor_on_healthz_is_created_and_attached(fresh_node: Node,
                                                            f5: FakeF5) -> None:
    configure(fresh_node, f5, create_monitor=True)
    fresh_node.start()
    wait_until(lambda: session_of(f5, fresh_node) == "monitor-enabled")
    monitor = next(iter(f5.monitors.values()))
    assert monitor["send"].startswith("GET /healthz HTTP/1.1\r\n")
    assert "ok" in monitor["recv"]
    assert f5.pool_config[f"/Common/{POOL}"]["monitor"].strip() == "/Common/segue_healthz"


def test_a_misspelt_key_is_refused_with_the_nearest_one(fresh_node: Node, f5: FakeF5) -> None:
    from conftest import segue

    configure(fresh_node, f5, membr_port=8443)
    result = segue("check-config", "--config", fresh_node.conf, check=False)
    assert result.returncode == 2
    assert "[plugins.f5] unknown key 'membr_port'; did you mean 'member_port'?" in result.stderr
