"""HAProxy's runtime API (the admin socket): one command per connection, answer read to EOF.

Pure parsing lives here too (`show stat` CSV), so it is tested without a socket.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import trio

MAX_ANSWER_BYTES = 4 * 1024 * 1024


class HAProxyError(Exception):
    """HAProxy refused a command or could not be reached; the message says which."""


@dataclass(frozen=True)
class ServerStat:
    """What `show stat` says of one server."""

    status: str
    sessions: int


def parse_stat(csv_text: str, backend: str, server: str) -> ServerStat | None:
    """Find BACKEND/SERVER in `show stat` output (CSV whose header starts with "# ")."""
    text = csv_text.lstrip("# ")
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == backend and row.get("svname") == server:
            return ServerStat(status=row.get("status", ""), sessions=int(row.get("scur") or 0))
    return None


class RuntimeApi:
    """The admin socket at a UNIX path or a HOST:PORT."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s

    async def _connect(self) -> trio.abc.Stream:
        if self.address.startswith("/"):
            return await trio.open_unix_socket(self.address)
        host, _, port = self.address.rpartition(":")
        return await trio.open_tcp_stream(host, int(port))

    async def command(self, line: str) -> str:
        """Send one command; return HAProxy's answer (stripped)."""
        if "\n" in line or ";" in line:
            raise ValueError("one command per call")
        try:
            with trio.fail_after(self.timeout_s):
                stream = await self._connect()
                async with stream:
                    await stream.send_all(line.encode() + b"\n")
                    chunks = []
                    size = 0
                    while data := await stream.receive_some(65536):
                        chunks.append(data)
                        size += len(data)
                        if size > MAX_ANSWER_BYTES:
                            raise HAProxyError(f"{line!r}: answer larger than expected")
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as e:
            reason = "timed out" if isinstance(e, trio.TooSlowError) else str(e)
            raise HAProxyError(f"HAProxy at {self.address} unreachable: {reason}") from None
        return b"".join(chunks).decode("utf-8", "replace").strip()

    async def checked(self, line: str, *accepted: str) -> str:
        """A command whose answer must be empty or begin with one of `accepted`."""
        answer = await self.command(line)
        if answer and not any(answer.startswith(a) for a in accepted):
            raise HAProxyError(f"HAProxy refused {line!r}: {answer}")
        return answer

    async def stat(self, backend: str, server: str) -> ServerStat | None:
        return parse_stat(await self.command("show stat"), backend, server)
