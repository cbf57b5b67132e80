"""The plugin API as a plugin author meets it, through a third-party plugin installed with pip."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import segue
from conftest import SEGUE, Node, with_plugins
from segue import config, hookspecs
from segue.plugin_host import PluginHost

ALL_HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("segue_"))
DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"


def with_example(node: Node, **table: object) -> None:
    lines = ["", "[plugins.example]", 'record = "calls.jsonl"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    node.conf.write_text(node.conf.read_text() + "\n".join(lines) + "\n")


def env(plugin_path: str, allow: str = "example", **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": with_plugins(plugin_path), "SEGUE_PLUGINS_ALLOW": allow, **extra}


def calls(node: Node) -> list[dict]:
    path = node.root / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_segue(*args: str, plugin_path: str, allow: str = "example",
              **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SEGUE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env(plugin_path, allow, **extra)})


def test_every_hook_fires_in_the_documented_order(fresh_node: Node, plugin_path: str) -> None:
    with_example(fresh_node)
    fresh_node.start(env=env(plugin_path))
    assert get(fresh_node.base + "/example/hello")[0] == 200
    wait_for(lambda: any(c["hook"] == "service_started" for c in calls(fresh_node)))
    fresh_node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(c["hook"] == "segue_reload" for c in calls(fresh_node)))
    assert fresh_node.stop() == 0
    order = [c["hook"] for c in calls(fresh_node) if c["hook"] != "service_started"]
    firsts = list(dict.fromkeys(order))
    assert firsts == ["segue_configure", "segue_metrics", "segue_startup", "segue_routes",
                      "segue_ready", "segue_services", "segue_health", "segue_reload",
                      "segue_drain", "segue_stop"], order
    # On reload the plugin gets its table again before segue_reload.
    reload_at = order.index("segue_reload")
    assert order[reload_at - 1] == "segue_configure"
    states = {c["hook"]: c.get("state") for c in calls(fresh_node)}
    assert states["segue_startup"] == "starting"
    assert states["segue_ready"] == "starting"  # READY=1 comes after every ready hook
    assert states["segue_drain"] == "draining"
    assert states["segue_stop"] == "stopping"
    ready = next(c for c in calls(fresh_node) if c["hook"] == "segue_ready")
    assert ready["addresses"] and ready["addresses"][0][1] > 0


def test_routes_metrics_and_status_of_a_plugin(fresh_node: Node, plugin_path: str) -> None:
    with_example(fresh_node)
    fresh_node.start(env=env(plugin_path))
    status, body = get(fresh_node.base + "/example/hello")
    assert status == 200 and body.startswith(b"hello from ")
    assert b"segue_example_hellos_total 1.0" in get(fresh_node.base + "/metrics")[1]
    doc = json.loads(get(fresh_node.base + "/v1/status")[1])
    (plugin,) = doc["plugins"]
    assert (plugin["name"], plugin["version"], plugin["distribution"]) == (
        "example", "1.2.3", "segue-example")
    assert plugin["hooks"] == ALL_HOOKS
    assert plugin["health"] == {"status": "ok", "reason": ""}
    assert plugin["status"] == {"hellos": 1, "plays": {}}  # segue_status: public facts
    # `segue plugins` asks the node listening at the configured address for live health.
    fresh_node.conf.write_text(fresh_node.conf.read_text().replace(
        'listen = "127.0.0.1:0"', f'listen = "{fresh_node.base.removeprefix("http://")}"'))
    listed = run_segue("plugins", "--json", "--config", str(fresh_node.conf),
                       plugin_path=plugin_path)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)["plugins"]
    assert entry["hooks"] == ALL_HOOKS and entry["health"]["status"] == "ok"
    text = run_segue("plugins", "--config", str(fresh_node.conf), plugin_path=plugin_path)
    assert "example 1.2.3 [segue-example]: ok" in text.stdout


def test_a_failing_health_makes_healthz_503_with_the_plugin_named(fresh_node: Node,
                                                                  plugin_path: str) -> None:
    with_example(fresh_node, health="failing", reason="pool unreachable")
    fresh_node.start(env=env(plugin_path), wait=False)
    fresh_node.base = "http://" + fresh_node.wait_for_event("listening")["addresses"][0]
    # /healthz answers anyone: the plugin's own reason goes to the log alone.
    assert get(fresh_node.base + "/healthz") == (503, b"failing: plugin example failing\n")
    assert "example: pool unreachable" in fresh_node.wait_for_event("health")["detail"]


def test_a_plugin_raising_in_health_is_reported_and_the_node_serves(fresh_node: Node,
                                                                    plugin_path: str) -> None:
    with_example(fresh_node, raise_in=["segue_health"])
    fresh_node.start(env=env(plugin_path))
    status, body = get(fresh_node.base + "/healthz")
    assert status == 200
    assert body == b"degraded: plugin example degraded\n"
    health = json.loads(get(fresh_node.base + "/v1/status")[1])["plugins"][0]["health"]
    assert health["status"] == "degraded"
    assert any(e.get("event") == "plugin hook failed" and e.get("plugin") == "example"
               and e.get("hook") == "segue_health" for e in fresh_node.log_events())


def test_a_plugin_raising_in_drain_is_logged_and_the_node_stops_cleanly(
        fresh_node: Node, plugin_path: str) -> None:
    with_example(fresh_node, raise_in=["segue_drain"])
    fresh_node.start(env=env(plugin_path))
    assert fresh_node.stop() == 0
    assert any(e.get("event") == "plugin hook failed" and e.get("hook") == "segue_drain"
               and e.get("plugin") == "example" for e in fresh_node.log_events())
    assert "segue_stop" in [c["hook"] for c in calls(fresh_node)]


def test_a_plugin_raising_in_startup_stops_the_node_naming_it(fresh_node: Node,
                                                              plugin_path: str) -> None:
    with_example(fresh_node, raise_in=["segue_startup"])
    result = run_segue("run", "--config", str(fresh_node.conf), plugin_path=plugin_path)
    assert result.returncode == 1
    assert "plugin 'example' failed to start" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_optional_plugin_raising_in_startup_is_disabled(fresh_node: Node,
                                                           plugin_path: str) -> None:
    with_example(fresh_node, raise_in=["segue_startup"])
    fresh_node.conf.write_text(fresh_node.conf.read_text()
                               + '\n[plugin_host]\noptional = ["example"]\n')
    fresh_node.start(env=env(plugin_path))
    assert get(fresh_node.base + "/healthz")[0] == 200
    assert json.loads(get(fresh_node.base + "/v1/status")[1])["plugins"] == []
    assert get(fresh_node.base + "/example/hello")[0] == 404


def test_a_plugin_that_fails_to_import_gives_exit_2_and_one_line(fresh_node: Node,
                                                                 plugin_path: str) -> None:
    result = run_segue("run", "--config", str(fresh_node.conf), plugin_path=plugin_path,
                       allow="broken")
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("segue:")]
    assert re.match(r"segue: plugin 'broken' cannot be imported \(segue_example\.broken\): "
                    r"ModuleNotFoundError", line), line


def test_a_plugin_refusing_its_config_gives_exit_2_naming_table_and_key(
        fresh_node: Node, plugin_path: str) -> None:
    with_example(fresh_node, colour="blue")
    result = run_segue("check-config", "--config", str(fresh_node.conf), plugin_path=plugin_path)
    assert result.returncode == 2
    assert f"{fresh_node.conf}: [plugins.example] unknown key 'colour'" in result.stderr


def test_a_table_for_a_plugin_that_is_not_installed_is_an_error(fresh_node: Node,
                                                                plugin_path: str) -> None:
    fresh_node.conf.write_text(fresh_node.conf.read_text() + "\n[plugins.exampel]\n")
    result = run_segue("check-config", "--config", str(fresh_node.conf), plugin_path=plugin_path)
    assert result.returncode == 2
    assert "did you mean [plugins.example]?" in result.stderr


def test_deny_list_and_tracing(fresh_node: Node, plugin_path: str) -> None:
    listed = run_segue("plugins", "--json", plugin_path=plugin_path, allow="",
                       SEGUE_PLUGINS_DENY="example,broken")
    names = {p["name"] for p in json.loads(listed.stdout)["plugins"]}
    assert not names & {"example", "broken"}
    with_example(fresh_node)
    fresh_node.start(env=env(plugin_path, SEGUE_TRACE_PLUGINS="1"))
    traced = [e for e in fresh_node.log_events() if e.get("event") in ("hook called",
                                                                       "hook awaited")]
    assert {e["hook"] for e in traced} >= {"segue_configure", "segue_startup", "segue_ready"}
    assert all(e["plugin"] == "example" and e["duration_ms"] >= 0 for e in traced)


def test_every_hook_is_documented_for_plugin_authors() -> None:
    text = DOCS.read_text()
    for hook in ALL_HOOKS:
        arguments = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        heading = f"### `{hook}({', '.join(arguments)})`"
        assert heading in text, f"docs/plugins.md has no section {heading!r}"
        section = text.split(heading, 1)[1].split("\n### ", 1)[0]
        assert "```python" in section and "@segue.hookimpl" in section, f"{hook}: no example"
        spec_doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
        for argument in arguments:
            assert f"`{argument}`" in section, f"{hook}: argument {argument} is not explained"
            assert f":param {argument}:" in spec_doc or argument == "node", (
                f"{hook}: the hookspec's docstring does not explain {argument}")


class TryFirstPlugin:
    """A plugin asking for an order the host does not give."""

    @segue.hookimpl(tryfirst=True)
    def segue_ready(self, node: segue.NodeView) -> None:
        pass


def test_a_hookimpl_option_the_host_cannot_honour_is_refused_at_load(tmp_path: Path) -> None:
    settings = config.from_mapping({}, tmp_path / "segued.toml")
    entry = importlib.metadata.EntryPoint("tryfirst", "test_plugins:TryFirstPlugin",
                                          "segue.plugins")
    with pytest.raises(config.ConfigError) as refused:
        PluginHost.load(settings, [entry])
    (line,) = refused.value.errors
    assert "'tryfirst'" in line and "segue_ready uses tryfirst" in line


def test_a_plugin_without_its_table_is_inactive_not_ok(fresh_node: Node,
                                                        plugin_path: str) -> None:
    with_example(fresh_node)  # the example has its table; the built-in ones have none here
    fresh_node.start(env=env(plugin_path, allow="example,haproxy,gossip"))
    doc = json.loads(get(fresh_node.base + "/v1/status")[1])
    states = {p["name"]: (p["active"], p["health"]["status"]) for p in doc["plugins"]}
    assert states == {"example": (True, "ok"), "gossip": (False, "inactive"),
                      "haproxy": (False, "inactive")}
    listed = run_segue("plugins", "--config", str(fresh_node.conf), plugin_path=plugin_path,
                       allow="example,haproxy")
    assert "haproxy" in listed.stdout and ": inactive" in listed.stdout
