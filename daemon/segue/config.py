"""Configuration: a TOML file turned into frozen, validated settings.

Every error names the file, the key and how to fix it; all errors are collected so that
`segue check-config` can list them at once. Relative paths are relative to the config file.
The keys, their types and defaults live in one table (`SCHEMA`); etc/segue/segued.toml
documents each of them.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from segue.seal.chunks import DEFAULT_CHUNK_SIZE

DEFAULT_LISTEN = "127.0.0.1:8480"


class ConfigError(Exception):
    """One or more configuration errors, each a full sentence naming file and key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return format_address((self.host, self.port))


def format_address(address: tuple[str, int]) -> str:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:8480)."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str) -> Listen:
    """Parse HOST:PORT (or [IPv6]:PORT); raises ValueError with a fix-it message."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:8480)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 0-65535")
    return Listen(host, port)


# section -> key -> (type, default). A default of None means "not set".
# Types: "str", "int", "float", "bool", "strs", "path", "paths", "listen", "shares", "origins",
# "networks".
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "node": {
        "id": ("str", None),
        "drain_timeout_s": ("float", 30.0),
    },
    "http": {
        "listen": ("listen", DEFAULT_LISTEN),
        "max_header_bytes": ("int", 16 * 1024),
        "max_body_bytes": ("int", 64 * 1024),
        "header_timeout_s": ("float", 10.0),
        "idle_timeout_s": ("float", 60.0),
        "send_timeout_s": ("float", 60.0),
        "max_connections": ("int", 10_000),
        "max_connections_per_client": ("int", 0),
        "workers": ("int", 1),
        "tls_certificate": ("path", None),
        "tls_key": ("path", None),
        "cors_origins": ("origins", []),
        "trusted_proxies": ("networks", []),
        "admin_listen": ("listen", None),
    },
    "seal": {
        "edge_keys": ("paths", []),
        "trusted_packagers": ("paths", []),
    },
    "packer": {
        "signing_key": ("path", None),
        "recipients": ("paths", []),
        "chunk_size": ("int", DEFAULT_CHUNK_SIZE),
    },
    "auth": {
        "signing_key": ("path", None),
        "public_keys": ("paths", []),
        "jwks": ("path", None),
        "audience": ("str", "segue"),
        "issuer": ("str", None),
        "leeway_s": ("float", 30.0),
        "default_ttl_s": ("int", 3600),
        "require_scope": ("bool", False),
    },
    "store": {
        "path": ("path", "store"),
        "shares": ("shares", []),
        "replicas": ("int", 2),
        "read_timeout_s": ("float", 10.0),
    },
    "catalogue": {"path": ("path", "catalogue.sqlite")},
    "cache": {
        "bytes": ("int", 256 * 1024 * 1024),
        "read_ahead_chunks": ("int", 2),
    },
    "limits": {
        "worker_threads": ("int", 8),
        "open_tracks": ("int", 1024),
    },
    "log": {"format": ("str", "auto"), "level": ("str", "info"),
            "user_hash_salt_file": ("path", None)},
    "sessions": {
        "path": ("path", "sessions.sqlite"),
        "ticket_key": ("path", "session-ticket.key"),
        "device_timeout_s": ("float", 120.0),
        "commands_per_s": ("float", 20.0),
        "command_burst": ("int", 40),
        "heartbeat_s": ("float", 15.0),
        "max_subscribers": ("int", 20_000),
    },
    "plugin_host": {
        "allow": ("strs", []),
        "deny": ("strs", []),
        "optional": ("strs", []),
        "trace": ("bool", False),
        "hook_timeout_s": ("float", 10.0),
        "health_interval_s": ("float", 5.0),
    },
}
_CHOICES = {
    ("log", "format"): ("auto", "json", "console", "journald"),
    ("log", "level"): ("debug", "info", "warning", "error"),
}
_POSITIVE = {
    ("sessions", "device_timeout_s"),
    ("sessions", "commands_per_s"),
    ("sessions", "command_burst"),
    ("sessions", "heartbeat_s"),
    ("sessions", "max_subscribers"),
    ("node", "drain_timeout_s"),
    ("plugin_host", "hook_timeout_s"),
    ("plugin_host", "health_interval_s"),
    ("http", "max_header_bytes"),
    ("http", "max_body_bytes"),
    ("http", "header_timeout_s"),
    ("http", "idle_timeout_s"),
    ("http", "send_timeout_s"),
    ("http", "max_connections"),
    ("http", "workers"),
    ("packer", "chunk_size"),
    ("store", "replicas"),
    ("store", "read_timeout_s"),
    ("auth", "default_ttl_s"),
    ("limits", "worker_threads"),
    ("limits", "open_tracks"),
}


@dataclass(frozen=True)
class HttpSettings:
    listen: Listen
    max_header_bytes: int
    max_body_bytes: int
    header_timeout_s: float
    idle_timeout_s: float
    send_timeout_s: float
    max_connections: int
    max_connections_per_client: int
    workers: int
    tls_certificate: Path | None
    tls_key: Path | None
    cors_origins: tuple[str, ...]
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...]
    admin_listen: Listen | None = None


@dataclass(frozen=True)
class ShareSettings:
    """One [[store.shares]] entry: a local path (or CIFS mount) or an smb:// URL."""

    name: str
    url: str
    password_file: Path | None
    encrypt: bool
    require_signing: bool

    @property
    def is_smb(self) -> bool:
        return self.url.startswith("smb://")


