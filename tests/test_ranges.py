"""Range selection (RFC 9110 §14) as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segue.http.ranges import ByteRange, Unsatisfiable, select

ETAG = '"abcdef0123456789"'


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=0-9", 10, ByteRange(0, 9)),
        ("bytes=0-99", 10, ByteRange(0, 9)),
        ("bytes=9-", 10, ByteRange(9, 9)),
        ("bytes=3-", 10, ByteRange(3, 9)),
        ("bytes=-1", 10, ByteRange(9, 9)),
        ("bytes=-4", 10, ByteRange(6, 9)),
        ("bytes=-40", 10, ByteRange(0, 9)),
        ("BYTES = 2-5", 10, ByteRange(2, 5)),
        ("bytes=10-", 10, Unsatisfiable()),
        ("bytes=10-20", 10, Unsatisfiable()),
        ("bytes=-0", 10, Unsatisfiable()),
        ("bytes=0-", 0, Unsatisfiable()),
        ("bytes=-5", 0, Unsatisfiable()),
        # What a server may ignore: answered with the whole body.
        ("bytes=5-2", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("items=0-1", 10, None),
        ("bytes=abc", 10, None),
        ("bytes=-", 10, None),
        ("bytes=1-2-3", 10, None),
        ("bytes=" + "9" * 30 + "-", 10, None),
        ("bytes", 10, None),
    ],
)
def test_select(header: str, size: int, expected) -> None:
    assert select(header, size) == expected


def test_no_range_means_the_whole_body() -> None:
    assert select(None, 10) is None


def test_if_range_with_the_current_etag_keeps_the_range() -> None:
    assert select("bytes=1-2", 10, if_range=ETAG, etag=ETAG) == ByteRange(1, 2)


@pytest.mark.parametrize("if_range", ['"other"', "W/" + ETAG, "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_if_range_that_does_not_match_sends_everything(if_range: str) -> None:
    assert select("bytes=1-2", 10, if_range=if_range, etag=ETAG) is None


def test_content_range_strings() -> None:
    assert ByteRange(0, 0).content_range(10) == "bytes 0-0/10"
    assert Unsatisfiable().content_range(10) == "bytes */10"


@given(size=st.integers(0, 10**12), first=st.integers(0, 10**12),
       last=st.none() | st.integers(0, 10**12))
def test_a_chosen_range_always_lies_inside_the_body(size, first, last) -> None:
    header = f"bytes={first}-{'' if last is None else last}"
    chosen = select(header, size)
    if isinstance(chosen, ByteRange):
        assert 0 <= chosen.first <= chosen.last < size
        assert chosen.first == first
        assert chosen.length == min(size - 1, last if last is not None else size) - first + 1
    elif isinstance(chosen, Unsatisfiable):
        assert first >= size
    else:
        assert last is not None and last < first


@given(size=st.integers(1, 10**12), suffix=st.integers(1, 10**13))
def test_a_suffix_range_ends_at_the_last_byte(size, suffix) -> None:
    chosen = select(f"bytes=-{suffix}", size)
    assert chosen == ByteRange(max(0, size - suffix), size - 1)
