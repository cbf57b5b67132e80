"""The Debian package (issue 16): built with `make deb`, checked with lintian and systemd-analyze,
then installed on this machine, configured, run as its unit runs it, upgraded, removed, purged.

The lifecycle test installs a package, creates the `segue` system user and writes /etc/segue and
/var/lib/segue: it needs root, which CI has on a throwaway Debian 12 machine. It refuses to run
over a segue package or state that was there before it, and whatever happens it purges the
package and removes what purge keeps on purpose (the keys, the track store, the user), so the
machine is left as it was. systemd does not run in CI: the unit's ExecStartPre and ExecStart run
as its User with its Environment, NoNewPrivileges, the kernel's MemoryDenyWriteExecute
(PR_SET_MDWE) and a NOTIFY_SOCKET the test binds.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require
from test_cli_docs import complete, rendered
from test_life import NotifySocket

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
UNIT = Path("/lib/systemd/system/segued.service")
CONF = Path("/etc/segue/segued.toml")
KEYS = Path("/etc/segue/keys")
STATE = Path("/var/lib/segue")
CACHE = Path("/var/cache/segue")
# What systemd gives a service that sets no PATH.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Runs the rest of its arguments with PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN): the kernel's form of
# MemoryDenyWriteExecute=, kept across fork and exec (Linux 6.3+).
MDWE = ("import ctypes, os, sys\n"
        "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
        "    sys.exit(f'PR_SET_MDWE: {os.strerror(ctypes.get_errno())} (needs Linux 6.3+)')\n"
        "os.execvp(sys.argv[1], sys.argv[1:])\n")


def run(*cmd: str | os.PathLike[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run a command to completion; its output is in the error if it fails."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)
    assert done.returncode == 0, f"{shlex.join(map(str, cmd))} exited {done.returncode}:\n" \
                                 f"{done.stdout}\n{done.stderr}"
    return done


def apt_get(*args: str | os.PathLike[str], check: bool = True) -> None:
    """apt-get, waiting for the dpkg lock if another apt-get (tools/ensure-commands) holds it."""
    command = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *map(str, args)]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if check:
        run(*command, env=env, timeout=600)
    else:
        subprocess.run(command, env=env, capture_output=True, check=False,
                       stdin=subprocess.DEVNULL, timeout=600)


def installed() -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "segue"],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout not in ("", "not-installed")


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """segue_VERSION_amd64.deb, built once per run by `make deb` (about 40 s on 2 cores)."""
    for command, package in [("make", "make"), ("git", "git"),
                             ("dpkg-buildpackage", "dpkg-dev"), ("dh", "debhelper"),
                             ("dh_virtualenv", "dh-virtualenv")]:
        require(command, package)
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    run("make", "-C", REPO, "deb", f"DEB_DIR={out}", timeout=900)
    print(f"make deb took {time.monotonic() - started:.0f} s")
    built = out / f"segue_{VERSION}_amd64.deb"
    assert built.is_file(), f"make deb made {sorted(p.name for p in out.iterdir())}"
    return built


def test_package_is_lintian_clean_and_ships_no_secret(deb: Path, tmp_path: Path) -> None:
    lintian = require("lintian", "lintian")
    # Warnings count: each one the package keeps is overridden, with its reason, in
    # packaging/debian/segue.lintian-overrides.
    done = subprocess.run([lintian, "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, timeout=300, check=False)
    tags = [line for line in done.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert done.returncode == 0 and not tags, done.stdout + done.stderr

    control = tmp_path / "control"
    run("dpkg-deb", "--control", deb, control)
    assert (control / "conffiles").read_text().split() == [str(CONF)]
    files = run("dpkg-deb", "--contents", deb).stdout
    assert "__pycache__" not in files and ".pyc" not in files  # compiled by postinst
    for path in ("./usr/bin/segue -> ../lib/segue/bin/segue",
                 "./usr/bin/segued -> ../lib/segue/bin/segued", f".{UNIT}",
                 "./usr/lib/sysusers.d/segue.conf", "./usr/lib/tmpfiles.d/segue.conf"):
        assert path in files

    root = tmp_path / "root"
    run("dpkg-deb", "--extract", deb, root)
    # The conffile is the documented example, unchanged; no key file of any kind is shipped.
    assert (root / CONF.relative_to("/")).read_bytes() == \
        (REPO / "etc/segue/segued.toml").read_bytes()
    assert not (root / KEYS.relative_to("/")).exists()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                head = f.read(64)
            assert not (head.startswith(b"-----BEGIN") and b"PRIVATE" in head), path


def test_package_ships_man_pages_and_bash_completion(deb: Path, tmp_path: Path) -> None:
    """Generated at build time from the packaged commands (tests/test_cli_docs.py checks the
    generators): here, that the package installs them where man and bash-completion look."""
    root = tmp_path / "root"
    run("dpkg-deb", "--extract", deb, root)
    man = root / "usr/share/man/man1"
    segue_page = rendered(man / "segue.1.gz", tmp_path)
    for command in ("segue tracks remove", "segue keys rewrap", "segue catalogue publish"):
        assert f"\n   {command}\n" in segue_page
    assert f"segue {VERSION}" in segue_page
    assert "--workers N" in rendered(man / "segued.1.gz", tmp_path)
    completions = root / "usr/share/bash-completion/completions"
    assert (completions / "segued").resolve() == (completions / "segue").resolve()
    assert complete(completions / "segue", "segue tr") == ["tracks"]
    assert complete(completions / "segued", "segued --w") == ["--workers"]


def unit_service_section(path: Path) -> dict[str, list[str]]:
    """The [Service] settings of a unit file: each key's values, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Machine:
    """This machine, with the segue package installed by the test and removed after it."""

    def __init__(self, work: Path) -> None:
        self.work = work  # world-readable: the segue user reads the audio and the notify socket

    @property
    def user(self) -> pwd.struct_passwd:
        return pwd.getpwnam("segue")

    def as_segue(self, *cmd: str | os.PathLike[str]) -> subprocess.CompletedProcess:
        """A command as the sysadmin runs it for the node (docs/operations.md)."""
        return run("runuser", "-u", "segue", "--", *cmd, cwd="/")

    def unit_command(self, command: str, env: dict[str, str]) -> list[str]:
        """`command` (an Exec line of the unit) as systemd runs it, bar the namespaces."""
        unit = unit_service_section(UNIT)
        assert unit["NoNewPrivileges"] == ["yes"] and unit["MemoryDenyWriteExecute"] == ["yes"]
        for assignment in unit.get("Environment", []):
            key, _, value = assignment.partition("=")
            env[key] = value
        return ["/usr/bin/python3", "-c", MDWE, "setpriv", f"--reuid={unit['User'][0]}",
                f"--regid={unit['Group'][0]}", "--init-groups", "--no-new-privs",
                *shlex.split(command)]


