"""What the commands say about themselves: `--help` with examples, the man pages and the bash
completion, each generated from the argparse definitions and used the way a sysadmin would."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require, segue
from segue.cli import segue_parser
from segue.cli_help import commands

TOOLS = Path(__file__).resolve().parent.parent / "tools"
SEGUE_TREE = commands(segue_parser())
SEGUED = Path(sys.executable).with_name("segued")
# Commands a sysadmin looks for: the walk must find at least these.
KNOWN = {"segue init", "segue keys new", "segue keys show", "segue keys rewrap", "segue pack",
         "segue catalogue publish", "segue store mark", "segue tracks list",
         "segue tracks show", "segue tracks remove", "segue token", "segue run",
         "segue check-config", "segue fsck", "segue plugins"}


def test_the_walk_finds_every_command() -> None:
    assert {c.name for c in SEGUE_TREE} >= KNOWN


@pytest.mark.parametrize("words", [c.words for c in SEGUE_TREE], ids=" ".join)
def test_every_command_help_ends_with_examples_of_itself(words: tuple[str, ...]) -> None:
    out = segue(*words[1:], "--help").stdout
    assert out.startswith(f"usage: {' '.join(words)}")
    assert "\nexamples:\n" in out, f"add examples of {' '.join(words)} to EXAMPLES in " \
                                    "segue/cli_help.py"
    head, examples = out.split("\nexamples:\n")
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert lines and all(line.startswith(("#", "segue", "runuser", "find", "SEGUE_CONFIG", "--"))
                         for line in lines)
    # The examples use the command they are about (a group: one of its subcommands).
    assert any(" ".join(words) in line for line in lines)
    assert head.count("\n\n") >= 2  # usage, description, arguments


def test_help_examples_read_as_written() -> None:
    out = segue("tracks", "list", "--help").stdout
    assert out.endswith("examples:\n  segue tracks list\n  # the second page of 50, as JSON "
                        "with the total\n  segue tracks list --json --offset 50 --limit 50\n")
    assert "\nThe catalogue's tracks, by title.\n" in out
    token = segue("token", "--help").stdout
    assert "  segue token --user alice --ttl 86400 \\\n      --tracks 1ab2" in token
    daemon = subprocess.run([SEGUED, "--help"], capture_output=True, text=True, check=True,
                            timeout=30).stdout
    assert "\nexamples:\n" in daemon and "segued --config /etc/segue/segued.toml" in daemon


def rendered(page: Path, tmp_path: Path) -> str:
    """`man -l PAGE` as a reader sees it (plain text), failing on any warning of man/groff."""
    man = require("man", "man-db")
    done = subprocess.run([man, "--warnings", "-l", page], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MANWIDTH": "80", "LANG": "C.UTF-8",
                                           "MANPAGER": "cat", "HOME": str(tmp_path)})
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout


def test_man_pages_render_cleanly_and_list_every_command_and_option(tmp_path: Path) -> None:
    subprocess.run([sys.executable, TOOLS / "manpages.py", tmp_path], check=True, timeout=60,
                   capture_output=True)
    text = rendered(tmp_path / "segue.1", tmp_path)
    assert text.startswith("SEGUE(1)") and "segue - Segue edge node: pack, seal" in text
    headings = re.findall(r"^   (segue [a-z -]+)$", text, re.MULTILINE)
    assert set(headings) == {c.name for c in SEGUE_TREE[1:]} and set(headings) >= KNOWN
    sections = re.split(r"^   (?=segue [a-z -]+$)", text, flags=re.MULTILINE)
    for command, section in zip(SEGUE_TREE[1:], sections[1:], strict=True):
        assert section.startswith(command.name + "\n")
        for action in command.arguments:
            for option in action.option_strings:
                assert option == "--debug" or re.search(rf"{option}\b", section), \
                    f"{command.name}: {option} is missing"
        assert "Examples:" in section
    for heading in ("ENVIRONMENT", "FILES", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{heading}\n" in text
    assert "SEGUE_CONFIG" in text and "segue tracks list --json --offset 50 --limit 50" in text

    daemon = rendered(tmp_path / "segued.1", tmp_path)
    assert daemon.startswith("SEGUED(1)") and "segued - Run the Segue edge daemon" in daemon
    for option in ("--config CONF", "--listen HOST:PORT", "--workers N", "--version"):
        assert option in daemon
    assert "\nSIGNALS\n" in daemon and "SIGHUP" in daemon


@pytest.fixture(scope="module")
def completion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("completion")
    subprocess.run([sys.executable, TOOLS / "completions.py", out], check=True, timeout=60,
                   capture_output=True)
    return out / "segue"


def complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for TAB at the end of `line`, with the completion `script` sourced: the
    function `complete -p` registered for the command, called as bash calls it."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = f"""
        source {shlex.quote(str(script))}
        spec=$(complete -p {shlex.quote(words[0])}) || exit 3
        function=$(sed -E 's/.* -F ([^ ]+) .*/\\1/' <<< "$spec")
        COMP_WORDS=({" ".join(shlex.quote(w) for w in words)})
        COMP_CWORD={len(words) - 1}
        COMP_LINE={shlex.quote(line)}
        COMP_POINT=${{#COMP_LINE}}
        "$function" {shlex.quote(words[0])} {shlex.quote(words[-1])} {shlex.quote(words[-2])}
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    done = subprocess.run([require("bash", "bash"), "--norc", "--noprofile", "-c", program],
                          capture_output=True, text=True, timeout=30, check=True, cwd=cwd)
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_commands_options_and_values(completion: Path, tmp_path: Path) -> None:
    assert complete(completion, "segue tr") == ["tracks"]
    assert complete(completion, "segue tracks ") == ["list", "show", "remove"]
    assert complete(completion, "segue pack --con") == ["--config"]
    assert complete(completion, "segue --debug keys n") == ["new"]
    assert complete(completion, "segue keys new --type ") == ["x25519", "rsa", "p256", "ed25519"]
    assert complete(completion, "segue keys new ") == ["edge", "packager", "auth"]
    assert complete(completion, "segue init --role e") == ["edge"]
    assert complete(completion, "segue token --user ") == []
    assert complete(completion, "segued --w") == ["--workers"]
    assert set(complete(completion, "segue ")) == {c.words[1] for c in SEGUE_TREE
                                                   if len(c.words) == 2}
    (tmp_path / "album one").mkdir()
    (tmp_path / "segued.toml").write_text("")
    (tmp_path / "song.flac").write_text("")
    assert complete(completion, "segue pack --config seg", cwd=tmp_path) == ["segued.toml"]
    assert complete(completion, "segue pack --json --config segued.toml so",
                    cwd=tmp_path) == ["song.flac"]
    assert complete(completion, "segue init al", cwd=tmp_path) == ["album one"]

