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
#: Characters a file name must not carry (path separators) or a quoted-string cannot hold.
_UNSAFE = frozenset('/\\"')
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
    # Dots and spaces go from the ends: no hidden file, nothing Windows trims.
    kept = "".join(map(_file_name_char, title))
    stem = _SPACES.sub(" ", kept)[:MAX_TITLE_CHARS].strip(" .") or fallback
    # "Café" becomes "Cafe"; a title with no Latin letter at all, the fallback.
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    ascii_stem = _SPACES.sub(" ", ascii_stem.replace("%", " ")).strip(" .") or fallback
    ext = extension(mime)
    suffix = "" if ext is None else f".{ext}"
    return (f'inline; filename="{ascii_stem}{suffix}"; '
            f"filename*=UTF-8''{quote(stem + suffix, safe=_ATTR_CHARS)}")


def _file_name_char(c: str) -> str:
    """`c` as a file name may hold it: line breaks and other controls part words (a space);
    invisible formatting, such as a right-to-left override that shows "3pm.exe" as
    "exe.mp3", goes."""
    if c in _UNSAFE:
        return " "
    category = unicodedata.category(c)
    if category == "Cc":
        return " "
    return "" if category[0] == "C" else c