@dataclass(frozen=True)
class StoreSettings:
    path: Path
    shares: tuple[ShareSettings, ...]
    replicas: int
    read_timeout_s: float


@dataclass(frozen=True)
class SealSettings:
    edge_keys: tuple[Path, ...]
    trusted_packagers: tuple[Path, ...]


@dataclass(frozen=True)
class PackerSettings:
    signing_key: Path | None
    recipients: tuple[Path, ...]
    chunk_size: int


@dataclass(frozen=True)
class AuthSettings:
    signing_key: Path | None
    public_keys: tuple[Path, ...]
    jwks: Path | None
    audience: str
    issuer: str | None
    leeway_s: float
    default_ttl_s: int
    require_scope: bool


@dataclass(frozen=True)
class CacheSettings:
    bytes: int
    read_ahead_chunks: int


@dataclass(frozen=True)
class LimitSettings:
    worker_threads: int
    open_tracks: int


@dataclass(frozen=True)
class LogSettings:
    format: str
    level: str
    user_hash_salt_file: Path | None


@dataclass(frozen=True)
class PluginHostSettings:
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    optional: tuple[str, ...]
    trace: bool
    hook_timeout_s: float
    health_interval_s: float


@dataclass(frozen=True)
class SessionSettings:
    path: Path
    ticket_key: Path
    device_timeout_s: float
    commands_per_s: float
    command_burst: int
    heartbeat_s: float
    max_subscribers: int


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration of one node."""

    path: Path
    node_id: str
    drain_timeout_s: float
    http: HttpSettings
    seal: SealSettings
    packer: PackerSettings
    auth: AuthSettings
    store: StoreSettings
    catalogue_path: Path
    cache: CacheSettings
    limits: LimitSettings
    log: LogSettings
    plugin_host: PluginHostSettings
    sessions: SessionSettings
    plugins: dict[str, Any] = field(default_factory=dict)


def load(path: Path, *, listen: str | None = None, workers: int | None = None) -> Settings:
    """Read and validate the TOML file at `path`; `listen` and `workers` override [http]."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file; create one with `segue init DIR`"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    if listen is not None:
        raw.setdefault("http", {})["listen"] = listen
    if workers is not None:
        raw.setdefault("http", {})["workers"] = workers
    return from_mapping(raw, path)


