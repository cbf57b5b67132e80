"""The house rules that keep the core readable top-down, checked on the source.

The core never imports a plugin; the rooms below the node (crypto, storage, HTTP and the leaf
modules they share) never import the configuration, the node or the plugin host: they take
plain values, so each can be read and tested on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "daemon" / "segue"
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())
BELOW_THE_NODE = [
    *sorted((CORE / "seal").glob("*.py")),
    *sorted((CORE / "storage").glob("*.py")),
    *sorted((CORE / "http").glob("*.py")),
    *sorted((CORE / "sessions").glob("*.py")),
    *(CORE / name for name in ("health.py", "lifecycle.py", "threads.py", "api.py",
                               "catalogue.py", "metrics.py")),
]
NODE_LEVEL = ("segue.config", "segue.node", "segue.plugin_host", "segue.wiring",
              "segue.workers", "segue.cli")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_plugins_are_found() -> None:
    assert {"segue_f5", "segue_haproxy", "segue_mysql"} <= set(PLUGINS)


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_the_core_never_imports_a_plugin(path: Path) -> None:
    found = {m for m in imported_modules(path) if m.split(".")[0] in PLUGINS}
    assert not found, f"{path.relative_to(ROOT)} imports the plugin(s) {sorted(found)}"


@pytest.mark.parametrize("path", BELOW_THE_NODE, ids=lambda p: str(p.relative_to(CORE)))
def test_rooms_below_the_node_take_values_not_the_configuration(path: Path) -> None:
    assert path.exists(), f"{path} is gone: update BELOW_THE_NODE"
    found = {m for m in imported_modules(path)
             if any(m == top or m.startswith(top + ".") for top in NODE_LEVEL)}
    assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_built_in_plugins_use_only_the_public_api(plugin: str) -> None:
    import segue

    public = {"segue"} | {f"segue.{name}" for name in segue.__all__}
    for path in sorted((ROOT / "plugins" / plugin).glob("*.py")):
        private = {m for m in imported_modules(path)
                   if m.split(".")[0] == "segue" and m not in public}
        assert not private, f"{path.relative_to(ROOT)} imports {sorted(private)}"
