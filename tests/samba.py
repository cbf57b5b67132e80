"""Real Samba servers for the tests: one smbd per share, on loopback, all state in a temp dir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import require

USER = "root"  # smbd maps SMB users onto system accounts; the tests run as root
PASSWORD = "s3cret-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Smbd:
    """One smbd serving one share named "media" from `root / "share"`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.port = free_port()
        self.share_dir = root / "share"
        self.proc: subprocess.Popen | None = None
        for sub in ("share", "private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.conf = root / "smb.conf"
        self.conf.write_text(f"""[global]
  server role = standalone server
  workgroup = TESTGRP
  netbios name = SEGUE{name.upper()[:8]}
  smb ports = {self.port}
  bind interfaces only = yes
  interfaces = lo
  disable netbios = yes
  private dir = {root}/private
  lock directory = {root}/lock
  state directory = {root}/state
  cache directory = {root}/cache
  pid directory = {root}/pid
  ncalrpc dir = {root}/ncalrpc
  log file = {root}/log/log.%m
  passdb backend = tdbsam:{root}/private/passdb.tdb
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_10
  usershare max shares = 0
[media]
  path = {self.share_dir}
  read only = no
  force user = root
""")
        smbpasswd = require("smbpasswd", "samba")
        subprocess.run([smbpasswd, "-c", str(self.conf), "-a", "-s", USER],
                       input=f"{PASSWORD}\n{PASSWORD}\n", text=True, check=True,
                       capture_output=True, timeout=30)

    @property
    def url(self) -> str:
        return f"smb://{USER}@127.0.0.1:{self.port}/media/segue"

    def start(self) -> None:
        smbd = require("smbd", "samba")
        log = open(self.root / "smbd.out", "ab")  # noqa: SIM115 - handed to the child
        # smbd signals its whole process group on exit: give it a session of its own (and
        # tell it not to make one itself, which would fail in a new session).
        self.proc = subprocess.Popen(
            [smbd, "--foreground", "--no-process-group", "--debug-stdout", "-d", "1", "-s",
             str(self.conf)],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smbd {self.name} exited: "
                                   f"{(self.root / 'smbd.out').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"smbd {self.name} did not listen on {self.port}")

    def open_files(self) -> list[str]:
        """The files clients hold open on this server now (`smbstatus -L`), as an operator
        would look for handles a client leaks."""
        smbstatus = require("smbstatus", "samba")
        out = subprocess.run([smbstatus, "-s", str(self.conf), "-L", "--json"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return sorted(json.loads(out).get("open_files", {}))

    def kill(self) -> None:
        """Kill smbd and every child at once, as a crash or a pulled cable would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """The end of a test: nothing of the share needs to survive, so no grace period."""
        self.kill()