def from_mapping(raw: dict[str, Any], path: Path) -> Settings:
    """Validate an already-parsed TOML document that was read from `path`."""
    errors: list[str] = []
    base = path.parent
    values: dict[tuple[str, str], Any] = {}
    for section, value in raw.items():
        if section == "plugins":
            if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
                errors.append(f"{path}: [plugins] must hold only [plugins.NAME] tables")
            continue
        if section not in SCHEMA:
            errors.append(f"{path}: unknown section [{section}]{_suggest(section, SCHEMA)}")
            continue
        if not isinstance(value, dict):
            errors.append(f"{path}: {section} must be a table ([{section}])")
            continue
        for key, item in value.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                errors.append(
                    f"{path}: unknown key {section}.{key}{_suggest(key, SCHEMA[section])}"
                )
                continue
            try:
                values[section, key] = _coerce(section, key, spec[0], item, base)
            except ValueError as e:
                errors.append(f"{path}: {section}.{key}: {e}")
    for section, keys in SCHEMA.items():
        for key, (kind, default) in keys.items():
            if (section, key) not in values:
                values[section, key] = (
                    default if default is None else _coerce(section, key, kind, default, base)
                )
    errors += _conflicts(values, path)
    if errors:
        raise ConfigError(errors)

    def sect(name: str) -> dict[str, Any]:
        return {k: values[name, k] for k in SCHEMA[name]}

    return Settings(
        path=path,
        node_id=values["node", "id"] or socket.gethostname(),
        drain_timeout_s=values["node", "drain_timeout_s"],
        http=HttpSettings(**sect("http")),
        seal=SealSettings(**sect("seal")),
        packer=PackerSettings(**sect("packer")),
        auth=AuthSettings(**sect("auth")),
        store=StoreSettings(**sect("store")),
        catalogue_path=values["catalogue", "path"],
        cache=CacheSettings(**sect("cache")),
        limits=LimitSettings(**sect("limits")),
        log=LogSettings(**sect("log")),
        plugin_host=PluginHostSettings(**sect("plugin_host")),
        sessions=SessionSettings(**sect("sessions")),
        plugins=dict(raw.get("plugins", {})),
    )


def _conflicts(values: dict[tuple[str, str], Any], path: Path) -> list[str]:
    """Errors of keys that are valid alone and wrong together."""
    listen, admin = values["http", "listen"], values["http", "admin_listen"]
    if admin is None or admin.port == 0 or admin.port != listen.port:
        return []
    wildcards = ("", "0.0.0.0", "::")  # noqa: S104 - what a listen address may say
    if admin.host == listen.host or admin.host in wildcards or listen.host in wildcards:
        return [f"{path}: http.admin_listen: {admin} takes the port of http.listen "
                f"({listen}); give the admin listener its own port (for example "
                f"127.0.0.1:8481), or leave it out"]
    return []


_SHARE_KEYS = {"name", "url", "password_file", "encrypt", "require_signing"}
_SHARE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _shares(value: Any, base: Path) -> tuple[ShareSettings, ...]:
    """Validate [[store.shares]]: each needs a unique name and a url (a path or smb://)."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("expected [[store.shares]] tables")
    shares = []
    for i, table in enumerate(value):
        where = f"[[store.shares]] #{i + 1}"
        unknown = set(table) - _SHARE_KEYS
        if unknown:
            key = sorted(unknown)[0]
            hint = _suggest(key, dict.fromkeys(_SHARE_KEYS))
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
        name, url = table.get("name"), table.get("url")
        if not isinstance(name, str) or not _SHARE_NAME.fullmatch(name):
            raise ValueError(f"{where}: name must be 1-32 of a-z 0-9 _ -, got {name!r}")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where} ({name}): url is required: a path or smb://USER@HOST/SHARE")
        for flag in ("encrypt", "require_signing"):
            if flag in table and not isinstance(table[flag], bool):
                raise ValueError(f"{where} ({name}): {flag} must be true or false")
        if url.startswith("smb://"):
            if "password_file" not in table:
                raise ValueError(f"{where} ({name}): an smb:// share needs password_file")
        else:
            url = str(resolve_path(url, base))
        password = table.get("password_file")
        shares.append(ShareSettings(
            name=name,
            url=url,
            password_file=None if password is None else resolve_path(password, base),
            encrypt=table.get("encrypt", False),
            require_signing=table.get("require_signing", True),
        ))
    names = [s.name for s in shares]
    if len(set(names)) != len(names):
        raise ValueError(f"share names must be unique, got {', '.join(names)}")
    return tuple(shares)


def _origins(value: Any) -> tuple[str, ...]:
    """[http] cors_origins: web origins as browsers send them (scheme://host[:port], lower
    case, no path), or ["*"] alone for any origin."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of origins such as [\"https://player.example.net\"], "
                         f"got {value!r}")
    if "*" in value and value != ["*"]:
        raise ValueError('"*" (any origin) stands alone: ["*"], or list the origins')
    for origin in value:
        canonical = origin if origin == "*" else _origin_form(origin)
        if canonical != origin:
            fix = f"; write {canonical!r}" if canonical else ""
            raise ValueError(f"{origin!r} is not an origin: http(s)://HOST[:PORT] as a browser "
                             f"sends it (lower case, no default port, no path){fix}")
    return tuple(value)


