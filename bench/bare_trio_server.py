"""Benchmark peer: the floor under Segue, a bare trio server with no HTTP library at all.

    python bench/bare_trio_server.py PORT FILE [--sendfile]

Holds FILE in memory (or, with --sendfile, in a memfd) and answers each request on a kept-alive
connection with 206 and the `Range: bytes=a-b` slice (200 and the whole file without one). It
finds the end of a head, reads no more of it than the Range, and writes with a raw `send` of
memoryview slices after `wait_writable` (or `os.sendfile` from the memfd). No auth, no errors
beyond dropping the connection, no timeouts: what trio and Python cost per request and per
byte, which is what bench/serve_vs_nginx.py measures Segue against beside nginx.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from pathlib import Path

import trio

RANGE = re.compile(rb"\r\nrange: *bytes=(\d+)-(\d*)", re.I)


async def send(sock: socket.socket, data: memoryview, memfd: int, first: int,
               count: int) -> None:
    """`count` bytes from offset `first`: sendfile from the memfd, else send from memory."""
    fd = sock.fileno()
    while count:
        await trio.lowlevel.wait_writable(sock)
        try:
            n = (os.sendfile(fd, memfd, first, count) if memfd >= 0
                 else sock.send(data[first:first + count]))
        except BlockingIOError:
            continue
        first += n
        count -= n


async def serve(stream: trio.SocketStream, data: memoryview, memfd: int) -> None:
    # The plain non-blocking socket, out of trio's hands: every wait is trio's bare primitive.
    sock = socket.socket(fileno=stream.socket.detach())
    size, buffer = len(data), b""
    with sock, contextlib.suppress(OSError):  # a reset ends this connection only
        while True:
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                await trio.lowlevel.wait_readable(sock)
                try:
                    got = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not got:
                    return
                buffer += got
            request, buffer = buffer[:end], buffer[end + 4:]
            if found := RANGE.search(request):
                first = int(found[1])
                last = min(int(found[2]), size - 1) if found[2] else size - 1
                status = b"206 Partial Content\r\nContent-Range: bytes %d-%d/%d" % (
                    first, last, size)
            else:
                first, last, status = 0, size - 1, b"200 OK"
            head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, last - first + 1)
            await send(sock, memoryview(head), -1, 0, len(head))
            await send(sock, data, memfd, first, last - first + 1)


async def main(port: int, path: Path, use_sendfile: bool) -> None:
    raw = path.read_bytes()
    memfd = -1
    if use_sendfile:
        memfd = os.memfd_create("bench-track")
        os.write(memfd, raw)
    data = memoryview(raw)
    await trio.serve_tcp(lambda stream: serve(stream, data, memfd), port, host="127.0.0.1")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or not sys.argv[1].isdigit():
        sys.exit(f"usage: {sys.argv[0]} PORT FILE [--sendfile]")
    trio.run(main, int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] == ["--sendfile"])
