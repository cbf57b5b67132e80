"""The `segue` command (and `segued`, a synonym of `segue run`).

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error. Errors are one line
each, naming the file, key or argument at fault; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segue import __version__
from segue.config import DEFAULT_LISTEN, ConfigError, Settings, format_address, load, parse_listen

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command-line mistake: exit 2 with this message."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segue", description="Segue edge node: pack, seal and serve encrypted music tracks."
    )
    parser.add_argument("--version", action="version", version=f"segue {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="make a self-contained node in DIR")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    p.add_argument("--force", action="store_true", help="overwrite an existing node")

    p = sub.add_parser("keys", help="manage key files")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys_sub.add_parser("new", help="write a new key pair (PATH mode 0600, PATH.pub)")
    k.add_argument("role", choices=["edge", "packager", "auth"])
    k.add_argument("--type", required=True, choices=["x25519", "rsa", "p256", "ed25519"])
    k.add_argument("--out", required=True, type=Path, metavar="PATH")
    k.add_argument("--force", action="store_true", help="overwrite existing files")

    p = sub.add_parser("pack", help="seal audio files into the store and catalogue")
    p.add_argument("--config", required=True, type=Path, metavar="CONF")
    p.add_argument("--json", action="store_true", help="one JSON object per track")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")

    p = sub.add_parser("catalogue", help="the central catalogue")
    cat_sub = p.add_subparsers(dest="catalogue_command", required=True, metavar="ACTION")
    c = cat_sub.add_parser("init", help="create the central catalogue's schema (every shard)")
    c.add_argument("--config", required=True, type=Path, metavar="CONF")

    p = sub.add_parser("token", help="print a signed player token")
    p.add_argument("--config", required=True, type=Path, metavar="CONF")
    p.add_argument("--user", required=True)
    p.add_argument("--ttl", type=int, metavar="SECONDS",
                   help="lifetime in seconds (default: auth.default_ttl_s)")
    p.add_argument("--tracks", metavar="ID,...", help="only these tracks (default: all)")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _add_run_args(p)

    p = sub.add_parser("check-config", help="validate the configuration and every plugin's")
    p.add_argument("--config", required=True, type=Path, metavar="CONF")

    p = sub.add_parser("fsck", help="check (and repair) manifests and chunks on every share")
    p.add_argument("--config", required=True, type=Path, metavar="CONF")
    p.add_argument("--repair", action="store_true", help="rewrite bad copies from good ones")
    p.add_argument("--replace-older", action="store_true",
                   help="with --repair, also replace valid manifests older than the newest")
    p.add_argument("--track", metavar="ID", help="check only this track")

    p = sub.add_parser("plugins", help="list plugins: name, version, hooks, health")
    p.add_argument("--config", type=Path, metavar="CONF",
                   help="configuration (for plugin tables, allow/deny lists, live health)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, metavar="CONF")
    p.add_argument("--listen", metavar="HOST:PORT", help="override [http] listen")
    p.add_argument("--workers", type=int, metavar="N", help="override [http] workers")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segue`."""
    args = _parser().parse_args(argv)
    return _dispatch(args)


