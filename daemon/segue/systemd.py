"""Talking to systemd: sd_notify messages and the watchdog interval.

Outside systemd (no NOTIFY_SOCKET) every message is a no-op, so the daemon runs the same way in
a terminal, under systemd, and in tests that own a notify socket.
"""

from __future__ import annotations

import os
import re
import time

from systemd import daemon

# sd_notify messages are newline-separated assignments: a line break in a STATUS text (a health
# reason can quote what a plugin's backend answered) would add assignments of its own.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


class Notifier:
    """Sends READY, STATUS, WATCHDOG, RELOADING and STOPPING to the service manager."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""

    def _send(self, *lines: str) -> None:
        if self.enabled:
            daemon.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self._last_status = _one_line(status)
        self._send("READY=1", f"STATUS={self._last_status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """Update STATUS= (only when it changed, so a steady node sends nothing)."""
        line = _one_line(status)
        if line != self._last_status:
            self._last_status = line
            self._send(f"STATUS={line}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")


def _one_line(text: str) -> str:
    """`text` with each run of control characters (line breaks among them) made one space."""
    return _CONTROL.sub(" ", text)


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, if systemd asked this process for watchdog pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