def _origin_form(text: str) -> str | None:
    """`text` written as a browser's Origin header would write it; None if it is no http(s)
    URL with a host."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or parts.username is not None:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def _networks(value: Any) -> tuple[IPv4Network | IPv6Network, ...]:
    """[http] trusted_proxies: addresses or CIDR networks, IPv4 or IPv6."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of addresses or networks such as ["10.0.0.0/8", '
                         f'"127.0.0.1"], got {value!r}')
    networks = []
    for text in value:
        try:
            networks.append(ip_network(text))
        except ValueError as e:
            try:
                fix = f"; write {str(ip_network(text, strict=False))!r}"
            except ValueError:
                fix = ""
            raise ValueError(f"{text!r} is not an IP address or network ({e}){fix}") from None
    return tuple(networks)


CREDENTIAL_PREFIX = "credential:"


def resolve_path(value: Any, base: Path) -> Path:
    """A configured file path: relative to the config file's folder, or `credential:NAME`.

    `credential:NAME` names a file that systemd passed with LoadCredential= (or
    LoadCredentialEncrypted=): $CREDENTIALS_DIRECTORY/NAME. Plugins use this for their secrets
    too. Raises ValueError for a value that is not a path.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {value!r}")
    if value.startswith(CREDENTIAL_PREFIX):
        name = value[len(CREDENTIAL_PREFIX):]
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not name or "/" in name:
            raise ValueError(f"{value!r}: a credential name is one file name")
        if not directory:
            # Not an error yet: only the commands that read this file need it (`segue token`
            # does not need the edge keys). The path says what is missing when one does.
            return Path("/CREDENTIALS_DIRECTORY-is-not-set") / name
        return Path(directory) / name
    return (base / value).resolve() if not Path(value).is_absolute() else Path(value)


def _suggest(name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}"


def _coerce(section: str, key: str, kind: str, value: Any, base: Path) -> Any:
    """Check one value against its declared type and return it in its settings form."""
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        choices = _CHOICES.get((section, key))
        if choices and value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    if kind in ("int", "float"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, int | float)
        if not ok or isinstance(value, bool):
            expected = "an integer" if kind == "int" else "a number"
            raise ValueError(f"expected {expected}, got {value!r}")
        if (section, key) in _POSITIVE and value <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return value if kind == "int" else float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if kind == "strs":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    if kind == "path":
        return resolve_path(value, base)
    if kind == "paths":
        if not isinstance(value, list):
            raise ValueError(f"expected a list of file paths, got {value!r}")
        return tuple(_coerce(section, key, "path", v, base) for v in value)
    if kind == "shares":
        return _shares(value, base)
    if kind == "origins":
        return _origins(value)
    if kind == "networks":
        return _networks(value)
    if kind == "listen":
        if not isinstance(value, str):
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return parse_listen(value)
    raise AssertionError(f"unknown schema type {kind}")
