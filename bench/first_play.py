"""Benchmark: time to first byte of a track's first play against a repeat play, with nginx.

This prints figures; it judges nothing. A player that starts a track the node has never opened
since it started waits for more than a repeat play does: the node reads the track's signed
manifest and checks its signature, unwraps the content key with its edge key, records the
manifest version in the catalogue, and reads, authenticates and decrypts chunk 0 before the
first byte goes out. A repeat play finds the opened track (manifest and key) in memory and
chunk 0 in the decrypted-chunk cache. This bench measures both, one request at a time, on an
otherwise idle node (the issue's target: first play p99 < 20 ms on loopback).

One run, on loopback:

* ffmpeg generates --tracks distinct 48 kHz stereo sine WAVs (one frequency each, so each is
  its own track: track ids are the SHA-256 of the file) plus 3 warm-up WAVs, several files per
  ffmpeg call. A throwaway node (`segue init`, [log] level = "warning", default cache) gets them
  all with ONE `segue pack` call, and a player token from `segue token`; then `segue run`.
* nginx (one worker, sendfile, access_log off) serves the same WAVs as plaintext from disk.
* The client is this process, one keep-alive connection per server (a player usually opens
  its next track on the connection it already has), so only the track-open work differs
  between a first and a repeat play. Every request is `GET` with `Range: bytes=0-65535`: the
  server does the same work until its first byte as for a player's `bytes=0-` (open the track,
  read and decrypt chunk 0), but the answer is small, so the connection stays usable. The
  client sends the request and times it up to the first body byte; it then reads the rest and
  checks it against the WAV's first 64 KiB. --whole sends `Range: bytes=0-` instead and reads
  every whole track, as a player does; Segue then also starts its read-ahead of chunks 1 and 2
  while it sends chunk 0, which may delay the first byte a little.
* The 3 warm-up tracks are played first on both servers, unmeasured, so one-time costs of a
  fresh process (lazy imports, worker threads) are not charged to the first measured track.
* Then, for each track in a shuffled order: on each server (Segue first on even steps, nginx
  first on odd steps) a first play of the track, then a repeat play of a random track already
  played (possibly the same one). For nginx, "first" is a file it was never asked for and
  "repeat" one it already served; nginx keeps no open-file cache in this config, so both do
  the same work.

The page cache is warm for everything: the WAVs and the sealed chunks were just written. So
"first play" is a node-side cold start of the track (no manifest, no key, no decrypted chunk in
memory), not a cold disk. Segue's /metrics is read at the end to check that every measured first
play was an open-track miss.

With two or more CPUs the servers run on one CPU and the client on another (taskset and
sched_setaffinity); --no-pin turns that off. The report gives p50, p99 and max TTFB in ms for
segue_first, segue_repeat, nginx_first and nginx_repeat, and the ratios segue first / segue
repeat, segue first / nginx first and segue repeat / nginx repeat.

    .venv/bin/python bench/first_play.py [--tracks 200] [--audio-seconds 20] [--seed 1]
        [--whole] [--no-pin] [--keep] [--json]

--json prints one object:

    {"scenario": "first_play",
     "machine": {nproc, cpus_usable, cpu_model, kernel, loadavg_1m_before, versions},
     "setup": {tracks, warmup_tracks, audio_seconds, file_bytes, chunks_per_track,
               manifest_bytes, range, connection, pinning, page_cache, segue_cache,
               generate_s, node_setup_s, pack_s, pack_tracks_per_s, measure_s, seed,
               segue_open_lookups},
     "results": {"segue_first" | "segue_repeat" | "nginx_first" | "nginx_repeat":
                 {p50_ms, p99_ms, max_ms, mean_ms, count, ttfb_ms_all}},
     "ratios": {"segue_first/segue_repeat" | "segue_first/nginx_first"
                | "segue_repeat/nginx_repeat": {p50_ms, p99_ms, max_ms}},
     "target": {"segue_first_p99_ms_below": 20.0, "met": bool}}

ttfb_ms_all lists every measured play in play order, in ms rounded to 0.01. A ratio is None
when its denominator is 0. p99 interpolates between the two nearest plays (statistics.quantiles,
inclusive): with 200 plays it sits between the 2nd and 3rd slowest, so one stall shows in max
only. segue_open_lookups holds the node's open-track lookup counters (miss, hit) and the misses
expected. node_setup_s is `segue init` + packing the first WAV + `segue token`; pack_s is the
one `segue pack` of all the others.

The client is Python: its own cost (tens of microseconds) is in every figure, so nginx's are
mostly loopback plus client. On a shared machine, another runnable process on the server's CPU
can delay a wake-up by a few ms (one scheduler tick is 4 ms at HZ=250); mind the load average.

Needs the Debian packages ffmpeg and nginx-light (or any nginx).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import json
import os
import random
import re
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    ffmpeg_version,
    first_line,
    free_ports,
    get,
    log,
    machine,
    need,
    pinning,
    run,
    run_in_temp_dir,
    setup_segue,
)
from serve_vs_nginx import Server, nginx_server, segue_server

RANGE_BYTES = 64 * 1024
WARMUP_TRACKS = 3
TARGET_P99_MS = 20.0
FILES_PER_FFMPEG = 50
KINDS = ("segue_first", "segue_repeat", "nginx_first", "nginx_repeat")
LABELS = {
    "segue_first": "segue first play",
    "segue_repeat": "segue repeat play",
    "nginx_first": "nginx first request",
    "nginx_repeat": "nginx repeat request",
}
# (numerator, denominator, label) of each ratio.
RATIOS = (
    ("segue_first", "segue_repeat", "segue first / segue repeat"),
    ("segue_first", "nginx_first", "segue first / nginx first"),
    ("segue_repeat", "nginx_repeat", "segue repeat / nginx repeat"),
)
RATIO_METRICS = ("p50_ms", "p99_ms", "max_ms")
_LOOKUP = re.compile(r'^segue_open_track_lookups_total\{outcome="(\w+)"\}\s+([0-9.e+]+)$', re.M)


@dataclass
class Track:
    """One generated WAV: its name, size, first RANGE_BYTES and Segue track id."""

    wav: Path
    size: int
    head: bytes
    track_id: str = ""


@dataclass
class Player:
    """One keep-alive HTTP/1.1 connection that times each response up to its first body byte."""

    port: int
    auth: str | None
    whole: bool  # Range: bytes=0- and the whole track, rather than the first RANGE_BYTES
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def play(self, path: str, track: Track) -> float:
        """GET `path` from byte 0; returns seconds to the first body byte.

        The body is read to its end and checked: its first RANGE_BYTES must be the WAV's."""
        last = "" if self.whole else str(RANGE_BYTES - 1)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", f"Range: bytes=0-{last}"]
        if self.auth is not None:
            lines.append(f"Authorization: {self.auth}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        data = bytearray()
        started = time.perf_counter()
        self.sock.sendall(request)
        while True:
            got = self.sock.recv(256 * 1024)
            if not got:
                raise BenchError(f"port {self.port} closed the connection during {path}")
            data += got
            end = data.find(b"\r\n\r\n")
            if end >= 0 and len(data) > end + 4:
                ttfb = time.perf_counter() - started
                break
        head = bytes(data[:end]).decode("latin-1")
        body = data[end + 4:]
        length = re.search(r"^content-length:\s*(\d+)\s*$", head, re.I | re.M)
        if length is None:
            raise BenchError(f"port {self.port} answered {path} without Content-Length:\n{head}")
        while len(body) < int(length.group(1)):
            got = self.sock.recv(256 * 1024)
            if not got:
                raise BenchError(f"port {self.port} closed the connection during {path}")
            body += got
        status = head.split(" ", 2)[1]
        size = track.size if self.whole else RANGE_BYTES
        if status != "206" or len(body) != size or body[:RANGE_BYTES] != track.head:
            raise BenchError(f"port {self.port} answered {path} with {status} and {len(body)} "
                             f"bytes; expected 206 and the WAV's first {size} bytes:\n"
                             f"{head}\n{bytes(body[:300])!r}")
        return ttfb


def generate(ffmpeg: str, www: Path, count: int, seconds: int) -> list[Track]:
    """`count` distinct sine WAVs (frequency 300 + n Hz): FILES_PER_FFMPEG outputs per ffmpeg
    call, two calls at a time. The first WARMUP_TRACKS are the warm-up tracks."""
    names = [www / (f"w{n}.wav" if n < WARMUP_TRACKS else f"t{n - WARMUP_TRACKS:04d}.wav")
             for n in range(count)]

    def batch(first: int) -> None:
        group = range(first, min(first + FILES_PER_FFMPEG, count))
        cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        for n in group:
            cmd += ["-f", "lavfi", "-i",
                    f"sine=frequency={300 + n}:duration={seconds}:sample_rate=48000"]
        for k, n in enumerate(group):
            cmd += ["-map", str(k), "-ac", "2", str(names[n])]
        run(cmd, timeout=600)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(batch, first) for first in range(0, count, FILES_PER_FFMPEG)]:
            done.result()
    tracks = []
    for wav in names:
        with wav.open("rb") as f:
            tracks.append(Track(wav, wav.stat().st_size, f.read(RANGE_BYTES)))
    if len(tracks[0].head) < RANGE_BYTES:
        raise BenchError(f"{tracks[0].wav} is shorter than {RANGE_BYTES} bytes; raise "
                         "--audio-seconds")
    return tracks


