"""Benchmark peer: a bare trio + h11 server (Segue's stack until it framed HTTP), from memory.

    python bench/h11_memory_server.py PORT FILE

Listens on 127.0.0.1:PORT, reads FILE into memory once, then answers every GET (or HEAD),
whatever its target, with the file: 206 and the slice for `Range: bytes=a-b` (or `bytes=a-`),
200 and the whole file without a Range header, 416 for a range it cannot satisfy. Bodies are
memoryview slices, never copies. HTTP/1.1 keep-alive is handled by h11 (the request is read to
its EndOfMessage, then start_next_cycle); a reset or malformed connection ends only itself.

No auth, no decryption, no cache, no logging, no timeouts: whatever this reaches is the ceiling
of trio + h11 on the machine, which bench/serve_vs_nginx.py compares Segue against.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import h11
import trio

RECEIVE_BYTES = 64 * 1024  # as Segue's connection loop
RANGE = re.compile(rb"bytes=(\d+)-(\d*)")


async def next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


def answer(request: h11.Request, data: memoryview) -> tuple[int, list[tuple[str, str]], memoryview]:
    """Status, headers and body for one request."""
    size = len(data)
    headers = [("Content-Type", "audio/wav"), ("Accept-Ranges", "bytes")]
    if request.method not in (b"GET", b"HEAD"):
        return 405, [("Allow", "GET, HEAD"), ("Content-Length", "0")], data[:0]
    wanted = next((value for name, value in request.headers if name == b"range"), None)
    if wanted is None:
        return 200, [*headers, ("Content-Length", str(size))], data
    match = RANGE.fullmatch(wanted.strip())
    first = int(match.group(1)) if match else size
    last = min(int(match.group(2)), size - 1) if match and match.group(2) else size - 1
    if first >= size or last < first:
        return 416, [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")], data[:0]
    return 206, [*headers, ("Content-Range", f"bytes {first}-{last}/{size}"),
                 ("Content-Length", str(last - first + 1))], data[first:last + 1]


async def serve_connection(stream: trio.SocketStream, data: memoryview) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await next_event(conn, stream)
            if not isinstance(request, h11.Request):
                return  # ConnectionClosed: the client is done
            while True:  # drop any request body, so that the next request can be read
                event = await next_event(conn, stream)
                if isinstance(event, h11.EndOfMessage):
                    break
                if isinstance(event, h11.ConnectionClosed):
                    return
            status, headers, body = answer(request, data)
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            if body and request.method == b"GET":
                # h11 hands a memoryview back untouched (Content-Length framing): no copy.
                for part in conn.send_with_data_passthrough(h11.Data(data=body)) or ():
                    await stream.send_all(part)
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # Connection: close, or HTTP/1.0
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return  # a reset or a malformed request ends this connection only
    finally:
        await trio.aclose_forcefully(stream)


async def main(port: int, path: Path) -> None:
    data = memoryview(path.read_bytes())

    async def handler(stream: trio.SocketStream) -> None:
        await serve_connection(stream, data)

    await trio.serve_tcp(handler, port, host="127.0.0.1")


if __name__ == "__main__":
    if len(sys.argv) != 3 or not sys.argv[1].isdigit():
        sys.exit(f"usage: {sys.argv[0]} PORT FILE")
    trio.run(main, int(sys.argv[1]), Path(sys.argv[2]))
