"""Benchmark: Segue serving whole tracks from an SMB share and from a local path, and bare SMB.

This prints figures; it judges nothing. One run, on loopback, inside a temp dir:

* smbd, started by the bench with one share ("media"), the node's only [[store.shares]] entry;
  `segue pack` writes the sealed chunks of one ffmpeg-generated WAV onto it.
* segue: four `segue run` processes on the same node and catalogue: the SMB share or the same
  files read as a local path, each with [cache] bytes = 0 ("cold": every chunk is read and
  decrypted) and with the default cache ("warm", after one warm-up pass).
* bare smbprotocol: the same sealed chunk files read with smbclient.open_file + readinto, one
  file per chunk, over one pooled connection with signing required (as Segue's SmbStore is
  set up), by the same number of threads: the rate smbclient's file API gives a Python client.
  Segue sends each file's open, read and close as one compound request instead; so does
  "bare smbprotocol, compound", the rate of the fastest Python client that reads as Segue does.

Each of --clients clients (threads) downloads the whole track --repeats times, one
sequential GET per download on one keep-alive connection, like a player. MB/s is plaintext
bytes (10^6) delivered per second of wall time. A download that fails (a status other than 200,
a broken connection, a short body) is counted in "failed" and the client goes on.

    .venv/bin/python bench/stores.py [--clients 4] [--repeats 10] [--rounds 1] [--json]

Needs the Debian packages ffmpeg and samba, and root (smbd maps the SMB user onto root).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from common import (
    BenchError,
    ffmpeg_version,
    first_line,
    free_ports,
    log,
    machine,
    make_audio,
    need,
    run,
    run_in_temp_dir,
    stop,
    tail,
    wait_ready,
)

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

SMB_USER = "root"  # smbd maps SMB users onto system accounts
SHARE = "smb"  # the [[store.shares]] name; the local runs use it too, so placement matches
HTTP_TIMEOUT_S = 60.0
READ = 256 * 1024  # client read size
# name -> (label, store, cache bytes or None for the default)
SEGUES = {
    "smb-cold": ("segue, SMB, cache 0", "smb", 0),
    "smb-warm": ("segue, SMB, cache warm", "smb", None),
    "local-cold": ("segue, local, cache 0", "local", 0),
    "local-warm": ("segue, local, cache warm", "local", None),
}
BARE = {"bare": "bare smbprotocol", "bare-compound": "bare smbprotocol, compound"}
LABELS = {**BARE, **{k: v[0] for k, v in SEGUES.items()}}
RATIOS = (
    ("smb-cold", "bare", "segue SMB cold / bare smbprotocol (target >= 0.8)"),
    ("smb-cold", "bare-compound", "segue SMB cold / bare smbprotocol, compound"),
    ("smb-warm", "bare", "segue SMB warm / bare smbprotocol"),
    ("local-cold", "local-warm", "segue local cold / local warm"),
)

SMB_CONF = """\
[global]
  server role = standalone server
  workgroup = BENCH
  netbios name = SEGUEBENCH
  smb ports = {port}
  bind interfaces only = yes
  interfaces = lo
  disable netbios = yes
  private dir = {root}/private
  lock directory = {root}/lock
  state directory = {root}/state
  cache directory = {root}/cache
  pid directory = {root}/pid
  ncalrpc dir = {root}/ncalrpc
  log file = {root}/log/log.%m
  passdb backend = tdbsam:{root}/private/passdb.tdb
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_10
  usershare max shares = 0
[media]
  path = {root}/share
  read only = no
  force user = root
