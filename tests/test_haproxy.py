"""Two nodes behind a real HAProxy: they register, and one drains without failing a request."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Node, make_tone
from haproxy import HAProxy
from samba import free_port
from segue_haproxy.runtime import parse_stat

MAINT, DRAIN = 0x01, 0x08


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxy]:
    proxy = HAProxy(tmp_path / "haproxy")
    proxy.start()
    yield proxy
    proxy.stop()


def wait_until(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_parse_show_stat() -> None:
    text = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,status\n"
            "be,edge1,0,0,3,4,,10,UP\nbe,edge2,0,0,0,0,,0,MAINT\nbe,BACKEND,0,0,3,4,,10,UP\n")
    stat = parse_stat(text, "be", "edge1")
    assert stat is not None and (stat.status, stat.sessions) == ("UP", 3)
    assert parse_stat(text, "be", "edge9") is None


def test_a_draining_node_finishes_its_stream_and_no_request_fails(
        tmp_path: Path, haproxy: HAProxy) -> None:
    # 17 MB read at ~1.6 MB/s: more than HAProxy's and the kernel's buffers can absorb, so the
    # serving node has the stream in flight for seconds.
    source = make_tone(tmp_path / "long.wav", ["-c:a", "pcm_s16le"], seconds=90, title="L")
    nodes = {}
    for slot in ("edge1", "edge2"):
        node = Node.init(tmp_path / slot)
        if nodes:  # one identity provider for the fleet: both trust the first node's auth key
            first = next(iter(nodes.values()))
            for name in ("auth-ed25519.pem", "auth-ed25519.pem.pub"):
                shutil.copy2(first.root / "keys" / name, node.root / "keys" / name)
        node.pack(source)
        node.conf.write_text(node.conf.read_text() + (
            f'\n[plugins.haproxy]\nadmin_socket = "{haproxy.socket}"\nbackend = "be"\n'
            f'server = "{slot}"\n'))
        node.start()
        nodes[slot] = node
    try:
        wait_until(lambda: all(haproxy.status(s) == "UP" for s in nodes))
        any_node = next(iter(nodes.values()))
        track = next(iter(any_node.tracks))
        token = any_node.token()
        url = f"{haproxy.url}/v1/tracks/{track}?token={token}"

        body = bytearray()
        finished = threading.Event()

        def slow_player() -> None:
            with urllib.request.urlopen(url, timeout=60) as r:
                while piece := r.read(32768):
                    body.extend(piece)
                    time.sleep(0.02)
            finished.set()

        threading.Thread(target=slow_player, daemon=True).start()

        def streaming(slot: str) -> int:
            with urllib.request.urlopen(nodes[slot].base + "/v1/status", timeout=5) as r:
                return json.load(r)["streams_in_flight"]

        wait_until(lambda: sum(streaming(s) for s in nodes) == 1, timeout=30)
        serving = next(s for s in nodes if streaming(s) == 1)
        other = next(s for s in nodes if s != serving)
        nodes[serving].proc.send_signal(signal.SIGTERM)

        seen_states = set()
        failures = []
        answered_by = []
        while nodes[serving].proc.poll() is None:
            seen_states.add(haproxy.admin_state(serving))
            request = urllib.request.Request(url, headers={"Range": "bytes=0-99"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    if r.status != 206 or r.read() != source.read_bytes()[:100]:
                        failures.append(r.status)
            except Exception as e:  # any failure is one too many
                failures.append(e)
            answered_by.append(haproxy.status(other))
            time.sleep(0.05)
        assert nodes[serving].proc.wait(timeout=30) == 0
        assert finished.wait(60)
        assert bytes(body) == source.read_bytes()
        assert failures == []
        assert any(state & DRAIN for state in seen_states), seen_states
        assert haproxy.admin_state(serving) & MAINT
        assert haproxy.status(other) == "UP"
    finally:
        for node in nodes.values():
            node.stop()


def test_add_server_mode_registers_and_deletes_the_server(tmp_path: Path,
                                                         haproxy: HAProxy) -> None:
    node = Node.init(tmp_path / "dyn")
    node.conf.write_text(node.conf.read_text() + (
        f'\n[plugins.haproxy]\nmode = "add"\nadmin_socket = "{haproxy.socket}"\n'
        'backend = "be"\nserver = "dyn1"\n'))
    node.start()
    try:
        wait_until(lambda: "be,dyn1," in haproxy.command("show stat")
                   and haproxy.status("dyn1") == "UP")
        assert node.stop() == 0
        assert "be,dyn1," not in haproxy.command("show stat")
    finally:
        node.stop()


def test_agent_mode_answers_haproxys_agent_check(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "agent")
    node_port, agent_port = free_port(), free_port()
    node.conf.write_text(node.conf.read_text().replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{node_port}"') + (
        f'\n[plugins.haproxy]\nmode = "agent"\nbackend = "be"\nserver = "edge1"\n'
        f"agent_port = {agent_port}\n"))
    proxy = HAProxy(tmp_path / "haproxy", slots=0,
                    servers=[f"server edge1 127.0.0.1:{node_port} check agent-check "
                             f"agent-port {agent_port} agent-inter 200ms"])
    (track,) = node.pack(make_tone(tmp_path / "t.wav", ["-c:a", "pcm_s16le"], seconds=30,
                                   title="t"))
    proxy.start()
    node.start()

    def agent_says() -> str:
        with socket.create_connection(("127.0.0.1", agent_port), timeout=5) as s:
            return s.recv(100).decode().strip()

    try:
        wait_until(lambda: proxy.status("edge1") == "UP")
        assert agent_says() == "up ready"
        held = socket.create_connection(("127.0.0.1", node_port), timeout=10)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        held.sendall(f"GET /v1/tracks/{track}?token={node.token()} HTTP/1.1\r\nHost: x\r\n\r\n"
                     .encode())
        held.recv(1024)  # the stream has begun; it stays in flight while we do not read
        node.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: agent_says() == "drain")
        held.close()
        assert node.proc.wait(timeout=30) == 0
    finally:
        node.stop()
        proxy.stop()
