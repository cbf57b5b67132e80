"""Real Serf agents for the tests: each with its own bind and RPC ports on loopback, a keyring
file (so `serf keys` rotations work as in production) and an RPC auth key."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import msgpack

from conftest import require
from samba import free_port

RPC_AUTH = "rpc-secret-for-tests"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


class SerfAgent:
    def __init__(self, root: Path, name: str, keys: list[str], join: list[str] = (),
                 profile: str = "local") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.name = name
        self.bind_port = free_port()
        self.rpc_port = free_port()
        self.auth_file = root / "rpc-auth"
        self.auth_file.write_text(RPC_AUTH + "\n")
        self.auth_file.chmod(0o600)
        keyring = root / "keyring.json"
        keyring.write_text(json.dumps(keys))
        (root / "serf.json").write_text(json.dumps({
            "node_name": name, "bind": f"127.0.0.1:{self.bind_port}",
            "rpc_addr": f"127.0.0.1:{self.rpc_port}", "rpc_auth": RPC_AUTH,
            "keyring_file": str(keyring), "profile": profile, "log_level": "info",
            "retry_join": list(join), "retry_interval": "1s"}))
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.bind_port}"

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        binary = require("serf", "serf")
        log = open(self.root / "serf.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([binary, "agent", f"-config-file={self.root / 'serf.json'}"],
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while self._run("members").returncode != 0:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"serf agent {self.name} did not start"
            time.sleep(0.1)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [require("serf", "serf"), *args, f"-rpc-addr={self.rpc_address}",
             f"-rpc-auth={RPC_AUTH}"], capture_output=True, text=True, timeout=30)

    def cli(self, *args: str) -> str:
        """Run `serf ARGS` against this agent (as an operator would); its output."""
        result = self._run(*args)
        assert result.returncode == 0, f"serf {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def keyring(self, action: str, *key: str, attempts: int = 5) -> str:
        """`serf keys -ACTION [KEY]` until every member reports success, as Serf's key-rotation
        guide tells operators; its output. Each goes out as a query, and a member that answers
        after the query's timeout (a loaded host) is counted as failed although nothing is
        wrong. The operations are idempotent, so running one again is safe."""
        for _ in range(attempts - 1):
            result = self._run("keys", f"-{action}", *key)
            if result.returncode == 0:
                return result.stdout
            assert "nodes reported success" in result.stdout + result.stderr, (
                f"serf keys -{action}: {result.stdout}{result.stderr}")
            time.sleep(1.0)
        return self.cli("keys", f"-{action}", *key)

    def members(self) -> dict[str, str]:
        """name -> status, as this agent sees the cluster."""
        doc = json.loads(self.cli("members", "-format=json"))
        return {m["name"]: m["status"] for m in doc["members"]}

    def keys(self) -> list[str]:
        """The keyring keys the cluster holds (`serf keys -list`)."""
        return re.findall(r"^(\S+=)\s+\[\d+/\d+\]", self.keyring("list"), re.M)

    def send_event(self, name: str, payload: bytes) -> None:
        """Fire a user event through this agent's RPC port with any payload (the `serf event`
        command cannot carry arbitrary bytes): what a hostile or broken peer could send."""
        with socket.create_connection(("127.0.0.1", self.rpc_port), timeout=5) as s:
            unpacker = msgpack.Unpacker(raw=False)
            for seq, (command, body) in enumerate([
                    ("handshake", {"Version": 1}), ("auth", {"AuthKey": RPC_AUTH}),
                    ("event", {"Name": name, "Payload": payload, "Coalesce": False})]):
                s.sendall(msgpack.packb({"Command": command, "Seq": seq})
                          + msgpack.packb(body, use_bin_type=True))
                while (reply := next(unpacker, None)) is None:
                    unpacker.feed(s.recv(4096))
                assert reply == {"Seq": seq, "Error": ""}, reply

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return (self.root / "serf.log").read_text(errors="replace")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05,
               explain=lambda: ""):
    """Poll `predicate` until it returns something true; fail naming `what` (and what
    `explain()` says) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} (after {timeout:g} s) {explain()}"
        time.sleep(interval)


def gossip_table(agent: SerfAgent, node_id: str, anti_entropy_s: float = 2.0) -> str:
    """The lines a segued configuration needs to carry its sessions over `agent`."""
    return f"""
[node]
id = "{node_id}"

[plugins.gossip]
rpc_address = "{agent.rpc_address}"
rpc_auth_file = "{agent.auth_file}"
anti_entropy_interval_s = {anti_entropy_s}
peer_listen = "127.0.0.1:0"
timeout_s = 2.0
"""
