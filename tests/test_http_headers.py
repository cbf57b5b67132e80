"""The pure rules behind the HTTP conventions: HTTP dates, file names from titles,
conditional requests, which X-Forwarded-For address is the client, and the word that says
why a token was refused."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segue.http import dates
from segue.http.client_address import ClientAddresses
from segue.http.disposition import MAX_TITLE_CHARS, content_disposition, fits
from segue.http.ranges import select
from segue.http.validators import not_modified
from segue.seal import keys
from segue.seal.tokens import TokenError, TokenVerifier

NOV_6_1994 = 784111777  # RFC 9110's example date


@pytest.mark.parametrize("text", ["Sun, 06 Nov 1994 08:49:37 GMT",
                                  "Sunday, 06-Nov-94 08:49:37 GMT",
                                  "Sun Nov  6 08:49:37 1994"])
def test_the_three_date_forms_are_read(text: str) -> None:
    assert dates.parse(text) == NOV_6_1994


@pytest.mark.parametrize("text", ["", "yesterday", "Sun, 36 Nov 1994 08:49:37 GMT",
                                  "Sun, 06 Nov 1994 25:49:37 GMT", "1994-11-06T08:49:37Z",
                                  "Sun, 06 Nov 1994 08:49:37 GMT" + " " * 64])
def test_anything_else_is_no_date(text: str) -> None:
    assert dates.parse(text) is None


def test_dates_are_written_as_imf_fixdate() -> None:
    assert dates.imf_fixdate(NOV_6_1994) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert dates.parse(dates.now()) is not None


def test_if_none_match_wins_over_if_modified_since() -> None:
    etag, modified = '"abc"', dates.imf_fixdate(NOV_6_1994)
    assert not_modified({"if-none-match": '"abc"'}, etag, None)
    assert not_modified({"if-none-match": 'W/"abc"'}, etag, NOV_6_1994)
    assert not not_modified({"if-none-match": '"old"', "if-modified-since": modified}, etag,
                            NOV_6_1994)
    assert not_modified({"if-modified-since": modified}, etag, NOV_6_1994)
    assert not not_modified({"if-modified-since": modified}, etag, NOV_6_1994 + 1)
    assert not not_modified({"if-modified-since": modified}, etag, None)  # date unknown
    assert not not_modified({}, etag, NOV_6_1994)


def test_if_range_compares_a_date_exactly() -> None:
    modified = dates.imf_fixdate(NOV_6_1994)
    assert select("bytes=1-2", 10, if_range=modified, last_modified=NOV_6_1994) is not None
    assert select("bytes=1-2", 10, if_range=modified, last_modified=NOV_6_1994 + 1) is None
    assert select("bytes=1-2", 10, if_range=modified) is None  # no date to compare with


@given(st.text(max_size=300))
def test_any_title_makes_a_safe_header_that_keeps_the_title(title: str) -> None:
    value = content_disposition(title, "audio/mpeg", "0123456789abcdef")
    assert re.fullmatch(r'inline; filename="[\x20-\x7e]*"; filename\*=UTF-8\'\'\S+', value)
    plain = re.search(r'filename="(.*)"; ', value).group(1)
    assert '"' not in plain and "\\" not in plain and "%" not in plain
    assert plain.endswith(".mp3") and not plain.startswith((".", " "))
    name = urllib.parse.unquote(value.rpartition("''")[2], errors="strict")
    assert name.endswith(".mp3") and "/" not in name and not name.startswith((".", " "))
    assert len(name) <= MAX_TITLE_CHARS + len(".mp3")
    assert not any(c in name for c in "\r\n\x00\x7f")


def test_extensions_fit_their_types() -> None:
    assert fits("audio/mpeg", "mp3") and fits("audio/mpeg", "MP3")
    assert fits("audio/mp4", "m4a") and fits("audio/ogg", "oga")
    assert not fits("audio/mpeg", "flac") and not fits("application/octet-stream", "bin")


def test_the_client_is_the_first_untrusted_address_from_the_right() -> None:
    clients = ClientAddresses([ipaddress.ip_network("10.0.0.0/8"),
                               ipaddress.ip_network("::1")])
    assert clients.client("10.0.0.2", "192.0.2.1, 10.0.0.3") == "192.0.2.1"
    assert clients.client("::1", "192.0.2.1") == "192.0.2.1"
    assert clients.client("::ffff:10.0.0.2", "192.0.2.1") == "192.0.2.1"  # IPv4 as IPv6
    assert clients.client("192.0.2.9", "192.0.2.1") == "192.0.2.9"  # untrusted peer
    assert clients.client("10.0.0.2", "") == "10.0.0.2"
    assert clients.client("10.0.0.2", "garbage") == "10.0.0.2"
    assert clients.client("", "192.0.2.1") == ""  # a peer already gone
    clients.trust([])
    assert clients.client("10.0.0.2", "192.0.2.1") == "10.0.0.2"


@pytest.mark.parametrize(("claims", "reason"), [
    ({"iss": "someone-else"}, "issuer"),
    ({"nbf": 4102444800}, "not_yet_valid"),  # 2100
    ({"exp": "soon"}, "malformed"),
    ({"tracks": 7}, "malformed"),
])
def test_a_refused_token_says_why_in_one_word(claims: dict, reason: str) -> None:
    key = keys.generate("ed25519")
    verifier = TokenVerifier({keys.key_id(key.public_key()): key.public_key()},
                             audience="segue", issuer="segue-auth")
    token = jwt.encode({"sub": "kim", "exp": 4102444800, "aud": "segue", "iss": "segue-auth",
                        **claims}, key, algorithm="EdDSA",
                       headers={"kid": keys.key_id(key.public_key())})
    with pytest.raises(TokenError) as refused:
        verifier.verify(token)
    assert refused.value.reason == reason
