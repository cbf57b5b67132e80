"""A chunk store read and written directly over SMB2/3 with smbprotocol (no kernel mount).

URL form: smb://USER@HOST[:PORT]/SHARE[/PATH]. The password comes from a secret file. Sessions
and connections are pooled per store (a connection cache of its own) and reused; after any
connection error the pool is dropped so that the next call reconnects. Every method blocks and
is called from worker threads.

smbprotocol bounds only the connect and negotiate (connection_timeout, here the share's
deadline); a request the server never answers waits for ever. So callers bound each call with
their own deadline and then call `reset`, which closes the pooled connections' sockets: that
ends every request still waiting on them, and frees the threads the deadline abandoned.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import smbclient
from smbclient._io import SMBFileIO, SMBFileTransaction
from smbprotocol.exceptions import SMBException, SMBOSError
from smbprotocol.header import NtStatus

from segue.seal.errors import KeyFileError
from segue.seal.keys import read_secret
from segue.seal.manifest import is_track_id
from segue.storage import layout
from segue.storage.errors import NotInStoreError, StoreError

if TYPE_CHECKING:
    from segue.storage.backends import ShareSpec

CONNECT_TIMEOUT_S = 5
# Readers let others read, and delete or rename over, a file they have open. smbclient's
# default shares nothing: two players reading one chunk (or a node and `segue fsck`) would get
# STATUS_SHARING_VIOLATION, and a re-pack could not replace a chunk being read.
READ_SHARING = "rwd"


@dataclass(frozen=True)
class SmbUrl:
    """The parts of smb://USER@HOST[:PORT]/SHARE[/PATH]."""

    user: str
    host: str
    port: int
    share: str
    path: str

    @classmethod
    def parse(cls, url: str) -> SmbUrl:
        parts = urlsplit(url)
        if parts.scheme != "smb" or not parts.hostname:
            raise ValueError(f"{url!r} is not smb://USER@HOST[:PORT]/SHARE[/PATH]")
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if not segments:
            raise ValueError(f"{url!r} names no share: smb://USER@HOST[:PORT]/SHARE[/PATH]")
        if not parts.username:
            raise ValueError(f"{url!r} names no user: smb://USER@HOST[:PORT]/SHARE[/PATH]")
        if parts.password:
            raise ValueError(f"{url!r}: put the password in password_file, not in the URL")
        return cls(unquote(parts.username), parts.hostname, parts.port or 445, segments[0],
                   "/".join(segments[1:]))

    def __str__(self) -> str:
        port = "" if self.port == 445 else f":{self.port}"
        path = f"/{self.path}" if self.path else ""
        return f"smb://{self.user}@{self.host}{port}/{self.share}{path}"


