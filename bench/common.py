"""What every benchmark here shares: finding tools, running commands, starting and stopping
servers, the machine facts a report names, and a throwaway Segue node with a track packed.

The benchmarks import this as a sibling module (`python bench/X.py` puts bench/ on sys.path).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class BenchError(Exception):
    """Setup went wrong; the message says what and how to fix it."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def need(tool: str, package: str, fallback: str | None = None) -> str:
    """The path of `tool`, or a BenchError naming the Debian package that provides it."""
    found = shutil.which(tool)
    if found is None and fallback is not None and os.access(fallback, os.X_OK):
        found = fallback
    if found is None:
        raise BenchError(f"{tool} not found: apt-get install {package}")
    return found


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a failure is a BenchError carrying its stderr."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{Path(cmd[0]).name} took longer than {timeout:.0f} s: "
                         f"{' '.join(cmd)}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise BenchError(f"{' '.join(cmd)} exited {done.returncode}:\n{detail}")
    return done


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` different free ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, log_file: Path) -> None:
    """Poll `path` until it answers 200, or fail early if the server exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode} before it was ready; "
                             f"{log_file}:\n{tail(log_file)}")
        status = 0
        with contextlib.suppress(OSError, http.client.HTTPException):
            status = get(port, path)[0]
        if status == 200:
            return
        if status not in (0, 503):  # 503: Segue is still starting
            raise BenchError(f"GET {path} on port {port} answered {status}; "
                             f"{log_file}:\n{tail(log_file)}")
        time.sleep(0.05)
    raise BenchError(f"server not ready on port {port} after {READY_TIMEOUT_S:.0f} s; "
                     f"{log_file}:\n{tail(log_file)}")


def stop(proc: subprocess.Popen[bytes] | None, sig: signal.Signals,
         timeout: float = STOP_TIMEOUT_S) -> None:
    """Ask a server (a process-group leader) to stop; kill its group if it lingers longer
    than `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} ignored {sig.name}; killing its process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    # nginx's worker may outlive the master by a moment; nothing may remain in the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def pinning(enabled: bool) -> tuple[list[str], list[str]]:
    """taskset prefixes (server, wrk): different CPUs when two or more are available."""
    cpus = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if not enabled or len(cpus) < 2 or taskset is None:
        return [], []
    return [taskset, "-c", str(cpus[1])], [taskset, "-c", str(cpus[0])]


def make_audio(ffmpeg: str, out: Path, seconds: int) -> None:
    log(f"generating {seconds} s of 48 kHz stereo WAV with ffmpeg")
    run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency=440:duration={seconds}:sample_rate=48000", "-ac", "2",
         str(out)], timeout=300)


def setup_segue(segue: Path, t: Path, audio: Path, port: int,
                cache_bytes: int | None = None) -> tuple[Path, str, str]:
    """Make a node with `audio` packed in it; return (config, track path, bearer header).

    `cache_bytes`, if given, becomes [cache] bytes (0: every chunk is read and decrypted)."""
    node = t / "node"
    run([str(segue), "init", str(node), "--listen", f"127.0.0.1:{port}"], timeout=120)
    conf = node / "segued.toml"
    with conf.open("a") as f:
        f.write('\n[log]\nformat = "json"\nlevel = "warning"\n')
        if cache_bytes is not None:  # `segue init` writes no [cache] table
            f.write(f"\n[cache]\nbytes = {cache_bytes}\n")
    log("packing the WAV into the Segue node")
    packed = run([str(segue), "pack", "--config", str(conf), "--json", str(audio)], timeout=900)
    docs = [json.loads(line) for line in packed.stdout.splitlines() if line.startswith("{")]
    if len(docs) != 1 or "track_id" not in docs[0]:
        raise BenchError(f"segue pack printed no track: {packed.stdout!r}")
    track_id = docs[0]["track_id"]
    token = run([str(segue), "token", "--config", str(conf), "--user", "bench",
                 "--ttl", "86400"], timeout=120).stdout.strip()
    return conf, f"/v1/tracks/{track_id}", f"Bearer {token}"


def first_line(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine(load_before: float, dists: tuple[str, ...], **tools: str) -> dict[str, object]:
    """The machine and the versions a report names: Python, OpenSSL, `dists` and `tools`."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if match:
            cpu = match.group(1).strip()
    versions: dict[str, str] = {"python": platform.python_version()}
    for dist in dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    with contextlib.suppress(Exception):
        from cryptography.hazmat.backends.openssl.backend import backend

        versions["openssl"] = backend.openssl_version_text()
    versions.update(tools)
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "loadavg_1m_before": round(load_before, 2),
        "versions": versions,
    }


def ffmpeg_version(ffmpeg: str) -> str:
    return first_line([ffmpeg, "-version"]).split(" Copyright")[0].removeprefix("ffmpeg version ")


def run_in_temp_dir(name: str, args: argparse.Namespace,
                    bench_fn: Callable[[argparse.Namespace, Path], dict],
                    print_fn: Callable[[dict], None]) -> int:
    """Run one benchmark in a fresh temp dir (kept with --keep) and print its report."""
    t = Path(tempfile.mkdtemp(prefix=f"segue-bench-{name}-")).resolve()
    try:
        report = bench_fn(args, t)
    except BenchError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log(f"kept {t}")
        else:
            shutil.rmtree(t, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_fn(report)
    return 0


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (gone ones are skipped)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo.extend(int(c) for c in children.read_text().split())
    return pids


def tree_cpu_s(root: int) -> float:
    """Summed utime + stime of the process tree, in seconds."""
    ticks = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after "(comm)": state is field 3, so utime (14) and stime (15) are 11, 12.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
