"""The RIFF INFO tags of a WAV file (`LIST`/`INFO`: INAM title, IART artist, IPRD album).

ffmpeg, sox and most Windows tools tag WAV files this way; mutagen reads only a WAV's ID3
chunk. The reader is small and strict because it sees untrusted bytes: it walks the top-level
chunk headers (seeking over the audio, never reading it), reads one INFO list of at most
MAX_INFO_BYTES, and raises RiffInfoError on anything inconsistent, so the caller can fall back
to the file name and say why.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

#: The INFO list's ceiling: real ones are a few hundred bytes.
MAX_INFO_BYTES = 64 * 1024
#: The top-level chunks walked before giving up (a WAV has a handful: fmt, LIST, data, ...).
MAX_CHUNKS = 1024
#: The INFO fields a track's metadata takes, by chunk id.
FIELDS = {b"INAM": "title", b"IART": "artist", b"IPRD": "album"}

_HEADER = struct.Struct("<4sI")


class RiffInfoError(Exception):
    """The file's RIFF structure or its INFO list is malformed."""


def read_info(f: BinaryIO, file_size: int) -> dict[str, str]:
    """The title, artist and album of the first INFO list of the RIFF/WAVE file `f` (of
    `file_size` bytes), those it has and that are not empty; {} for a file without one."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        raise RiffInfoError("not a RIFF/WAVE file")
    (riff_size,) = struct.unpack_from("<I", head, 4)
    end = min(8 + riff_size, file_size)
    at = 12
    for _ in range(MAX_CHUNKS):
        if at + _HEADER.size > end:
            return {}
        f.seek(at)
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:  # shorter than its size said: changed while read
            raise RiffInfoError("the file ended early")
        chunk_id, size = _HEADER.unpack(header)
        body = at + _HEADER.size
        if body + size > end:
            # The audio of a WAV written to a pipe declares a size it never reached; a tag list
            # that is cut short is damage.
            if chunk_id == b"LIST" and f.read(4) == b"INFO":
                raise RiffInfoError(f"the INFO list at byte {at} runs past the end of the file")
            return {}
        if chunk_id == b"LIST" and size >= 4 and f.read(4) == b"INFO":
            if size > MAX_INFO_BYTES:
                raise RiffInfoError(f"the INFO list at byte {at} is {size} bytes "
                                    f"(at most {MAX_INFO_BYTES})")
            return parse_info(f.read(size - 4))
        at = body + size + (size & 1)
    raise RiffInfoError(f"more than {MAX_CHUNKS} chunks before an INFO list")


def parse_info(data: bytes) -> dict[str, str]:
    """The fields of FIELDS found in an INFO list's sub-chunks `data` (after the `INFO` type)."""
    found: dict[str, str] = {}
    at = 0
    while len(data) - at >= _HEADER.size:
        chunk_id, size = _HEADER.unpack_from(data, at)
        value = data[at + _HEADER.size:at + _HEADER.size + size]
        if len(value) < size:
            raise RiffInfoError(f"INFO field {chunk_id.decode('latin-1')!r} runs past the end "
                                "of its list")
        field = FIELDS.get(chunk_id)
        if field is not None and field not in found:
            text = _text(value)
            if text:
                found[field] = text
        at += _HEADER.size + size + (size & 1)
    if data[at:].strip(b"\0"):
        raise RiffInfoError("stray bytes after the last INFO field")
    return found


def _text(value: bytes) -> str:
    """A field's text: up to its first NUL (they are C strings), UTF-8 as ffmpeg writes it, or
    Windows-1252 as older tools do."""
    raw = value.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace").strip()
