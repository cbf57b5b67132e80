"""/metrics as a sysadmin's Prometheus reads it, and the admin listener that can keep /metrics
and /v1/status off the players' address ([http] admin_listen)."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import segue
from conftest import SEGUE, Node, with_plugins
from conftest import fetch as get
from conftest import segue as run_segue

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
HEALTH_STATUSES = ("ok", "degraded", "failing", "inactive")


class Scrape:
    """One /metrics page: its families' types and its samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                self.types[name] = kind
            elif line and not line.startswith("#"):
                found = SAMPLE.match(line)
                assert found, f"not a sample line: {line!r}"
                name, labels, value = found.groups()
                self.samples.append((name, dict(LABEL.findall(labels or "")), float(value)))

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        for sample, found, value in self.samples:
            if sample == name and found == labels:
                return value
        return None

    def named(self, prefix: str) -> set[str]:
        return {name for name in self.types if name.startswith(prefix)}


def scrape(base: str) -> Scrape:
    status, body = get(base + "/metrics")
    assert status == 200, body
    return Scrape(body.decode())


def add_to(node: Node, section: str, lines: str) -> None:
    """Lines at the top of [section] of the node's configuration."""
    node.conf.write_text(node.conf.read_text().replace(f"[{section}]\n", f"[{section}]\n{lines}",
                                                       1))


def assert_conventions(page: Scrape) -> None:
    """What a Prometheus user expects of any exporter's page."""
    assert not [s for s in page.samples if s[0].endswith("_created")], "a _created series"
    counters = {name for name, kind in page.types.items() if kind == "counter"}
    assert counters and all(name.endswith("_total") for name in counters), counters
    for name, _, _ in page.samples:
        family = next((c for c in counters if name.startswith(c.removesuffix("_total"))), None)
        assert family is None or name == family, f"{name} of the counter {family}"


def test_metrics_follow_the_conventions_and_say_healthy_as_1(fresh_node: Node, plugin_path: str,
                                                             audio: dict[str, Path]) -> None:
    node = fresh_node
    (track,) = node.pack(audio["mp3"])
    node.conf.write_text(node.conf.read_text() + '\n[plugins.example]\nrecord = "calls.jsonl"\n')
    # f5 is installed and allowed but has no table: inactive.
    node.start(env={"PYTHONPATH": with_plugins(plugin_path), "SEGUE_PLUGINS_ALLOW": "example,f5"})
    token = node.token()
    assert get(node.url(track, token))[0] == 200
    assert get(node.url("0" * 32, token))[0] == 404
    assert get(node.base + "/no/such/thing")[0] == 404
    page = scrape(node.base)

    assert_conventions(page)
    assert page.value("segue_build_info", version=segue.__version__,
                      python=platform.python_version(),
                      plugin_api=str(segue.PLUGIN_API_VERSION)) == 1
    # Requests by route: the pattern that answered, never the path with its track id.
    tracks = "/v1/tracks/{track_id}"
    assert page.value("segue_http_requests_total", route=tracks, status="200") == 1
    assert page.value("segue_http_requests_total", route=tracks, status="404") == 1
    assert page.value("segue_http_requests_total", route="none", status="404") == 1
    assert page.value("segue_http_response_bytes_total", route=tracks,
                      status="200") == audio["mp3"].stat().st_size
    assert not [s for s in page.samples if track in json.dumps(s[1])]
    # Health gauges: 1 is up, or (one series per status) the status the plugin has.
    assert page.value("segue_share_up", share="local") == 1
    for plugin, status in (("example", "ok"), ("f5", "inactive")):
        for each in HEALTH_STATUSES:
            assert page.value("segue_plugin_health_status", plugin=plugin,
                              status=each) == float(each == status), (plugin, each)
    # A plugin without its table does nothing, so it has no series that could read "down".
    assert not page.named("segue_f5_")
    assert page.value("segue_example_hellos_total") == 0


def test_with_their_services_away_every_plugin_says_down_as_0(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "edge")
    secret = node.root / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    # Every built-in plugin with a table, every outside service on a port nobody listens on.
    node.conf.write_text(node.conf.read_text() + f"""
[plugins.f5]
management_url = "https://127.0.0.1:1"
username = "admin"
password_file = "{secret}"
pool = "edge_pool"

[plugins.gossip]
rpc_address = "127.0.0.1:1"
rpc_auth_file = "{secret}"
peer_listen = "127.0.0.1:0"

[plugins.nats]
servers = ["nats://127.0.0.1:1"]
user_key_file = "{secret}"

[plugins.mysql]
[[plugins.mysql.shards]]
name = "s0"
range = "-"
host = "127.0.0.1"
port = 1
user = "segue"
""")
    node.start()
    try:
        page = scrape(node.base)
        assert_conventions(page)
        for prefix in ("segue_f5_", "segue_gossip_", "segue_nats_", "segue_replication_"):
            assert page.named(prefix), f"no {prefix} metrics"
        assert page.value("segue_gossip_agent_up") == 0
        assert page.value("segue_nats_connected") == 0
        for plugin in ("gossip", "nats", "mysql"):
            assert page.value("segue_plugin_health_status", plugin=plugin, status="ok") == 0
            assert page.value("segue_plugin_health_status", plugin=plugin,
                              status="degraded") == 1
    finally:
        node.stop()