class SmbStore:
    """The track layout below one folder of one SMB share."""

    def __init__(self, url: SmbUrl, password: str, *, encrypt: bool = False,
                 require_signing: bool = True, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.url = url
        self._timeout = timeout_s
        self.root = str(url)
        self._password = password
        self._encrypt = encrypt
        self._require_signing = require_signing
        self._cache: dict = {}
        self._lock = threading.Lock()
        self._registered = False

    @classmethod
    def from_spec(cls, spec: ShareSpec) -> SmbStore:
        """The store the spec's smb:// URL names; ValueError for a bad URL or password file."""
        url = SmbUrl.parse(spec.url)
        if spec.password_file is None:
            raise ValueError(f"{spec.url!r}: an smb:// share needs a password file")
        try:
            password = read_secret(spec.password_file)
        except KeyFileError as e:
            raise ValueError(str(e)) from None
        return cls(url, password, encrypt=spec.encrypt, require_signing=spec.require_signing,
                   timeout_s=min(spec.timeout_s, CONNECT_TIMEOUT_S))

    def __repr__(self) -> str:
        return f"SmbStore({self.root!r})"

    def _unc(self, rel: PurePosixPath | str = "") -> str:
        parts = [p for p in (self.url.path, str(rel)) if p and p != "."]
        tail = "\\".join("\\".join(p.split("/")) for p in parts)
        base = rf"\\{self.url.host}\{self.url.share}"
        return f"{base}\\{tail}" if tail else base

    def _session(self) -> dict:
        """Connection keywords for smbclient, registering the session once per connection."""
        with self._lock:
            if not self._registered:
                smbclient.register_session(
                    self.url.host, username=self.url.user, password=self._password,
                    port=self.url.port, encrypt=self._encrypt or None,
                    connection_timeout=self._timeout, connection_cache=self._cache,
                    require_signing=self._require_signing,
                )
                self._registered = True
        return {"port": self.url.port, "connection_cache": self._cache}

    def reset(self) -> None:
        """Drop the pooled connections; the next call connects afresh.

        Not under the lock: a thread stuck registering a session holds it, and this is what
        unsticks it. Only the sockets are closed (no logoff, which a hung server would never
        answer); closing them wakes every request waiting on them with an error.
        """
        cache, self._cache = self._cache, {}
        self._registered = False
        for connection in list(cache.values()):
            # A dead connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                connection.disconnect(close=False)

    def _fail(self, what: str, e: Exception) -> StoreError:
        if isinstance(e, OSError) and e.errno == errno.ENOENT:
            return NotInStoreError(f"{what} is not in {self.root}")
        self.reset()
        return StoreError(f"cannot access {what} on {self.root}: {type(e).__name__}: {e}")

    def read_manifest(self, track_id: str) -> bytes:
        """The manifest file, refused (StoreError) past layout.MANIFEST_MAX_BYTES."""
        return layout.read_manifest(self._read_into, track_id)

    def read_chunk_into(self, track_id: str, index: int, buf: bytearray) -> int:
        """Read a chunk file into `buf`; returns its length (len(buf) means "too large")."""
        return self._read_into(layout.chunk_path(track_id, index),
                               f"chunk {index} of track {track_id}", buf)

    def read_chunk_cached(self, track_id: str, index: int, buf: bytearray) -> int | None:
        """Never: every read is a round trip to the server."""
        return None

    def _read_into(self, rel: PurePosixPath, what: str, buf: bytearray) -> int:
        """Read one file into `buf`. A file the server refuses while the share still answers
        is a bad copy: the pooled connections are kept (layout.file_failure).

        Open, read and close go to the server as one SMB2 compound request: one round trip
        where a file object takes four (create, read, the read that finds the end, close).
        A buffer larger than the server's largest read goes the long way.
        """
        try:
            raw = SMBFileIO(self._unc(rel), mode="rb", share_access=READ_SHARING,
                           **self._session())
            if len(buf) > raw.fd.connection.max_read_size:
                with raw:
                    return layout.fill(raw, buf)
            transaction = SMBFileTransaction(raw)
            transaction += raw.fd.read(0, len(buf), send=False)
            try:
                transaction.commit()
            except SMBOSError as e:
                if e.ntstatus == NtStatus.STATUS_END_OF_FILE:  # an empty file
                    return 0
                raise
            (data,) = transaction.results
            buf[:len(data)] = data
            return len(data)
        except (OSError, SMBException, ValueError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOENT:
                raise NotInStoreError(f"{what} is not in {self.root}") from None
            raise layout.file_failure(
                self.probe, f"cannot read {what} on {self.root}: {type(e).__name__}: {e}"
            ) from None

    def has_manifest(self, track_id: str) -> bool:
        try:
            smbclient.stat(self._unc(layout.manifest_path(track_id)), **self._session())
        except (OSError, SMBException, ValueError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOENT:
                return False
            raise self._fail(f"manifest of track {track_id}", e) from None
        return True

    def read_marker(self) -> bytes:
        return layout.read_marker(self._read_into)

    def write_marker(self, data: bytes) -> None:
        self._write(layout.MARKER_PATH, data)

    def write_chunk(self, track_id: str, index: int, data: bytes) -> None:
        self._write(layout.chunk_path(track_id, index), data)

    def write_manifest(self, track_id: str, data: bytes) -> None:
        self._write(layout.manifest_path(track_id), data)

    def _write(self, rel: PurePosixPath, data: bytes) -> None:
        """Write through a temporary name and rename, so readers never see half a file."""
        target = self._unc(rel)
        tmp = self._unc(rel.with_name(layout.temp_name(rel.name)))
        try:
            kw = self._session()
            smbclient.makedirs(self._unc(rel.parent), exist_ok=True, **kw)
            with smbclient.open_file(tmp, mode="wb", **kw) as f:
                f.write(data)
            smbclient.replace(tmp, target, **kw)
        except (OSError, SMBException, ValueError) as e:
            raise self._fail(str(rel), e) from None

    def remove_track(self, track_id: str) -> None:
        folder = self._unc(layout.track_dir(track_id))
        manifest = layout.manifest_path(track_id).name
        try:
            kw = self._session()
            names = sorted((e.name for e in smbclient.scandir(folder, **kw)),
                           key=lambda name: name == manifest)
            for name in names:  # the manifest last: while it is there, so is the track
                smbclient.remove(f"{folder}\\{name}", **kw)
            smbclient.rmdir(folder, **kw)
        except (OSError, SMBException, ValueError) as e:
            failure = self._fail(f"track {track_id}", e)
            if not isinstance(failure, NotInStoreError):
                raise failure from None

    def track_ids(self) -> list[str]:
        """Every track with a folder on this share (for fsck); other names are skipped."""
        try:
            kw = self._session()
            root = self._unc("tracks")
            found = []
            for prefix in smbclient.scandir(root, **kw):
                if prefix.is_dir():
                    found += [e.name for e in smbclient.scandir(f"{root}\\{prefix.name}", **kw)
                              if is_track_id(e.name) and e.is_dir()]
            return sorted(found)
        except (OSError, SMBException, ValueError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOENT:
                return []
            raise self._fail("the track list", e) from None

    def probe(self) -> None:
        """Raise StoreError unless the share answers (a stat of the store's folder; a folder
        not made yet still means the server answered)."""
        try:
            smbclient.stat(self._unc(), **self._session())
        except (OSError, SMBException, ValueError) as e:
            failure = self._fail("the store folder", e)
            if not isinstance(failure, NotInStoreError):
                raise failure from None
