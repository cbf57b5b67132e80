"""A track's file name: the extension of its type, and the Content-Disposition that offers it.

A player that saves a track (`curl -OJ`, a browser's "Save as") gets "Title.mp3" rather than
the track id with no extension. The title comes from the audio file's tags, so it is text from
whoever tagged the file: anything that could break the header (quotes, backslashes, CR/LF and
other control characters) or a file system (path separators) is replaced before it is written,
and the header is pure ASCII: the exact title travels percent-encoded in `filename*` (RFC 6266,
RFC 8187), with an ASCII approximation in `filename` for clients that read only that.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import quote

#: The extensions of each type a track may have, the usual one first (the one offered). Every
#: one of them is accepted in /v1/tracks/{id}.{ext}.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "audio/mpeg": ("mp3",),
    "audio/flac": ("flac",),
    "audio/ogg": ("ogg", "oga"),
    "audio/wav": ("wav",),
    "audio/mp4": ("m4a", "mp4"),
    "audio/aac": ("aac",),
}
#: Characters a file name must not carry: path separators, and what a quoted-string or a
#: header cannot hold as it is.
_UNSAFE = re.compile(r'[/\\"\x00-\x1f\x7f]')
_SPACES = re.compile(r"\s+")
#: RFC 8187 attr-char beyond letters and digits: everything else is percent-encoded.
_ATTR_CHARS = "!#$&+-.^_`|~"
MAX_TITLE_CHARS = 120  # file systems take 255 bytes; a long title still leaves room


def extension(mime: str) -> str | None:
    """The usual extension of `mime`, None for a type Segue does not name."""
    known = EXTENSIONS.get(mime)
    return known[0] if known else None


def fits(mime: str, ext: str) -> bool:
    """Whether a URL's extension `ext` (without the dot) names the type `mime`."""
    return ext.lower() in EXTENSIONS.get(mime, ())


@functools.lru_cache(maxsize=1024)
def content_disposition(title: str, mime: str, fallback: str) -> str:
    """`inline; filename="..."; filename*=UTF-8''...` for a track of this title and type.

    `fallback` (the track id) names a track whose title leaves nothing printable. Remembered:
    every play of a track asks for the same header.
    """
    stem = _SPACES.sub(" ", _UNSAFE.sub(" ", title)).strip()[:MAX_TITLE_CHARS].strip()
    stem = "".join(c for c in stem if unicodedata.category(c)[0] != "C") or fallback
    # "Café" becomes "Cafe"; a title with no Latin letter at all, the fallback.
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    ascii_stem = _SPACES.sub(" ", ascii_stem.replace("%", " ")).strip() or fallback
    ext = extension(mime)
    suffix = "" if ext is None else f".{ext}"
    return (f'inline; filename="{ascii_stem}{suffix}"; '
            f"filename*=UTF-8''{quote(stem + suffix, safe=_ATTR_CHARS)}")
