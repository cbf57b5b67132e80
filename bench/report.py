"""Run every benchmark of the project and write docs/performance.md from what they measured.

`bench/run` (and `make bench`) calls this with the venv's Python. It runs each scenario below
as a subprocess (`bench/SCRIPT.py --json ...`) one after another, with a timeout each, keeps
every scenario's JSON document and stderr under bench/results/<UTC stamp>/, then renders
docs/performance.md and its plots (PNG, matplotlib with the Agg backend) under
docs/performance/. A scenario that fails is reported as "not measured", with its error, and
the run goes on.

    bench/run [--quick] [--only NAME[,NAME]] [--workers N] [--timeout S]
              [--from bench/results/STAMP] [--output docs/performance.md] [--list]

The report holds measured facts only. Hand-written analysis for a section is included from
bench/analysis/<section>.md when that file exists (sections: throughput, scale_out, players,
first_play, stores, replication, sessions, gossip, nats).

This module imports nothing outside the standard library at import time; matplotlib is
imported when the plots are drawn (without it the report says that the plots are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
ANALYSIS = BENCH / "analysis"
DEFAULT_OUTPUT = ROOT / "docs" / "performance.md"
RUN_FILE = "run.json"
STOP_GRACE_S = 60  # after SIGINT on a timeout, before SIGKILL
NA = "n/a"


# --- the scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One benchmark invocation. `{workers}` in the arguments becomes --workers."""

    name: str  # --only NAME, results/NAME.json
    script: str  # bench/SCRIPT.py
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout_s: int  # for a full run; a quick run gets a third of it (at least 5 minutes)
    title: str
    expect_s: int  # about how long a full run takes on 2 cores

    def command(self, python: str, quick: bool, workers: int) -> list[str]:
        args = merge_options(self.args, self.quick_args) if quick else self.args
        return [python, f"bench/{self.script}.py", "--json",
                *(a.format(workers=workers) for a in args)]


def options(args: tuple[str, ...]) -> list[tuple[str, ...]]:
    """("--a", "1", "--b") -> [("--a", "1"), ("--b",)]: each option with its value, if any."""
    found: list[tuple[str, ...]] = []
    for arg in args:
        if arg.startswith("--") or not found:
            found.append((arg,))
        else:
            found[-1] = (*found[-1], arg)
    return found


def merge_options(args: tuple[str, ...], override: tuple[str, ...]) -> tuple[str, ...]:
    """`args` with the options that `override` also gives replaced by `override`'s."""
    replaced = {opt[0] for opt in options(override)}
    kept = [opt for opt in options(args) if opt[0] not in replaced]
    return tuple(a for opt in (*kept, *options(override)) for a in opt)


SERVE_QUICK = ("--rounds", "1", "--duration", "2", "--audio-seconds", "30")
# Expected seconds of a default run on 2 cores, from the scripts' defaults: serve_vs_nginx is
# 3 rounds x 10 s per server plus 2 s warm-ups and the packing of a 69 MB WAV; players is
# 2 rounds x 2 servers x (10 s ramp + 60 s) of load plus setup (2 rounds: segue, nginx, nginx,
# segue, so that the order is interleaved); stores 3 rounds of 5 readers reading 460 MB each;
# replication's own README says about 2 minutes.
SCENARIOS = (
    Scenario("throughput_cold", "serve_vs_nginx", ("--segue-cache", "0"), SERVE_QUICK, 600,
             "throughput, every chunk decrypted (cache off), one core", 120),
    Scenario("throughput_warm", "serve_vs_nginx", (), SERVE_QUICK, 600,
             "throughput, warm cache, one core", 120),
    Scenario("scale_out_1", "serve_vs_nginx", ("--servers", "segue,nginx", "--no-pin"),
             SERVE_QUICK, 600, "scale-out baseline: one worker each, not pinned", 85),
    Scenario("scale_out_n", "serve_vs_nginx",
             ("--workers", "{workers}", "--servers", "segue,nginx", "--no-pin"),
             SERVE_QUICK, 600, "scale-out: N workers each, not pinned", 85),
    Scenario("players", "players", ("--players", "2000", "--seconds", "60", "--rounds", "2"),
             ("--players", "200", "--seconds", "10", "--ramp", "2", "--audio-seconds", "60",
              "--rounds", "1"), 1200, "players streaming at 320 kbit/s, one worker", 340),
    Scenario("first_play", "first_play", ("--tracks", "200"),
             ("--tracks", "20", "--audio-seconds", "5"), 600, "first play of a track", 60),
    Scenario("stores", "stores", ("--rounds", "3"),
             ("--clients", "2", "--repeats", "2", "--audio-seconds", "10", "--rounds", "1"),
             600, "whole tracks from an SMB share, against bare smbprotocol", 90),
    Scenario("replication", "replication", (), ("--quick",), 900,
             "catalogue replication from MariaDB, and search", 150),
    Scenario("sessions", "sessions", (),
             ("--subscribers", "1000", "--users", "100", "--rate", "100", "--seconds", "5",
              "--heartbeat", "2"),
             600, "playback sessions: idle event streams, commands to events", 90),
    Scenario("gossip", "gossip", (),
             ("--agents", "3,10", "--seconds", "5", "--idle", "5", "--rates", "10,20",
              "--step-seconds", "3"),
             1200, "sessions between nodes over Serf: 3, 10 and 30 agents", 600),
    Scenario("nats", "nats_sessions", (),
             ("--users", "500", "--steps", "200", "--rate", "100", "--seconds", "5",
              "--sample", "50"),
             1800, "sessions between two nodes on NATS JetStream, 3 servers R3", 600),
)
BY_NAME = {s.name: s for s in SCENARIOS}
# --only also takes these names for several scenarios at once.
GROUPS = {
    "serve_vs_nginx": ("throughput_cold", "throughput_warm", "scale_out_1", "scale_out_n"),
    "throughput": ("throughput_cold", "throughput_warm"),
    "scale_out": ("scale_out_1", "scale_out_n"),
}


def select(only: str | None) -> list[Scenario]:
    """The scenarios `--only` names (scenario or group names), in run order; all by default."""
    if not only:
        return list(SCENARIOS)
    wanted: set[str] = set()
    for word in (w.strip() for w in only.split(",")):
        if not word:
            continue
        if word in GROUPS:
            wanted.update(GROUPS[word])
        elif word in BY_NAME:
            wanted.add(word)
        else:
            raise ValueError(f"unknown scenario {word!r}; choose from "
                             f"{', '.join([*BY_NAME, *GROUPS])}")
    return [s for s in SCENARIOS if s.name in wanted]


# --- running ---------------------------------------------------------------------------------


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def _pump(stream: Any, sinks: list[Any], prefix: str = "") -> None:
    for line in iter(stream.readline, ""):
        for sink in sinks:
            sink.write(prefix + line if sink is sys.stderr else line)
            sink.flush()


def run_one(scenario: Scenario, cmd: list[str], out_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run one scenario; save NAME.json (its stdout, when it is JSON) and NAME.log (stderr).

    Returns its record for run.json: command, status (ok, failed, timeout, interrupted,
    missing), seconds and, unless ok, error."""
    record: dict[str, Any] = {"script": f"bench/{scenario.script}.py",
                              "command": shlex.join(["bench/" + Path(cmd[1]).name, *cmd[2:]]),
                              "started": utc_now().isoformat(), "timeout_s": timeout_s}
    if not (ROOT / cmd[1]).is_file():
        record.update(status="missing", seconds=0.0, error=f"{cmd[1]} does not exist")
        return record
    log_path = out_dir / f"{scenario.name}.log"
    started = time.monotonic()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1)
        out: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        stdout_pipe = proc.stdout
        pumps = [threading.Thread(target=_pump, args=(proc.stderr, [sys.stderr, log_file],
                                                      f"[{scenario.name}] "), daemon=True),
                 threading.Thread(target=lambda: out.append(stdout_pipe.read()), daemon=True)]
        for p in pumps:
            p.start()
        status = None
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            status = "timeout"
            # SIGINT, not SIGTERM: the scripts stop their servers and remove their temp dirs
            # on KeyboardInterrupt.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        except KeyboardInterrupt:
            status = "interrupted"  # the child got the terminal's SIGINT too
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in pumps:
            p.join(timeout=10)
    record["seconds"] = round(time.monotonic() - started, 1)
    record["exit_code"] = proc.returncode
    stdout = "".join(out)
    if status is None:
        doc = None
        with contextlib.suppress(ValueError):
            doc = json.loads(stdout) if stdout.strip() else None
        if proc.returncode == 0 and isinstance(doc, dict):
            (out_dir / f"{scenario.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
            record["status"] = "ok"
            return record
        status = "failed"
    record["status"] = status
    record["error"] = error_text(status, proc.returncode, log_path, stdout, timeout_s)
    return record


def error_text(status: str, code: int | None, log_path: Path, stdout: str,
               timeout_s: float) -> str:
    """What to tell the reader about a scenario that measured nothing."""
    if status == "timeout":
        head = f"stopped after the {timeout_s:.0f} s timeout"
    elif status == "interrupted":
        head = "interrupted"
    elif code == 0:
        head = "exited 0 but printed no JSON document"
    else:
        head = f"exited {code}"
    logged = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    progress = [ln for ln in logged if ln.startswith("[bench] ")]
    if status in ("timeout", "interrupted") and progress:
        return f"{head}; the last it said:\n" + "\n".join(progress[-3:])
    lines = [ln for ln in logged if not ln.startswith("[bench] ")]
    if not lines and stdout.strip():
        lines = stdout.strip().splitlines()
    detail = "\n".join(ln if len(ln) <= 300 else ln[:300] + " [...]" for ln in lines[-8:])
    return f"{head}:\n{detail}" if detail else head


def machine_facts() -> dict[str, Any]:
    """The machine as bench/run sees it; the scripts add the versions of what they run."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if found:
            cpu = found.group(1).strip()
    mem = None
    with contextlib.suppress(OSError, ValueError):
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if found:
            mem = round(int(found.group(1)) / 2**20, 1)
    os_name = platform.system()
    with contextlib.suppress(OSError):
        found = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', Path("/etc/os-release").read_text(),
                          re.M)
        if found:
            os_name = found.group(1)
    return {"cpu_model": cpu, "nproc": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "mem_gib": mem,
            "kernel": platform.release(), "os": os_name, "python": platform.python_version(),
            "git": git_state()}


