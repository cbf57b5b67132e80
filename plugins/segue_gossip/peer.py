"""The peer channel: anti-entropy and pulls between Segue nodes, sealed with the Serf keyring.

Gossip carries each change once, best effort; this channel makes nodes agree anyway. A node
picks a random live peer, swaps bucket hashes (`digests`), then sends the states the peer lacks
and fetches the ones it lacks, in batches. It runs on its own port (`peer_listen`) rather than
the node's HTTP port, so that it works with `[http] workers` above 1 (the sessions live in the
main process) and can be firewalled to the edge network alone.

Threat: anyone who can reach the port could read or forge listeners' sessions. Every frame is
sealed with AES-256-GCM under a key derived (HKDF-SHA256, label "segue-gossip peer v1") from a
key of the Serf cluster's keyring, which every member already holds and which operators rotate
with `serf keys`; so one secret authenticates both gossip and this channel, and a rotation
moves both. A frame that opens under no installed key closes the connection. Requests and
answers carry different associated data, so an answer cannot be replayed as a request. A
replayed request is harmless: merging a state again changes nothing.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_FRAME = 8 * 1024 * 1024
BATCH = 200  # listeners per exchange request
_LABEL = b"segue-gossip peer v1"
_REQUEST, _ANSWER = b"segue-gossip/1 request", b"segue-gossip/1 answer"


class PeerError(Exception):
    """The peer could not be reached, answered late, or sent what no key opens."""


def derive(serf_keys: list[bytes]) -> list[AESGCM]:
    """The channel's keys, one per keyring key (the first seals, all open)."""
    return [AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=_LABEL).derive(k))
            for k in serf_keys]


class Sealed:
    """Framed, sealed msgpack messages over one stream.

    A side seals with the key the other side's last frame opened with, and otherwise with its
    first key: in the middle of a rotation, when the two sides' key lists differ, an answer is
    always sealed with a key the asker holds.
    """

    def __init__(self, stream: trio.abc.Stream, keys: list[AESGCM], timeout_s: float) -> None:
        self._stream = stream
        self._keys = keys
        self._timeout_s = timeout_s
        self._buffer = bytearray()
        self._opened_with: AESGCM | None = None

    async def send(self, message: dict[str, Any], aad: bytes) -> None:
        key = self._opened_with or (self._keys[0] if self._keys else None)
        if key is None:
            raise PeerError("no keyring key to seal with")
        nonce = os.urandom(12)
        sealed = nonce + key.encrypt(nonce, msgpack.packb(message, use_bin_type=True), aad)
        if len(sealed) > MAX_FRAME:
            raise PeerError(f"a message of {len(sealed)} bytes is more than a frame holds")
        with trio.fail_after(self._timeout_s):
            await self._stream.send_all(struct.pack(">I", len(sealed)) + sealed)

    async def receive(self, aad: bytes) -> dict[str, Any] | None:
        """The next message; None when the peer closed cleanly between messages."""
        with trio.fail_after(self._timeout_s):
            header = await self._exactly(4)
            if header is None:
                return None
            (length,) = struct.unpack(">I", header)
            if not 28 <= length <= MAX_FRAME:
                raise PeerError(f"a frame of {length} bytes")
            frame = await self._exactly(length)
        if frame is None:
            raise PeerError("the peer closed the connection inside a frame")
        for key in self._keys:
            try:
                plain = key.decrypt(bytes(frame[:12]), bytes(frame[12:]), aad)
            except InvalidTag:
                continue
            self._opened_with = key
            try:
                message = msgpack.unpackb(plain, raw=False, strict_map_key=False)
            except Exception as e:  # a sealed frame is ours; a bad one is a bug on the peer
                raise PeerError(f"undecodable message: {type(e).__name__}") from None
            if not isinstance(message, dict):
                raise PeerError("a message that is not a map")
            return message
        raise PeerError("a frame no installed keyring key opens")

    async def _exactly(self, n: int) -> bytearray | None:
        while len(self._buffer) < n:
            data = await self._stream.receive_some(max(65536, n - len(self._buffer)))
            if not data:
                if not self._buffer:
                    return None
                raise PeerError("the peer closed the connection inside a frame")
            self._buffer += data
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


Answer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_connection(stream: trio.abc.Stream, keys: Callable[[], list[AESGCM]],
                           answer: Answer, timeout_s: float) -> None:
    """Answer requests on one connection until the peer closes it, stalls or fails to seal."""
    async with stream:
        channel = Sealed(stream, keys(), timeout_s)
        while True:
            request = await channel.receive(_REQUEST)
            if request is None:
                return
            await channel.send(await answer(request), _ANSWER)


async def ask(address: tuple[str, int], keys: list[AESGCM], timeout_s: float,
              requests: Callable[[Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]],
                                 Awaitable[None]]) -> None:
    """Open a connection to a peer and run `requests(call)` over it; PeerError on failure."""
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(*address)
    except (OSError, trio.TooSlowError) as e:
        raise PeerError(f"cannot reach {address[0]}:{address[1]}: {e or 'timed out'}") from None
    async with stream:
        channel = Sealed(stream, keys, timeout_s)

        async def call(request: dict[str, Any]) -> dict[str, Any]:
            try:
                await channel.send(request, _REQUEST)
                answer = await channel.receive(_ANSWER)
            except (trio.TooSlowError, trio.BrokenResourceError, OSError) as e:
                raise PeerError(f"{address[0]}:{address[1]}: {e or 'timed out'}") from None
            if answer is None:
                raise PeerError(f"{address[0]}:{address[1]} closed the connection")
            if "error" in answer:
                raise PeerError(f"{address[0]}:{address[1]}: {answer['error']}")
            return answer

        await requests(call)
