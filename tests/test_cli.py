"""The `segue` command as a sysadmin uses it: init, keys, pack, token, check-config."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from conftest import FLAC, MP3, OPUS, SEGUE, Node, make_tone, segue
from segue.seal import keys


def test_init_makes_a_node_and_says_what_next(tmp_path: Path) -> None:
    out = segue("init", tmp_path / "n", "--listen", "127.0.0.1:9999").stdout
    root = tmp_path / "n"
    for name in ("edge-x25519", "edge-rsa", "packager-ed25519", "auth-ed25519"):
        private = root / "keys" / f"{name}.pem"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert (root / "keys" / f"{name}.pem.pub").exists()
    assert (root / "store").is_dir()
    assert (root / "catalogue.sqlite").exists()
    assert 'listen = "127.0.0.1:9999"' in (root / "segued.toml").read_text()
    assert "segue pack --config" in out
    assert segue("check-config", "--config", root / "segued.toml").returncode == 0


def test_init_keeps_keys_and_tracks_unless_told_to_wipe_and_confirmed(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    node.pack(make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="Kept"))
    keys_dir = node.root / "keys"
    before = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    again = segue("init", node.root, check=False)
    assert again.returncode == 2 and "--force" in again.stderr

    (keys_dir / "auth-ed25519.pem").unlink()  # a lost key, made again; the others are kept
    (keys_dir / "edge-rsa.pem.pub").unlink()
    node.conf.write_text("# edited\n")
    out = segue("init", node.root, "--force", "--listen", "127.0.0.1:0").stdout
    after = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    assert {n for n in before if after[n] != before[n]} == {"auth-ed25519.pem",
                                                           "auth-ed25519.pem.pub"}
    assert "(chunk store, kept)" in out and "(catalogue, kept)" in out
    assert "[store]" in node.conf.read_text()
    fsck = segue("fsck", "--config", node.conf).stdout
    assert "checked 1 tracks" in fsck and "0 problems" in fsck

    for stdin in (subprocess.DEVNULL, None):  # a script; a pipe that answers nothing
        refused = subprocess.run([*SEGUE, "init", str(node.root), "--wipe"], stdin=stdin,
                                 input=None if stdin else "", capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 2 and "add --yes" in refused.stderr
    assert {p.name: p.read_bytes() for p in keys_dir.iterdir()} == after
    segue("init", node.root, "--wipe", "--yes")
    assert all((keys_dir / n).read_bytes() != after[n] for n in after)
    assert not any((node.root / "store" / "tracks").iterdir())  # the store starts empty
    assert (node.root / "store" / "segue-store.json").exists()
    assert "checked 0 tracks" in segue("fsck", "--config", node.conf).stdout


@pytest.mark.parametrize(("role", "key_type"), [
    ("edge", "x25519"), ("edge", "rsa"), ("edge", "p256"),
    ("packager", "ed25519"), ("packager", "p256"),
    ("auth", "ed25519"), ("auth", "p256"), ("auth", "rsa"),
])
def test_keys_new_writes_a_private_file_0600_and_prints_the_key_id(tmp_path: Path, role: str,
                                                                   key_type: str) -> None:
    out = tmp_path / "k.pem"
    kid = segue("keys", "new", role, "--type", key_type, "--out", out).stdout.strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public = keys.load_public_key(Path(f"{out}.pub"))
    assert keys.key_id(public) == kid
    assert keys.key_type_of(keys.load_private_key(out)) == key_type
    if key_type == "rsa":
        assert public.key_size == 3072


def test_keys_new_refuses_a_type_that_does_not_fit_the_role(tmp_path: Path) -> None:
    result = segue("keys", "new", "packager", "--type", "x25519", "--out", tmp_path / "k.pem",
                   check=False)
    assert result.returncode == 2
    assert "ed25519 or p256" in result.stderr
    assert not (tmp_path / "k.pem").exists()


def test_keys_new_does_not_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    segue("keys", "new", "edge", "--type", "x25519", "--out", out)
    result = segue("keys", "new", "edge", "--type", "x25519", "--out", out, check=False)
    assert result.returncode == 2
    assert "exists" in result.stderr


def test_a_private_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    key = node.root / "keys" / "edge-rsa.pem"
    key.chmod(0o644)
    result = segue("check-config", "--config", node.conf, check=False)
    assert result.returncode == 2
    assert f"chmod 600 {key}" in result.stderr
    assert "seal.edge_keys" in result.stderr


def test_pack_prints_a_line_per_track_and_is_idempotent(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    files = [make_tone(tmp_path / "a.mp3", MP3, seconds=3, title="Alpha"),
             make_tone(tmp_path / "b.flac", FLAC, seconds=3, freq=550),
             make_tone(tmp_path / "c.ogg", OPUS, seconds=3, freq=660)]
    out = segue("pack", "--config", node.conf, *files).stdout.splitlines()
    rows = [line.split("\t") for line in out]
    assert [r[1:] for r in rows] == [["Alpha", str(files[0])], ["b", str(files[1])],
                                     ["c", str(files[2])]]
    first_ids = [r[0] for r in rows]
    store_files = sorted(p for p in (node.root / "store").rglob("*") if p.is_file())
    again = segue("pack", "--config", node.conf, "--json", *files).stdout.splitlines()
    docs = [json.loads(line) for line in again]
    assert [d["track_id"] for d in docs] == first_ids
    assert all(d["already_packed"] for d in docs)
    assert sorted(p for p in (node.root / "store").rglob("*") if p.is_file()) == store_files
    mp3 = docs[0]
    assert {k: mp3[k] for k in ("title", "mime", "bytes", "chunks")} == {
        "title": "Alpha", "mime": "audio/mpeg", "bytes": files[0].stat().st_size, "chunks": 1}
    assert 2.9 < mp3["duration_s"] < 3.2
    assert {d["mime"] for d in docs} == {"audio/mpeg", "audio/flac", "audio/ogg"}


@pytest.mark.parametrize(("suffix", "args", "mime"), [
    (".wav", ["-c:a", "pcm_s16le"], "audio/wav"),
    (".m4a", ["-c:a", "aac", "-b:a", "96k"], "audio/mp4"),
    (".aac", ["-c:a", "aac", "-b:a", "96k"], "audio/aac"),
])
def test_pack_reads_wav_and_aac(tmp_path: Path, suffix: str, args: list[str], mime: str) -> None:
    node = Node.init(tmp_path / "n")
    source = make_tone(tmp_path / f"t{suffix}", args, seconds=2, title="Other Formats")
    doc = json.loads(segue("pack", "--config", node.conf, "--json", source).stdout)
    assert doc["mime"] == mime
    # ADTS has no tags: its title is the file name (WAV's are in tests/test_wav_tags.py).
    assert doc["title"] == ("t" if suffix == ".aac" else "Other Formats")


def test_pack_names_a_file_it_cannot_pack_and_goes_on(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    junk = tmp_path / "notes.txt"
    junk.write_text("not audio")
    good = make_tone(tmp_path / "a.mp3", MP3, seconds=2, title="Good")
    result = segue("pack", "--config", node.conf, junk, tmp_path / "missing.mp3", good,
                   check=False)
    assert result.returncode == 1
    assert "notes.txt: not an audio format" in result.stderr
    assert "missing.mp3: no such file" in result.stderr
    assert result.stdout.count("\t") == 2 and "Good" in result.stdout


def test_token_carries_user_expiry_and_tracks(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    token = node.token("alice", "--ttl", "120", "--tracks", "aaaaaaaa,bbbbbbbb")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 120
    assert claims["tracks"] == ["aaaaaaaa", "bbbbbbbb"]
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    bad = segue("token", "--config", node.conf, "--user", "x", "--tracks", "../etc",
                check=False)
    assert bad.returncode == 2 and "--tracks" in bad.stderr


def test_check_config_lists_every_error_with_its_key(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    node.conf.write_text(node.conf.read_text()
                         .replace("[http]\n", "[http]\nlisten_port = 1\nmax_header_bytes = -5\n")
                         + "\n[strage]\npath = 'x'\n")
    result = segue("check-config", "--config", node.conf, check=False)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any("http.listen_port" in line and "did you mean 'listen'" in line for line in lines)
    assert any("http.max_header_bytes" in line and "greater than 0" in line for line in lines)
    assert any("[strage]" in line and "did you mean 'store'" in line for line in lines)
    assert all(str(node.conf) in line for line in lines)
    assert "Traceback" not in result.stderr


def test_run_with_a_missing_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = segue("run", "--config", tmp_path / "nope.toml", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "segue init" in result.stderr


def test_segued_is_segue_run(tmp_path: Path) -> None:
    segued = Path(sys.executable).with_name("segued")
    result = subprocess.run([segued, "--config", str(tmp_path / "nope.toml")],
                            capture_output=True, text=True, timeout=30, env=os.environ)
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_conventions_config_from_the_environment_debug_anywhere_help_and_version(
        tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    env = {**os.environ, "SEGUE_CONFIG": str(node.conf)}
    assert segue("check-config", env=env).stdout.strip() == f"{node.conf}: OK"
    missing = segue("check-config", check=False, env={
        k: v for k, v in os.environ.items() if k != "SEGUE_CONFIG"})
    assert missing.returncode == 2 and "/etc/segue/segued.toml: no such file" in missing.stderr
    assert "SEGUE_CONFIG" in missing.stderr
    traced = segue("token", "--config", tmp_path / "nope.toml", "--user", "a", "--debug",
                   check=False)
    assert "Traceback" in traced.stderr
    bare = segue()
    assert bare.stdout.startswith("usage: segue") and "COMMAND" in bare.stdout
    segued = Path(sys.executable).with_name("segued")
    version = subprocess.run([segued, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("segued ")


def test_a_port_in_use_is_named_with_what_to_check(tmp_path: Path) -> None:
    import socket

    node = Node.init(tmp_path / "n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = segue("run", "--config", node.conf, "--listen", f"127.0.0.1:{port}",
                       check=False)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "address already in use" in result.stderr and f"sport = :{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_public_key_given_for_a_private_one_is_named(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    node.conf.write_text(node.conf.read_text().replace(
        'signing_key = "keys/auth-ed25519.pem"', 'signing_key = "keys/auth-ed25519.pem.pub"'))
    result = segue("token", "--config", node.conf, "--user", "a", check=False)
    assert result.returncode == 2
    assert "auth-ed25519.pem.pub is a public key" in result.stderr
    assert "auth-ed25519.pem?" in result.stderr and "chmod" not in result.stderr


def test_keys_show_names_kind_type_id_and_roles(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    edge, auth_pub = (node.root / "keys" / name for name in ("edge-rsa.pem",
                                                             "auth-ed25519.pem.pub"))
    out = segue("keys", "show", edge, auth_pub).stdout.splitlines()
    edge_id = keys.key_id(keys.load_private_key(edge).public_key())
    assert out[0] == f"{edge}: private key, rsa, id {edge_id}, for edge or auth"
    assert out[1].startswith(f"{auth_pub}: public key, ed25519, id ")
    doc = json.loads(segue("keys", "show", "--json", edge).stdout)
    assert doc == {"path": str(edge), "key_id": edge_id, "type": "rsa", "private": True,
                   "roles": ["edge", "auth"]}
    assert "BEGIN" not in segue("keys", "show", edge).stdout


def test_pack_takes_folders_at_any_depth_and_a_list_and_sums_up(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "n")
    music = tmp_path / "music"
    (music / "album" / "disc 2").mkdir(parents=True)
    (music / ".hidden").mkdir()
    a = make_tone(music / "album" / "a.mp3", MP3, seconds=2, title="A")
    b = make_tone(music / "album" / "disc 2" / "b.flac", FLAC, seconds=2, freq=550)
    make_tone(music / ".hidden" / "h.mp3", MP3, seconds=2, freq=660)
    (music / "album" / "cover.jpg").write_bytes(b"\xff\xd8 not music")
    c = make_tone(tmp_path / "c.ogg", OPUS, seconds=2, freq=770)
    result = segue("pack", "--config", node.conf, music, "--files-from", "-",
                   input=f"{c}\n\n{a}\n")
    assert [line.split("\t")[2] for line in result.stdout.splitlines()] == [
        str(a), str(b), str(c), str(a)]
    assert result.stderr.strip().endswith(
        "segue: 4 files: 3 packed, 1 already packed, 0 not packed, 0 not published")
    nothing = segue("pack", "--config", node.conf, check=False)
    assert nothing.returncode == 2 and "--files-from" in nothing.stderr


def test_an_edge_node_serves_with_no_packager_or_token_private_key(tmp_path: Path) -> None:
    import shutil
    import urllib.request

    packer = Node.init(tmp_path / "packer")
    edge = Node(tmp_path / "edge")
    segue("init", edge.root, "--role", "edge", "--listen", "127.0.0.1:0")
    assert sorted(p.name for p in (edge.root / "keys").iterdir()) == [
        "edge-rsa.pem", "edge-rsa.pem.pub", "edge-x25519.pem", "edge-x25519.pem.pub"]
    assert "signing_key" not in edge.conf.read_text()
    unconfigured = segue("check-config", "--config", edge.conf, check=False)
    assert unconfigured.returncode == 2 and "packager-ed25519.pem.pub" in unconfigured.stderr
    for name in ("packager-ed25519.pem.pub", "auth-ed25519.pem.pub"):
        shutil.copy(packer.root / "keys" / name, edge.root / "keys" / name)
    edge_keys = ", ".join(f'"{edge.root}/keys/{n}.pem.pub"' for n in ("edge-x25519", "edge-rsa"))
    packer.conf.write_text(packer.conf.read_text().replace(
        'recipients = ["keys/edge-x25519.pem.pub", "keys/edge-rsa.pem.pub"]',
        f"recipients = [{edge_keys}]"))
    edge.conf.write_text(edge.conf.read_text().replace(
        'path = "store"', f'path = "{packer.root / "store"}"'))
    source = make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="Served")
    (track,) = packer.pack(source)
    edge.start()
    try:
        with urllib.request.urlopen(edge.url(track, packer.token()), timeout=10) as r:
            assert r.read() == source.read_bytes()
    finally:
        edge.stop()
