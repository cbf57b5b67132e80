"""Conditional GET (RFC 9110 13): whether a client's cached copy is still the current one.

Pure functions over header values. For GET and HEAD, `If-None-Match` is evaluated when present
and `If-Modified-Since` only when it is not (13.2.2: the entity tag is the finer validator); a
match means 304 Not Modified, with no body. `If-Range` belongs to range selection
(segue.http.ranges).
"""

from __future__ import annotations

from collections.abc import Mapping

from segue.http import dates


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match list names `etag`, or is "*" (the representation exists).

    The weak comparison of 13.1.2, as this header asks: `W/"x"` matches `"x"`.
    """
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def not_modified(headers: Mapping[str, str], etag: str, last_modified: int | None) -> bool:
    """Whether a GET or HEAD with these (lower-cased) request headers gets 304.

    `last_modified` is the representation's Last-Modified in seconds, None when unknown; an
    If-Modified-Since that is not a valid date is ignored.
    """
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since is None or last_modified is None:
        return False
    since = dates.parse(if_modified_since)
    return since is not None and last_modified <= since