"""


@contextlib.contextmanager
def smbd_server(smbd: str, smbpasswd: str, root: Path, port: int,
                password: str) -> Iterator[None]:
    """One smbd on 127.0.0.1:`port` sharing `root`/share as "media"; killed (group) at exit."""
    for sub in ("share", "private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "smb.conf"
    conf.write_text(SMB_CONF.format(port=port, root=root))
    try:
        subprocess.run([smbpasswd, "-c", str(conf), "-a", "-s", SMB_USER],
                       input=f"{password}\n{password}\n", text=True, check=True,
                       capture_output=True, timeout=30)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"smbpasswd failed: {e}") from None
    out_file = root / "smbd.out"
    with out_file.open("ab") as out:
        # smbd signals its process group on exit: it gets a session of its own.
        proc = subprocess.Popen(
            [smbd, "--foreground", "--no-process-group", "--debug-stdout", "-d", "1",
             "-s", str(conf)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise BenchError(f"smbd exited with {proc.returncode}:\n{tail(out_file)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"smbd not listening on {port} after 15 s") from None
                time.sleep(0.05)
        yield
    finally:
        stop(proc, signal.SIGTERM)


@contextlib.contextmanager
def segue_server(segue: Path, conf: Path, port: int, log_file: Path) -> Iterator[None]:
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            [str(segue), "run", "--config", str(conf), "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_ready(proc, port, "/healthz", log_file)
        yield
    finally:
        stop(proc, signal.SIGTERM)


def write_config(base: str, store: str, smb_url: str, local_dir: Path,
                 cache: int | None) -> str:
    """The init-generated config with one [[store.shares]] entry, quiet logs and [cache]."""
    if store == "smb":
        share = f'url = "{smb_url}"\npassword_file = "smb.password"\n'
    else:
        share = f'url = "{local_dir}"\n'
    old = '[store]\npath = "store"\n'
    if old not in base:
        raise BenchError(f"segue init wrote no {old!r} block to replace")
    text = base.replace(old, f'[store]\nreplicas = 1\n\n[[store.shares]]\nname = "{SHARE}"\n'
                             f"{share}")
    text += '\n[log]\nformat = "json"\nlevel = "warning"\n'
    if cache is not None:
        text += f"\n[cache]\nbytes = {cache}\n"
    return text


def timed_threads(count: int, work: Callable[[], tuple[int, int]],
                  timeout: float) -> tuple[float, int, int]:
    """Run work() in `count` threads started together; (wall seconds, bytes, failures)."""
    results: list[tuple[int, int]] = [(0, 0)] * count
    errors: list[Exception] = []
    barrier = threading.Barrier(count + 1)

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as e:  # reported by the caller, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    wall = time.perf_counter() - started
    if any(t.is_alive() for t in threads):
        raise BenchError(f"clients still running after {timeout:.0f} s")
    if errors:
        raise BenchError(f"a client failed: {type(errors[0]).__name__}: {errors[0]}")
    return wall, sum(r[0] for r in results), sum(r[1] for r in results)


def download(port: int, path: str, auth: str, times: int, size: int,
             sha: Hash | None = None) -> tuple[int, int]:
    """GET the whole track `times` times, on one keep-alive connection while it lasts.

    Returns (bytes received, failed downloads): a status other than 200, a connection error
    or a short body counts as a failure and the client goes on with its next download.
    `sha`, if given, is fed every byte received.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    buf = bytearray(READ)
    view = memoryview(buf)
    total = failed = 0
    try:
        for _ in range(times):
            got = 0
            try:
                conn.request("GET", path, headers={"Authorization": auth})
                response = conn.getresponse()
                if response.status != 200:
                    response.read()
                    failed += 1
                    continue
                while n := response.readinto(buf):
                    got += n
                    if sha is not None:
                        sha.update(view[:n])
            except (OSError, http.client.HTTPException):
                conn.close()  # the next request reconnects
            total += got
            failed += got != size
    finally:
        conn.close()
    return total, failed


def bare_reader(port: int, password: str, uncs: list[str], largest: int, compound: bool
                ) -> tuple[Callable[[int], int], Callable[[], None]]:
    """(work, close): work reads every chunk file `repeats` times: with a file object (open,
    readinto until the end, close), or with `compound` as one compound request per file."""
    import smbclient
    from smbclient._io import SMBFileIO, SMBFileTransaction

    cache: dict = {}
    smbclient.register_session("127.0.0.1", username=SMB_USER, password=password, port=port,
                               connection_timeout=5, connection_cache=cache,
                               require_signing=True)

    def read_all(times: int) -> int:
        buf = bytearray(largest + 1)
        view = memoryview(buf)
        total = 0
        for _ in range(times):
            for unc in uncs:
                # share_access="r": the clients open the same chunk files at the same time,
                # which the default (no sharing) refuses with STATUS_SHARING_VIOLATION.
                if compound:
                    raw = SMBFileIO(unc, mode="rb", share_access="r", port=port,
                                   connection_cache=cache)
                    transaction = SMBFileTransaction(raw)
                    transaction += raw.fd.read(0, len(buf), send=False)
                    transaction.commit()
                    total += len(transaction.results[0])
                    continue
                with smbclient.open_file(unc, mode="rb", buffering=0, share_access="r",
                                         port=port, connection_cache=cache) as f:
                    filled = 0
                    while filled < len(buf) and (n := f.readinto(view[filled:])):
                        filled += n
                    total += filled
        return total

    def close() -> None:
        with contextlib.suppress(Exception):
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=cache)

    return read_all, close


