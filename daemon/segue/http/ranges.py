"""Byte ranges (RFC 9110 §14): which part of a representation a GET asks for.

Pure functions, no I/O. A single satisfiable range becomes a 206; an unsatisfiable one a 416;
anything the server may ignore (another unit, bad syntax, several ranges, a failed If-Range)
is answered with the whole body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from segue.http import dates

_SPEC = re.compile(r"^(\d{1,19})?-(\d{1,19})?$")


@dataclass(frozen=True)
class ByteRange:
    """Bytes first..last of the representation, both inclusive."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


@dataclass(frozen=True)
class Unsatisfiable:
    """The range starts past the end: answer 416 with `Content-Range: bytes */SIZE`."""

    def content_range(self, size: int) -> str:
        return f"bytes */{size}"


FULL = None


def if_range_matches(if_range: str | None, etag: str, last_modified: int | None = None) -> bool:
    """True when there is no If-Range, or it names the current representation exactly: its
    strong ETag, or its Last-Modified date (RFC 9110 13.1.5; a date at least a second before
    the response's Date is a strong validator, which a packed track's always is)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag  # a weak tag never equals a strong one
    return last_modified is not None and dates.parse(value) == last_modified


def select(
    range_header: str | None, size: int, *, if_range: str | None = None, etag: str = "",
    last_modified: int | None = None,
) -> ByteRange | Unsatisfiable | None:
    """What to send for a GET of `size` bytes: a ByteRange, Unsatisfiable, or None (all)."""
    if range_header is None or not if_range_matches(if_range, etag, last_modified):
        return FULL
    unit, sep, specs = range_header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return FULL
    parts = [p.strip() for p in specs.split(",") if p.strip()]
    if len(parts) != 1:
        return FULL
    match = _SPEC.match(parts[0])
    if match is None:
        return FULL
    first_text, last_text = match.groups()
    if first_text is None:
        if last_text is None:
            return FULL
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return Unsatisfiable()
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(first_text)
    if last_text is not None and int(last_text) < first:
        return FULL
    if first >= size:
        return Unsatisfiable()
    last = size - 1 if last_text is None else min(int(last_text), size - 1)
    return ByteRange(first, last)
