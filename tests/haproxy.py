"""A real HAProxy for the tests: a frontend and a backend of server-template slots that
health-checks /healthz, with an admin socket in a temp dir."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from conftest import require
from samba import free_port


class HAProxy:
    def __init__(self, root: Path, slots: int = 4, servers: list[str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.socket = root / "admin.sock"
        self.conf = root / "haproxy.cfg"
        self.conf.write_text(f"""global
    stats socket {self.socket} level admin mode 600
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend be
backend be
    balance roundrobin
    option httpchk GET /healthz
    default-server inter 200ms fastinter 100ms downinter 200ms rise 1 fall 2 check
""" + (f"    server-template edge 1-{slots} 127.0.0.1:1 disabled\n" if slots else "")
          + "".join(f"    {line}\n" for line in servers or ()))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require("haproxy", "haproxy")
        # A stopped HAProxy leaves its socket file: the new one is ready when it makes it anew.
        self.socket.unlink(missing_ok=True)
        log = open(self.root / "haproxy.out", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([binary, "-db", "-f", str(self.conf)], stdout=log,
                                     stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "haproxy.out").read_text())
            time.sleep(0.02)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def admin_state(self, server: str) -> int:
        """srv_admin_state of be/SERVER from `show servers state` (bit 0x01 maint, 0x08 drain)."""
        for line in self.command("show servers state be").splitlines():
            fields = line.split()
            if len(fields) > 6 and fields[3] == server:
                return int(fields[6])
        raise AssertionError(f"no server {server}")

    def status(self, server: str) -> str:
        for line in self.command("show stat").splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "be" and fields[1] == server:
                return fields[17]
        raise AssertionError(f"no server {server}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