@pytest.fixture
def machine() -> Iterator[Machine]:
    for command, package in [("apt-get", "apt"), ("dpkg-deb", "dpkg"),
                             ("systemd-analyze", "systemd"), ("systemd-sysusers", "systemd"),
                             ("systemd-tmpfiles", "systemd"), ("runuser", "util-linux"),
                             ("setpriv", "util-linux"), ("userdel", "passwd")]:
        require(command, package)
    if os.geteuid() != 0:
        pytest.fail("this test installs the segue package: run it as root (CI does, on a "
                    "throwaway machine)")
    if installed():
        pytest.fail("the segue package is installed on this machine; the test would purge it")
    there = [str(p) for p in (Path("/etc/segue"), STATE, CACHE) if p.exists()]
    if there:
        pytest.fail(f"{', '.join(there)} exist; the test would remove them: remove them first "
                    "(left by an interrupted run?)")
    user_existed = subprocess.run(["getent", "passwd", "segue"], capture_output=True,
                                  check=False).returncode == 0
    work = Path(tempfile.mkdtemp(prefix="segue-packaging-"))
    work.chmod(0o755)
    try:
        yield Machine(work)
    finally:
        if installed():
            apt_get("purge", "segue", check=False)
        if installed():  # half-installed: apt-get may refuse what dpkg does
            subprocess.run(["dpkg", "--purge", "--force-all", "segue"], capture_output=True,
                           check=False, stdin=subprocess.DEVNULL, timeout=300)
        for path in (Path("/etc/segue"), STATE, CACHE):
            shutil.rmtree(path, ignore_errors=True)
        if not user_existed:
            subprocess.run(["userdel", "segue"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def previous_build(deb: Path, out: Path) -> Path:
    """The same package, numbered as an earlier version: what an upgrade starts from."""
    tree = out / "previous"
    run("dpkg-deb", "--raw-extract", deb, tree)
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"Version: {VERSION}\n",
                                                   f"Version: {VERSION}~previous\n"))
    previous = out / f"segue_{VERSION}~previous_amd64.deb"
    run("dpkg-deb", "--root-owner-group", "--build", tree, previous)
    return previous


def mode_owner(path: Path) -> tuple[str, str, str]:
    st = path.stat()
    return (oct(st.st_mode & 0o7777), pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name)


def catalogued(track_id: str) -> bool:
    """Whether the node's catalogue (SQLite; its bytes change as its log is checkpointed) has
    the track."""
    with contextlib.closing(sqlite3.connect(STATE / "catalogue.sqlite")) as db:
        rows = db.execute("SELECT 1 FROM tracks WHERE track_id = ?", (track_id,)).fetchall()
    return bool(rows)


