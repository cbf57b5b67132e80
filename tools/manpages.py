#!/usr/bin/env python3
"""Usage: tools/manpages.py OUTDIR   (the Debian package build runs it)

Writes the manual pages segue.1 and segued.1 into OUTDIR, generated from the argparse
definitions (segue.cli) through the same command walk as `--help` (segue.cli_help): every
command, option, argument and example is in them, and none can be missing or stale. The few
sections argparse does not hold (environment, files, exit status, signals) are written here.

The date is $SOURCE_DATE_EPOCH's (dpkg-buildpackage sets it from debian/changelog), so a
package build is reproducible; otherwise today's.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from segue import __version__
from segue.cli import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    segue_parser,
    segued_parser,
)
from segue.cli_help import Command, commands, example_lines

DOCS = "/usr/share/doc/segue"

COMMON = rf"""
.SH ENVIRONMENT
.TP
.B {CONFIG_ENV}
The configuration file of every command that takes \fB\-\-config\fR, when that is not given.
.SH FILES
.TP
.I {DEFAULT_CONFIG}
The configuration when neither \fB\-\-config\fR nor \fB{CONFIG_ENV}\fR names one; every key is
documented in it.
.TP
.I /etc/segue/keys/
Key files: private keys (mode 0600) and their \fI.pub\fR halves.
.TP
.I /var/lib/segue/
The track store and the local catalogue of the packaged node.
.SH EXIT STATUS
.TP
.B {EXIT_OK}
Success.
.TP
.B {EXIT_FAILURE}
A runtime failure (a file that could not be packed, a share that cannot be read, a node that
could not start).
.TP
.B {EXIT_USAGE}
A usage or configuration error; each line names the argument, file or key at fault.
"""

SIGNALS = r"""
.SH SIGNALS
.TP
.B SIGHUP
Reload the configuration, every key file and every plugin's table: all of it, or none of it.
.TP
.BR SIGTERM ", " SIGINT
Drain: \fI/healthz\fR answers 503 \fBdraining\fR, the balancer plugins take the node out of
their pools, streams in flight finish, then the node exits 0. A second SIGTERM stops at once.
"""

SEE_ALSO = {
    "segue": rf"""
.SH SEE ALSO
.BR segued (1);
\fI{DOCS}/README.md\fR and \fI{DOCS}/operations.md\fR, the manual for sysadmins.
""",
    "segued": rf"""
.SH SEE ALSO
.BR segue (1),
.BR systemctl (1);
the unit \fIsegued.service\fR;
\fI{DOCS}/operations.md\fR, the manual for sysadmins.
""",
}


def roff(text: str) -> str:
    """`text` as roff text: backslashes and hyphens escaped (an option copied from the page
    stays an ASCII hyphen-minus), and no line read as a request."""
    escaped = text.replace("\\", r"\e").replace("-", r"\-")
    return "\n".join(r"\&" + line if line.startswith((".", "'")) else line
                     for line in escaped.splitlines())


def usage(parser: argparse.ArgumentParser) -> str:
    """The command's usage line as argparse writes it, on one line."""
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups,
                        prefix="")
    return formatter.format_help().strip()


def value_of(action: argparse.Action) -> str:
    """What an argument takes, as --help shows it: METAVAR, {choice,...}, or nothing."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper()


def arguments(command: Command, skip: set[str]) -> list[str]:
    """`.TP` items for the command's options and arguments, but those whose option strings
    `skip` names (the top level's, described once)."""
    lines = []
    for action in command.arguments:
        if skip & set(action.option_strings):
            continue
        value = value_of(action)
        if action.option_strings:
            head = ", ".join(rf"\fB{roff(o)}\fR" for o in action.option_strings)
            head += rf" \fI{roff(value)}\fR" if value else ""
        else:
            head = rf"\fI{roff(value)}\fR"
        lines += [".TP", head, roff(action.help or "")]
    return lines


def section_of(command: Command, skip: set[str], top: bool) -> list[str]:
    """A command's synopsis, description, arguments and examples."""
    lines = [".SH SYNOPSIS" if top else f'.SS "{roff(command.name)}"',
             rf"\fB{roff(command.name)}\fR" + roff(usage(command.parser)[len(command.name):])]
    if command.parser.description:
        lines += [".SH DESCRIPTION" if top else ".PP", roff(command.parser.description)]
    items = arguments(command, skip)
    if items:
        lines += [".SH OPTIONS"] if top else [".PP", "Arguments:"]
        lines += items
    examples = example_lines(command.name)
    if examples:
        lines += [".SH EXAMPLES"] if top else [".PP", "Examples:"]
        lines += [".PP", ".RS 4", ".nf", *map(roff, examples), ".fi", ".RE"]
    return lines


def page(parser: argparse.ArgumentParser, date: str) -> str:
    """The manual page of `parser`'s command: the top as synopsis, options and examples, each
    subcommand as a subsection of COMMANDS."""
    tree = commands(parser)
    top = tree[0]
    name = top.name
    summary = (parser.description or "").split(". ")[0].rstrip(".")
    lines = [r'.\" Generated by tools/manpages.py from the argparse definitions in '
             r'segue/cli.py; do not edit.',
             f'.TH {name.upper()} 1 "{date}" "segue {__version__}" "Segue manual"',
             ".SH NAME", rf"{name} \- {roff(summary)}"]
    lines += section_of(top, set(), top=True)
    global_options = {o for a in top.arguments for o in a.option_strings}
    if len(tree) > 1:
        lines += [".SH COMMANDS",
                  r"Every command takes \fB\-h\fR (\fB\-\-help\fR); \fB\-\-debug\fR may "
                  "follow a command's name too."]
        for command in tree[1:]:
            lines += section_of(command, global_options, top=False)
    text = "\n".join(lines) + "\n" + COMMON.lstrip("\n")
    if len(tree) == 1:
        text += SIGNALS.lstrip("\n")
    return text + SEE_ALSO[name].lstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Write OUTDIR/segue.1 and OUTDIR/segued.1.")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR")
    out = parser.parse_args().outdir
    out.mkdir(parents=True, exist_ok=True)
    when = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    date = time.strftime("%Y-%m-%d", time.gmtime(when))
    for parser in (segue_parser(), segued_parser()):
        path = out / f"{parser.prog}.1"
        path.write_text(page(parser, date), encoding="utf-8")
        print(path)


if __name__ == "__main__":
    main()