def admin_base(node: Node) -> str:
    return "http://" + node.wait_for_event("listening")["admin_addresses"][0]


def test_the_admin_listener_takes_metrics_and_status_off_the_players_address(
        fresh_node: Node, plugin_path: str, audio: dict[str, Path]) -> None:
    node = fresh_node
    (track,) = node.pack(audio["mp3"])
    add_to(node, "http", 'admin_listen = "127.0.0.1:0"\n')
    node.conf.write_text(node.conf.read_text() + '\n[plugins.example]\n')
    plugins = {"PYTHONPATH": with_plugins(plugin_path), "SEGUE_PLUGINS_ALLOW": "example"}
    node.start(env=plugins)
    admin = admin_base(node)
    assert admin != node.base
    for path in ("/metrics", "/v1/status"):
        assert get(node.base + path)[0] == 404
        assert get(admin + path)[0] == 200
    assert get(node.base + "/healthz") == get(admin + "/healthz") == (200, b"ok\n")
    assert get(node.url(track, node.token()))[0] == 200
    assert get(admin + f"/v1/tracks/{track}?token={node.token()}")[0] == 404  # players' only
    assert json.loads(get(admin + "/v1/status")[1])["state"] == "ready"
    page = scrape(admin)
    assert page.value("segue_http_requests_total", route="/metrics", status="404") is None
    assert page.value("segue_http_requests_total", route="none", status="404") == 3
    # `segue plugins` asks the admin listener for live health.
    text = re.sub(r'^listen = .*$', f'listen = "{node.base[7:]}"', node.conf.read_text(),
                  flags=re.M)
    node.conf.write_text(re.sub(r'^admin_listen = .*$', f'admin_listen = "{admin[7:]}"', text,
                                flags=re.M))
    listed = run_segue("plugins", "--json", "--config", node.conf, env={**os.environ, **plugins})
    (example,) = json.loads(listed.stdout)["plugins"]
    assert example["health"]["status"] == "ok"  # live: "not running" if nobody answered


def test_an_admin_listener_on_the_players_port_is_refused_naming_the_key(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "edge")
    node.conf.write_text(node.conf.read_text().replace('listen = "127.0.0.1:0"',
                                                       'listen = "0.0.0.0:8480"', 1))
    for value, says in (('"127.0.0.1:8480"', "takes the port of http.listen"),
                        ('"localhost"', "is not HOST:PORT"), ("8481", "expected HOST:PORT")):
        text = node.conf.read_text()
        add_to(node, "http", f"admin_listen = {value}\n")
        checked = run_segue("check-config", "--config", node.conf, check=False)
        assert checked.returncode == 2
        assert f"{node.conf}: http.admin_listen: " in checked.stdout + checked.stderr
        assert says in checked.stdout + checked.stderr
        node.conf.write_text(text)


def test_with_workers_the_admin_listener_counts_every_process(tmp_path: Path,
                                                              audio: dict[str, Path]) -> None:
    node = Node.init(tmp_path / "edge")
    (track,) = node.pack(audio["mp3"])
    add_to(node, "http", 'workers = 3\nadmin_listen = "127.0.0.1:0"\n')
    node.start()
    try:
        deadline = time.monotonic() + 15
        while len(node.log_events_named("listening")) < 3:
            assert time.monotonic() < deadline, node.log_text()
            time.sleep(0.05)
        admin = admin_base(node)
        token = node.token()
        for _ in range(30):  # a connection each: the kernel picks a process per connection
            assert get(node.url(track, token))[0] == 200
            assert get(node.base + "/metrics")[0] == 404
        served_by = {e.get("worker", 0) for e in node.log_events_named("request")
                     if e.get("path", "").startswith("/v1/tracks/")}
        assert len(served_by) >= 2, served_by
        # Only the main process listens there: no worker's own listening line names it.
        assert all(not e["admin_addresses"] for e in node.log_events_named("listening")
                   if "worker" in e)
        page = scrape(admin)
        assert page.value("segue_http_requests_total", route="/v1/tracks/{track_id}",
                          status="200") == 30
        assert page.value("segue_http_requests_total", route="none", status="404") == 30
        assert page.value("segue_build_info", version=segue.__version__,
                          python=platform.python_version(),
                          plugin_api=str(segue.PLUGIN_API_VERSION)) == 1
    finally:
        node.stop()


def test_segued_names_an_admin_address_already_taken(tmp_path: Path, taken_port: int) -> None:
    node = Node.init(tmp_path / "edge")
    add_to(node, "http", f'admin_listen = "127.0.0.1:{taken_port}"\n')
    done = subprocess.run([*SEGUE, "run", "--config", str(node.conf)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert (f"cannot listen on 127.0.0.1:{taken_port} ([http] admin_listen in {node.conf})"
            in done.stderr), done.stderr
