"""The tracks table's row images, read straight from a rows event's bytes.

mysql-replication decodes every column of every row into a dict through several Python calls
per column (a datetime for `updated_at`, which the catalogue never reads): that was about 45 %
of catch-up time. The layout of a row image is simple and documented (MySQL's "Rows Event"
and "Binlog Column Types"): a NULL bitmap, then each present column's value in a size that
its type and table-map metadata fix. So for a table whose columns all have a size known here,
this reads the columns the catalogue wants and skips the rest; for any other table, or a
minimal row image, the library's own decoder is used (`images` falls back by itself).

Values come as tuples in the order of `wanted`, as the library would give them: ints, floats
and strings decoded as strictly as the library does (a column that is not UTF-8 or ASCII falls
back to the library).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.row_event import DeleteRowsEvent, RowsEvent, UpdateRowsEvent

Image = tuple[Any, ...]

_TEXT_CHARSETS = {"utf8mb4", "utf8mb3", "utf8", "ascii"}
# Sizes of fixed-size types; the temporal ones with fractional seconds add (fsp + 1) // 2.
_FIXED = {FIELD_TYPE.TINY: 1, FIELD_TYPE.SHORT: 2, FIELD_TYPE.INT24: 3, FIELD_TYPE.LONG: 4,
          FIELD_TYPE.LONGLONG: 8, FIELD_TYPE.FLOAT: 4, FIELD_TYPE.DOUBLE: 8,
          FIELD_TYPE.YEAR: 1, FIELD_TYPE.DATE: 3, FIELD_TYPE.TIME: 3,
          FIELD_TYPE.TIMESTAMP: 4, FIELD_TYPE.DATETIME: 8}
_WITH_FSP = {FIELD_TYPE.TIMESTAMP2: 4, FIELD_TYPE.DATETIME2: 5, FIELD_TYPE.TIME2: 3}
_NUMBERS = {  # (signed, unsigned) formats of the numeric types the catalogue may want
    FIELD_TYPE.TINY: ("<b", "<B"), FIELD_TYPE.SHORT: ("<h", "<H"),
    FIELD_TYPE.LONG: ("<i", "<I"), FIELD_TYPE.LONGLONG: ("<q", "<Q"),
    FIELD_TYPE.FLOAT: ("<f", "<f"), FIELD_TYPE.DOUBLE: ("<d", "<d"),
}
# What a step does with its column: skip a fixed size, skip a length-prefixed value, or read
# a number or a text into the image.
_SKIP, _SKIP_TEXT, _NUMBER, _TEXT = 0, 1, 2, 3


class RowsError(Exception):
    """A rows event's bytes do not fit its table map."""


class RowDecoder:
    """How to read one table map's row images: a step per column."""

    def __init__(self, steps: list[tuple[int, int, int, struct.Struct | None]],
                 wanted: int) -> None:
        # (kind, the size or the length prefix's size, the slot in the image, the format)
        self._steps = steps
        self._wanted = wanted
        self._null_bytes = (len(steps) + 7) // 8

    @classmethod
    def plan(cls, columns: Sequence[Any], wanted: Sequence[str]) -> RowDecoder | None:
        """The decoder for a table map's `columns`; None when a column's size or a wanted
        column's type is not one this module reads (the library decodes those)."""
        slots = {name: i for i, name in enumerate(wanted)}
        steps: list[tuple[int, int, int, struct.Struct | None]] = []
        for column in columns:
            slot = slots.pop(column.name, -1)
            kind, size = _layout(column)
            if kind is None:
                return None
            fmt: struct.Struct | None = None
            if slot < 0:
                pass  # kept _SKIP or _SKIP_TEXT
            elif kind == _SKIP_TEXT:
                if column.character_set_name not in _TEXT_CHARSETS:
                    return None
                kind = _TEXT
            else:
                formats = _NUMBERS.get(column.type)
                if formats is None:
                    return None
                fmt, kind = struct.Struct(formats[bool(column.unsigned)]), _NUMBER
            steps.append((kind, size, slot, fmt))
        return None if slots else cls(steps, len(wanted))

    def images(self, data: bytes, per_row: int) -> list[tuple[Image, ...]]:
        """Every row of `data` (the event's body after its column bitmaps), each as
        `per_row` images (2 for an update: before and after)."""
        view = memoryview(data)
        end, pos, rows = len(data), 0, []
        try:
            while pos < end:
                row = []
                for _ in range(per_row):
                    image, pos = self._image(view, pos, end)
                    row.append(image)
                rows.append(tuple(row))
        except (struct.error, UnicodeDecodeError, IndexError) as e:
            raise RowsError(f"a row image does not fit its table map: {e}") from None
        return rows

    def _image(self, view: memoryview, pos: int, end: int) -> tuple[Image, int]:
        nulls = view[pos:pos + self._null_bytes]
        pos += self._null_bytes
        values: list[Any] = [None] * self._wanted
        for i, (kind, size, slot, fmt) in enumerate(self._steps):
            if nulls[i >> 3] >> (i & 7) & 1:
                continue
            if kind == _SKIP:
                pos += size
            elif kind == _NUMBER:
                values[slot] = fmt.unpack_from(view, pos)[0]  # type: ignore[union-attr]
                pos += size
            else:  # a length-prefixed value, kept (_TEXT) or not (_SKIP_TEXT)
                length = int.from_bytes(view[pos:pos + size], "little")
                pos += size
                if pos + length > end:
                    raise IndexError("a value runs past the event")
                if kind == _TEXT:
                    values[slot] = str(view[pos:pos + length], "utf-8")
                pos += length
            if pos > end:
                raise IndexError("a value runs past the event")
        return tuple(values), pos