def pack(segue: Path, t: Path, tracks: list[Track], port: int) -> tuple[Path, str, dict]:
    """A node with every track packed: setup_segue with the first WAV, then ONE `segue pack`
    for all the others. Fills in the track ids; returns (config, bearer header, facts)."""
    started = time.monotonic()
    conf, path, auth = setup_segue(segue, t, tracks[0].wav, port)
    tracks[0].track_id = path.rsplit("/", 1)[-1]
    node_s = time.monotonic() - started
    rest = tracks[1:]
    log(f"packing {len(rest)} more WAVs with one segue pack")
    started = time.monotonic()
    out = run([str(segue), "pack", "--config", str(conf), "--json",
               *(str(tr.wav) for tr in rest)], timeout=1800).stdout
    pack_s = time.monotonic() - started
    docs = {d["file"]: d for d in map(json.loads, (ln for ln in out.splitlines()
                                                  if ln.startswith("{")))}
    for tr in rest:
        doc = docs.get(str(tr.wav))
        if doc is None or doc.get("already_packed"):
            raise BenchError(f"segue pack did not pack {tr.wav} as a new track: {doc}")
        tr.track_id = doc["track_id"]
    if len({tr.track_id for tr in tracks}) != len(tracks):
        raise BenchError("two WAVs got the same track id; they must all differ")
    first_id = tracks[0].track_id
    manifest = conf.parent / "store" / "tracks" / first_id[:2] / first_id / "manifest.json"
    return conf, auth, {
        "chunks_per_track": docs[str(rest[0].wav)]["chunks"],
        "manifest_bytes": manifest.stat().st_size if manifest.is_file() else None,
        "node_setup_s": round(node_s, 2),
        "pack_s": round(pack_s, 2),
        "pack_tracks_per_s": round(len(rest) / pack_s, 1),
    }


