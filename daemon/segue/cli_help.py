"""What each command says about itself: the command tree of the argparse definitions, walked,
and the examples every command's `--help` ends with.

cli.py defines the commands; `finish` gives each parser its description and examples. The man
pages (tools/manpages) and the shell completion (tools/completions) are generated from the same
walk, so none of them can fall behind a new command or option.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass

#: Each command's examples, by its words; lines starting with # say what the next ones do.
EXAMPLES = {
    "segue": """
        # a node in ./node that packs, issues tokens and serves; a folder packed; a token
        segue init node
        segue pack --config node/segued.toml ~/Music/album
        segue token --config node/segued.toml --user alice
        # an installed node's commands read /etc/segue/segued.toml (or $SEGUE_CONFIG)
        runuser -u segue -- segue check-config
    """,
    "segued": """
        # in the foreground, as the unit runs it; `systemctl start segued` under systemd
        segued --config /etc/segue/segued.toml
        # a second node on another port, with two worker processes
        segued --config node/segued.toml --listen 127.0.0.1:9000 --workers 2
    """,
    "segue init": """
        # a node that packs, issues tokens and serves, listening on every interface
        segue init /srv/segue --listen 0.0.0.0:8480
        # an edge that only serves (it expects the packager's and token issuer's public keys)
        segue init /srv/segue --role edge
        # segued.toml rewritten and what is missing made; keys and tracks are kept
        segue init /srv/segue --force
    """,
    "segue keys": """
        segue keys new edge --type x25519 --out /etc/segue/keys/edge-x25519.pem
        segue keys show /etc/segue/keys/*.pub
        segue keys rewrap
    """,
    "segue keys new": """
        # an edge key pair: edge-x25519.pem (mode 0600) and edge-x25519.pem.pub
        segue keys new edge --type x25519 --out /etc/segue/keys/edge-x25519.pem
        # the packaging host's manifest signing key, and the token issuer's
        segue keys new packager --type ed25519 --out packager-ed25519.pem
        segue keys new auth --type ed25519 --out auth-ed25519.pem
    """,
    "segue keys show": """
        segue keys show /etc/segue/keys/*
        segue keys show --json edge-x25519.pem.pub
    """,
    "segue keys rewrap": """
        # after adding or removing an edge key in [packer] recipients
        segue keys rewrap --config /etc/segue/segued.toml
    """,
    "segue pack": """
        # a file, a folder (its audio files at any depth)
        segue pack song.flac
        segue pack ~/Music/new-album
        # the files a list names, one a line, from stdin
        find /srv/incoming -name '*.mp3' | segue pack --files-from -
        # one JSON object per track, for scripts
        segue pack --json --config node/segued.toml song.flac
    """,
    "segue catalogue": """
        segue catalogue init
        segue catalogue publish
    """,
    "segue catalogue init": """
        # once, with [plugins.mysql] configured: the schema on every shard
        segue catalogue init --config /etc/segue/segued.toml
    """,
    "segue catalogue publish": """
        # the tracks whose publishing failed
        segue catalogue publish
        # one track again; every track packed here again
        segue catalogue publish 1ab2576a4edc2378a5f4c4589732ae7f
        segue catalogue publish --all
    """,
    "segue store": """
        segue store mark --new
    """,
    "segue store mark": """
        # the shares of a store made before markers
        segue store mark
        # a new, empty share, before the first pack onto it
        segue store mark --new --share nas-b
    """,
    "segue tracks": """
        segue tracks list
        segue tracks show 1ab2576a4edc2378a5f4c4589732ae7f
        segue tracks remove 1ab2576a4edc2378a5f4c4589732ae7f
    """,
    "segue tracks list": """
        segue tracks list
        # the second page of 50, as JSON with the total
        segue tracks list --json --offset 50 --limit 50
    """,
    "segue tracks show": """
        segue tracks show 1ab2576a4edc2378a5f4c4589732ae7f
        segue tracks show --json 1ab2576a4edc2378a5f4c4589732ae7f
    """,
    "segue tracks remove": """
        # from the central catalogue, the local one and every share; again to finish
        segue tracks remove 1ab2576a4edc2378a5f4c4589732ae7f
    """,
    "segue token": """
        # for every track, valid [auth] default_ttl_s seconds
        segue token --user alice
        # for a day, for two tracks only
        segue token --user alice --ttl 86400 \\
            --tracks 1ab2576a4edc2378a5f4c4589732ae7f,b0c4b1a9a5362eb67a6578b54eda0d7d
    """,
    "segue run": """
        # in the foreground, as the unit runs it (segued is the same)
        segue run --config /etc/segue/segued.toml
        segue run --config node/segued.toml --listen 127.0.0.1:9000
    """,
    "segue check-config": """
        runuser -u segue -- segue check-config
        SEGUE_CONFIG=node/segued.toml segue check-config
    """,
    "segue fsck": """
        # every track on every share; then bad copies rewritten from good ones
        segue fsck
        segue fsck --repair
        segue fsck --track 1ab2576a4edc2378a5f4c4589732ae7f
    """,
    "segue plugins": """
        segue plugins
        segue plugins --json --config /etc/segue/segued.toml
    """,
}

_WIDTH = 79


@dataclass(frozen=True)
class Command:
    """One command of the tree: its words ("segue", "keys", "new"), its parser, and the line
    its parent lists it with ("" for the top)."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser
    summary: str

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def subcommands(self) -> list[str]:
        """The names of its subcommands, in their order of definition."""
        return [pseudo.dest for action in self.parser._actions
                if isinstance(action, argparse._SubParsersAction)
                for pseudo in action._choices_actions]

    @property
    def arguments(self) -> list[argparse.Action]:
        """Its options and positional arguments: neither -h/--help nor its subcommands."""
        return [a for a in self.parser._actions
                if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """`parser`'s command and every subcommand at any depth, each followed by its own
    subcommands (the order of the manual: segue, segue keys, segue keys new, ..., segue pack)."""
    return _walk(Command((parser.prog,), parser, ""))


def _walk(command: Command) -> list[Command]:
    found = [command]
    for action in command.parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for pseudo in action._choices_actions:
                found += _walk(Command((*command.words, pseudo.dest),
                                       action.choices[pseudo.dest], pseudo.help or ""))
    return found


def example_lines(name: str) -> list[str]:
    """The example lines of command `name` (none for a command EXAMPLES misses, which
    tests/test_cli_docs.py reports)."""
    return textwrap.dedent(EXAMPLES.get(name, "")).strip().splitlines()


def finish(parser: argparse.ArgumentParser) -> None:
    """Give every command of `parser` its description (its one-line help, when it has no
    other) and its examples, after the options, kept as written."""
    for command in commands(parser):
        p = command.parser
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        if p.description is None and command.summary:
            p.description = textwrap.fill(command.summary[0].upper() + command.summary[1:] + ".",
                                          _WIDTH)
        elif p.description is not None:
            p.description = textwrap.fill(p.description, _WIDTH)
        lines = example_lines(command.name)
        if lines:
            p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
