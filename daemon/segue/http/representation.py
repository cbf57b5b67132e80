"""What a track's answers say about it, besides its bytes: type, file name, validators.

Worked out once per track version and kept, checked and written as header lines: every play
of a track sends the same fields, so a request neither formats dates, encodes titles nor
checks header values again.

The validators are chosen so that every node serving a track says the same, and a player or a
cache in front of the fleet may revalidate against any node:

* `ETag` is the track id, quoted. The id is the first 128 bits of SHA-256 over the original
  file (segue.media.track_id_of), and those bytes are exactly what is served, so it is a strong
  validator by construction: the same on every node, across re-packing and key rewrapping, and
  it tells nothing that the URL does not already say.
* `Last-Modified` is the manifest's `created` time. It is signed with the manifest, so every
  share and every node holds the same value, where a manifest file's mtime would differ from
  share to share and change when files are copied or restored. A rewrap (a new manifest
  version for other edge keys, the same bytes) moves it forward: a client revalidating by date
  alone downloads once more, while one sending the ETag (If-None-Match wins, RFC 9110 13.2.2)
  does not. A manifest without `created` (0) has no Last-Modified; a `created` in the future
  (a packager's clock ahead) is sent as the time it was first served, since Last-Modified may
  not be later than Date.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from segue.http import dates
from segue.http.disposition import content_disposition
from segue.http.wire import header_lines
from segue.seal.manifest import Manifest


@dataclass(frozen=True, slots=True)
class Representation:
    """One track version's validators and fields.

    `validators` go with every answer about it (304 and 416 included); `rendered` are the
    header lines of a 200 or 206 (wire.header_lines: PreparedResponse.rendered_headers).
    """

    etag: str
    last_modified: int | None
    validators: tuple[tuple[str, str], ...]
    rendered: str


def of(manifest: Manifest) -> Representation:
    """The representation of the track this manifest describes."""
    meta = manifest.meta
    return _representation(manifest.track_id, meta.mime, meta.title, manifest.created)


@functools.lru_cache(maxsize=1024)
def _representation(track_id: str, mime: str, title: str, created: int) -> Representation:
    etag = f'"{track_id}"'
    last_modified = min(created, int(time.time())) if created > 0 else None
    validators: tuple[tuple[str, str], ...] = (("ETag", etag), ("Cache-Control", "private"))
    if last_modified is not None:
        validators += (("Last-Modified", dates.imf_fixdate(last_modified)),)
    rendered = header_lines((
        ("Content-Type", mime),
        ("Content-Disposition", content_disposition(title, mime, track_id)),
        ("Accept-Ranges", "bytes"),
        *validators,
    ))
    return Representation(etag, last_modified, validators, rendered)