def git_state() -> str:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return "unknown"
    return commit + (" with local changes" if git("status", "--porcelain") else "")


def run_all(scenarios: list[Scenario], out_dir: Path, quick: bool, workers: int,
            timeout: float | None) -> dict[str, Any]:
    """Run the scenarios in order, writing run.json after each; returns its content."""
    out_dir.mkdir(parents=True, exist_ok=False)
    meta: dict[str, Any] = {"started": utc_now().isoformat(), "quick": quick,
                            "workers": workers, "machine": machine_facts(), "scenarios": {}}
    if not quick:
        expect = sum(s.expect_s for s in scenarios)
        print(f"[run] {len(scenarios)} scenario(s), about {expect / 60:.0f} minutes on 2 cores; "
              f"results in {out_dir}", file=sys.stderr, flush=True)
    for scenario in scenarios:
        cmd = scenario.command(sys.executable, quick, workers)
        limit = timeout or (max(300, scenario.timeout_s // 3) if quick else scenario.timeout_s)
        print(f"[run] {scenario.name}: {shlex.join(cmd[1:])} (timeout {limit:.0f} s)",
              file=sys.stderr, flush=True)
        record = run_one(scenario, cmd, out_dir, limit)
        meta["scenarios"][scenario.name] = record
        print(f"[run] {scenario.name}: {record['status']} in {record['seconds']:.0f} s",
              file=sys.stderr, flush=True)
        meta["finished"] = utc_now().isoformat()
        (out_dir / RUN_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        if record["status"] == "interrupted":
            raise KeyboardInterrupt
    return meta


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """run.json (made up from the JSON files if it is missing) and each scenario's document."""
    meta_path = run_dir / RUN_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.setdefault("scenarios", {})
    meta.setdefault("quick", False)
    meta.setdefault("workers", None)
    docs: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        path = run_dir / f"{scenario.name}.json"
        if path.is_file():
            with contextlib.suppress(ValueError):
                docs[scenario.name] = json.loads(path.read_text())
            meta["scenarios"].setdefault(scenario.name, {"status": "ok"})
    if not meta_path.exists() and docs:
        mtime = min((run_dir / f"{n}.json").stat().st_mtime for n in docs)
        meta["started"] = dt.datetime.fromtimestamp(mtime, dt.UTC).isoformat()
    meta["dirs"] = [os.path.relpath(run_dir, ROOT)]
    return meta, docs


def load_runs(run_dirs: list[Path]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Several result folders as one: a scenario found in a later folder replaces it from an
    earlier one (so one scenario can be measured again and added to a full run)."""
    meta: dict[str, Any] = {"scenarios": {}, "dirs": [], "quick": False}
    docs: dict[str, dict[str, Any]] = {}
    for run_dir in run_dirs:
        one, found = load_run(run_dir)
        for name, record in one["scenarios"].items():
            meta["scenarios"][name] = {**record, "dir": one["dirs"][0]}
        docs.update(found)
        for name in one["scenarios"]:
            if name not in found:
                docs.pop(name, None)
        meta["dirs"] += one["dirs"]
        meta["quick"] = meta["quick"] or bool(one.get("quick"))
        for key in ("machine", "workers"):
            if one.get(key):
                meta[key] = one[key]
        for key, pick in (("started", min), ("finished", max)):
            if one.get(key):
                meta[key] = pick(filter(None, (meta.get(key), one[key])))
    meta["scenarios"] = {s.name: meta["scenarios"][s.name] for s in SCENARIOS
                         if s.name in meta["scenarios"]}
    return meta, docs


# --- reading the documents -------------------------------------------------------------------


def dig(doc: Any, *path: str | int, default: Any = None) -> Any:
    """doc[path[0]][path[1]]..., or `default` where a key is missing or a value is None."""
    for key in path:
        found = (key in doc if isinstance(doc, dict)
                 else isinstance(doc, list) and isinstance(key, int)
                 and -len(doc) <= key < len(doc))
        if not found:
            return default
        doc = doc[key]
    return default if doc is None else doc


def first_of(doc: Any, *paths: tuple[str, ...] | str, default: Any = None) -> Any:
    """The value at the first of `paths` that exists (a path is a key or a tuple of keys)."""
    for path in paths:
        keys = (path,) if isinstance(path, str) else path
        value = dig(doc, *keys)
        if value is not None:
            return value
    return default


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    """A number with thousands separators and `digits` decimals; n/a if it is not a number."""
    x = number(value)
    if x is None:
        return NA
    return f"{x:,.{digits}f}{unit}"


def mb(value: Any) -> float | None:
    """Bytes as 10^6 bytes."""
    x = number(value)
    return None if x is None else x / 1e6


def ratio(a: Any, b: Any) -> float | None:
    x, y = number(a), number(b)
    return None if x is None or not y else x / y


def verdict(value: Any, op: str, limit: float) -> str:
    """'met', '**not met**' or n/a for value `op` limit (op: >=, <, <=)."""
    x = number(value)
    if x is None:
        return NA
    ok = {">=": x >= limit, "<": x < limit, "<=": x <= limit, ">": x > limit}[op]
    return "met" if ok else "**not met**"


NUMERIC = re.compile(r"^(n/a|[-+]?[\d,]+(\.\d+)?( ?[a-zA-Z%]+)?)$")


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A markdown table; columns whose cells are all numbers (or n/a) are right-aligned."""
    heads = list(headers)
    body = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    align = []
    for i in range(len(heads)):
        cells = [row[i] for row in body if i < len(row) and row[i]]
        numeric = bool(cells) and all(NUMERIC.match(c) for c in cells)
        align.append(" ---: " if numeric else " --- ")
    return ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in body)]


# --- the report ------------------------------------------------------------------------------


@dataclass
class Check:
    """One target the report states, for the summary at the top."""

    section: str
    figure: str
    measured: str
    target: str
    met: str


@dataclass
class Report:
    """What the section writers share: the run, the documents, the plots, the checks."""

    meta: dict[str, Any]
    docs: dict[str, dict[str, Any]]
    out: Path  # the markdown file
    plot_dir: Path
    plots: dict[str, Path] = field(default_factory=dict)  # name -> PNG written
    plot_errors: dict[str, str] = field(default_factory=dict)  # name -> why it is missing
    checks: list[Check] = field(default_factory=list)

    def doc(self, name: str) -> dict[str, Any] | None:
        return self.docs.get(name)

    def check(self, section: str, figure: str, measured: str, target: str, met: str) -> str:
        self.checks.append(Check(section, figure, measured, target, met))
        return met

    def image(self, name: str, alt: str) -> list[str]:
        path = self.plots.get(name)
        if path is None:
            why = self.plot_errors.get(name, "no data to plot")
            return [f"_(Plot {name}.png not drawn: {why}.)_", ""]
        return [f"![{alt}]({os.path.relpath(path, self.out.parent)})", ""]

    def not_measured(self, *names: str) -> list[str]:
        """A line per scenario without a document: why it measured nothing."""
        lines: list[str] = []
        for name in names:
            if name in self.docs:
                continue
            record = dig(self.meta, "scenarios", name)
            if record is None:
                lines += [f"**Not measured** ({name}): not run in this run "
                          f"(`bench/run --only {name}` runs it).", ""]
                continue
            error = str(record.get("error") or record.get("status", "unknown"))
            first, _, rest = error.partition("\n")
            lines += [f"**Not measured** ({name}): {record.get('status', 'failed')}, {first}"]
            if rest.strip():
                detail = [ln if len(ln) <= 300 else ln[:300] + " [...]"
                          for ln in rest.rstrip().splitlines()[-8:]]
                lines += ["", "```text", *detail, "```"]
            lines.append("")
        return lines

    def ran(self, name: str) -> str:
        """'Ran in N s: `command`.' for a scenario, from run.json."""
        record = dig(self.meta, "scenarios", name, default={})
        parts = []
        if number(record.get("seconds")) is not None:
            parts.append(f"took {record['seconds']:.0f} s")
        if record.get("command"):
            parts.append(f"`{record['command']}`")
        load = dig(self.docs.get(name), "machine", "loadavg_1m_before")
        if load is not None:
            parts.append(f"load average {load} before")
        return f"{name}: " + ", ".join(parts) + "." if parts else ""


def analysis(section: str) -> list[str]:
    """The hand-written part of a section: bench/analysis/SECTION.md, or where to write it."""
    path = ANALYSIS / f"{section}.md"
    text = path.read_text().strip() if path.is_file() else ""
    if not text:
        text = (f"_Not written yet: put the analysis in `bench/analysis/{section}.md`; "
                "bench/run includes it here._")
    return ["### What stands in the way", "", text, ""]


SERVER_LABELS = {"segue": "Segue", "nginx": "nginx", "h11": "trio+h11 (memory)"}
SERVE_METRICS = (("requests_per_s", "requests/s", 0), ("mb_per_s", "MB/s", 1),
                 ("p50_ms", "p50 latency ms", 2), ("p99_ms", "p99 latency ms", 2),
                 ("errors", "errors", 0))


def serve_setup(doc: dict[str, Any]) -> str:
    s = doc.get("setup", {})
    cache = s.get("segue_cache_bytes")
    workers = first_of(s, "workers", "segue_workers")
    return (f"wrk -t{dig(s, 'threads', default='?')} -c{dig(s, 'connections', default='?')}, "
            f"{fmt(dig(s, 'range_bytes'), 0)}-byte random aligned ranges of a "
            f"{fmt(mb(dig(s, 'file_bytes')))} MB WAV, "
            f"{dig(s, 'rounds', default='?')} round(s) of {dig(s, 'duration_s', default='?')} s "
            f"(median), interleaved after a {dig(s, 'warmup_s', default='?')} s warm-up each; "
            f"pinning: {dig(s, 'pinning', default=NA)}; Segue cache: "
            + ("the node's default" if cache is None else f"[cache] bytes = {cache}")
            + (f"; workers: {workers}" if workers is not None else "") + ".")


def throughput_table(r: Report, name: str, target: float, label: str) -> list[str]:
    doc = r.doc(name)
    if doc is None:
        r.check("throughput", f"requests/s, {label}: Segue / nginx", NA, f">= {target}", NA)
        return r.not_measured(name)
    res = doc.get("results", {})
    servers = [s for s in ("segue", "nginx", "h11") if s in res]
    heads = ["", *(SERVER_LABELS[s] for s in servers), "Segue / nginx"]
    with_h11 = "h11" in res
    if with_h11:
        heads.append("Segue / trio+h11")
    heads += ["target", "met?"]
    rows = []
    for key, text, digits in SERVE_METRICS:
        row = [text, *(fmt(dig(res, s, key), digits) for s in servers)]
        q = ratio(dig(res, "segue", key), dig(res, "nginx", key))
        row.append(fmt(q, 3) if key != "errors" else "")
        if with_h11:
            row.append(fmt(ratio(dig(res, "segue", key), dig(res, "h11", key)), 3)
                       if key != "errors" else "")
        if key == "requests_per_s":
            met = r.check("throughput", f"requests/s, {label}: Segue / nginx", fmt(q, 3),
                          f">= {target}", verdict(q, ">=", target))
            row += [f">= {target} of nginx", met]
        else:
            row += ["", ""]
        rows.append(row)
    lines = [serve_setup(doc), "", *table(heads, rows), ""]
    errors = number(dig(res, "segue", "errors"))
    if errors:
        lines += [f"Segue had {errors:.0f} wrk errors in this scenario: its figures count "
                  "only the answers that arrived.", ""]
    return lines


def section_throughput(r: Report) -> list[str]:
    lines = ["## Throughput: 256 KiB ranges, one worker on one core", "",
             "wrk with 32 keep-alive connections asks for random 256 KiB-aligned ranges of one "
             "WAV (one sealed chunk per request for Segue: read, authenticated and decrypted "
             "unless it is cached). Segue, nginx (sendfile, one worker) and a bare trio + h11 "
             "server answering from memory (no auth, no cache, no decryption: what trio, h11 "
             "and Python alone reach; Segue was built on h11 until it got its own HTTP/1.1 "
             "framing, so it can now pass this peer) run in the same invocation, measured in "
             "turns. The server "
             "is pinned to one CPU and wrk to the other. Ratios above 1 mean more requests "
             "(or, for latency, slower). Source: `bench/serve_vs_nginx.py`.", "",
             "### Every chunk decrypted (cache off)", "",
             *throughput_table(r, "throughput_cold", 0.6, "cache off"),
             "### Warm cache", "",
             *throughput_table(r, "throughput_warm", 0.85, "warm cache"),
             *r.image("throughput", "requests/s of Segue, nginx and trio+h11")]
    return lines + [x for x in (r.ran("throughput_cold"), r.ran("throughput_warm")) if x] \
        + [""] + analysis("throughput")


def section_scale_out(r: Report) -> list[str]:
    n = first_of(r.doc("scale_out_n"), ("setup", "workers"), ("setup", "segue_workers"),
                 default=r.meta.get("workers"))
    one, many = r.doc("scale_out_1"), r.doc("scale_out_n")
    lines = [f"## Scale-out: {n or 'N'} worker processes against nginx with {n or 'N'} workers",
             "",
             f"Segue with {n or 'N'} worker processes sharing the port (SO_REUSEPORT) against "
             f"nginx with {n or 'N'} worker_processes, same load as above (wrk -c32, 256 KiB "
             "ranges, Segue's default cache), nothing pinned. The one-worker baseline is a "
             "separate invocation with the same settings, so the scaling factor "
             f"({n or 'N'} workers / 1 worker) compares two runs, not one interleaved run. "
             "No numeric target.", ""]
    lines += r.not_measured("scale_out_1", "scale_out_n")
    if one is None and many is None:
        return lines + analysis("scale_out")
    rows = []
    for key, text, digits in SERVE_METRICS[:4]:
        for label, doc in (("1 worker", one), (f"{n or 'N'} workers", many)):
            a, b = dig(doc, "results", "segue", key), dig(doc, "results", "nginx", key)
            rows.append([f"{text}, {label}", fmt(a, digits), fmt(b, digits),
                         fmt(ratio(a, b), 3)])
    scale = {s: ratio(dig(many, "results", s, "requests_per_s"),
                      dig(one, "results", s, "requests_per_s")) for s in ("segue", "nginx")}
    rows.append([f"scaling factor, requests/s {n or 'N'} workers / 1 worker",
                 fmt(scale["segue"], 2), fmt(scale["nginx"], 2),
                 fmt(ratio(scale["segue"], scale["nginx"]), 3)])
    r.check("scale_out", f"requests/s, {n or 'N'} workers: Segue / nginx",
            fmt(ratio(dig(many, "results", "segue", "requests_per_s"),
                      dig(many, "results", "nginx", "requests_per_s")), 3), "none", NA)
    lines += [serve_setup(many or one or {}), "",
              *table(["", "Segue", "nginx", "Segue / nginx"], rows), "",
              *r.image("throughput", "requests/s of Segue, nginx and trio+h11"),
              *[x for x in (r.ran("scale_out_1"), r.ran("scale_out_n")) if x], ""]
    return lines + analysis("scale_out")


MIB_PER_MB = 1e6 / 2**20
# (label, key in bench/players.py's results per server, decimals, target as (op, limit)).
PLAYER_FIGURES: tuple[tuple[str, str, int, tuple[str, float] | None], ...] = (
    ("TTFB p50 ms", "ttfb_p50_ms", 1, None),
    ("TTFB p99 ms", "ttfb_p99_ms", 1, ("<", 50.0)),
    ("TTFB max ms", "ttfb_max_ms", 1, None),
    ("longest stall any player saw, ms", "stall_max_ms", 0, ("<=", 1000.0)),
    ("per-player longest stall p99 ms", "stall_p99_ms", 0, None),
    ("per-player longest stall p50 ms", "stall_p50_ms", 0, None),
    ("connect p99 ms", "connect_p99_ms", 1, None),
    ("RSS peak MiB", "rss_peak_mib", 1, ("<", round(300 * MIB_PER_MB, 1))),
    ("RSS before MiB", "rss_before_mib", 1, None),
    ("RSS at the end MiB", "rss_end_mib", 1, None),
    ("TCP memory peak MiB (machine)", "tcp_mem_peak_mib", 1, None),
    ("players completed", "completed", 0, None),
    ("players failed", "failed", 0, None),
    ("players streaming at once (peak)", "peak_streaming", 0, None),
    ("body MB/s, all players", "mb_per_s", 1, None),
    ("server CPU %", "server_cpu_pct", 0, None),
    ("load generator CPU %", "loadgen_cpu_pct", 0, None),
    ("load generator timer lag p99 ms", "loadgen_lag_p99_ms", 1, None),
)
TARGET_TEXT = {"ttfb_p99_ms": "< 50 ms", "stall_max_ms": "no stall over 1 s",
               "rss_peak_mib": "< 300 MB (286.1 MiB)"}


def section_players(r: Report) -> list[str]:
    doc = r.doc("players")
    s = dig(doc, "setup", default={})
    players, seconds = dig(s, "players", default=2000), dig(s, "seconds", default=60)
    lines = [f"## {fmt(players, 0)} players at real-time rate, one worker", "",
             f"{fmt(players, 0)} players open their connections over a ramp and each streams "
             "the track at its real-time rate (320 kbit/s after a burst that fills its "
             f"buffer) for {fmt(seconds, 0)} s from its first body byte, from one Segue worker "
             "and from nginx (one worker), in turns (Segue first in odd rounds, nginx first "
             "in even rounds; the figures pool every round), each pinned to one CPU with the "
             "load generator on the other. TTFB is from the request sent to the first body "
             "byte; a player's stall is the longest gap between two reads that brought data "
             "(about the 100 ms read tick when the server keeps up); RSS is the server's "
             "process tree. The load generator's own CPU and timer lag say whether it, not the "
             "server, was the limit. Source: `bench/players.py`.", ""]
    if doc is None:
        for figure, key, _, target in PLAYER_FIGURES:
            if target is not None:
                r.check("players", figure, NA, TARGET_TEXT[key], NA)
        return lines + r.not_measured("players") + analysis("players")
    res = doc.get("results", {})
    rows = []
    for figure, key, digits, target in PLAYER_FIGURES:
        a, b = dig(res, "segue", key), dig(res, "nginx", key)
        if a is None and b is None and target is None:
            continue
        compare = key.endswith(("_ms", "_mib", "_pct"))
        row = [figure, fmt(a, digits), fmt(b, digits), fmt(ratio(a, b), 2) if compare else ""]
        if target is not None:
            row += [TARGET_TEXT[key], r.check("players", figure, fmt(a, digits),
                                              TARGET_TEXT[key], verdict(a, *target))]
        else:
            row += ["", ""]
        rows.append(row)
    lines += [f"Setup: {fmt(players, 0)} players over a {fmt(dig(s, 'ramp_s'), 0)} s ramp, "
              f"{fmt(dig(s, 'rate_bytes_per_s'), 0)} bytes/s after a "
              f"{fmt(dig(s, 'burst_seconds'), 0)} s burst, read tick "
              f"{dig(s, 'tick_s', default='?')} s, {fmt(seconds, 0)} s per player, "
              f"{fmt(dig(s, 'rounds'), 0)} round(s), a "
              f"{fmt(mb(dig(s, 'file_bytes')))} MB WAV; pinning: "
              f"{dig(s, 'pinning', default=NA)}; nginx: {dig(s, 'nginx', default=NA)}; Segue "
              "cache: " + ("the node's default" if dig(s, "segue_cache_bytes") is None
                           else f"[cache] bytes = {s['segue_cache_bytes']}") + ".", "",
              *table(["", "Segue", "nginx", "Segue / nginx", "target", "met?"], rows), ""]
    errors = {srv: dig(res, srv, "errors") for srv in ("segue", "nginx") if dig(res, srv, "errors")}
    if errors:
        lines += ["Failed players by kind: " + "; ".join(
            f"{SERVER_LABELS[srv]}: " + ", ".join(f"{k} {v}" for k, v in kinds.items())
            for srv, kinds in errors.items()) + ".", ""]
    lines += [*r.image("players_ttfb_cdf", "CDF of players' TTFB, Segue and nginx"),
              *r.image("players_stall_cdf", "CDF of each player's longest stall, Segue and nginx"),
              r.ran("players"), ""]
    return lines + analysis("players")


FIRST_PLAY_KINDS = (("segue_first", "Segue, first play"), ("segue_repeat", "Segue, repeat play"),
                    ("nginx_first", "nginx, first request"),
                    ("nginx_repeat", "nginx, repeat request"))


def section_first_play(r: Report) -> list[str]:
    doc = r.doc("first_play")
    lines = ["## First play of a track", "",
             "Time to first byte of a track the node has not opened since it started (it "
             "reads and checks the signed manifest, unwraps the content key, reads and "
             "decrypts chunk 0) against a repeat play of a track already open, one request "
             "at a time on one keep-alive connection, on loopback; nginx serves the same WAVs "
             "(first and repeat requests do the same work there). The page cache is warm for "
             "both. Source: `bench/first_play.py`.", ""]
    if doc is None:
        r.check("first_play", "Segue first play TTFB p99 ms", NA, "< 20 ms", NA)
        return lines + r.not_measured("first_play") + analysis("first_play")
    res = doc.get("results", {})
    target = number(dig(doc, "target", "segue_first_p99_ms_below")) or 20.0
    rows = []
    for metric, text in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        for kind, label in (("first", "first play"), ("repeat", "repeat play")):
            a, b = dig(res, f"segue_{kind}", metric), dig(res, f"nginx_{kind}", metric)
            row = [f"TTFB {text} ms, {label}", fmt(a, 2), fmt(b, 2), fmt(ratio(a, b), 2)]
            if kind == "first" and metric == "p99_ms":
                text_t = f"< {fmt(target, 0)} ms (Segue)"
                row += [text_t, r.check("first_play", "Segue first play TTFB p99 ms",
                                        fmt(a, 2), f"< {fmt(target, 0)} ms",
                                        verdict(a, "<", target))]
            else:
                row += ["", ""]
            rows.append(row)
    rows.append(["p99 first / p99 repeat",
                 fmt(ratio(dig(res, "segue_first", "p99_ms"), dig(res, "segue_repeat", "p99_ms")),
                     2),
                 fmt(ratio(dig(res, "nginx_first", "p99_ms"), dig(res, "nginx_repeat", "p99_ms")),
                     2), "", "", ""])
    s = doc.get("setup", {})
    lookups = dig(s, "segue_open_lookups", default={})
    lines += [f"Setup: {fmt(dig(s, 'tracks'), 0)} tracks of {fmt(dig(s, 'audio_seconds'), 0)} s "
              f"({fmt(mb(dig(s, 'file_bytes')))} MB each), "
              f"`Range: {dig(s, 'range', default='?')}`, {dig(s, 'connection', default='?')}; "
              f"pinning: {dig(s, 'pinning', default=NA)}; Segue's open-track lookups: "
              f"{dig(lookups, 'miss', default='?')} misses for "
              f"{dig(lookups, 'expected_misses', default='?')} expected, "
              f"{dig(lookups, 'hit', default='?')} hits.", "",
              *table(["", "Segue", "nginx", "Segue / nginx", "target", "met?"], rows), "",
              *r.image("first_play", "CDF of TTFB, first and repeat plays, Segue and nginx"),
              r.ran("first_play"), ""]
    return lines + analysis("first_play")


STORE_READERS = (("bare", "bare smbprotocol"),
                 ("bare-compound", "bare smbprotocol, compound"),
                 ("smb-cold", "Segue, SMB, cache 0"),
                 ("smb-warm", "Segue, SMB, cache warm"), ("local-cold", "Segue, local, cache 0"),
                 ("local-warm", "Segue, local, cache warm"))


def section_stores(r: Report) -> list[str]:
    doc = r.doc("stores")
    lines = ["## Stores: whole tracks from an SMB share", "",
             "Clients download a whole track, one GET each on a keep-alive connection, from "
             "Segue reading its chunks from an SMB share (smbd on loopback) and from the same "
             "files as a local path, with the cache off and warm; the peers read the same "
             "sealed chunk files straight from the share with smbprotocol (no HTTP, no "
             "decryption): through smbclient's file objects, and as one compound request "
             "(open, read, close) per file as Segue does. MB/s of plaintext per second of "
             "wall time. Source: `bench/stores.py`.", ""]
    if doc is None:
        r.check("stores", "MB/s, Segue SMB cache 0 / bare smbprotocol", NA, ">= 0.8", NA)
        return lines + r.not_measured("stores") + analysis("stores")
    res = doc.get("results", {})
    rows = [[label, fmt(dig(res, key, "mb_per_s")), fmt(dig(res, key, "seconds"), 2),
             fmt(dig(res, key, "failed"), 0)] for key, label in STORE_READERS if key in res]
    q = ratio(dig(res, "smb-cold", "mb_per_s"), dig(res, "bare", "mb_per_s"))
    ratios = [["Segue SMB cache 0 / bare smbprotocol", fmt(q, 3), ">= 0.8",
               r.check("stores", "MB/s, Segue SMB cache 0 / bare smbprotocol", fmt(q, 3),
                       ">= 0.8", verdict(q, ">=", 0.8))],
              ["Segue SMB cache 0 / bare smbprotocol, compound",
               fmt(ratio(dig(res, "smb-cold", "mb_per_s"),
                         dig(res, "bare-compound", "mb_per_s")), 3), "", ""],
              ["Segue SMB warm / bare smbprotocol",
               fmt(ratio(dig(res, "smb-warm", "mb_per_s"), dig(res, "bare", "mb_per_s")), 3),
               "", ""],
              ["Segue local cache 0 / local warm",
               fmt(ratio(dig(res, "local-cold", "mb_per_s"), dig(res, "local-warm", "mb_per_s")),
                   3), "", ""]]
    s = doc.get("setup", {})
    lines += [f"Setup: {fmt(dig(s, 'clients'), 0)} clients x {fmt(dig(s, 'repeats'), 0)} "
              f"downloads of a {fmt(mb(dig(s, 'file_bytes')))} "
              f"MB track ({fmt(dig(s, 'chunks'), 0)} sealed chunks), "
              f"{fmt(dig(s, 'rounds'), 0)} round(s) (median); SMB: {dig(s, 'smb', default=NA)}.",
              "", *table(["reader", "MB/s", "seconds", "failed"], rows), "",
              *table(["ratio", "value", "target", "met?"], ratios), "",
              *r.image("stores", "MB/s of each reader"), r.ran("stores"), ""]
    if any(number(dig(res, k, "failed")) for k, _ in STORE_READERS):
        lines += ["Some downloads failed: a reader's MB/s counts only the bytes that arrived.",
                  ""]
    return lines + analysis("stores")


def section_replication(r: Report) -> list[str]:
    doc = r.doc("replication")
    lines = ["## Replication from MariaDB, and search", "",
             "The catalogue's snapshot from a local mariadbd, catch-up after an outage, "
             "replication lag under 1,000 single-row UPDATEs per second, and local search "
             "latency on a synthetic catalogue. No peer: the figures stand against the "
             "targets. Source: `bench/replication.py`.", ""]
    targets = (("snapshot", "snapshot rows/s", ("rows_per_s",), ">=", 50_000.0, 0),
               ("catchup", "catch-up rows/s", ("rows_per_s",), ">=", 20_000.0, 0),
               ("lag", "lag p99 ms", ("p99_ms",), "<", 1000.0, 0),
               ("search", "search p99 ms", ("p99_ms",), "<", 20.0, 2))
    if doc is None:
        for _, figure, _, op, limit, _ in targets:
            r.check("replication", figure, NA, f"{op} {fmt(limit, 0)}", NA)
        return lines + r.not_measured("replication") + analysis("replication")
    res = doc.get("results", {})
    rows = []
    for part, figure, keys, op, limit, digits in targets:
        value = dig(res, part, *keys)
        met = verdict(value, op, limit)
        text = f"{op} {fmt(limit, 0)}"
        if part == "search" and value is not None and dig(res, "search", "rows", default=0) \
                < 1_000_000:
            met = f"{NA} ({fmt(dig(res, 'search', 'rows'), 0)} tracks, target is at 1,000,000)"
        if part == "catchup" and dig(res, "catchup", "verified") is False:
            met = "**not met** (rows do not match the source)"
        r.check("replication", figure, fmt(value, digits), text, met)
        rows.append([figure, fmt(value, digits), text, met])
    extra = []
    if "snapshot" in res:
        extra.append(["snapshot", f"{fmt(dig(res, 'snapshot', 'rows'), 0)} rows in "
                      f"{fmt(dig(res, 'snapshot', 'seconds'), 1)} s"])
    if "catchup" in res:
        c = res["catchup"]
        extra.append(["catch-up", f"{fmt(dig(c, 'rows_inserted'), 0)} rows in "
                      f"{fmt(dig(c, 'insert_transactions'), 0)} transactions + "
                      f"{fmt(dig(c, 'updates'), 0)} updates, "
                      f"{fmt(dig(c, 'transactions_per_s'), 0)} transactions/s"])
    if "lag" in res:
        g = res["lag"]
        extra.append(["lag", f"{fmt(dig(g, 'writes'), 0)} writes at "
                      f"{fmt(dig(g, 'achieved_rate'), 0)}/s; p50 {fmt(dig(g, 'p50_ms'), 0)} ms, "
                      f"max {fmt(dig(g, 'max_ms'), 0)} ms, {fmt(dig(g, 'not_seen'), 0)} not "
                      "seen"])
    if "search" in res:
        q = res["search"]
        extra.append(["search", f"{fmt(dig(q, 'rows'), 0)} tracks, {fmt(dig(q, 'queries'), 0)} "
                      f"queries; p50 {fmt(dig(q, 'p50_ms'), 2)} ms, "
                      f"max {fmt(dig(q, 'max_ms'), 2)} ms"])
        for kind, k in dig(q, "by_kind", default={}).items():
            extra.append([f"search, {kind}", f"p50 {fmt(dig(k, 'p50_ms'), 2)} ms, p99 "
                          f"{fmt(dig(k, 'p99_ms'), 2)} ms (~{fmt(dig(k, 'mean_hits'), 0)} hits)"])
    lines += [*table(["figure", "measured", "target", "met?"], rows), "",
              *table(["part", "details"], extra), "", r.ran("replication"), ""]
    return lines + analysis("replication")


def section_sessions(r: Report) -> list[str]:
    doc = r.doc("sessions")
    lines = ["## Playback sessions, one worker", "",
             "Idle event streams held open (RSS, heartbeat lateness), then one event stream "
             "per listener and commands spread over the listeners (from the command's request "
             "to its event on the listener's stream, measured by the load generator, and "
             "segued's own histogram). No peer: the figures stand against the targets. "
             "Source: `bench/sessions.py`.", ""]
    targets = (("idle", "RSS with the idle streams, MiB", ("rss_mib",), "<", 500.0, 1),
               ("idle", "heartbeat lateness p99 ms", ("heartbeat_late", "p99_ms"), "<", 1000.0,
                1),
               ("commands", "command to event p99 ms", ("command_to_event", "p99_ms"), "<",
                50.0, 1))
    if doc is None:
        for _, figure, _, op, limit, _ in targets:
            r.check("sessions", figure, NA, f"{op} {fmt(limit, 0)}", NA)
        return lines + r.not_measured("sessions") + analysis("sessions")
    res = doc.get("results", {})
    rows = []
    for part, figure, keys, op, limit, digits in targets:
        value = dig(res, part, *keys)
        met = verdict(value, op, limit)
        r.check("sessions", figure, fmt(value, digits), f"{op} {fmt(limit, 0)}", met)
        rows.append([figure, fmt(value, digits), f"{op} {fmt(limit, 0)}", met])
    s = doc.get("setup", {})
    lines += [*table(["figure", "measured", "target", "met?"], rows), "",
              f"Setup: {fmt(dig(s, 'subscribers'), 0)} idle streams, "
              f"{fmt(dig(s, 'users'), 0)} listeners, {fmt(dig(s, 'rate'), 0)} commands/s for "
              f"{fmt(dig(s, 'seconds'), 0)} s, heartbeat every {fmt(dig(s, 'heartbeat_s'), 1)} s;"
              f" commands achieved {fmt(dig(res, 'commands', 'rate_achieved'), 0)}/s, "
              f"segued's own p99 at most "
              f"{fmt(dig(res, 'server_command_to_event', 'p99_ms_at_most'), 0)} ms.", "",
              r.ran("sessions"), ""]
    return lines + analysis("sessions")


def _p(summary: Any) -> str:
    """"p50 / p99 / max" in ms."""
    return " / ".join(fmt(dig(summary, k), 0) for k in ("p50_ms", "p99_ms", "max_ms"))


def section_gossip(r: Report) -> list[str]:
    doc = r.doc("gossip")
    lines = ["## Sessions between nodes over Serf gossip", "",
             "N Serf agents on loopback (profile lan, one keyring key), 3 segued nodes A, B, C "
             "each with its own agent (anti-entropy once an hour, so that only gossip "
             "delivers), and an observer streaming the session events from every agent but "
             "A's. Commands go to node A over HTTP; each is timed from its request to its "
             "event at every other agent and on the listener's event stream on B and C. "
             "Then session events (realistic deltas: a play with its device and queue item) "
             "are fired into agent A at rising rates: a rate is complete when every event "
             "reaches every agent and segued B and C, with p99 under 1 s. Bytes are IP bytes "
             "on the agents' gossip ports (nftables counters), sent plus received, per node. "
             "Everything shares 2 cores. Source: `bench/gossip.py`.", ""]
    fleets = dig(doc, "results", "fleets", default=[])
    largest = max(fleets, key=lambda f: f.get("agents", 0), default=None)
    p99 = dig(largest, "latency", "at_every_node", "p99_ms")
    at = f" at {largest['agents']} agents" if largest else ""
    r.check("gossip", f"command to event p99 ms{at}, every node", fmt(p99, 0), "< 1,000",
            verdict(p99, "<", 1000.0) if largest and largest["agents"] >= 30 else NA)
    rates = [dig(f, "delivery", "highest_complete_rate") for f in fleets]
    ceiling = min((x for x in rates if number(x) is not None), default=None)
    r.check("gossip", "highest change rate gossip delivers whole, events/s (all fleets)",
            fmt(ceiling, 0), "none (where to move to the message bus)", NA)
    if doc is None:
        return lines + r.not_measured("gossip") + analysis("gossip")
    sizes = [number(step.get("payload_bytes")) for f in fleets
             for step in dig(f, "delivery", "steps", default=[])]
    size = fmt(max((x for x in sizes if x is not None), default=None), 0)
    rows = []
    for f in fleets:
        lat = f.get("latency", {})
        rows.append([fmt(f.get("agents"), 0),
                     f"{fmt(lat.get('commands'), 0)} at {fmt(lat.get('rate_achieved'), 0)}/s",
                     _p(lat.get("at_agents")), _p(lat.get("at_segued_streams")),
                     fmt((dig(lat, "at_agents", "missing") or 0)
                         + (dig(lat, "at_segued_streams", "missing") or 0), 0),
                     fmt(dig(f, "idle", "traffic", "bytes_per_s_per_node"), 0),
                     fmt(dig(lat, "traffic", "bytes_per_s_per_node"), 0),
                     fmt(dig(f, "delivery", "highest_complete_rate"), 0)])
    lines += [*table(["agents", "commands", "to the other agents ms p50 / p99 / max",
                      "to streams on B, C ms p50 / p99 / max", "not there 3 s after",
                      "bytes/s per node, idle", "bytes/s per node, commands",
                      "highest complete rate, events/s"], rows), ""]
    steps = []
    for f in fleets:
        for step in dig(f, "delivery", "steps", default=[]):
            steps.append([fmt(f.get("agents"), 0), fmt(step.get("rate"), 0),
                          fmt(step.get("rate_achieved"), 1),
                          fmt(100 * (number(step.get("delivered_fraction_min")) or 0), 1),
                          " / ".join(fmt(x, 0) for x in step.get("segued_received", [])),
                          _p(step.get("delay")),
                          fmt(dig(step, "traffic", "bytes_per_s_per_node"), 0),
                          fmt(dig(step, "cpu", "cores_busy"), 2),
                          fmt(dig(step, "warnings", "queue_depth"), 0),
                          "yes" if step.get("complete") else "no"])
    s = doc.get("setup", {})
    lines += ["Delivery, events fired into agent A for "
              f"{fmt(s.get('step_seconds'), 0)} s a rate (delivered: the least any observed "
              f"agent got within {fmt(s.get('drain_s'), 0)} s; segued B / C: events their "
              "plugin took; delay: from the RPC call to the arrival at each agent; cores: the "
              "CPU all parts used; queue warnings: the agents' \"queue depth\" warnings, "
              "logged while a broadcast queue holds more than 128 messages; payloads of up "
              f"to {size} bytes):", "",
              *table(["agents", "events/s", "achieved", "delivered %", "segued B / C",
                      "delay ms p50 / p99 / max", "bytes/s per node", "cores",
                      "queue warnings", "complete"], steps), ""]
    if ceiling is not None:
        each = ", ".join(f"{fmt(dig(f, 'delivery', 'highest_complete_rate'), 0)} with "
                         f"{fmt(f.get('agents'), 0)} agents" for f in fleets)
        lines += [f"**Where to leave gossip.** Gossip alone carried every change to every node "
                  f"with p99 under 1 s up to {fmt(ceiling, 0)} changes a second across the "
                  f"fleet, in changes of up to {size} bytes ({each}). Above it, changes "
                  "arrive seconds late or only by anti-entropy: a fleet whose listeners "
                  "make more session changes than that should carry sessions on the message "
                  "bus (NATS JetStream, issue 14).", ""]
    command_bytes = [number(dig(f, "latency", "payload_bytes")) for f in fleets]
    lines += [f"Setup: {fmt(s.get('listeners'), 0)} listeners, {fmt(s.get('rate'), 0)} "
              f"commands/s for {fmt(s.get('seconds'), 0)} s (`set_shuffle`, whose events "
              f"carry {fmt(max((x for x in command_bytes if x), default=None), 0)} bytes of "
              "payload on average); idle measured for "
              f"{fmt(s.get('idle_s'), 0)} s; {s.get('pinning', NA)}.", "", r.ran("gossip"), ""]
    return lines + analysis("gossip")
def _follow_row(node: str, step: dict[str, Any]) -> list[str]:
    """One row of the NATS following table: a node after it followed `listeners`."""
    idle = step.get("idle_cores") or {}
    servers = sum(v for k, v in idle.items() if k.startswith("nats") and number(v) is not None)
    return [node, fmt(step.get("listeners"), 0), fmt(step.get("follow_s"), 1),
            fmt(step.get("follows_per_s"), 0),
            fmt(dig(step, "node_rss_mib", "edge-a" if node == "A" else "edge-b")),
            fmt(sum(step.get("server_consumers") or []), 0),
            " / ".join(fmt(x, 0) for x in step.get("server_rss_mib") or []),
            " / ".join(fmt(idle.get(k), 2) for k in ("edge-a", "edge-b")) + " / "
            + fmt(servers, 2)]


def section_nats(r: Report) -> list[str]:
    doc = r.doc("nats")
    s = dig(doc, "setup", default={})
    c = dig(doc, "results", "commands", default={})
    lines = ["## Sessions between two nodes on NATS JetStream", "",
             "A NATS cluster on loopback and two segued nodes with `[plugins.nats]`. "
             "Listeners get a device on node B in steps (one `ping` each), so that B follows "
             "them: one JetStream consumer each, made when the listener's first "
             "device arrives. Then every listener gets a device on node A too, and commands "
             "(`set_shuffle`, toggled) go to node A spread over all listeners, while a sample "
             "of listeners holds an event stream on node B: each command is timed from its "
             "request to its event on B. Everything (servers, both nodes, the trio load "
             "generator) shares the machine's cores; nothing is pinned. Source: "
             "`bench/nats_sessions.py`.", ""]
    e = c.get("command_to_event") or {}
    r.check("nats", f"commands/s achieved, {fmt(s.get('users'), 0)} listeners",
            fmt(c.get("rate_achieved"), 0), f">= {fmt(s.get('rate'), 0)} (the load asked)",
            verdict(c.get("rate_achieved"), ">=", 0.95 * (number(s.get("rate")) or 0))
            if c else NA)
    r.check("nats", "command on A to event on B, p99 ms", fmt(e.get("p99_ms"), 0), "none",
            NA)
    if doc is None:
        return lines + r.not_measured("nats") + analysis("nats")
    res = doc.get("results", {})
    m = doc.get("machine", {})
    rows = [_follow_row("B", step) for step in res.get("steps", [])]
    if res.get("on_a"):
        rows.append(_follow_row("A", res["on_a"]))
    lines += [f"{fmt(s.get('servers'), 0)} nats-server process(es), stream and bucket with "
              f"{fmt(s.get('replicas'), 0)} replica(s)"
              + (" as in production" if s.get("replicas") == 3 else "")
              + f"; load average {m.get('loadavg_1m_before', NA)} before the run and "
              f"{m.get('loadavg_1m_after', NA)} after (2 cores). Following: the time from "
              "the step's first ping until the node's `segue_nats_followed_listeners` "
              "reached it; RSS and consumers after it; idle cores: the share of a core each "
              "process used over the next 5 s with no load.", "",
              *table(["node", "listeners followed", "follow s", "follows/s", "node RSS MiB",
                      "consumers", "servers RSS MiB", "idle cores A / B / servers"], rows), ""]
    if c:
        seconds = number(c.get("seconds")) or 0.0
        cpu = c.get("cpu_s") or {}
        cores = ", ".join(f"{k} {fmt(v / seconds if seconds else None, 2)}"
                          for k, v in cpu.items() if number(v) is not None)
        published = c.get("published") or {}
        crows = [["commands sent", fmt(c.get("commands"), 0)],
                 ["rate wanted / achieved, commands/s",
                  f"{fmt(c.get('rate_wanted'), 0)} / {fmt(c.get('rate_achieved'), 0)}"],
                 ["errors (non-200 answers)", fmt(c.get("errors"), 0)],
                 ["command on A to event on B, ms p50 / p99 / max",
                  " / ".join(fmt(e.get(k), 0) for k in ("p50_ms", "p99_ms", "max_ms"))],
                 ["events matched / missing (sample's commands)",
                  f"{fmt(c.get('events_matched'), 0)} / {fmt(c.get('events_missing'), 0)}"],
                 ["deltas published by A: ok / queue full / failed",
                  " / ".join(fmt(published.get(k), 0) for k in ("ok", "queue_full", "failed"))],
                 ["cores used (CPU s / wall s)", cores]]
        lines += [f"Commands: {fmt(s.get('rate'), 0)}/s wanted for {fmt(s.get('seconds'), 0)} s "
                  f"over {fmt(s.get('users'), 0)} listeners, {fmt(s.get('sample'), 0)} of them "
                  "with an event stream on B. A sample command whose event had not come "
                  "before that listener's next command (or 3 s after the last) is missing.",
                  "", *table(["figure", "measured"], crows), ""]
    return [*lines, r.ran("nats"), "", *analysis("nats")]


SECTIONS: tuple[Callable[[Report], list[str]], ...] = (
    section_throughput, section_scale_out, section_players, section_first_play,
    section_stores, section_replication, section_sessions, section_gossip,
    section_nats)
VERSION_ORDER = ("python", "segue", "cryptography", "openssl", "trio", "h11", "nginx", "wrk",
                 "ffmpeg")


def versions(docs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every version the scripts name, merged (python, segue, ... first)."""
    seen: dict[str, list[str]] = {}
    for doc in docs.values():
        for k, v in dig(doc, "machine", "versions", default={}).items():
            seen.setdefault(k, [])
            if str(v) not in seen[k]:
                seen[k].append(str(v))
    order = [k for k in VERSION_ORDER if k in seen] + sorted(set(seen) - set(VERSION_ORDER))
    return {k: " / ".join(seen[k]) for k in order}


def header(r: Report, body: list[str]) -> list[str]:
    m = r.meta.get("machine") or {}
    first = next(iter(r.docs.values()), {})
    cpu = m.get("cpu_model") or dig(first, "machine", "cpu_model", default=NA)
    nproc = m.get("nproc") or dig(first, "machine", "nproc", default=NA)
    usable = m.get("cpus_usable") or dig(first, "machine", "cpus_usable", default=NA)
    kernel = m.get("kernel") or dig(first, "machine", "kernel", default=NA)
    seconds = sum(number(dig(rec, "seconds")) or 0.0
                  for rec in r.meta.get("scenarios", {}).values())
    lines = ["# Performance", "",
             "<!-- Generated by bench/run (bench/report.py) from measured results; do not edit "
             "by hand. Hand-written analysis goes in bench/analysis/SECTION.md. -->", ""]
    if r.meta.get("quick"):
        lines += ["> **Quick run, not for comparison.** Durations and sizes were cut short "
                  "(`bench/run --quick`) to check that the benchmarks run; the figures below "
                  "do not stand for Segue's performance.", ""]
    lines += [f"Measured {when(r.meta)}, {duration(seconds)} of benchmarks, on {cpu}, "
              f"{nproc} CPUs ({usable} usable), "
              f"{m.get('mem_gib', NA)} GiB of memory, Linux {kernel}"
              + (f" ({m['os']})" if m.get("os") else "")
              + (f", Segue at git {m['git']}" if m.get("git") else "") + ".",
              "", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions(r.docs).items())
              + ".", ""]
    loads = {n: dig(d, "machine", "loadavg_1m_before") for n, d in r.docs.items()}
    if loads:
        lines += ["Load average (1 min) before each scenario: "
                  + ", ".join(f"{n} {v}" for n, v in loads.items() if v is not None)
                  + ". The figures only mean something on an otherwise idle machine.", ""]
    lines += ["## Summary", "",
              *table(["section", "figure", "measured", "target", "met?"],
                     ([c.section, c.figure, c.measured, c.target, c.met] for c in r.checks)),
              ""]
    lines += reproduce(r)
    return lines + body


def when(meta: dict[str, Any]) -> str:
    """'2026-11-27, 10:49 to 11:08 UTC' from run.json's started and finished."""
    try:
        start = dt.datetime.fromisoformat(meta["started"]).astimezone(dt.UTC)
    except (KeyError, TypeError, ValueError):
        return "at an unknown time"
    text = start.strftime("%Y-%m-%d, %H:%M")
    with contextlib.suppress(KeyError, TypeError, ValueError):
        end = dt.datetime.fromisoformat(meta["finished"]).astimezone(dt.UTC)
        text += end.strftime(" to %H:%M") if end.date() == start.date() \
            else end.strftime(" to %Y-%m-%d %H:%M")
    return text + " UTC"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


def reproduce(r: Report) -> list[str]:
    rows = []
    for s in SCENARIOS:
        record = dig(r.meta, "scenarios", s.name)
        if record is None:
            continue
        started = NA
        with contextlib.suppress(KeyError, TypeError, ValueError):
            started = dt.datetime.fromisoformat(record["started"]).strftime("%m-%d %H:%M")
        rows.append([s.name, s.title, f"`{record.get('command', NA)}`", started,
                     fmt(record.get("seconds"), 0), record.get("status", NA)])
    dirs = r.meta.get("dirs") or ["bench/results/"]
    where = ", ".join(f"`{d}/`" for d in dirs) + " (not committed)"
    return ["## How to reproduce", "",
            "`make bench` installs what the benchmarks need (Debian packages, the venv with "
            "the `bench` extra: matplotlib) and runs `bench/run`, which runs every scenario "
            "below one after the other and writes this file and its plots. `bench/run --only "
            "NAME[,NAME]` runs some of them, `bench/run --quick` makes a short smoke run, and "
            "`bench/run --from bench/results/STAMP` rewrites this file from saved results "
            f"without measuring again. This run's raw JSON and logs: {where}.", "",
            "The default run keeps the scripts' own defaults (3 rounds of 10 s for wrk, "
            "2,000 players for 60 s, 200 tracks for first play, 4 clients x 10 downloads for "
            "the stores, the full replication sizes: 200,000-row snapshot and 1,000,000-track "
            "search), except that players runs 2 rounds and stores 3 rounds, so that Segue "
            "and its peer take turns, and it adds the one-worker scale-out baseline. On 2 "
            "cores that should take "
            f"about {sum(s.expect_s for s in SCENARIOS) / 60:.0f} minutes. Each scenario has "
            "a timeout (10 to 20 minutes); one that fails or times out is reported as not "
            "measured and the others still run.", "",
            *table(["scenario", "what", "command", "started (UTC)", "seconds", "status"],
                   rows), ""]


def render(meta: dict[str, Any], docs: dict[str, dict[str, Any]], out: Path,
           draw: bool = True) -> Path:
    """Write the markdown report (and, with `draw`, its plots); returns its path."""
    plot_dir = out.with_suffix("")
    r = Report(meta, docs, out, plot_dir)
    if draw:
        r.plots, r.plot_errors = draw_plots(docs, plot_dir, meta.get("workers"),
                                            bool(meta.get("quick")))
    else:
        r.plot_errors = dict.fromkeys(PLOTTERS, "bench/run --no-plots")
    body: list[str] = []
    for section in SECTIONS:
        body += section(r)
    text = "\n".join(header(r, body)).rstrip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


# --- plots -----------------------------------------------------------------------------------

DPI = 100
PNG_LIMIT = 100_000
COLOURS = {"segue": "#1f77b4", "nginx": "#2ca02c", "h11": "#ff7f0e"}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (ImportError when matplotlib is missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(plt: Any, docs: dict[str, dict[str, Any]], workers: Any) -> Any:
    n = first_of(docs.get("scale_out_n"), ("setup", "workers"), default=workers or "N")
    groups = [(label, docs[name], target) for name, label, target in (
        ("throughput_cold", "cache off\n1 core", 0.6),
        ("throughput_warm", "warm cache\n1 core", 0.85),
        ("scale_out_1", "1 worker\nnot pinned", None),
        ("scale_out_n", f"{n} workers\nnot pinned", None)) if name in docs]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.27
    for g, (_, doc, target) in enumerate(groups):
        res = doc.get("results", {})
        for k, server in enumerate(("segue", "nginx", "h11")):
            value = number(dig(res, server, "requests_per_s"))
            if value is None:
                continue
            x = g + (k - 1) * width
            ax.bar(x, value, width, color=COLOURS[server],
                   label=SERVER_LABELS[server] if g == 0 or server not in
                   {c for d in groups[:g] for c in d[1].get("results", {})} else None)
            if server == "segue":
                q = ratio(value, dig(res, "nginx", "requests_per_s"))
                if q is not None:
                    ax.annotate(f"x{q:.2f}", (x, value), ha="center", va="bottom", fontsize=8)
                nginx = number(dig(res, "nginx", "requests_per_s"))
                if target is not None and nginx:
                    ax.hlines(target * nginx, x - width / 2, x + width / 2, colors="black",
                              linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(groups)), [label for label, _, _ in groups], fontsize=9)
    ax.set_ylabel("requests/s (median)")
    ax.set_title("256 KiB ranges, wrk -c32 (xN: Segue / nginx; dashed: target)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def cdf(ax: Any, values: Any, label: str, **style: Any) -> bool:
    """Draw the empirical CDF of `values` (ms); False when there is nothing to draw."""
    xs = sorted(x for x in (number(v) for v in values or []) if x is not None)
    if not xs:
        return False
    n = len(xs)
    if n > 4000:  # as many points as the picture can show
        idx = sorted({round(i * (n - 1) / 3999) for i in range(4000)})
        points = [(xs[i], (i + 1) / n) for i in idx]
    else:
        points = [(x, (i + 1) / n) for i, x in enumerate(xs)]
    ax.step([p[0] for p in points], [p[1] for p in points], where="post",
            label=f"{label} (n={n:,})", **style)
    return True


def cdf_figure(plt: Any, series: list[tuple[str, Any, dict[str, Any]]], xlabel: str,
               title: str, target: float | None, target_label: str) -> Any:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = [cdf(ax, values, label, **style) for label, values, style in series]
    if not any(drawn):
        plt.close(fig)
        return None
    lows = [x for _, values, _ in series for x in (number(v) for v in values or [])
            if x is not None]
    if min(lows) > 0:
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=1.0)
    if target is not None:
        ax.axvline(target, color="red", linestyle="dashed", linewidth=1, label=target_label)
    if "p99" in target_label:
        ax.axhline(0.99, color="grey", linestyle="dotted", linewidth=1)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction <= x")
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_players(key: str, xlabel: str, title: str, target: float, target_label: str
                 ) -> Callable[[Any, dict[str, dict[str, Any]], Any], Any]:
    def draw(plt: Any, docs: dict[str, dict[str, Any]], workers: Any) -> Any:
        res = dig(docs.get("players"), "results", default={})
        series = [(SERVER_LABELS[s], dig(res, s, key), {"color": COLOURS[s]})
                  for s in ("segue", "nginx")]
        return cdf_figure(plt, series, xlabel, title, target, target_label)

    return draw


def plot_first_play(plt: Any, docs: dict[str, dict[str, Any]], workers: Any) -> Any:
    res = dig(docs.get("first_play"), "results", default={})
    series = [(label, dig(res, kind, "ttfb_ms_all"),
               {"color": COLOURS[kind.split("_")[0]],
                "linestyle": "solid" if kind.endswith("first") else "dotted"})
              for kind, label in FIRST_PLAY_KINDS]
    return cdf_figure(plt, series, "time to first byte, ms (log)",
                      "First play against repeat play, one request at a time", 20.0,
                      "target: Segue first play p99 < 20 ms")


def plot_stores(plt: Any, docs: dict[str, dict[str, Any]], workers: Any) -> Any:
    res = dig(docs.get("stores"), "results", default={})
    rows = [(label, value) for key, label in STORE_READERS
            if (value := number(dig(res, key, "mb_per_s"))) is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.set_xlim(0, max(v for _, v in rows) * 1.15)
    labels = [label for label, _ in rows][::-1]
    values = [v for _, v in rows][::-1]
    colours = [COLOURS["nginx"] if label.startswith("bare") else COLOURS["segue"]
               for label in labels]
    ax.barh(labels, values, color=colours)
    for y, v in enumerate(values):
        ax.annotate(f"{v:,.0f}", (v, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    bare = number(dig(res, "bare", "mb_per_s"))
    if bare:
        ax.axvline(0.8 * bare, color="red", linestyle="dashed", linewidth=1)
    ax.set_title("Whole tracks (dashed: the target for Segue SMB cache 0, 0.8 x bare)",
                 fontsize=10)
    ax.set_xlabel("MB/s of plaintext (median)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


PLOTTERS: dict[str, Callable[[Any, dict[str, dict[str, Any]], Any], Any]] = {
    "throughput": plot_throughput,
    "players_ttfb_cdf": plot_players("ttfb_ms_all", "time to first byte, ms (log)",
                                     "Players' time to first byte", 50.0, "target: p99 < 50 ms"),
    "players_stall_cdf": plot_players("stall_ms_all", "longest stall of a player, ms (log)",
                                      "Each player's longest stall", 1000.0,
                                      "target: no stall over 1 s"),
    "first_play": plot_first_play,
    "stores": plot_stores,
}


def draw_plots(docs: dict[str, dict[str, Any]], plot_dir: Path, workers: Any,
               quick: bool = False) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw every plot there is data for; returns (name -> PNG, name -> why it is missing).

    PNGs of these names that this run cannot draw are removed, so none is left stale."""
    try:
        plt = pyplot()
    except ImportError:
        why = "matplotlib is not installed (`make bench-setup` installs the bench extra)"
        return {}, dict.fromkeys(PLOTTERS, why)
    plot_dir.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, Path] = {}
    errors: dict[str, str] = {}
    for name, plotter in PLOTTERS.items():
        path = plot_dir / f"{name}.png"
        path.unlink(missing_ok=True)
        try:
            fig = plotter(plt, docs, workers)
        except Exception as e:  # a bad document must not cost the whole report
            errors[name] = f"drawing it failed: {type(e).__name__}: {e}"
            print(f"[report] {name}.png: {errors[name]}", file=sys.stderr)
            plt.close("all")
            continue
        if fig is None:
            continue
        if quick:
            fig.text(0.99, 0.01, "quick run, not for comparison", ha="right", va="bottom",
                     fontsize=8, color="red")
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        drawn[name] = path
        if path.stat().st_size > PNG_LIMIT:
            print(f"[report] {path} has {path.stat().st_size:,} bytes, more than "
                  f"{PNG_LIMIT:,}", file=sys.stderr)
    return drawn, errors


# --- the command line ------------------------------------------------------------------------


def user_path(text: str) -> Path:
    """A path given on the command line, relative to where bench/run was started."""
    return Path(os.environ.get("BENCH_RUN_CWD", os.getcwd()), text).resolve()


def list_scenarios(quick: bool, workers: int) -> None:
    for s in SCENARIOS:
        cmd = s.command("python", quick, workers)
        print(f"{s.name:<16} {s.title}\n{'':<16} {shlex.join(cmd[1:])}")
    print("groups: " + "; ".join(f"{g} = {','.join(n)}" for g, n in GROUPS.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="Run every benchmark and write docs/performance.md.")
    parser.add_argument("--quick", action="store_true",
                        help="short durations and sizes: a smoke run, not for comparison")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help="run only these scenarios or groups (see --list)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="Segue and nginx workers in the scale-out scenario (default 2)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="timeout of each scenario in seconds (default: per scenario)")
    parser.add_argument("--from", dest="from_dir", metavar="DIR", action="append",
                        help="render the report from saved results (bench/results/STAMP) "
                             "without running anything; give it again to add the results of "
                             "other runs (a scenario in a later DIR replaces an earlier one)")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="the markdown file to write (default docs/performance.md); the "
                             "plots go in the folder of the same name without .md")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the plots")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.list:
        list_scenarios(args.quick, args.workers)
        return 0
    out = user_path(args.output) if args.output else DEFAULT_OUTPUT
    if out.suffix != ".md":
        parser.error("--output must name a .md file")

    if args.from_dir:
        if args.only or args.quick or args.timeout:
            parser.error("--from only renders saved results; --only, --quick and --timeout "
                         "are for a new run")
        run_dirs = [user_path(d) for d in args.from_dir]
        for run_dir in run_dirs:
            if not run_dir.is_dir():
                parser.error(f"{run_dir} is not a directory")
        meta, docs = load_runs(run_dirs)
        if not docs and not meta["scenarios"]:
            parser.error(f"{', '.join(map(str, run_dirs))} hold(s) no results")
        print(f"[run] wrote {render(meta, docs, out, not args.no_plots)}", file=sys.stderr)
        return 0

    try:
        scenarios = select(args.only)
    except ValueError as e:
        parser.error(str(e))
    # A timeout stops a scenario with SIGINT (the scripts clean up on KeyboardInterrupt), and
    # the scripts inherit SIGINT ignored when bench/run was started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_dir = RESULTS / stamp(utc_now())
    try:
        run_all(scenarios, run_dir, args.quick, args.workers, args.timeout)
    except KeyboardInterrupt:
        print(f"[run] interrupted; the results so far are in {run_dir}; "
              f"bench/run --from {os.path.relpath(run_dir, ROOT)} writes the report",
              file=sys.stderr)
        return 130
    meta, docs = load_run(run_dir)
    path = render(meta, docs, out, not args.no_plots)
    print(f"[run] wrote {path}; raw results in {run_dir}", file=sys.stderr)
    bad = {n: r["status"] for n, r in meta["scenarios"].items() if r.get("status") != "ok"}
    for name, record in meta["scenarios"].items():
        print(f"[run] {name:<16} {record.get('status', '?'):<12} "
              f"{fmt(record.get('seconds'), 0):>6} s", file=sys.stderr)
    if bad:
        print(f"[run] not measured: {', '.join(f'{n} ({s})' for n, s in bad.items())}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
