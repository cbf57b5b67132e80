"""Real MariaDB servers for the tests: mariadbd on loopback, all state in a temp dir."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pymysql

from conftest import require
from samba import free_port

BINLOG_FLAGS = ["--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"]


class MariaDB:
    """One mariadbd with binary logging, user root without a password, on a free port."""

    def __init__(self, root: Path, server_id: int, binlog_flags: list[str] | None = None) -> None:
        self.root = root
        self.server_id = server_id
        self.port = free_port()
        self.flags = BINLOG_FLAGS if binlog_flags is None else binlog_flags
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        install = require("mariadb-install-db", "mariadb-server")
        subprocess.run([install, "--no-defaults", f"--datadir={root}/data",
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        "--user=root", "--skip-name-resolve"],
                       check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        mariadbd = require("mariadbd", "mariadb-server")
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={self.root}/data",
             f"--socket={self.root}/mysqld.sock", f"--port={self.port}",
             "--bind-address=127.0.0.1", "--user=root", f"--pid-file={self.root}/mysqld.pid",
             f"--log-error={self.root}/error.log", "--skip-name-resolve",
             f"--server-id={self.server_id}", f"--log-bin={self.root}/binlog", *self.flags,
             "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "error.log").read_text()[-2000:])
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def connect(self, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                               database=database, autocommit=True, connect_timeout=5)

    def execute(self, sql: str, *args: object, database: str | None = "segue_catalogue") -> list:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                return list(cur.fetchall())
        finally:
            conn.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None
