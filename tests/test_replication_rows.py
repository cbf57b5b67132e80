"""segue_mysql.rows reads row images exactly as mysql-replication does: both decode the same
binlog of a real MariaDB, with every column type a tracks table may grow, NULLs, long UTF-8
strings and all three kinds of rows event, and must agree image by image."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from mariadb import MariaDB
from segue_mysql import rows
from segue_mysql.schema import COLUMNS

# Every type rows.py sizes itself, beside the catalogue's own columns (which it decodes).
TABLE = """
CREATE TABLE segue_catalogue.tracks (
    track_id VARCHAR(64) NOT NULL PRIMARY KEY,
    tiny TINYINT, small SMALLINT UNSIGNED, medium MEDIUMINT, year_made YEAR,
    title VARCHAR(512) NOT NULL, artist VARCHAR(80) NULL, album TEXT,
    short_code CHAR(4), mood ENUM('calm', 'wild'), tags SET('a', 'b', 'c'), flags BIT(10),
    duration_s DOUBLE NOT NULL, rating FLOAT, mime VARCHAR(64) NOT NULL,
    bytes BIGINT NOT NULL, chunks INT NOT NULL, born DATE, length_t TIME(2),
    made DATETIME(3), updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) DEFAULT CHARSET=utf8mb4
"""
INSERT = ("INSERT INTO tracks (track_id, tiny, small, medium, year_made, title, artist, album, "
          "short_code, mood, tags, flags, duration_s, rating, mime, bytes, chunks, born, "
          "length_t, made) VALUES (%s, -5, 65000, -8000000, 1999, %s, %s, %s, 'ab', 'wild', "
          "'a,c', b'1010101010', %s, 1.5, 'audio/mpeg', %s, %s, '2001-02-03', '12:34:56.78', "
          "'2020-01-02 03:04:05.678')")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    db = MariaDB(tmp_path_factory.mktemp("rows") / "db", server_id=7)
    db.start()
    db.execute("CREATE DATABASE segue_catalogue", database=None)
    db.execute(TABLE)
    yield db
    db.kill()


def events(server: MariaDB, decode) -> list:
    """Every rows event of the binlog so far, through `decode`."""
    reader = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": server.port, "user": "root",
                             "password": ""},
        server_id=99, blocking=False, resume_stream=False, freeze_schema=True,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
    try:
        return [decode(event) for event in reader]
    finally:
        reader.close()


def library(event) -> list:
    return list(rows._library_images(event, COLUMNS, isinstance(
        event, UpdateRowsEvent | DeleteRowsEvent), not isinstance(event, DeleteRowsEvent)))


def test_every_row_image_reads_as_the_library_reads_it(server: MariaDB) -> None:
    long_title = "Ünïcödé 🎵 " * 40  # over 255 bytes: a two-byte length
    server.execute(INSERT, "t1", long_title, None, None, 201.25, 10**12, 7)
    server.execute(INSERT, "t2", "Plain", "Ärtist", "An album " * 30, -0.0, -1, 0)
    conn = server.connect("segue_catalogue")
    try:
        with conn.cursor() as cur:  # several rows in one event
            cur.executemany(INSERT, [(f"m{n}", f"Many {n}", "", "", n / 3, n, n)
                                     for n in range(50)])
    finally:
        conn.close()
    server.execute("UPDATE tracks SET title = 'Renamed', artist = NULL, album = '' "
                   "WHERE track_id IN ('t1', 'm3')")
    server.execute("UPDATE tracks SET track_id = 't9' WHERE track_id = 't2'")
    server.execute("UPDATE tracks SET tiny = NULL, made = NULL, flags = NULL")
    server.execute("DELETE FROM tracks WHERE track_id LIKE 'm1%'")
    decoders: dict[int, rows.RowDecoder | None] = {}
    fast = events(server, lambda e: list(rows.images(e, COLUMNS, decoders)))
    slow = events(server, library)
    assert decoders and all(d is not None for d in decoders.values()), "fast path not taken"
    assert len(fast) >= 7 and sum(map(len, fast)) == sum(map(len, slow)) >= 50 + 2 + 2 + 1
    assert fast == slow
    titles = {after[1] for event in fast for _, after in event if after is not None}
    assert long_title in titles and "Renamed" in titles


def test_a_table_with_a_type_it_does_not_size_goes_to_the_library(server: MariaDB) -> None:
    server.execute("ALTER TABLE tracks ADD COLUMN price DECIMAL(8, 2)")
    server.execute("UPDATE tracks SET price = 1.25 WHERE track_id = 't1'")
    decoders: dict[int, rows.RowDecoder | None] = {}
    fast = events(server, lambda e: list(rows.images(e, COLUMNS, decoders)))
    assert None in decoders.values()
    assert fast == events(server, library)


def test_bytes_that_do_not_fit_the_table_map_are_an_error_not_a_row() -> None:
    class Column:
        def __init__(self, name: str, type_: int, **meta: object) -> None:
            self.name, self.type, self.unsigned = name, type_, False
            self.character_set_name = "utf8mb4"
            self.__dict__.update(meta)

    varchar, longlong = 15, 8
    columns = [Column("track_id", varchar, max_length=64), Column("bytes", longlong)]
    decoder = rows.RowDecoder.plan(columns, ["track_id", "bytes"])
    assert decoder is not None
    good = b"\x00" + b"\x02id" + (5).to_bytes(8, "little")
    assert decoder.images(good, 1) == [(("id", 5),)]
    for bad in (good[:-1], b"\x00\x40id" + bytes(8), b"\x00\x02\xff\xfe" + bytes(8)):
        with pytest.raises(rows.RowsError):
            decoder.images(bad, 1)
    assert rows.RowDecoder.plan(columns, ["track_id", "title"]) is None  # a wanted column gone