@contextlib.contextmanager
def client_on(pin: list[str]) -> Iterator[None]:
    """Run this thread on the client CPU (if pinning), with the garbage collector paused."""
    saved = os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {int(pin[-1])})
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        os.sched_setaffinity(0, saved)


def measure(players: dict[str, Player], tracks: list[Track], seed: int) -> dict[str, list[float]]:
    """Warm-up tracks first (unmeasured), then first and repeat plays, interleaved."""

    def play(server: str, track: Track) -> float:
        path = (f"/v1/tracks/{track.track_id}" if server == "segue" else f"/{track.wav.name}")
        return players[server].play(path, track)

    for track in tracks[:WARMUP_TRACKS]:
        for server in players:
            play(server, track)
            play(server, track)
    order = tracks[WARMUP_TRACKS:]
    rng = random.Random(seed)
    rng.shuffle(order)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for step, track in enumerate(order):
        again = rng.choice(order[:step + 1])
        for server in ("segue", "nginx") if step % 2 == 0 else ("nginx", "segue"):
            times[f"{server}_first"].append(play(server, track))
            times[f"{server}_repeat"].append(play(server, again))
    return times


def summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(statistics.quantiles(ms, n=100, method="inclusive")[98], 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "count": len(ms),
        "ttfb_ms_all": [round(v, 2) for v in ms],
    }


