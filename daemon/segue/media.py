"""What an audio file is: its format, MIME type, duration and tags (read with mutagen, and a
WAV's RIFF INFO tags with riff_info)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mutagen
import structlog
from mutagen.aac import AAC
from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from segue.riff_info import RiffInfoError, read_info
from segue.seal.manifest import TrackMeta

log = structlog.get_logger("segue.media")

SUPPORTED = "MP3, FLAC, Ogg/Opus, Ogg/Vorbis, WAV, AAC (ADTS) and M4A"
_MIME = {
    MP3: "audio/mpeg",
    FLAC: "audio/flac",
    OggOpus: "audio/ogg",
    OggVorbis: "audio/ogg",
    WAVE: "audio/wav",
    MP4: "audio/mp4",
    AAC: "audio/aac",
}
_ID_HEX_CHARS = 32
#: The file names taken from a folder given to `segue pack` (a file named alone is probed
#: whatever its name): covers, playlists and cue sheets beside the music are not errors.
AUDIO_SUFFIXES = frozenset({".mp3", ".flac", ".ogg", ".opus", ".oga", ".wav", ".aac", ".m4a"})


class MediaError(Exception):
    """The file cannot be packed: unreadable, or not audio in a supported format."""


def audio_files(folder: Path) -> list[Path]:
    """The audio files below `folder`, at any depth, in name order; hidden names skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def track_id_of(path: Path) -> str:
    """The track id: the first 128 bits of SHA-256 over the file's bytes, in hex.

    It depends only on the audio file's content, so packing the same file again, on any
    packager, gives the same id.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as e:
        raise MediaError(f"{path}: cannot read: {e.strerror}") from None
    return digest.hexdigest()[:_ID_HEX_CHARS]


def probe(path: Path) -> TrackMeta:
    """Read format, duration and title/artist/album tags; the title falls back to the file name."""
    try:
        audio = mutagen.File(path)
    except mutagen.MutagenError as e:
        raise MediaError(f"{path}: not a readable audio file: {e}") from None
    mime = _MIME.get(type(audio)) if audio is not None else None
    if audio is None or mime is None:
        raise MediaError(f"{path}: not an audio format segue packs ({SUPPORTED})")
    tags = {"title": _tag(audio, "title", "TIT2", "\xa9nam"),
            "artist": _tag(audio, "artist", "TPE1", "\xa9ART"),
            "album": _tag(audio, "album", "TALB", "\xa9alb")}
    if isinstance(audio, WAVE) and not all(tags.values()):
        # An ID3 chunk's tags come first; RIFF INFO fills what it lacks.
        tags = {**{k: _printable(v) for k, v in _riff_info(path).items()},
                **{k: v for k, v in tags.items() if v}}
    return TrackMeta(
        title=tags.get("title") or path.stem,
        artist=tags.get("artist", ""),
        album=tags.get("album", ""),
        duration_s=round(float(getattr(audio.info, "length", 0.0) or 0.0), 3),
        mime=mime,
    )


def _riff_info(path: Path) -> dict[str, str]:
    """A WAV's INFO tags; {} with a warning when they are malformed (the track is still
    packed, named after its file)."""
    try:
        with open(path, "rb") as f:
            return read_info(f, path.stat().st_size)
    except RiffInfoError as e:
        log.warning("WAV INFO tags unreadable; packed without them", file=str(path),
                    error=str(e))
    except OSError as e:
        raise MediaError(f"{path}: cannot read: {e.strerror}") from None
    return {}


def _tag(audio: mutagen.FileType, vorbis: str, id3: str, mp4: str) -> str:
    """The first value of a tag, whichever tag family the format uses."""
    tags = audio.tags
    if tags is None:
        return ""
    for name in (vorbis, id3, mp4):
        try:
            value = tags.get(name)
        except (KeyError, ValueError, TypeError):
            continue
        if value is None:
            continue
        if hasattr(value, "text"):
            value = value.text
        if isinstance(value, list | tuple):
            value = value[0] if value else ""
        text = _printable(str(value))
        if text:
            return text
    return ""


def _printable(text: str) -> str:
    """`text` with control characters as spaces, so a tag never splits the tab-separated lines
    of `segue pack` and `segue tracks list`."""
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text).strip()