def test_install_configure_serve_upgrade_remove_purge(deb: Path, machine: Machine,
                                                      audio: dict[str, Path],
                                                      tmp_path: Path) -> None:
    started = time.monotonic()
    apt_get("install", previous_build(deb, tmp_path))

    # Installed: the user, its directories, the keys directory; the node neither enabled nor
    # started (docs/operations.md: the sysadmin enables it once /etc/segue is configured).
    assert machine.user.pw_dir == str(STATE)
    assert mode_owner(STATE) == ("0o750", "segue", "segue")
    assert mode_owner(STATE / "store") == ("0o750", "segue", "segue")
    assert mode_owner(CACHE) == ("0o750", "segue", "segue")
    assert mode_owner(KEYS) == ("0o750", "root", "segue")
    enabled = subprocess.run(["systemctl", "is-enabled", "segued.service"], capture_output=True,
                             text=True, check=False)
    assert enabled.stdout.strip() == "disabled", enabled

    verify = run("systemd-analyze", "verify", UNIT)
    assert verify.stdout == verify.stderr == "", verify
    security = run("systemd-analyze", "security", "--offline=true", UNIT).stdout
    score = re.search(r"Overall exposure level for segued\.service: ([0-9.]+)", security)
    assert score is not None and float(score.group(1)) <= 2.0, security

    # First configuration, as docs/operations.md tells it.
    for role, key_type in [("edge", "x25519"), ("edge", "rsa"), ("packager", "ed25519"),
                           ("auth", "ed25519")]:
        run("segue", "keys", "new", role, "--type", key_type,
            "--out", KEYS / f"{role}-{key_type}.pem")
    for key in KEYS.iterdir():
        os.chown(key, machine.user.pw_uid, machine.user.pw_gid)
    port = free_port()
    text = CONF.read_text()
    assert 'listen = "127.0.0.1:8480"' in text
    CONF.write_text(text.replace('listen = "127.0.0.1:8480"', f'listen = "127.0.0.1:{port}"'))
    edited = CONF.read_bytes()
    track = machine.work / "tone.mp3"
    shutil.copyfile(audio["mp3"], track)
    track.chmod(0o644)
    machine.as_segue("segue", "store", "mark", "--new", "--config", CONF)
    track_id = machine.as_segue("segue", "pack", "--config", CONF, track).stdout.split()[0]
    kept = {p: p.read_bytes() for p in [*KEYS.iterdir(), *(STATE / "store").rglob("*")]
            if p.is_file()}

    # Upgrade to the build under test: the edited conffile, the keys and the data stay.
    apt_get("install", deb)
    assert CONF.read_bytes() == edited
    assert not list(CONF.parent.glob("segued.toml.dpkg-*"))
    assert {p: p.read_bytes() for p in kept} == kept and catalogued(track_id)
    assert run("dpkg-query", "-W", "-f", "${Version}", "segue").stdout == VERSION

    # The unit's ExecStartPre and ExecStart, as its User, with a NOTIFY_SOCKET of the test's.
    unit = unit_service_section(UNIT)
    env = {"PATH": SERVICE_PATH, "STATE_DIRECTORY": str(STATE), "CACHE_DIRECTORY": str(CACHE)}
    (pre,) = unit["ExecStartPre"]
    check = run(*machine.unit_command(pre, dict(env)), cwd="/")
    assert check.stdout.strip() == f"{CONF}: OK"
    notify = NotifySocket(machine.work / "notify.sock")
    os.chown(notify.path, machine.user.pw_uid, machine.user.pw_gid)
    env["NOTIFY_SOCKET"] = str(notify.path)
    (start,) = unit["ExecStart"]
    command = machine.unit_command(start, env)
    with (tmp_path / "segued.log").open("wb") as log:
        proc = subprocess.Popen(command, env=env, cwd="/", stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    try:
        notify.wait_for("READY=1", timeout=30)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        assert uid is not None and {int(uid[1]), int(uid[2])} == {machine.user.pw_uid}
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        token = machine.as_segue("segue", "token", "--config", CONF, "--user", "alice")
        url = f"http://127.0.0.1:{port}/v1/tracks/{track_id}?token={token.stdout.strip()}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read() == track.read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=int(unit["TimeoutStopSec"][0])) == 0
        notify.wait_for("STOPPING=1")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        notify.close()
        print((tmp_path / "segued.log").read_text(errors="replace"))

    # Removal keeps the configuration; purge removes it and the cache, and keeps the keys, the
    # track store and catalogue, and the user that owns them (docs/operations.md, "Removal").
    apt_get("remove", "segue")
    assert CONF.read_bytes() == edited and not Path("/usr/lib/segue").exists()
    apt_get("purge", "segue")
    assert not installed()
    assert not CONF.exists() and not CACHE.exists() and not UNIT.exists()
    assert sorted(p.name for p in Path("/etc/segue").iterdir()) == ["keys"]
    assert {p: p.read_bytes() for p in kept} == kept and catalogued(track_id)
    assert machine.user.pw_name == "segue"
    print(f"install, configure, upgrade, serve, purge took {time.monotonic() - started:.0f} s")
