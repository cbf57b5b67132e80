"""The `segue` command (and `segued`, a synonym of `segue run`).

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error. Errors are one line
each, naming the file, key or argument at fault; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segue import __version__
from segue.cli_help import commands, finish
from segue.config import DEFAULT_LISTEN, ConfigError, Settings, format_address, load, parse_listen
from segue.storage.errors import StoreError

if TYPE_CHECKING:
    from segue.catalogue import Catalogue
    from segue.packer import Packer
    from segue.storage.shares import ShareSet

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command-line mistake: exit 2 with this message."""


def segue_parser() -> argparse.ArgumentParser:
    """The `segue` command's arguments, every subcommand's, their help and examples."""
    parser = argparse.ArgumentParser(
        prog="segue", description="Segue edge node: pack, seal and serve encrypted music tracks."
    )
    parser.add_argument("--version", action="version", version=f"segue {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="make a self-contained node in DIR")
    p.add_argument("dir", type=Path, metavar="DIR", help="the node's folder (made if missing)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"the address segued.toml has it listen on (default: {DEFAULT_LISTEN})")
    p.add_argument("--role", choices=["all", "edge"], default="all",
                   help="all: pack, issue tokens and serve (the default); edge: serve only, "
                        "with no packager or token private key")
    p.add_argument("--force", action="store_true",
                   help="rewrite segued.toml and make what is missing; keys and tracks are kept")
    p.add_argument("--wipe", action="store_true",
                   help="make a new node over an existing one: new keys, empty store and "
                        "catalogue (asks first)")
    p.add_argument("--yes", action="store_true",
                   help="with --wipe, do not ask (needed when stdin is not a terminal)")

    p = sub.add_parser("keys", help="manage key files")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys_sub.add_parser("new", help="write a new key pair (PATH mode 0600, PATH.pub)")
    k.add_argument("role", choices=["edge", "packager", "auth"],
                   help="edge: content keys are wrapped for it; packager: signs manifests; "
                        "auth: signs player tokens")
    k.add_argument("--type", required=True, choices=["x25519", "rsa", "p256", "ed25519"],
                   help="edge: x25519, rsa (3072-bit) or p256; packager: ed25519 or p256; "
                        "auth: ed25519, p256 or rsa")
    k.add_argument("--out", required=True, type=Path, metavar="PATH",
                   help="the private key's file; the public key goes to PATH.pub")
    k.add_argument("--force", action="store_true", help="overwrite existing files")
    k = keys_sub.add_parser("show", help="what a key file holds: private or public, type, key "
                            "id (as manifests and tokens name it), the roles it can have")
    k.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="a private or public (.pub) key file")
    k.add_argument("--json", action="store_true", help="one JSON object per key")
    k = keys_sub.add_parser("rewrap", help="wrap every track's content key for exactly "
                            "[packer] recipients (edit them first); chunks are not touched; "
                            "run again to finish an interrupted run")
    _add_config(k)

    p = sub.add_parser("pack", help="seal audio files into the store and catalogue")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per track")
    p.add_argument("--files-from", type=Path, metavar="LIST",
                   help="also the files and folders named in LIST, one a line (- for stdin)")
    p.add_argument("files", nargs="*", type=Path, metavar="PATH",
                   help="an audio file, or a folder (its audio files, at any depth)")

    p = sub.add_parser("catalogue", help="the central catalogue")
    cat_sub = p.add_subparsers(dest="catalogue_command", required=True, metavar="ACTION")
    c = cat_sub.add_parser("init", help="create the central catalogue's schema (every shard)")
    _add_config(c)
    c = cat_sub.add_parser("publish", help="publish tracks packed here to the central catalogue "
                           "(by default those whose publishing failed)")
    _add_config(c)
    c.add_argument("--all", action="store_true", help="every track packed here, again")
    c.add_argument("tracks", nargs="*", metavar="ID", help="these tracks, again")

    p = sub.add_parser("store", help="the shares that hold the tracks")
    store_sub = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    m = store_sub.add_parser("mark", help="write the store marker on shares that have none "
                             "(stores made before markers, new shares)")
    _add_config(m)
    m.add_argument("--share", action="append", metavar="NAME",
                   help="only this share of the configuration (repeat for several)")
    m.add_argument("--new", action="store_true",
                   help="also mark shares that hold no track yet (new, empty shares)")

    p = sub.add_parser("tracks", help="the tracks of this node")
    tracks_sub = p.add_subparsers(dest="tracks_command", required=True, metavar="ACTION")
    t = tracks_sub.add_parser("list", help="the catalogue's tracks, by title")
    _add_config(t)
    t.add_argument("--json", action="store_true", help="one JSON document with the total")
    t.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N")
    t.add_argument("--limit", type=int, metavar="N", help="at most N tracks (default: all)")
    t = tracks_sub.add_parser("show", help="one track: catalogue row, packing, shares")
    _add_config(t)
    t.add_argument("track", metavar="ID", help="the track's id")
    t.add_argument("--json", action="store_true", help="print JSON")
    t = tracks_sub.add_parser("remove", help="remove a track from the central catalogue, the "
                              "local catalogue and every share (run again to finish)")
    _add_config(t)
    t.add_argument("track", metavar="ID", help="the track's id")

    p = sub.add_parser("token", help="print a signed player token")
    _add_config(p)
    p.add_argument("--user", required=True, help="whom the token is for (its sub claim)")
    p.add_argument("--ttl", type=int, metavar="SECONDS",
                   help="lifetime in seconds (default: auth.default_ttl_s)")
    p.add_argument("--tracks", metavar="ID,...", help="only these tracks (default: all)")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _add_run_args(p)

    p = sub.add_parser("check-config", help="validate the configuration and every plugin's")
    _add_config(p)

    p = sub.add_parser("fsck", help="check (and repair) manifests and chunks on every share")
    _add_config(p)
    p.add_argument("--repair", action="store_true", help="rewrite bad copies from good ones")
    p.add_argument("--replace-older", action="store_true",
                   help="with --repair, also replace valid manifests older than the newest")
    p.add_argument("--track", metavar="ID", help="check only this track")

    p = sub.add_parser("plugins", help="list plugins: name, version, hooks, health")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _debug_everywhere(parser)
    finish(parser)
    return parser


#: The configuration file when neither --config nor $SEGUE_CONFIG names one.
DEFAULT_CONFIG = Path("/etc/segue/segued.toml")
CONFIG_ENV = "SEGUE_CONFIG"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="CONF",
                   help=f"the configuration file (default: ${CONFIG_ENV}, or {DEFAULT_CONFIG})")