def ratios(results: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    return {f"{a}/{b}": {k: (round(results[a][k] / results[b][k], 3) if results[b][k] else None)
                         for k in RATIO_METRICS}
            for a, b, _ in RATIOS}


def open_lookups(port: int, expected_misses: int) -> dict[str, object]:
    """Segue's open-track lookup counters, to check that first plays really opened tracks."""
    status, body = get(port, "/metrics")
    found = {k: int(float(v)) for k, v in _LOOKUP.findall(body.decode()) if status == 200}
    if found.get("miss") != expected_misses:
        log(f"Segue counted {found.get('miss')} track opens, expected {expected_misses}: some "
            "plays were not what they claim")
    return {"miss": found.get("miss"), "hit": found.get("hit"),
            "expected_misses": expected_misses}


def bench(args: argparse.Namespace, t: Path) -> dict[str, object]:
    ffmpeg = need("ffmpeg", "ffmpeg")
    nginx = need("nginx", "nginx-light", fallback="/usr/sbin/nginx")
    segue = Path(sys.executable).with_name("segue")
    if not segue.exists():
        raise BenchError(f"{segue} not found: run this with the Python of the venv where Segue "
                         f"is installed (pip install -e .), e.g. .venv/bin/python {sys.argv[0]}")
    pin_server, pin_client = pinning(not args.no_pin)
    load_before = os.getloadavg()[0]
    if os.geteuid() == 0:
        # nginx's worker runs as an unprivileged user then; let it reach www/ (no listing).
        t.chmod(0o711)
    www = t / "www"
    www.mkdir(mode=0o755)
    count = args.tracks + WARMUP_TRACKS
    log(f"generating {count} WAVs of {args.audio_seconds} s with ffmpeg")
    started = time.monotonic()
    tracks = generate(ffmpeg, www, count, args.audio_seconds)
    generate_s = time.monotonic() - started

    segue_port, nginx_port = free_ports(2)
    conf, auth, packing = pack(segue, t, tracks, segue_port)
    # Server is serve_vs_nginx's record of a running server; there is no wrk script here.
    segue_srv = Server("segue", segue_port, "/healthz", auth, t / "unused.lua")
    nginx_srv = Server("nginx", nginx_port, f"/{tracks[0].wav.name}", None, t / "unused.lua")
    with contextlib.ExitStack() as running:
        log(f"starting Segue on port {segue_port} and nginx on port {nginx_port}")
        running.enter_context(segue_server(segue, conf, segue_srv, pin_server, t))
        running.enter_context(nginx_server(nginx, nginx_srv, pin_server, t))
        players = {"segue": Player(segue_port, auth, args.whole),
                   "nginx": Player(nginx_port, None, args.whole)}
        for player in players.values():
            running.callback(player.close)
        log(f"playing {args.tracks} tracks (+{WARMUP_TRACKS} warm-up) on both servers")
        started = time.monotonic()
        with client_on(pin_client):
            times = measure(players, tracks, args.seed)
        measure_s = time.monotonic() - started
        lookups = open_lookups(segue_port, count)

    results = {kind: summary(times[kind]) for kind in KINDS}
    return {
        "scenario": "first_play",
        "machine": machine(load_before, ("segue", "cryptography", "trio"),
                           ffmpeg=ffmpeg_version(ffmpeg),
                           nginx=first_line([nginx, "-v"]).removeprefix("nginx version: nginx/")),
        "setup": {
            "tracks": args.tracks,
            "warmup_tracks": WARMUP_TRACKS,
            "audio_seconds": args.audio_seconds,
            "file_bytes": tracks[-1].wav.stat().st_size,
            **{k: packing[k] for k in ("chunks_per_track", "manifest_bytes")},
            "range": "bytes=0- (whole track read)" if args.whole else f"bytes=0-{RANGE_BYTES - 1}",
            "connection": "one keep-alive connection per server for every play",
            "pinning": (f"servers on CPU {pin_server[-1]}, client on CPU {pin_client[-1]}"
                        if pin_server else "none"),
            "page_cache": "warm for both servers (every file was just written)",
            "segue_cache": "the node's default ([cache] bytes not set)",
            "generate_s": round(generate_s, 2),
            **{k: packing[k] for k in ("node_setup_s", "pack_s", "pack_tracks_per_s")},
            "measure_s": round(measure_s, 2),
            "seed": args.seed,
            "segue_open_lookups": lookups,
        },
        "results": results,
        "ratios": ratios(results),
        "target": {"segue_first_p99_ms_below": TARGET_P99_MS,
                   "met": results["segue_first"]["p99_ms"] < TARGET_P99_MS},
    }


def print_table(report: dict) -> None:
    facts, setup, results = report["machine"], report["setup"], report["results"]
    lookups = setup["segue_open_lookups"]
    lines = [
        f"Machine: {facts['nproc']} CPUs ({facts['cpus_usable']} usable), {facts['cpu_model']}, "
        f"Linux {facts['kernel']}, load average {facts['loadavg_1m_before']} before the run",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()),
        f"Tracks: {setup['tracks']} measured + {setup['warmup_tracks']} warm-up, "
        f"{setup['audio_seconds']} s WAVs of {setup['file_bytes'] / 1e6:.2f} MB "
        f"({setup['chunks_per_track']} chunks, manifest {setup['manifest_bytes']} bytes); "
        f"generated in {setup['generate_s']} s, packed in {setup['pack_s']} s by one segue "
        f"pack ({setup['pack_tracks_per_s']} tracks/s); plays took {setup['measure_s']} s",
        f"Requests: GET Range {setup['range']}, {setup['connection']}; pinning: "
        f"{setup['pinning']}",
        f"Page cache: {setup['page_cache']}; Segue cache: {setup['segue_cache']}",
        f"Segue open-track lookups: {lookups['miss']} misses (expected "
        f"{lookups['expected_misses']}), {lookups['hit']} hits",
        "",
    ]
    w = max(len(label) for label in (*LABELS.values(), *(r[2] for r in RATIOS)))
    lines.append(f"{'TTFB':<{w}} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8} "
                 f"{'plays':>6}")
    lines += [f"{LABELS[kind]:<{w}} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} "
              f"{r['mean_ms']:>8.2f} {r['count']:>6d}" for kind, r in results.items()]
    for a, b, label in RATIOS:
        given = report["ratios"][f"{a}/{b}"]
        ratio = {k: float("nan") if v is None else v for k, v in given.items()}
        lines.append(f"{label:<{w}} {ratio['p50_ms']:>8.2f} {ratio['p99_ms']:>8.2f} "
                     f"{ratio['max_ms']:>8.2f}")
    target = report["target"]
    lines.append(f"\nTarget, segue first play p99 < {target['segue_first_p99_ms_below']:g} ms: "
                 f"{'met' if target['met'] else 'NOT met'} "
                 f"({results['segue_first']['p99_ms']:.2f} ms)")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=200,
                        help="tracks played for the first time (default 200)")
    parser.add_argument("--audio-seconds", type=int, default=20,
                        help="length of each generated WAV; 20 s is about 3.8 MB, 15 chunks")
    parser.add_argument("--seed", type=int, default=1, help="seed of the play order")
    parser.add_argument("--whole", action="store_true",
                        help="send Range: bytes=0- and read every whole track, as a player's "
                             "first request does (default: bytes=0-65535)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, node)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.tracks < 2:
        parser.error("--tracks must be at least 2")
    if args.audio_seconds < 1:
        parser.error("--audio-seconds must be at least 1")
    return run_in_temp_dir("first_play", args, bench, print_table)


if __name__ == "__main__":
    sys.exit(main())
