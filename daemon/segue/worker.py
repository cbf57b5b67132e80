"""A serving worker: `python -m segue.worker --config PATH --listen ADDR --index I --workers N`.

Started by the node's main process when `[http] workers` > 1 (see segue.workers); not meant to
be run by hand. The worker serves players on ADDR (a port the main process already holds, with
SO_REUSEPORT) and follows the main process's health and drain through its stdin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog
import trio

from segue import config, log, node
from segue.cli import sole_error
from segue.configured_keys import load_user_hash_salt
from segue.plugin_host import PluginHost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segue.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        settings = config.load(args.config, listen=args.listen, workers=args.workers)
        salt = load_user_hash_salt(settings)
    except config.ConfigError as e:
        for line in e.errors:
            print(f"segue worker {args.index}: {line}", file=sys.stderr)
        return 2
    log.configure(settings.log.format, settings.log.level, salt)
    worker = node.Node(settings, PluginHost(settings), worker=True,
                       overrides={"listen": args.listen, "workers": args.workers})
    try:
        trio.run(_run_as_worker, worker, args.index, strict_exception_groups=True)
    except Exception as e:
        found = sole_error(e)
        print(f"segue worker {args.index}: {type(found).__name__}: {found}", file=sys.stderr)
        return 1
    return 0


async def _run_as_worker(worker: node.Node, index: int) -> None:
    # Bound inside the run, so that every task (each connection's) carries it into its logs.
    structlog.contextvars.bind_contextvars(worker=index)
    await worker.run()


if __name__ == "__main__":
    sys.exit(main())
