"""`segue keys rewrap`: adding and removing an edge key on every track, chunks untouched."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from conftest import MP3, SEGUE, Node, make_tone, segue


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def rewrap_on_a_terminal(conf: Path) -> tuple[list[str], str]:
    """`segue keys rewrap` with stderr on a pseudo-terminal: (stdout's lines, what the
    terminal showed)."""
    controller, terminal = os.openpty()
    try:
        done = subprocess.run([*SEGUE, "keys", "rewrap", "--config", str(conf)],
                              stdout=subprocess.PIPE, stderr=terminal, text=True, check=True,
                              timeout=120)
        os.close(terminal)
        shown = b""
        while select.select([controller], [], [], 0.5)[0]:
            try:
                piece = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not piece:
                break
            shown += piece
    finally:
        os.close(controller)
    return done.stdout.splitlines(), shown.decode(errors="replace")


def test_rewrap_adds_and_removes_a_recipient_on_every_track(fresh_node: Node,
                                                            tmp_path: Path) -> None:
    node, conf = fresh_node, fresh_node.conf
    tracks = node.pack(*(make_tone(tmp_path / f"{n}.mp3", MP3, seconds=2, freq=f, title=n)
                         for n, f in (("One", 440), ("Two", 550))))
    chunks = {p: p.read_bytes() for p in (node.root / "store").rglob("*.chunk")}
    segue("keys", "new", "edge", "--type", "x25519", "--out", node.root / "keys" / "new.pem")
    # The new key in, the RSA key out: [packer] recipients says who may open tracks.
    node.conf.write_text(conf.read_text().replace(
        'recipients = ["keys/edge-x25519.pem.pub", "keys/edge-rsa.pem.pub"]',
        'recipients = ["keys/edge-x25519.pem.pub", "keys/new.pem.pub"]'))
    out, bar = rewrap_on_a_terminal(conf)
    assert "%" in bar and "[" in bar  # the progress bar, on stderr, as it is a terminal
    assert "%" not in "\n".join(out)  # and never in the output a script reads
    assert sorted(out[:2]) == sorted(f"{t}\trewrapped: manifest version 2" for t in tracks)
    assert out[2] == "2 rewrapped, 0 already wrapped for the 2 recipients, 0 failed"
    # Run again (as after an interruption): nothing is left to do.
    again = segue("keys", "rewrap", "--config", conf).stdout
    assert again == "0 rewrapped, 2 already wrapped for the 2 recipients, 0 failed\n"
    assert {p: p.read_bytes() for p in (node.root / "store").rglob("*.chunk")} == chunks

    def serve_with(edge_key: str) -> None:
        node.conf.write_text(node.conf.read_text().replace(
            node.conf.read_text().split("edge_keys = ", 1)[1].split("\n", 1)[0],
            f'["keys/{edge_key}"]'))

    serve_with("new.pem")  # a node holding only the new key plays every track
    node.start()
    token = node.token()
    assert [status_of(node.url(t, token)) for t in tracks] == [200, 200]
    serve_with("edge-rsa.pem")  # one holding only the removed key plays none
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    node.wait_for_event("configuration reloaded")
    assert [status_of(node.url(t, token)) for t in tracks] == [503, 503]
