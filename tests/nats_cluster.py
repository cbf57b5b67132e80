"""A real NATS cluster for the tests: three nats-server processes with JetStream, routed to each
other on loopback, each with its own store directory and a user and password."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import require
from samba import free_port

USER = "segue"
PASSWORD = "nats-password-for-tests"


class NatsServer:
    def __init__(self, root: Path, name: str, port: int, cluster_port: int,
                 routes: list[int]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.name = name
        self.port = port
        self.config = root / "nats.conf"
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.config.write_text(f"""
server_name: {name}
listen: 127.0.0.1:{port}
authorization {{ user: {USER}, password: "{PASSWORD}" }}
jetstream {{ store_dir: "{root / 'store'}", max_memory_store: 64MB, max_file_store: 512MB }}
cluster {{
  name: segue-test
  listen: 127.0.0.1:{cluster_port}
  routes: [{route_urls}]
}}
""")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require("nats-server", "nats-server")
        log = open(self.root / "nats.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log()
                assert time.monotonic() < deadline, f"nats-server {self.name} did not start"
                time.sleep(0.05)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return (self.root / "nats.log").read_text(errors="replace")


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        ports = [free_port() for _ in range(size)]
        cluster_ports = [free_port() for _ in range(size)]
        self.servers = [
            NatsServer(root / f"n{i}", f"n{i}", ports[i], cluster_ports[i],
                       [p for j, p in enumerate(cluster_ports) if j != i])
            for i in range(size)]
        self.password_file = root / "nats.password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def stop(self) -> None:
        for server in self.servers:
            server.kill()

    def plugin_table(self, **extra: object) -> str:
        """A [plugins.nats] table for a segued that uses this cluster."""
        urls = ", ".join(f'"{u}"' for u in self.urls)
        lines = [f"servers = [{urls}]", f'user = "{USER}"',
                 f'password_file = "{self.password_file}"',
                 *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
        return "\n[plugins.nats]\n" + "\n".join(lines) + "\n"