def _layout(column: Any) -> tuple[int | None, int]:
    """(kind, size): _SKIP with a fixed size, _SKIP_TEXT with its length prefix's size, or
    (None, 0) for a type whose size is not read here."""
    kind = column.type
    if kind in _FIXED:
        return _SKIP, _FIXED[kind]
    if kind in _WITH_FSP:
        return _SKIP, _WITH_FSP[kind] + (column.fsp + 1) // 2
    if kind in (FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING):
        return _SKIP_TEXT, 2 if column.max_length > 255 else 1
    if kind == FIELD_TYPE.BLOB:
        return _SKIP_TEXT, column.length_size
    if kind in (FIELD_TYPE.ENUM, FIELD_TYPE.SET):
        return _SKIP, column.size
    if kind == FIELD_TYPE.BIT:
        return _SKIP, column.bytes
    return None, 0  # NEWDECIMAL, JSON, GEOMETRY: left to the library


def images(event: RowsEvent, wanted: Sequence[str],
           decoders: dict[int, RowDecoder | None]) -> Iterator[tuple[Image | None, Image | None]]:
    """(before, after) for each row of a write, update or delete event; None where that image
    does not exist. `decoders` caches each table id's plan (the caller drops it with the
    reader, so a schema change, which gets a new table id, never meets a stale plan)."""
    before = isinstance(event, UpdateRowsEvent | DeleteRowsEvent)
    after = not isinstance(event, DeleteRowsEvent)
    if event.table_id not in decoders:
        decoders[event.table_id] = RowDecoder.plan(event.columns, wanted)
    decoder = decoders[event.table_id]
    if decoder is None or not event.complete or not _all_present(event):
        yield from _library_images(event, wanted, before, after)
        return
    data = event.packet.read(event.event_size - event.packet.read_bytes)
    for row in decoder.images(data, 2 if before and after else 1):
        yield (row[0] if before else None, row[-1] if after else None)


def _all_present(event: RowsEvent) -> bool:
    """A full row image: every column's bit set (binlog_row_image=FULL, which replication
    requires; a minimal image goes to the library)."""
    n = event.number_of_columns
    full = (1 << n) - 1
    bitmaps = [event.columns_present_bitmap]
    if isinstance(event, UpdateRowsEvent):
        bitmaps.append(event.columns_present_bitmap2)
    return n == len(event.columns) and all(
        int.from_bytes(b, "little") & full == full for b in bitmaps)


def _library_images(event: RowsEvent, wanted: Sequence[str], before: bool,
                    after: bool) -> Iterator[tuple[Image | None, Image | None]]:
    for row in event.rows:
        old = row.get("before_values", row.get("values")) if before else None
        new = row.get("after_values", row.get("values")) if after else None
        yield (None if old is None else tuple(old[c] for c in wanted),
               None if new is None else tuple(new[c] for c in wanted))
