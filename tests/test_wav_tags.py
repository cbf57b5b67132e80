"""WAV files tagged the way ffmpeg and most tools tag them (RIFF INFO: INAM, IART, IPRD) are
packed under their title, artist and album; damaged tags never stop a pack."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from mutagen.id3 import TIT2
from mutagen.wave import WAVE

from conftest import Node, require, segue

TITLE, ARTIST, ALBUM = "Déjà vu — 夜想曲", "Zoë Ångström", "Ünïcode Sessions"


def tagged_wav(path: Path, **tags: str) -> Path:
    """A two-second WAV written by ffmpeg with `-metadata KEY=VALUE` for each tag."""
    metadata = [arg for key, value in tags.items() for arg in ("-metadata", f"{key}={value}")]
    subprocess.run([require("ffmpeg", "ffmpeg"), "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=2", *metadata,
                    "-c:a", "pcm_s16le", str(path)], check=True, timeout=60)
    return path


def test_a_wav_is_packed_under_its_info_title_artist_and_album(fresh_node: Node,
                                                                tmp_path: Path) -> None:
    source = tagged_wav(tmp_path / "take-7.wav", title=TITLE, artist=ARTIST, album=ALBUM,
                        genre="Jazz")
    packed = segue("pack", "--config", fresh_node.conf, source)
    (track,) = [line.split("\t")[0] for line in packed.stdout.splitlines()]
    assert packed.stdout == f"{track}\t{TITLE}\t{source}\n" and "warning" not in packed.stderr
    shown = json.loads(segue("tracks", "show", "--config", fresh_node.conf, "--json",
                             track).stdout)
    assert (shown["title"], shown["artist"], shown["album"]) == (TITLE, ARTIST, ALBUM)
    listed = segue("tracks", "list", "--config", fresh_node.conf).stdout
    assert listed == f"{track}\t{TITLE}\t{ARTIST}\t0:02\n"

    fresh_node.start()
    query = urllib.parse.urlencode({"q": "夜想曲", "token": fresh_node.token()})
    with urllib.request.urlopen(f"{fresh_node.base}/v1/search?{query}", timeout=10) as r:
        results = json.load(r)["results"]
    assert [(t["track_id"], t["title"], t["album"]) for t in results] == [(track, TITLE, ALBUM)]


def test_id3_tags_in_a_wav_come_first_and_info_fills_the_rest(fresh_node: Node,
                                                               tmp_path: Path) -> None:
    source = tagged_wav(tmp_path / "both.wav", title="Info Title", artist=ARTIST)
    wave = WAVE(source)  # a second tagger adds an ID3 chunk with a title only
    wave.add_tags()
    assert wave.tags is not None
    wave.tags.add(TIT2(encoding=3, text=["ID3 Title"]))
    wave.save()
    doc = json.loads(segue("pack", "--config", fresh_node.conf, "--json", source).stdout)
    assert (doc["title"], doc["artist"], doc["album"]) == ("ID3 Title", ARTIST, "")


def test_damaged_info_tags_fall_back_to_the_file_name_with_a_warning(fresh_node: Node,
                                                                       tmp_path: Path) -> None:
    source = tagged_wav(tmp_path / "damaged.wav", title=TITLE, artist=ARTIST)
    data = bytearray(source.read_bytes())
    at = data.index(b"INAM")  # its length now runs far past the end of the tag list
    data[at + 4:at + 8] = (1 << 20).to_bytes(4, "little")
    source.write_bytes(bytes(data))
    packed = segue("pack", "--config", fresh_node.conf, "--json", source)
    doc = json.loads(packed.stdout)
    assert (doc["title"], doc["artist"]) == ("damaged", "")
    assert "WAV INFO tags unreadable" in packed.stderr and "INAM" in packed.stderr
    assert "1 packed" in packed.stderr
    fresh_node.start()
    with urllib.request.urlopen(fresh_node.url(doc["track_id"], fresh_node.token()),
                                timeout=10) as r:
        assert r.read() == bytes(data)


def test_a_tag_with_control_characters_keeps_the_output_one_line_of_three_fields(
        fresh_node: Node, tmp_path: Path) -> None:
    source = tagged_wav(tmp_path / "tabs.wav", title="Side A\tTrack 1\nLive")
    out = segue("pack", "--config", fresh_node.conf, source).stdout
    assert out.count("\n") == 1 and out.split("\t")[1:] == ["Side A Track 1 Live", f"{source}\n"]
