"""Real players: ffprobe and ffmpeg read tracks over HTTP, seeking with range requests."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import Node, require, track_of


@pytest.mark.parametrize(("suffix", "codec", "format_name"), [
    (".mp3", "mp3", "mp3"),
    (".flac", "flac", "flac"),
    (".ogg", "opus", "ogg"),
])
def test_ffprobe_reads_codec_and_duration(node: Node, suffix: str, codec: str,
                                          format_name: str) -> None:
    ffprobe = require("ffprobe", "ffmpeg")
    track = track_of(node, suffix)
    out = subprocess.run(
        [ffprobe, "-v", "error", "-print_format", "json", "-show_entries",
         "format=format_name,duration:stream=codec_name,sample_rate,channels",
         node.url(track, node.token())],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    probed = json.loads(out)
    assert probed["streams"][0]["codec_name"] == codec
    assert probed["streams"][0]["channels"] == 2
    assert probed["format"]["format_name"] == format_name
    assert abs(float(probed["format"]["duration"]) - 30.0) < 0.1


def decode(ffmpeg: str, source: str, seek: float, seconds: float = 4.0) -> bytes:
    """PCM (s16le, 48 kHz stereo) of `seconds` from `seek`, as a player would decode it."""
    return subprocess.run(
        [ffmpeg, "-v", "error", "-nostdin", "-ss", str(seek), "-i", source, "-t", str(seconds),
         "-f", "s16le", "-ac", "2", "-ar", "48000", "-"],
        capture_output=True, timeout=120, check=True,
    ).stdout


@pytest.mark.parametrize("suffix", [".mp3", ".flac", ".ogg"])
def test_ffmpeg_seeks_into_the_middle_and_decodes_the_same_audio(node: Node,
                                                                 suffix: str) -> None:
    ffmpeg = require("ffmpeg", "ffmpeg")
    track = track_of(node, suffix)
    before = len(node.log_events())
    remote = decode(ffmpeg, node.url(track, node.token()), seek=20)
    local = decode(ffmpeg, str(node.tracks[track]), seek=20)
    assert len(local) > 48000 * 4 * 3  # at least three seconds of stereo s16
    assert remote == local
    ranges = [e.get("range") for e in node.log_events()[before:]
              if e.get("event") == "request" and e.get("track") == track]
    assert ranges, "ffmpeg made no track request"
    if suffix in (".flac", ".ogg"):
        # These demuxers seek by bisection: some request must start past the beginning.
        assert any(r and not r.startswith("0-") for r in ranges), ranges