def segued(argv: Sequence[str] | None = None) -> int:
    """Entry point of `segued`: the same as `segue run`."""
    parser = argparse.ArgumentParser(prog="segued", description="Run the Segue edge daemon.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    _add_run_args(parser)
    args = parser.parse_args(argv)
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
    from segue.catalogue import Catalogue
    from segue.seal.keys import generate, write_key_pair
    from segue.storage import layout

    try:
        listen = parse_listen(args.listen)
    except ValueError as e:
        raise UsageError(f"--listen: {e}") from None
    root: Path = args.dir.resolve()
    conf = root / "segued.toml"
    keys = {root / "keys" / f"{role}-{key_type}.pem": (role, key_type)
            for role, key_type in (("edge", "x25519"), ("edge", "rsa"), ("packager", "ed25519"),
                                   ("auth", "ed25519"))}
    store = root / "store"
    catalogue_path = root / "catalogue.sqlite"
    if not args.force:
        # Checked before writing anything: a node whose segued.toml was moved away still has
        # keys that its sealed tracks need.
        for path in (conf, *keys, *(k.with_name(k.name + ".pub") for k in keys), store,
                     catalogue_path):
            if path.exists():
                raise UsageError(f"{path} exists; refusing to overwrite it (--force makes a new "
                                 "node over it, replacing its keys, store and catalogue)")
    root.mkdir(parents=True, exist_ok=True)
    made = []
    for path, (role, key_type) in keys.items():
        kid = write_key_pair(generate(key_type), path, overwrite=args.force)
        made.append(f"{path} ({role} {key_type} key, id {kid})")
    if args.force and store.exists():
        # The old chunks were sealed for the old keys; nothing could open them any more.
        shutil.rmtree(store)
    (store / layout.TRACKS_FOLDER).mkdir(parents=True)
    for stale in (catalogue_path, root / "catalogue.sqlite-wal", root / "catalogue.sqlite-shm"):
        stale.unlink(missing_ok=True)
    Catalogue.create(catalogue_path).close()
    conf.write_text(_INIT_CONFIG.format(listen=listen))
    print(f"Made a Segue node in {root}:")
    for line in [*made, f"{store} (chunk store)", f"{catalogue_path} (catalogue)", f"{conf}"]:
        print(f"  {line}")
    print("Next:")
    print(f"  segue pack --config {conf} FILE...")
    print(f"  segued --config {conf}")
    print(f"  segue token --config {conf} --user USER")
    return EXIT_OK


_INIT_CONFIG = """\
# Segue node made by `segue init`. Paths are relative to this file.
# etc/segue/segued.toml in the source tree documents every key.

[http]
listen = "{listen}"

[seal]
edge_keys = ["keys/edge-x25519.pem", "keys/edge-rsa.pem"]
trusted_packagers = ["keys/packager-ed25519.pem.pub"]

[packer]
signing_key = "keys/packager-ed25519.pem"
recipients = ["keys/edge-x25519.pem.pub", "keys/edge-rsa.pem.pub"]

[auth]
signing_key = "keys/auth-ed25519.pem"
public_keys = ["keys/auth-ed25519.pem.pub"]

[store]
path = "store"

[catalogue]
path = "catalogue.sqlite"
"""


def cmd_keys(args: argparse.Namespace) -> int:
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


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's [http] settings (run/segued only), which reloads keep too."""
    return {"listen": getattr(args, "listen", None), "workers": getattr(args, "workers", None)}


def _load(args: argparse.Namespace) -> Settings:
    return load(args.config, **_overrides(args))


def cmd_pack(args: argparse.Namespace) -> int:
    from segue.catalogue import Catalogue
    from segue.configured_keys import load_recipients, load_signing_key, load_trusted_packagers
    from segue.media import MediaError
    from segue.packer import Packer
    from segue.progress import Progress
    from segue.seal.keys import key_id
    from segue.wiring import open_shares

    settings = _load(args)
    signer = load_signing_key(settings.packer.signing_key, "packer.signing_key", settings)
    # Manifests signed by this packager or one the edges trust number the next version.
    trusted = {key_id(signer.public_key()): signer.public_key()}
    if settings.seal.trusted_packagers:
        trusted.update(load_trusted_packagers(settings))
    packer = Packer(
        shares=open_shares(settings),
        catalogue=Catalogue.create(settings.catalogue_path),
        signer=signer,
        recipients=load_recipients(settings),
        chunk_size=settings.packer.chunk_size,
        trusted=trusted,
    )
    from segue.plugin_host import PluginHost

    host = PluginHost.load(settings)
    failed = 0
    files: list[Path] = args.files
    progress = Progress(sum(f.stat().st_size for f in files if f.is_file()))
    for path in files:
        try:
            packed = packer.pack(path, progress=progress.advance)
        except MediaError as e:
            progress.clear()
            print(f"segue: {e}", file=sys.stderr)
            failed += 1
            continue
        progress.clear()
        r = packed.record
        if not packed.already_packed:
            for outcome in host.call("segue_track_packed", track=r,
                                     manifest_version=packed.manifest_version):
                if outcome.error is not None:
                    print(f"segue: plugin {outcome.plugin.name!r} could not publish track "
                          f"{r.track_id}: {outcome.error}", file=sys.stderr)
                    failed += 1
        if args.json:
            doc = {**r.to_json(), "file": str(path), "already_packed": packed.already_packed}
            print(json.dumps(doc, ensure_ascii=False), flush=True)
        else:
            print(f"{r.track_id}\t{r.title}\t{path}", flush=True)
    progress.clear()
    return EXIT_FAILURE if failed else EXIT_OK


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
            if args.debug or not isinstance(found, StartupError | ConfigError):
                raise
            if isinstance(found, ConfigError):
                raise found from None  # exit 2, each line printed
            print(f"segue: {found}", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK


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

    if args.config is not None:
        settings = _load(args)
    else:
        settings = config.from_mapping({}, Path.cwd() / "segued.toml")
    host = PluginHost.load(settings)
    plugins = host.describe()
    live = _live_health(settings)
    for plugin in plugins:
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

    listen = settings.http.listen
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
    from segue.catalogue import Catalogue
    from segue.configured_keys import load_trusted_packagers
    from segue.seal.manifest import is_track_id
    from segue.storage.fsck import check
    from segue.wiring import open_shares

    settings = _load(args)
    if args.track is not None and not is_track_id(args.track):
        raise UsageError(f"--track: {args.track!r} is not a track id")
    if args.replace_older and not args.repair:
        raise UsageError("--replace-older works with --repair only")
    trusted = load_trusted_packagers(settings)
    shares = open_shares(settings)
    catalogue = Catalogue.create(settings.catalogue_path)
    report = check(shares, trusted, accepted_version=catalogue.accepted_version,
                   track_ids=None if args.track is None else [args.track],
                   repair=args.repair, replace_older=args.replace_older,
                   report_problem=lambda p: print(p, flush=True))
    problems = report.problems or []
    print(f"checked {report.tracks} tracks, {report.chunks} chunks on {len(shares.shares)} "
          f"shares: {len(problems)} problems, {len(problems) - len(report.unrepaired)} repaired")
    return EXIT_FAILURE if report.unrepaired else EXIT_OK


def cmd_catalogue(args: argparse.Namespace) -> int:
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
