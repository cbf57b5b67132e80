"""Zero-copy sending stays exact while the cache evicts and refills under load.

Cached chunks go to players with sendfile, so the kernel refers to their pages until the peer
has them. Here slow players stall mid-track (the server's socket queues then hold pages of
chunks the cache evicts meanwhile) while fast players churn a cache of two chunks over several
tracks, so that evicted pages are freed and new chunks take fresh ones all the time. Every
byte each player gets must be its own track's: a page written again, or an evicted memfd's
descriptor reused under a stream, would show as another track's bytes.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import urllib.parse
from pathlib import Path

from conftest import MP3, Node, make_tone
from test_hardening import configure, get, metric

CHUNK = 256 * 1024


def stalled_stream(node: Node, track: str, token: str) -> socket.socket:
    """A connection asking for the whole track that reads nothing yet (a tiny receive buffer)."""
    parsed = urllib.parse.urlsplit(node.base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((parsed.hostname, parsed.port))
    sock.sendall(f"GET /v1/tracks/{track} HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
    return sock


def read_body(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    return body


def test_evicted_pages_never_put_other_bytes_on_the_wire(fresh_node: Node,
                                                         tmp_path: Path) -> None:
    tracks = fresh_node.pack(*(make_tone(tmp_path / f"{i}.mp3", MP3, seconds=75,
                                         freq=220 + 110 * i, title=str(i)) for i in range(4)))
    originals = {t: fresh_node.tracks[t].read_bytes() for t in tracks}
    assert all(len(o) > 4 * CHUNK for o in originals.values())
    configure(fresh_node, "cache", f"bytes = {2 * CHUNK}\nread_ahead_chunks = 1")
    fresh_node.start()
    token = fresh_node.token()

    stalled = [(t, stalled_stream(fresh_node, t, token)) for t in tracks for _ in range(2)]
    wrong: list[str] = []
    done = threading.Event()

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        while not done.is_set():
            track = rng.choice(tracks)
            original = originals[track]
            first = rng.randrange(len(original) // CHUNK) * CHUNK + rng.randrange(4096)
            last = min(first + rng.randrange(1, 2 * CHUNK), len(original) - 1)
            status, body = get(fresh_node.url(track, token),
                               ("Range", f"bytes={first}-{last}"))
            if status != 206 or body != original[first:last + 1]:
                wrong.append(f"{track} {first}-{last}: {status}, {len(body)} bytes")

    workers = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(4)  # the stalled streams' queued pages outlive many evictions meanwhile
    try:
        for track, sock in stalled:
            assert read_body(sock) == originals[track], f"stalled stream of {track} differs"
    finally:
        done.set()
        for worker in workers:
            worker.join()
    assert not wrong, wrong[:5]
    assert metric(fresh_node, "segue_chunk_cache_evictions_total") > 50