def machine_facts(ffmpeg: str, smbd: str, load_before: float) -> dict[str, object]:
    return machine(load_before, ("segue", "cryptography", "trio", "h11", "smbprotocol"),
                   samba=first_line([smbd, "--version"]).removeprefix("Version "),
                   ffmpeg=ffmpeg_version(ffmpeg))


def pack(segue: Path, audio: Path, conf: Path) -> tuple[str, str]:
    """Pack `audio` through `conf`; (track id, bearer header)."""
    log("packing the WAV onto the SMB share")
    run([str(segue), "store", "mark", "--new", "--config", str(conf)], timeout=120)
    packed = run([str(segue), "pack", "--config", str(conf), "--json", str(audio)], timeout=900)
    docs = [json.loads(line) for line in packed.stdout.splitlines() if line.startswith("{")]
    if len(docs) != 1 or "track_id" not in docs[0]:
        raise BenchError(f"segue pack printed no track: {packed.stdout!r}")
    token = run([str(segue), "token", "--config", str(conf), "--user", "bench",
                 "--ttl", "86400"], timeout=120).stdout.strip()
    return docs[0]["track_id"], f"Bearer {token}"


def bench(args: argparse.Namespace, t: Path) -> dict[str, object]:
    ffmpeg = need("ffmpeg", "ffmpeg")
    smbd = need("smbd", "samba", fallback="/usr/sbin/smbd")
    smbpasswd = need("smbpasswd", "samba")
    segue = Path(sys.executable).with_name("segue")
    if not segue.exists():
        raise BenchError(f"{segue} not found: run this with the Python of the venv where Segue "
                         f"is installed, e.g. .venv/bin/python {sys.argv[0]}")
    if os.geteuid() != 0:
        raise BenchError("run this as root: the bench's smbd maps the SMB user onto root")
    try:
        import smbclient  # noqa: F401 - only checking that it is there
    except ImportError:
        raise BenchError(f"{sys.executable} cannot import smbclient (smbprotocol)") from None
    load_before = os.getloadavg()[0]

    audio = t / "track.wav"
    make_audio(ffmpeg, audio, args.audio_seconds)
    size = audio.stat().st_size
    want = hashlib.sha256(audio.read_bytes()).hexdigest()
    smb_port, *ports = free_ports(1 + len(SEGUES))
    password = secrets.token_urlsafe(18)
    smb_root = t / "smb"
    smb_url = f"smb://{SMB_USER}@127.0.0.1:{smb_port}/media/segue"
    local_dir = smb_root / "share" / "segue"  # the files smbd serves, read as a local path

    node = t / "node"
    run([str(segue), "init", str(node), "--listen", "127.0.0.1:0"], timeout=120)
    secret = node / "smb.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    base = (node / "segued.toml").read_text()
    confs = {}
    for name, (_, store, cache) in SEGUES.items():
        confs[name] = node / f"segued-{name}.toml"
        confs[name].write_text(write_config(base, store, smb_url, local_dir, cache))

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in LABELS}
    with contextlib.ExitStack() as running:
        log(f"starting smbd on port {smb_port}")
        running.enter_context(smbd_server(smbd, smbpasswd, smb_root, smb_port, password))
        track_id, auth = pack(segue, audio, confs["smb-cold"])
        path = f"/v1/tracks/{track_id}"
        folder = local_dir / "tracks" / track_id[:2] / track_id
        chunks = sorted(folder.glob("*.chunk"), key=lambda p: int(p.stem))
        if not chunks:
            raise BenchError(f"segue pack wrote no chunks to {folder}")
        sealed = sum(p.stat().st_size for p in chunks)
        largest = max(p.stat().st_size for p in chunks)
        rel = f"segue\\tracks\\{track_id[:2]}\\{track_id}"
        uncs = [rf"\\127.0.0.1\media\{rel}\{p.name}" for p in chunks]

        for name, port in zip(SEGUES, ports, strict=True):
            log(f"starting {LABELS[name]} on port {port}")
            running.enter_context(segue_server(segue, confs[name], port, t / f"{name}.log"))
            # The warm-up pass: one whole download, checked against the WAV.
            sha = hashlib.sha256()
            if download(port, path, auth, 1, size, sha) != (size, 0) or sha.hexdigest() != want:
                raise BenchError(f"{LABELS[name]} did not send the WAV's exact bytes")
        readers = {}
        for name in BARE:
            readers[name], close = bare_reader(smb_port, password, uncs, largest,
                                               compound=name == "bare-compound")
            running.callback(close)
            if readers[name](1) != sealed:
                raise BenchError(f"{LABELS[name]} read fewer bytes than the chunk files hold")

        order = list(LABELS)
        timeout = max(300.0, 60.0 * args.repeats)
        for i in range(args.rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                log(f"round {i + 1}/{args.rounds}: {LABELS[name]}, {args.clients} clients x "
                    f"{args.repeats} whole track(s)")
                if name in BARE:
                    wall, got, failed = timed_threads(
                        args.clients, lambda n=name: (readers[n](args.repeats), 0), timeout)
                    if got != sealed * args.clients * args.repeats:
                        raise BenchError(f"{LABELS[name]} read {got} bytes, expected "
                                         f"{sealed * args.clients * args.repeats}")
                    got = size * args.clients * args.repeats  # the plaintext those hold
                else:
                    port = ports[list(SEGUES).index(name)]
                    wall, got, failed = timed_threads(
                        args.clients,
                        lambda p=port: download(p, path, auth, args.repeats, size), timeout)
                    if failed:
                        log(f"{LABELS[name]}: {failed} download(s) failed; --keep keeps "
                            f"{name}.log")
                runs[name].append({"mb_per_s": round(got / wall / 1e6, 1),
                                   "seconds": round(wall, 3), "failed": failed})

    results = {name: {"mb_per_s": statistics.median(r["mb_per_s"] for r in rs),
                      "seconds": statistics.median(r["seconds"] for r in rs),
                      "failed": sum(r["failed"] for r in rs)}
               for name, rs in runs.items()}
    return {
        "machine": machine_facts(ffmpeg, smbd, load_before),
        "setup": {
            "clients": args.clients,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "file_bytes": size,
            "chunks": len(chunks),
            "sealed_bytes": sealed,
            "smb": "one smbd on loopback, signing required, one connection shared by "
                   "all readers (as in Segue's SmbStore)",
        },
        "results": results,
        "runs": runs,
        "ratios": {f"{a}/{b}": round(results[a]["mb_per_s"] / results[b]["mb_per_s"], 3)
                   if results[b]["mb_per_s"] else None for a, b, _ in RATIOS},
    }


def print_table(report: dict[str, object]) -> None:
    facts = report["machine"]
    setup = report["setup"]
    results = report["results"]
    given = report["ratios"]
    assert isinstance(facts, dict) and isinstance(setup, dict)
    assert isinstance(results, dict) and isinstance(given, dict)
    versions = facts["versions"]
    assert isinstance(versions, dict)
    print(f"Machine: {facts['nproc']} CPUs ({facts['cpus_usable']} usable), "
          f"{facts['cpu_model']}, Linux {facts['kernel']}, "
          f"load average {facts['loadavg_1m_before']} before the run")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"Load: {setup['clients']} clients x {setup['repeats']} whole-track reads of a "
          f"{setup['file_bytes'] / 1e6:.1f} MB WAV ({setup['chunks']} sealed chunks), "
          f"{setup['rounds']} round(s) (median); SMB: {setup['smb']}")
    print()
    w = max(len(label) for label in (*LABELS.values(), *(r[2] for r in RATIOS)))
    print(f"{'reader':<{w}} {'MB/s':>9} {'seconds':>9} {'failed':>7}")
    for name, r in results.items():
        print(f"{LABELS[name]:<{w}} {r['mb_per_s']:>9.1f} {r['seconds']:>9.2f} "
              f"{r['failed']:>7d}")
    for a, b, label in RATIOS:
        value = given[f"{a}/{b}"]
        mark = " *" if results[a]["failed"] or results[b]["failed"] else ""
        print(f"{label:<{w}} {float('nan') if value is None else value:>9.3f}{mark}")
    if any(r["failed"] for r in results.values()):
        print("* failed downloads: MB/s counts only the bytes delivered; --keep keeps the "
              "segued logs that say why")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4,
                        help="concurrent clients (threads) (default 4)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="whole-track downloads per client per round (default 10)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measured rounds, in alternating order; medians (default 1)")
    parser.add_argument("--audio-seconds", type=int, default=60,
                        help="length of the generated WAV; 60 s is about 11.5 MB")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if min(args.clients, args.repeats, args.rounds, args.audio_seconds) < 1:
        parser.error("--clients, --repeats, --rounds and --audio-seconds must be at least 1")

    return run_in_temp_dir("stores", args, bench, print_table)

if __name__ == "__main__":
    sys.exit(main())