def config_path(given: Path | None) -> Path:
    """--config, else $SEGUE_CONFIG, else the packaged node's file."""
    return given or Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept --debug after any (sub)command too (`segue pack --debug ...`): people add it to
    the command that failed, at its end. SUPPRESS keeps a subcommand from resetting the
    top-level flag when it is not given there."""
    for command in commands(parser)[1:]:
        command.parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show tracebacks on errors")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="override [http] listen")
    p.add_argument("--workers", type=int, metavar="N", help="override [http] workers")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segue`; with no command, its help."""
    parser = segue_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    return _dispatch(args)


def segued_parser() -> argparse.ArgumentParser:
    """The `segued` command's arguments: `segue run`'s."""
    parser = argparse.ArgumentParser(
        prog="segued", description="Run the Segue edge daemon. segued is `segue run`; systemd "
                                   "runs it as the unit segued.service.")
    parser.add_argument("--version", action="version", version=f"segued {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    _add_run_args(parser)
    finish(parser)
    return parser


def segued(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segued`: the same as `segue run`."""
    args = segued_parser().parse_args(argv)
    args.command = "run"
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    handler = {
        "init": cmd_init,
        "keys": cmd_keys,
        "pack": cmd_pack,
        "token": cmd_token,
        "run": cmd_run,
        "check-config": cmd_check_config,
        "plugins": cmd_plugins,
        "fsck": cmd_fsck,
        "catalogue": cmd_catalogue,
        "store": cmd_store,
        "tracks": cmd_tracks,
    }[args.command]
    from segue import log

    # Commands other than `run` speak through stdout; their log lines are warnings at most, on
    # stderr. `run` sets the configured format and level once it has read the configuration.
    log.configure("auto", "warning")
    try:
        return handler(args)
    except ConfigError as e:
        if args.debug:
            raise
        for line in e.errors:
            print(f"segue: {line}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as e:
        if args.debug:
            raise
        print(f"segue: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as e:
        if args.debug:
            raise
        print(f"segue: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as e:
        if args.debug:
            raise
        found = sole_error(e)
        print(f"segue: {type(found).__name__}: {found} (run with --debug for details)",
              file=sys.stderr)
        return EXIT_FAILURE


def sole_error(error: BaseException) -> BaseException:
    """The one error that nurseries wrapped in (nested) exception groups, or `error` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def cmd_init(args: argparse.Namespace) -> int:
    from segue.node_dir import PEER_KEYS, NodeDir

    try:
        listen = parse_listen(args.listen)
    except ValueError as e:
        raise UsageError(f"--listen: {e}") from None
    if args.yes and not args.wipe:
        raise UsageError("--yes confirms --wipe; there is nothing to confirm without it")
    node = NodeDir(args.dir.resolve(), args.role)
    existing = node.existing()
    if existing and not (args.force or args.wipe):
        # Checked before writing anything: a node whose segued.toml was moved away still has
        # keys that its sealed tracks need.
        raise UsageError(f"{existing[0]} exists; refusing to overwrite it (--force rewrites "
                         "segued.toml and makes what is missing, keeping keys and tracks)")
    if existing and args.wipe:
        _confirm_wipe(node.root, args.yes)
    lines = node.make(listen, wipe=args.wipe)
    print(f"Made a Segue node in {node.root}:")
    for line in lines:
        print(f"  {line}")
    print("Next:")
    if args.role == "edge":
        print(f"  copy the packager's and the token issuer's public keys to "
              f"{' and '.join(str(node.root / k) for k in PEER_KEYS)}")
        print(f"  send {node.root / 'keys'}/edge-*.pem.pub to the packager (its "
              "[packer] recipients)")
        print(f"  segue check-config --config {node.conf}")
    else:
        print(f"  segue pack --config {node.conf} FILE...")
        print(f"  segue token --config {node.conf} --user USER")
    print(f"  segued --config {node.conf}")
    return EXIT_OK


def _confirm_wipe(root: Path, yes: bool) -> None:
    """Ask before --wipe deletes keys and tracks: at a terminal, the folder's name typed back;
    elsewhere (a script, a pipe), only --yes says so."""
    warning = (f"--wipe replaces every key in {root / 'keys'} and deletes the store and the "
               "catalogue; tracks sealed for the old keys can never be opened again")
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{warning}. stdin is not a terminal: add --yes to confirm")
    print(f"{warning}.", file=sys.stderr)
    try:
        answer = input(f"Type {root.name} to wipe it: ")
    except EOFError:
        answer = ""
    if answer.strip() != root.name:
        raise UsageError("not confirmed; nothing was changed")


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_command == "show":
        return _keys_show(args)
    if args.keys_command == "rewrap":
        return _keys_rewrap(args)
    from segue.seal.errors import KeyFileError
    from segue.seal.keys import ROLE_KEY_TYPES, generate, write_key_pair

    fitting = ROLE_KEY_TYPES[args.role]
    if args.type not in fitting:
        raise UsageError(
            f"a {args.role} key cannot be {args.type}; use --type {' or '.join(fitting)}"
        )
    try:
        kid = write_key_pair(generate(args.type), args.out, overwrite=args.force)
    except KeyFileError as e:
        raise UsageError(f"--out: {e} (use --force to replace it)") from None
    print(kid)
    return EXIT_OK


def _keys_show(args: argparse.Namespace) -> int:
    from segue.seal.errors import KeyFileError
    from segue.seal.keys import key_id, key_type_of, load_any_key, roles_of

    failed = 0
    for path in args.paths:
        try:
            public, private = load_any_key(path)
        except KeyFileError as e:
            print(f"segue: {e}", file=sys.stderr)
            failed += 1
            continue
        key_type, kid = key_type_of(public), key_id(public)
        roles = roles_of(key_type)
        if args.json:
            print(json.dumps({"path": str(path), "key_id": kid, "type": key_type,
                              "private": private, "roles": roles}))
        else:
            kind = "private key" if private else "public key"
            print(f"{path}: {kind}, {key_type}, id {kid}, for {' or '.join(roles)}")
    return EXIT_FAILURE if failed else EXIT_OK


def _keys_rewrap(args: argparse.Namespace) -> int:
    from segue.configured_keys import load_edge_keys
    from segue.progress import Progress
    from segue.rewrapping import rewrap_all

    settings = _load(args)
    packer = _packer(settings)
    edge = load_edge_keys(settings)
    trusted = {**edge.trusted_packagers, **packer.trusted}
    bar = Progress(1)  # a bar on stderr when it is a terminal: tracks looked at, of all

    def report(track_id: str, what: str) -> None:
        bar.clear()
        print(f"{track_id}\t{what}", flush=True)

    def progress(done: int, total: int) -> None:
        bar.total = max(total, 1)
        bar.advance(done - bar.done)

    outcome = rewrap_all(
        packer.shares, trusted, edge.private, packer.recipients, packer.signer,
        report=report, rewrapped=packer.catalogue.record_packed, progress=progress)
    bar.clear()
    print(f"{len(outcome.rewrapped)} rewrapped, {len(outcome.current)} already wrapped for "
          f"the {len(packer.recipients)} recipients, {len(outcome.failed)} failed")
    return EXIT_FAILURE if outcome.failed else EXIT_OK


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's [http] settings (run/segued only), which reloads keep too."""
    return {"listen": getattr(args, "listen", None), "workers": getattr(args, "workers", None)}


def _load(args: argparse.Namespace) -> Settings:
    path = config_path(args.config)
    if args.config is None and not path.exists():
        raise ConfigError([f"{path}: no such file; name the configuration with --config CONF "
                           f"or ${CONFIG_ENV}, or make one with `segue init DIR`"])
    return load(path, **_overrides(args))


def cmd_pack(args: argparse.Namespace) -> int:
    from segue.media import MediaError
    from segue.plugin_host import PluginHost
    from segue.progress import Progress
    from segue.publishing import Publisher

    files = _pack_inputs(args.files, args.files_from)
    settings = _load(args)
    packer = _packer(settings)
    publisher = Publisher(PluginHost.load(settings), packer.catalogue, settings.plugins)
    unpackable = fresh = unpublished = 0
    progress = Progress(sum(f.stat().st_size for f in files if f.is_file()))
    for path in files:
        try:
            packed = packer.pack(path, progress=progress.advance)
        except MediaError as e:
            progress.clear()
            print(f"segue: {e}", file=sys.stderr)
            unpackable += 1
            continue
        progress.clear()
        r = packed.record
        fresh += not packed.already_packed
        published: bool | None = None
        if publisher.active:
            # A track packed earlier whose publishing failed is published now.
            version, published = publisher.packed_version(r.track_id, packer.current_version)
        elif not packed.already_packed:  # for plugins that publish without a table
            version, published = packed.manifest_version, False
        if published is False:
            errors = publisher.publish(r, version)
            for error in errors:
                print(f"segue: {error}", file=sys.stderr)
            unpublished += bool(errors)
            published = not errors if publisher.active else None
        if args.json:
            doc = {**r.to_json(), "file": str(path), "already_packed": packed.already_packed,
                   "published": published}
            print(json.dumps(doc, ensure_ascii=False), flush=True)
        else:
            print(f"{r.track_id}\t{r.title}\t{path}", flush=True)
    progress.clear()
    # On stderr: stdout stays one line per track for scripts.
    again = len(files) - fresh - unpackable
    print(f"segue: {len(files)} files: {fresh} packed, {again} already packed, "
          f"{unpackable} not packed, {unpublished} not published", file=sys.stderr)
    return EXIT_FAILURE if unpackable or unpublished else EXIT_OK


def _pack_inputs(given: list[Path], files_from: Path | None) -> list[Path]:
    """The files to pack: those named, folders' audio files, and what LIST names."""
    from segue.media import audio_files

    named = list(given)
    if files_from is not None:
        try:
            text = sys.stdin.read() if str(files_from) == "-" else files_from.read_text()
        except OSError as e:
            raise UsageError(f"--files-from: cannot read {files_from}: {e.strerror}") from None
        named += [Path(line) for line in text.splitlines() if line.strip()]
    if not named:
        raise UsageError("name the files or folders to pack (or --files-from LIST)")
    files: list[Path] = []
    for path in named:
        files += audio_files(path) if path.is_dir() else [path]
    return files


def _packer(settings: Settings) -> Packer:
    """What packs (and numbers manifest versions) with this configuration, on writable
    shares."""
    from segue.catalogue import Catalogue
    from segue.configured_keys import load_recipients, load_signing_key, load_trusted_packagers
    from segue.packer import Packer
    from segue.seal.keys import key_id

    signer = load_signing_key(settings.packer.signing_key, "packer.signing_key", settings)
    # Manifests signed by this packager or one the edges trust number the next version.
    trusted = {key_id(signer.public_key()): signer.public_key()}
    if settings.seal.trusted_packagers:
        trusted.update(load_trusted_packagers(settings))
    return Packer(
        shares=checked_shares(settings, write=True),
        catalogue=Catalogue.create(settings.catalogue_path),
        signer=signer,
        recipients=load_recipients(settings),
        chunk_size=settings.packer.chunk_size,
        trusted=trusted,
    )


def checked_shares(settings: Settings, *, write: bool) -> ShareSet:
    """The configured shares, each with its store marker (and, to `write`, writable); raises
    StoreError naming every share that is not, so a command never reads an unmounted share as
    an empty store, nor packs half a track before finding a read-only one."""
    from segue.storage import marker
    from segue.wiring import open_shares

    shares = open_shares(settings)
    check = marker.require_writable if write else marker.read
    problems = []
    for share in shares.shares:
        try:
            check(share.store)
        except StoreError as e:
            problems.append(_about_share(share.name, e, settings))
    if problems:
        raise StoreError("\nsegue: ".join(problems))
    return shares


def _about_share(name: str, error: StoreError, settings: Settings) -> str:
    from segue.storage.marker import MARK_COMMAND

    return f"share {name}: " + str(error).replace(
        MARK_COMMAND, f"segue store mark --config {settings.path}")


def cmd_store(args: argparse.Namespace) -> int:
    from segue.storage import marker
    from segue.wiring import open_shares

    settings = _load(args)
    shares = open_shares(settings)
    unknown = set(args.share or ()) - set(shares.names)
    if unknown:
        raise UsageError(f"--share: no share {', '.join(sorted(unknown))} in {settings.path} "
                         f"(it has {', '.join(shares.names)})")
    failed = 0
    for share in shares.shares:
        if args.share and share.name not in args.share:
            continue
        try:
            found, made = marker.mark(share.store, new=args.new)
        except StoreError as e:
            print(f"segue: {_about_share(share.name, e, settings)}", file=sys.stderr)
            failed += 1
            continue
        state = "marked" if made else "already marked"
        print(f"{share.name}: {state} (store {found.store_id}, format {found.format})")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_tracks(args: argparse.Namespace) -> int:
    from segue.catalogue import Catalogue

    if args.tracks_command != "list":
        _track_id(args.track)
    settings = _load(args)
    catalogue = Catalogue.create(settings.catalogue_path)
    if args.tracks_command == "list":
        return _tracks_list(args, catalogue)
    if args.tracks_command == "show":
        return _tracks_show(args, settings, catalogue)
    return _tracks_remove(args, settings, catalogue)


def _track_id(text: str) -> str:
    from segue.seal.manifest import is_track_id

    if not is_track_id(text):
        raise UsageError(f"{text!r} is not a track id")
    return text


def _tracks_list(args: argparse.Namespace, catalogue: Catalogue) -> int:
    if args.offset < 0 or (args.limit is not None and args.limit < 1):
        raise UsageError("--offset must be 0 or more, --limit 1 or more")
    # SQLite reads LIMIT -1 as "no limit".
    found = catalogue.browse(-1 if args.limit is None else args.limit, args.offset)
    if args.json:
        print(json.dumps({"total": catalogue.count(), "offset": args.offset,
                          "tracks": [r.to_json() for r in found]}, ensure_ascii=False))
        return EXIT_OK
    for r in found:
        minutes, seconds = divmod(round(r.duration_s), 60)
        print(f"{r.track_id}\t{r.title}\t{r.artist}\t{minutes}:{seconds:02d}")
    return EXIT_OK


def _tracks_show(args: argparse.Namespace, settings: Settings, catalogue: Catalogue) -> int:
    record = catalogue.get(args.track)
    shares = checked_shares(settings, write=False)
    on = {s.name: s.store.has_manifest(args.track) for s in shares.shares}
    if record is None and not any(on.values()):
        print(f"segue: no track {args.track} in the catalogue or on any share", file=sys.stderr)
        return EXIT_FAILURE
    packed = catalogue.packed_version(args.track)
    doc = {**(record.to_json() if record else {"track_id": args.track}),
           "catalogued": record is not None,
           "packed_version": packed[0] if packed else None,
           "published": packed[1] if packed else None,
           "manifest_on": [name for name, there in on.items() if there],
           "manifest_missing_on": [name for name, there in on.items() if not there]}
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
        return EXIT_OK
    for key, value in doc.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key}: {'-' if shown is None or shown == '' else shown}")
    return EXIT_OK


def _tracks_remove(args: argparse.Namespace, settings: Settings, catalogue: Catalogue) -> int:
    from segue.plugin_host import PluginHost
    from segue.removal import remove_track

    outcome = remove_track(args.track, host=PluginHost.load(settings), catalogue=catalogue,
                           shares=checked_shares(settings, write=True))
    if isinstance(outcome, list):
        for error in outcome:
            print(f"segue: {error}; nothing was removed", file=sys.stderr)
        return EXIT_FAILURE
    if not outcome.catalogued and not outcome.on_shares:
        print(f"{args.track}: was in neither the catalogue nor any share")
        return EXIT_OK
    where = ", ".join(outcome.on_shares) or "no share"
    print(f"{args.track}: removed (catalogue: {'yes' if outcome.catalogued else 'no'}; "
          f"manifests on: {where})")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from segue.configured_keys import load_signing_key
    from segue.seal.manifest import is_track_id
    from segue.seal.tokens import issue

    settings = _load(args)
    ttl = settings.auth.default_ttl_s if args.ttl is None else args.ttl
    if ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    tracks = None
    if args.tracks is not None:
        tracks = [t.strip() for t in args.tracks.split(",") if t.strip()]
        bad = [t for t in tracks if not is_track_id(t)]
        if bad or not tracks:
            raise UsageError(f"--tracks: {', '.join(bad) or 'empty'} is not a list of track ids")
    key = load_signing_key(settings.auth.signing_key, "auth.signing_key", settings)
    print(issue(key, args.user, ttl=ttl, tracks=tracks, audience=settings.auth.audience,
                issuer=settings.auth.issuer))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from segue import log, metrics, node
    from segue.configured_keys import load_user_hash_salt
    from segue.plugin_host import PluginHost, StartupError

    try:
        settings = _load(args)
    except ValueError as e:
        raise UsageError(f"--listen: {e}") from None
    log.configure(settings.log.format, settings.log.level, load_user_hash_salt(settings))
    with contextlib.ExitStack() as cleanup:
        if settings.http.workers > 1:
            shared = Path(tempfile.mkdtemp(prefix="segue-metrics-"))
            cleanup.callback(shutil.rmtree, shared, ignore_errors=True)
            metrics.share_between_processes(shared)
        host = PluginHost.load(settings)
        try:
            trio.run(node.run, settings, host, _overrides(args), strict_exception_groups=True)
        except Exception as e:
            found = sole_error(e)
            why = listen_failure(found, settings) if isinstance(found, OSError) else None
            if args.debug or not (why or isinstance(found, StartupError | ConfigError)):
                raise
            if isinstance(found, ConfigError):
                raise found from None  # exit 2, each line printed
            print(f"segue: {why or found}", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK


def listen_failure(error: OSError, settings: Settings) -> str | None:
    """What to check when the listening socket cannot be bound, or None for other errors."""
    import errno

    from segue.http.admin import AdminListenError

    if isinstance(error, AdminListenError) and settings.http.admin_listen is not None:
        listen = settings.http.admin_listen
        where = f"cannot listen on {listen} ([http] admin_listen in {settings.path})"
    else:
        listen = settings.http.listen
        where = f"cannot listen on {listen} ([http] listen in {settings.path}, or --listen)"
    if error.errno == errno.EADDRINUSE:
        return (f"{where}: address already in use: another process listens on port "
                f"{listen.port} (`ss -ltnp 'sport = :{listen.port}'` names it), perhaps "
                "another segued still running or draining; stop it or choose another port")
    if error.errno == errno.EACCES:
        return (f"{where}: permission denied: ports below 1024 need CAP_NET_BIND_SERVICE "
                "(docs/operations.md, The unit)")
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no interface of this host has the address {listen.host}"
    return None


def cmd_check_config(args: argparse.Namespace) -> int:
    from segue.configured_keys import load_recipients, load_signing_key, load_user_hash_salt
    from segue.plugin_host import PluginHost
    from segue.wiring import build, tls_context

    settings = _load(args)
    errors: list[str] = []
    checks: list[Callable[[], object]] = [lambda: build(settings),
                                          lambda: tls_context(settings),
                                          lambda: load_user_hash_salt(settings),
                                          lambda: PluginHost.load(settings)]
    if settings.packer.signing_key is not None or settings.packer.recipients:
        checks.append(
            lambda: load_signing_key(settings.packer.signing_key, "packer.signing_key", settings)
        )
        checks.append(lambda: load_recipients(settings))
    if settings.auth.signing_key is not None:
        checks.append(
            lambda: load_signing_key(settings.auth.signing_key, "auth.signing_key", settings)
        )
    for check in checks:
        try:
            check()
        except ConfigError as e:
            errors += e.errors
    if errors:
        raise ConfigError(errors)
    print(f"{settings.path}: OK")
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from segue import config
    from segue.plugin_host import PluginHost

    if args.config is not None or config_path(None).exists():
        settings = _load(args)
    else:  # what is installed, whatever a configuration would make of it
        settings = config.from_mapping({}, Path.cwd() / "segued.toml")
    host = PluginHost.load(settings)
    plugins = host.describe()
    live = _live_health(settings)
    for plugin in plugins:
        if plugin["active"]:
            plugin["health"] = live.get(plugin["name"], {"status": "not running", "reason": ""})
    if args.json:
        print(json.dumps({"plugins": plugins}, indent=2))
        return EXIT_OK
    if not plugins:
        print("no plugins loaded")
    for plugin in plugins:
        health = plugin["health"]
        reason = f" ({health['reason']})" if health["reason"] else ""
        print(f"{plugin['name']} {plugin['version']} [{plugin['distribution']}]: "
              f"{health['status']}{reason}")
        print(f"  hooks: {', '.join(plugin['hooks']) or 'none'}")
    return EXIT_OK


def _live_health(settings: Settings) -> dict[str, dict[str, str]]:
    """Plugin health from the node running with this configuration, if one answers."""
    import urllib.request

    # /v1/status is on the admin listener when there is one, and there alone.
    listen = settings.http.admin_listen or settings.http.listen
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(  # noqa: S104
        listen.host, listen.host)
    try:
        with urllib.request.urlopen(f"http://{format_address((host, listen.port))}/v1/status",
                                    timeout=1) as response:
            status = json.load(response)
    except (OSError, ValueError):
        return {}
    return {p["name"]: p["health"] for p in status.get("plugins", [])}


def cmd_fsck(args: argparse.Namespace) -> int:
    from segue.catalogue import Catalogue, TrackRecord
    from segue.configured_keys import load_trusted_packagers
    from segue.seal.manifest import is_track_id
    from segue.storage.fsck import check

    settings = _load(args)
    if args.track is not None and not is_track_id(args.track):
        raise UsageError(f"--track: {args.track!r} is not a track id")
    if args.replace_older and not args.repair:
        raise UsageError("--replace-older works with --repair only")
    trusted = load_trusted_packagers(settings)
    shares = checked_shares(settings, write=args.repair)
    catalogue = Catalogue.create(settings.catalogue_path)
    report = check(shares, trusted, accepted_version=catalogue.accepted_version,
                   track_ids=None if args.track is None else [args.track],
                   repair=args.repair, replace_older=args.replace_older,
                   report_problem=lambda p: print(p, flush=True),
                   catalogued=set(catalogue.track_ids()),
                   add_to_catalogue=lambda m: catalogue.put(TrackRecord.of_manifest(m)))
    problems = report.problems or []
    print(f"checked {report.tracks} tracks, {report.chunks} chunks on {len(shares.shares)} "
          f"shares: {len(problems)} problems, {len(problems) - len(report.unrepaired)} repaired")
    return EXIT_FAILURE if report.unrepaired else EXIT_OK


def cmd_catalogue(args: argparse.Namespace) -> int:
    if args.catalogue_command == "publish":
        return _catalogue_publish(args)
    from segue.plugin_host import PluginHost

    host = PluginHost.load(_load(args))
    failed = 0
    for outcome in host.call("segue_catalogue_init"):
        if outcome.error is not None:
            print(f"segue: plugin {outcome.plugin.name!r}: {outcome.error}", file=sys.stderr)
            failed += 1
        for line in outcome.value or ():
            print(f"{outcome.plugin.name}: {line}")
    return EXIT_FAILURE if failed else EXIT_OK


def _catalogue_publish(args: argparse.Namespace) -> int:
    from segue.plugin_host import PluginHost
    from segue.publishing import Publisher
    from segue.seal.manifest import is_track_id

    bad = [t for t in args.tracks if not is_track_id(t)]
    if bad:
        raise UsageError(f"{', '.join(bad)}: not a track id")
    if args.tracks and args.all:
        raise UsageError("give track ids or --all, not both")
    settings = _load(args)
    packer = _packer(settings)
    publisher = Publisher(PluginHost.load(settings), packer.catalogue, settings.plugins)
    if not publisher.active:
        raise UsageError("no plugin publishes to a central catalogue: configure one, such as "
                         "[plugins.mysql] (docs/catalogue.md)")
    catalogue = packer.catalogue
    chosen = args.tracks or (catalogue.packed_here() if args.all else catalogue.unpublished())
    failed = 0
    for track_id in chosen:
        record = catalogue.get(track_id)
        if record is None:
            errors = ["not in the local catalogue (segue pack FILE packs it)"]
        else:
            version, _ = publisher.packed_version(track_id, packer.current_version)
            errors = publisher.publish(record, version)
        for error in errors:
            print(f"segue: {track_id}: {error}", file=sys.stderr)
        if errors:
            failed += 1
        else:
            print(f"{track_id}\tpublished (manifest version {version})", flush=True)
    print(f"published {len(chosen) - failed} of {len(chosen)} tracks")
    return EXIT_FAILURE if failed else EXIT_OK
