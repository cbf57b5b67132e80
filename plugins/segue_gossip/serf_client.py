"""A small trio client for the local Serf agent's RPC port, around `serf_codec`.

One connection carries calls and streams at once: a reader task feeds the codec and routes
each reply to the call waiting for its Seq, and each stream record into that stream's bounded
channel. Every call has a deadline; a stream whose reader falls behind loses records (counted
by the caller through `dropped`), never blocks the connection, because anti-entropy repairs
what a lost event carried.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio

from segue_gossip.serf_codec import Record, Reply, SerfCodec, SerfProtocolError

STREAM_BUFFER = 4096


class SerfError(Exception):
    """The agent could not be reached in time, or refused a request."""


class SerfRefused(SerfError):
    """The agent answered a request with an error: the connection itself is fine."""


class SerfClient:
    """An open, authenticated RPC connection; use `connect()`."""

    def __init__(self, stream: trio.abc.Stream, timeout_s: float) -> None:
        self._stream = stream
        self._codec = SerfCodec()
        self._timeout_s = timeout_s
        self._waiting: dict[int, trio.MemorySendChannel[Reply]] = {}
        self._streams: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._send_lock = trio.Lock()
        self._closed = trio.Event()
        self.failure: str | None = None
        self.dropped = 0

    # --- calls ------------------------------------------------------------------------------
    async def call(self, command: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and wait (under the timeout) for its reply's body ({} if none);
        SerfError when the agent answers with an error."""
        reply = await self.request(command, body)
        if reply.error:
            raise SerfRefused(f"{command}: {reply.error}")
        return reply.body or {}

    async def request(self, command: str, body: dict[str, Any] | None = None) -> Reply:
        """Send one request and wait (under the timeout) for its whole reply, error or not."""
        seq, data = self._codec.request(command, body)
        try:
            return await self._reply(command, seq, data)
        finally:
            self._codec.forget(seq)

    async def _reply(self, command: str, seq: int, data: bytes) -> Reply:
        """Send `data` and wait for the reply numbered `seq` (a stream's: its acknowledgement)."""
        send, receive = trio.open_memory_channel[Reply](1)
        self._waiting[seq] = send
        try:
            with trio.fail_after(self._timeout_s):
                await self._send(data)
                async with receive:
                    return await receive.receive()
        except trio.TooSlowError:
            raise SerfError(f"{command}: no answer from the agent in {self._timeout_s:g} s"
                            ) from None
        except trio.EndOfChannel:
            raise SerfError(f"{command}: connection lost ({self.failure})") from None
        finally:
            self._waiting.pop(seq, None)

    async def members(self) -> list[dict[str, Any]]:
        return list((await self.call("members")).get("Members") or [])

    async def event(self, name: str, payload: bytes) -> None:
        """A user event, never coalesced (session deltas must each arrive)."""
        await self.call("event", {"Name": name, "Payload": payload, "Coalesce": False})

    async def set_tags(self, tags: dict[str, str], delete: list[str] | None = None) -> None:
        await self.call("tags", {"Tags": tags, "DeleteTags": delete or []})

    async def list_keys(self) -> list[bytes]:
        """The keyring keys every answering member holds (raw bytes).

        Serf asks every member; while one is joining or away the reply carries an error
        ("2/3 nodes reported success") beside the keys of those that answered, which are
        still the cluster's keys.
        """
        reply = await self.request("list-keys")
        body = reply.body or {}
        keys = body.get("Keys") or {}
        held_by = int(body.get("NumResp") or 0)
        if not keys:
            raise SerfError(f"list-keys: {reply.error or 'the keyring is empty'}")
        return [base64.b64decode(k) for k, count in sorted(keys.items()) if count == held_by]

    @contextlib.asynccontextmanager
    async def stream(self, types: str) -> AsyncIterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """Events of `types` (Serf's filter: "member-join,user:NAME,..."), until exit."""
        send, receive = trio.open_memory_channel[dict[str, Any]](STREAM_BUFFER)
        seq, data = self._codec.request("stream", {"Type": types})
        self._streams[seq] = send
        try:
            ack = await self._reply("stream", seq, data)
            if ack.error:
                raise SerfRefused(f"stream: {ack.error}")
            yield receive
        finally:
            self._streams.pop(seq, None)
            self._codec.forget(seq)
            if not self._closed.is_set():
                with trio.move_on_after(self._timeout_s) as cleanup:
                    cleanup.shield = True
                    with contextlib.suppress(SerfError, trio.BrokenResourceError,
                                             trio.ClosedResourceError):
                        _, stop = self._codec.request("stop", {"Stop": seq})
                        await self._send(stop)

    # --- the connection ---------------------------------------------------------------------
    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise SerfError(f"connection lost: {e}") from None

    async def read(self) -> None:
        """The reader task: route replies and records until the connection ends."""
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    self.failure = "the agent closed the connection"
                    return
                self._codec.receive_data(bytes(data))
                while (item := self._codec.next_event()) is not None:
                    self._route(item)
        except SerfProtocolError as e:
            self.failure = str(e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.failure = f"connection lost: {e}"
        finally:
            self._closed.set()
            for waiter in self._waiting.values():
                waiter.close()
            for records in self._streams.values():
                records.close()

    def _route(self, item: Reply | Record) -> None:
        if isinstance(item, Record):
            channel = self._streams.get(item.seq)
            if channel is not None:
                try:
                    channel.send_nowait(item.body)
                except trio.WouldBlock:
                    self.dropped += 1
            return
        waiter = self._waiting.get(item.seq)
        if waiter is not None:
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                waiter.send_nowait(item)

    async def wait_closed(self) -> None:
        await self._closed.wait()


@contextlib.asynccontextmanager
async def connect(host: str, port: int, auth_key: str | None,
                  timeout_s: float) -> AsyncIterator[SerfClient]:
    """An authenticated connection to the agent at host:port, closed on exit.

    Raises SerfError when the agent cannot be reached, or refuses the handshake or the key.
    """
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as e:
        raise SerfError(f"cannot reach the Serf agent at {host}:{port}: "
                        f"{e if str(e) else 'timed out'}") from None
    async with stream, trio.open_nursery() as nursery:
        client = SerfClient(stream, timeout_s)
        nursery.start_soon(client.read)
        await client.call("handshake", {"Version": 1})
        if auth_key:
            await client.call("auth", {"AuthKey": auth_key})
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
