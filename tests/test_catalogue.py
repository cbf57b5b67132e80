"""The local catalogue: upserts, search ranking, and input that must stay plain text."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from segue.catalogue import Catalogue, TrackRecord, fts_query


def record(track_id: str, title: str, artist: str = "", album: str = "") -> TrackRecord:
    return TrackRecord(track_id, title, artist, album, 60.0, "audio/mpeg", 1000, 1)


@pytest.fixture
def catalogue(tmp_path: Path) -> Catalogue:
    c = Catalogue.create(tmp_path / "c.sqlite")
    c.put(record("a" * 32, "Blue in Green", "Miles Davis", "Kind of Blue"))
    c.put(record("b" * 32, "So What", "Miles Davis", "Kind of Blue"))
    c.put(record("c" * 32, "Blue Monk", "Thelonious Monk", "Monk's Music"))
    c.put(record("d" * 32, "Señor Blues", "Horace Silver", "Six Pieces of Silver"))
    return c


def test_search_ranks_and_matches_prefixes_and_folds_accents(catalogue: Catalogue) -> None:
    assert [r.title for r in catalogue.search("senor", 10)] == ["Señor Blues"]
    assert {r.title for r in catalogue.search("blu", 10)} == {
        "Blue in Green", "Blue Monk", "Señor Blues", "So What"}
    # A title match outranks an album-only match.
    assert catalogue.search("blue", 10)[-1].title == "So What"
    assert [r.title for r in catalogue.search("miles so", 10)] == ["So What"]
    assert len(catalogue.search("blue", 2)) == 2


def test_an_update_replaces_the_searchable_text(catalogue: Catalogue) -> None:
    catalogue.put(record("b" * 32, "Freddie Freeloader", "Miles Davis", "Kind of Blue"))
    assert catalogue.search("what", 10) == []
    assert [r.track_id for r in catalogue.search("freddie", 10)] == ["b" * 32]


@pytest.mark.parametrize("text", ['"', "NOT", "a OR b", "title:x", "*", "(", "NEAR(a b)", "-"])
def test_query_syntax_in_input_is_plain_text(catalogue: Catalogue, text: str) -> None:
    catalogue.search(text, 10)  # never an FTS5 syntax error


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('say "hi" OR bye') == '"say" "hi" "OR" "bye"*'
    assert fts_query("  ") is None


def test_accepted_manifest_versions_never_go_down(catalogue: Catalogue) -> None:
    assert catalogue.accepted_version("a" * 32) is None
    catalogue.accept_version("a" * 32, 3)
    catalogue.accept_version("a" * 32, 2)
    assert catalogue.accepted_version("a" * 32) == 3


def test_a_huge_match_set_is_answered_unranked_and_fast(tmp_path: Path) -> None:
    from segue.catalogue import RANK_AT_MOST

    c = Catalogue.create(tmp_path / "big.sqlite")
    c.apply_replicated("s0", [record(f"{n:032x}", f"common song {n}")
                              for n in range(RANK_AT_MOST + 50)], [], "{}")
    c.put(record("f" * 32, "rare gem"))
    found = c.search("common", 20)
    assert len(found) == 20 and all("common" in r.title for r in found)
    assert [r.title for r in c.search("rare", 20)] == ["rare gem"]


def test_a_catalogue_made_with_older_search_options_is_reindexed_and_keeps_its_tracks(
        catalogue: Catalogue) -> None:
    # What a catalogue from before the 4-letter prefix index holds: the same tables, the search
    # index made with prefix='2 3'.
    conn = sqlite3.connect(catalogue.path)
    with conn:
        conn.execute("DROP TABLE tracks_fts")
        conn.execute("CREATE VIRTUAL TABLE tracks_fts USING fts5(title, artist, album, "
                     "content='tracks', content_rowid='rowid', "
                     "tokenize='unicode61 remove_diacritics 2', prefix='2 3')")
        conn.execute("INSERT INTO tracks_fts(tracks_fts) VALUES ('rebuild')")
    conn.close()
    catalogue.close()
    reopened = Catalogue.create(catalogue.path)
    (made_with,) = sqlite3.connect(catalogue.path).execute(
        "SELECT sql FROM sqlite_master WHERE name = 'tracks_fts'").fetchone()
    assert "prefix='2 3 4'" in made_with
    assert {r.title for r in reopened.search("mile", 10)} == {"Blue in Green", "So What"}
    assert [r.title for r in reopened.search("thelonious blue", 10)] == ["Blue Monk"]
    # The index follows changes as before.
    reopened.put(record("e" * 32, "Milestones", "Miles Davis", "Milestones"))
    assert "Milestones" in {r.title for r in reopened.search("mile", 10)}
