"""A fake F5 BIG-IP iControl REST server for the tests (standard library only).

It reproduces the documented behaviour a pool-member client meets: token login with the
per-user cap and lifetime rules, `~Partition~name` paths, F5 error bodies, the difference between
the written and the read-back member state, stats in the `entries -> nestedStats` shape, HTTP
monitors, and injected faults (Jetty HTML 5xx, delays, dropped connections, a dead listener).

Simplifications: the monitor always says "up"; a pool's `monitor` reads back with F5's trailing
space ("/Common/segue_health "); `curSessions` follows `serverside.curConns`; no transactions,
config-sync or AS3. Requests are handled in order received, one lock around all state.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import secrets
import socket
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

VERSION = "17.1.2"
HOST_LINK = "https://localhost"
DEFAULT_TOKEN_TIMEOUT = 1200
MAX_TOKEN_TIMEOUT = 36000
MAX_TOKENS_PER_USER = 100
UNCAPPED_USERS = frozenset({"admin"})
WRITABLE_SESSION = ("user-enabled", "user-disabled")
WRITABLE_STATE = ("user-up", "user-down")
BUILTIN_MONITORS = frozenset({
    "/Common/http", "/Common/https", "/Common/http_head_f5", "/Common/https_head_f5",
    "/Common/tcp", "/Common/tcp_half_open", "/Common/gateway_icmp", "/Common/icmp",
})
# Member properties: settable at create and modify / only at create / identity (ignored).
MEMBER_MUTABLE = frozenset({
    "session", "state", "description", "connectionLimit", "dynamicRatio", "inheritProfile",
    "logging", "monitor", "priorityGroup", "rateLimit", "ratio", "appService", "metadata",
    "profiles",
})
MEMBER_CREATE_ONLY = frozenset({"address", "ephemeral", "fqdn"})
IDENTITY = frozenset({"name", "partition", "fullPath", "kind", "selfLink", "generation",
                      "subPath"})
MEMBER_DEFAULTS: dict[str, Any] = {
    "connectionLimit": 0, "dynamicRatio": 1, "ephemeral": "false",
    "fqdn": {"autopopulate": "disabled"}, "inheritProfile": "enabled", "logging": "disabled",
    "monitor": "default", "priorityGroup": 0, "rateLimit": "disabled", "ratio": 1,
}
POOL_DEFAULTS: dict[str, Any] = {
    "allowNat": "yes", "allowSnat": "yes", "ignorePersistedWeight": "disabled",
    "ipTosToClient": "pass-through", "ipTosToServer": "pass-through",
    "linkQosToClient": "pass-through", "linkQosToServer": "pass-through",
    "loadBalancingMode": "round-robin", "minActiveMembers": 0, "minUpMembers": 0,
    "minUpMembersAction": "failover", "minUpMembersChecking": "disabled", "queueDepthLimit": 0,
    "queueOnConnectionLimit": "disabled", "queueTimeLimit": 0, "reselectTries": 0,
    "serviceDownAction": "none", "slowRampTime": 10,
}
HTTP_MONITOR_DEFAULTS: dict[str, Any] = {
    "adaptive": "disabled", "defaultsFrom": "/Common/http", "destination": "*:*",
    "interval": 5, "ipDscp": 0, "manualResume": "disabled", "reverse": "disabled",
    "send": "GET /\\r\\n", "recv": "", "recvDisable": "", "timeUntilUp": 0, "timeout": 16,
    "transparent": "disabled", "upInterval": 0,
}
JETTY_HTML = """<html>
<head>
<meta http-equiv="Content-Type" content="text/html;charset=ISO-8859-1"/>
<title>Error {status} {reason}</title>
</head>
<body><h2>HTTP ERROR {status}</h2>
<p>Problem accessing {path}. Reason:
<pre>    {reason}</pre></p><hr><i><small>Powered by Jetty://</small></i><hr/>
</body>
</html>
"""


@dataclass
class Call:
    """One request as the fake saw it; `time` is time.monotonic() at receipt, status 0 = dropped."""

    method: str
    path: str
    body: dict | None
    status: int
    time: float


@dataclass
class Token:
    user: str
    timeout_s: int
    expires_at: float  # time.monotonic() based
    start_wall: float = field(default_factory=time.time)
    updated_wall: float = field(default_factory=time.time)

    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def expiration_micros(self) -> int:
        return int((time.time() + self.expires_at - time.monotonic()) * 1_000_000)


@dataclass
class _Fault:
    remaining: int
    path_contains: str
    status: int = 500
    html: bool = True
    seconds: float = 0.0


class F5Error(Exception):
    """An error answered with F5's body shape."""

    def __init__(self, code: int, message: str, api_error: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.api_error = api_error

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, "errorStack": [],
                "apiError": self.api_error}


def _not_found(message: str) -> F5Error:
    return F5Error(404, message, 3)


def _full_name(segment: str, partition: str) -> str:
    """"~Common~edge_pool" -> "/Common/edge_pool"; a bare "edge_pool" lands in `partition`."""
    if segment.startswith("~"):
        return segment.replace("~", "/")
    if segment.startswith("/"):
        return segment
    return f"/{partition}/{segment}"


def _url_name(full: str) -> str:
    return full.replace("%", "%25").replace("/", "~")


def _split_full(full: str) -> tuple[str, str]:
    """"/Common/127.0.0.1:8480" -> ("Common", "127.0.0.1:8480")."""
    _, partition, name = full.split("/", 2)
    return partition, name


def _split_member(name: str) -> tuple[str, str]:
    """Member name -> (node, port); IPv6 members use "." before the port."""
    sep = "." if name.count(":") > 1 else ":"
    node, _, port = name.rpartition(sep)
    if not node or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise F5Error(400, f'01070587:3: The requested pool member name ({name}) is invalid.', 26)
    return node, port


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _new_token_string() -> str:
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(26))


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    fake: FakeF5


class FakeF5:
    """The fake device. `start()` it, point a client at `url`, inspect `calls`/`pools`/`tokens`."""

    def __init__(self, username: str = "svc-segue", password: str = "pw",  # noqa: S107 - test credential
                 partition: str = "Common") -> None:
        self.users: dict[str, str] = {username: password}  # add "admin" etc. as needed
        self.partition = partition
        self.url = ""
        self.port = 0
        self.calls: list[Call] = []
        self.pools: dict[str, dict[str, dict]] = {}
        self.tokens: dict[str, Token] = {}          # live tokens only
        self._expired_tokens: dict[str, Token] = {}  # still answered with "has expired."
        self.pool_config: dict[str, dict] = {}      # "/Common/edge_pool" -> pool read-back
        self.monitors: dict[str, dict] = {}         # "/Common/segue_health" -> monitor read-back
        self.nodes: dict[str, dict] = {}            # "/Common/127.0.0.1" -> node read-back
        self._written: dict[tuple[str, str], dict] = {}  # (pool, member) -> written properties
        self._cur_conns: dict[tuple[str, str], int] = {}
        self._faults: dict[str, list[_Fault]] = {"fail": [], "delay": [], "drop": []}
        self._generation = 1
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._listen(0)
        assert self._server is not None
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._close_listener()
        self._close_connections()

    def set_down(self, down: bool) -> None:
        """Down: the port refuses connections and open ones are cut. Up: the same port again."""
        if down:
            self._close_listener()
            self._close_connections()
        elif self._server is None:
            self._listen(self.port)

    def __enter__(self) -> FakeF5:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, port: int) -> None:
        server = _Server(("127.0.0.1", port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-f5:{server.server_address[1]}", daemon=True)
        self._thread.start()

    def _close_listener(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def _close_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ---------------------------------------------------------------- helpers for tests

    def add_pool(self, name: str, partition: str | None = None) -> None:
        full = _full_name(name, partition or self.partition)
        with self._lock:
            self._create_pool(full, {})

    def set_cur_conns(self, pool: str, member: str, n: int) -> None:
        key = self._key(pool, member)
        with self._lock:
            if key[1] not in self.pools.get(key[0], {}):
                raise KeyError(f"no member {key[1]} in pool {key[0]}")
            self._cur_conns[key] = n

    def member(self, pool: str, member: str) -> dict | None:
        pool_full, member_full = self._key(pool, member)
        with self._lock:
            found = self.pools.get(pool_full, {}).get(member_full)
            return copy.deepcopy(found) if found is not None else None

    def _key(self, pool: str, member: str) -> tuple[str, str]:
        return _full_name(pool, self.partition), _full_name(member, self.partition)

    # ---------------------------------------------------------------- fault injection

    def fail_next(self, n: int, status: int = 500, html: bool = True,
                  path_contains: str = "") -> None:
        with self._lock:
            self._faults["fail"].append(_Fault(n, path_contains, status=status, html=html))

    def delay_next(self, n: int, seconds: float, path_contains: str = "") -> None:
        """Handle on receipt, then sleep before answering (a write takes effect even if the
        client gives up; a read answers with the state as it was on receipt)."""
        with self._lock:
            self._faults["delay"].append(_Fault(n, path_contains, seconds=seconds))

    def drop_next(self, n: int, path_contains: str = "") -> None:
        """Close the connection without answering and without handling the request."""
        with self._lock:
            self._faults["drop"].append(_Fault(n, path_contains))

    def clear_faults(self) -> None:
        """Drop every injected fault not used up yet: an outage that ends."""
        with self._lock:
            for faults in self._faults.values():
                faults.clear()

    def expire_tokens(self) -> None:
        now = time.monotonic()
        with self._lock:
            for token in self.tokens.values():
                token.expires_at = min(token.expires_at, now)
            self._purge_expired()

    def _purge_expired(self) -> None:
        """Expired tokens leave `tokens` (BIG-IP purges them) but are still recognised."""
        for value, token in list(self.tokens.items()):
            if token.expired():
                self._expired_tokens[value] = self.tokens.pop(value)

    def _take_fault(self, kind: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults[kind]:
                if fault.remaining > 0 and fault.path_contains in path:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults[kind].remove(fault)
                    return fault
        return None

    # ---------------------------------------------------------------- request handling

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _handle(self, method: str, path: str, query: dict[str, list[str]],
                headers: Any, raw: bytes | None) -> tuple[int, Any]:
        """(status, JSON-able body or None for an empty body)."""
        with self._lock:
            self._purge_expired()
            try:
                return self._route(method, path, query, headers, raw)
            except F5Error as e:
                return e.code, e.body()

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
               raw: bytes | None) -> tuple[int, Any]:
        if not path.startswith("/mgmt/"):
            raise _not_found(f"Public URI path not registered: {path}")
        if path == "/mgmt/shared/authn/login":
            if method != "POST":
                raise F5Error(405, f"{method} not allowed on {path}")
            return self._login(self._json(raw))
        user = self._authenticate(headers)
        body = self._json(raw) if method in ("POST", "PUT", "PATCH") else None
        parts = [unquote(p) for p in path[len("/mgmt/"):].split("/")]
        if parts[:3] == ["shared", "authz", "tokens"] and len(parts) == 4:
            return self._token_op(method, user, parts[3], body)
        if parts[:3] == ["tm", "ltm", "pool"]:
            return self._pool_route(method, parts[3:], query, body)
        if parts[:3] == ["tm", "ltm", "node"]:
            return self._node_route(method, parts[3:])
        if parts[:4] == ["tm", "ltm", "monitor", "http"]:
            return self._monitor_route(method, parts[4:], body)
        raise _not_found(f"Public URI path not registered: {path[len('/mgmt'):]}")

    @staticmethod
    def _json(raw: bytes | None) -> dict:
        try:
            body = json.loads(raw or b"")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise F5Error(400, "Found invalid JSON body in the request.", 1)
        return body

    def _bump(self) -> int:
        self._generation += 1
        return self._generation

    # ---------------------------------------------------------------- auth

    def _login(self, body: dict) -> tuple[int, Any]:
        user, password = body.get("username"), body.get("password")
        provider = body.get("loginProviderName", "tmos")
        known = isinstance(user, str) and self.users.get(user) == password
        if not known or provider not in ("tmos", "local"):
            raise F5Error(401, "Authentication failed.", 1)
        if user not in UNCAPPED_USERS:
            live = sum(1 for t in self.tokens.values() if t.user == user)
            if live >= MAX_TOKENS_PER_USER:
                raise F5Error(400, f"user {user} has reached maximum active login tokens", 1)
        value = _new_token_string()
        token = Token(user, DEFAULT_TOKEN_TIMEOUT, time.monotonic() + DEFAULT_TOKEN_TIMEOUT)
        self.tokens[value] = token
        return 200, {
            "username": user,
            "loginReference": {"link": f"{HOST_LINK}/mgmt/cm/system/authn/providers/tmos/"
                                       "1f44a60e-11a7-3c51-a49f-82983026b41b/login"},
            "loginProviderName": "tmos",
            "token": self._token_body(value, token),
            "generation": 0,
            "lastUpdateMicros": 0,
        }

    def _token_body(self, value: str, token: Token) -> dict:
        return {
            "token": value, "name": value, "userName": token.user, "authProviderName": "tmos",
            "user": {"link": f"{HOST_LINK}/mgmt/shared/authz/users/{token.user}"},
            "timeout": token.timeout_s, "startTime": _iso(token.start_wall),
            "address": "127.0.0.1", "partition": "[All]", "generation": 1,
            "lastUpdateMicros": int(token.updated_wall * 1_000_000),
            "expirationMicros": token.expiration_micros(),
            "kind": "shared:authz:tokens:authtokenitemstate",
            "selfLink": f"{HOST_LINK}/mgmt/shared/authz/tokens/{value}",
        }

    def _authenticate(self, headers: Any) -> str:
        value = headers.get("X-F5-Auth-Token")
        if value:
            if value in self._expired_tokens:
                raise F5Error(401, "X-F5-Auth-Token has expired.", 1)
            token = self.tokens.get(value)
            if token is None:
                raise F5Error(401, "X-F5-Auth-Token does not exist.", 1)
            return token.user
        basic = headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", None
            if self.users.get(user) == password:
                return user
            raise F5Error(401, "Authentication failed.", 1)
        raise F5Error(401, "Authorization failed: no user authentication header or token "
                           "detected.", 1)

    def _token_op(self, method: str, user: str, value: str,
                  body: dict | None) -> tuple[int, Any]:
        token = self.tokens.get(value)
        if token is None:
            raise _not_found(f"Token {value} does not exist.")
        if token.user != user and user not in UNCAPPED_USERS:
            raise F5Error(401, f"Authorization failed: user={user} is not the owner of the "
                               f"token", 1)
        if method == "GET":
            return 200, self._token_body(value, token)
        if method == "DELETE":
            del self.tokens[value]
            return 200, self._token_body(value, token)
        if method == "PATCH":
            assert body is not None
            timeout = body.get("timeout", token.timeout_s)
            if isinstance(timeout, str) and timeout.isdigit():
                timeout = int(timeout)
            if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
                raise F5Error(400, f"invalid timeout value {json.dumps(timeout)}", 1)
            if timeout > MAX_TOKEN_TIMEOUT:
                raise F5Error(406, f"Token timeout {timeout} is out of range; the maximum is "
                                   f"{MAX_TOKEN_TIMEOUT} seconds.", 1)
            token.timeout_s = timeout
            token.expires_at = time.monotonic() + timeout
            token.updated_wall = time.time()
            return 200, self._token_body(value, token)
        raise F5Error(405, f"{method} not allowed on a token")

    # ---------------------------------------------------------------- pools and members

    def _create_pool(self, full: str, body: dict) -> dict:
        partition, name = _split_full(full)
        pool = {"kind": "tm:ltm:pool:poolstate", "name": name, "partition": partition,
                "fullPath": full, "generation": self._bump(),
                "selfLink": f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(full)}?ver={VERSION}",
                **POOL_DEFAULTS,
                "membersReference": {
                    "link": f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(full)}/members"
                            f"?ver={VERSION}",
                    "isSubcollection": True}}
        self.pool_config[full] = pool
        self.pools.setdefault(full, {})
        self._update_pool(full, body)
        return pool

    def _get_pool(self, full: str) -> dict:
        pool = self.pool_config.get(full)
        if pool is None:
            raise _not_found(f"01020036:3: The requested Pool ({full}) was not found.")
        return pool

    def _update_pool(self, full: str, body: dict) -> None:
        pool = self.pool_config[full]
        for key, value in body.items():
            if key in IDENTITY or key == "membersReference":
                continue
            if key == "members":
                raise F5Error(400, "Pool members must be managed through the members "
                                   "subcollection in this fake.", 26)
            if key == "monitor":
                monitor = str(value).strip()
                if monitor in ("", "none", "/Common/none"):
                    pool.pop("monitor", None)
                    continue
                for ref in monitor.split(" and "):
                    ref = _full_name(ref.strip(), self.partition)
                    if ref not in self.monitors and ref not in BUILTIN_MONITORS:
                        raise _not_found(f"01020036:3: The requested monitor ({ref}) was not "
                                         "found.")
                pool["monitor"] = monitor + " "  # BIG-IP reads the monitor back with a space
                continue
            pool[key] = value
        pool["generation"] = self._bump()
        for member_full in self.pools[full]:
            self._render_member(full, member_full)

    def _has_monitor(self, pool_full: str) -> bool:
        return "monitor" in self.pool_config[pool_full]

    def _render_member(self, pool_full: str, member_full: str) -> dict:
        """Rebuild the read-back dict of a member from what was written."""
        written = self._written[(pool_full, member_full)]
        monitored = self._has_monitor(pool_full)
        partition, name = _split_full(member_full)
        session = written["session"]
        if session == "user-enabled" and monitored:
            session = "monitor-enabled"
        state = written["state"]
        if state == "user-up":
            state = "up" if monitored else "unchecked"
        member = {
            "kind": "tm:ltm:pool:members:membersstate", "name": name, "partition": partition,
            "fullPath": member_full, "generation": written["generation"],
            "selfLink": f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(pool_full)}/members/"
                        f"{_url_name(member_full)}?ver={VERSION}",
            "address": written["address"],
        }
        for key, default in MEMBER_DEFAULTS.items():
            member[key] = copy.deepcopy(written.get(key, default))
        for key in ("description", "appService", "metadata", "profiles"):
            if key in written:
                member[key] = copy.deepcopy(written[key])
        member["session"] = session
        member["state"] = state
        self.pools[pool_full][member_full] = member
        return member

    def _get_member(self, pool_full: str, member_full: str) -> dict:
        self._get_pool(pool_full)
        member = self.pools[pool_full].get(member_full)
        if member is None:
            raise _not_found(f"01020036:3: The requested Pool Member "
                             f"({self._member_label(pool_full, member_full)}) was not found.")
        return member

    @staticmethod
    def _member_label(pool_full: str, member_full: str) -> str:
        partition, name = _split_full(member_full)
        node, port = _split_member(name)
        return f"{pool_full} /{partition}/{node} {port}"

    @staticmethod
    def _check_writable(body: dict, allowed: frozenset[str], command: str, where: str) -> None:
        for key, value in body.items():
            if key in IDENTITY or key in allowed:
                continue
            if key in MEMBER_CREATE_ONLY:
                raise F5Error(400, f'"{key}" may not be specified in the context of the '
                                   f'"{command}" command. "{key}" may be specified using the '
                                   f'following commands: create, list, show', 26)
            raise F5Error(400, f"Found unexpected json pair at configuration item {where}: "
                               f'"{key}":{json.dumps(value)}.', 26)
        for key, allowed_values in (("state", WRITABLE_STATE), ("session", WRITABLE_SESSION)):
            if key in body and body[key] not in allowed_values:
                raise F5Error(400, f"invalid property value {json.dumps(key)}:"
                                   f"{json.dumps(body[key])}", 26)

    def _pool_route(self, method: str, rest: list[str], query: dict[str, list[str]],
                    body: dict | None) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                return 200, {"kind": "tm:ltm:pool:poolcollectionstate",
                             "selfLink": f"{HOST_LINK}/mgmt/tm/ltm/pool?ver={VERSION}",
                             "items": [self._pool_view(p, query) for p in self.pool_config]}
            if method == "POST":
                assert body is not None
                full = self._body_full_name(body)
                if full in self.pool_config:
                    raise F5Error(409, f"01020066:3: The requested Pool ({full}) already exists "
                                       f"in partition {_split_full(full)[0]}.", 3)
                self._create_pool(full, body)
                return 200, self._pool_view(full, query)
            raise F5Error(405, f"{method} not allowed on the pool collection")
        pool_full = _full_name(rest[0], self.partition)
        pool = self._get_pool(pool_full)
        if len(rest) == 1:
            if method == "GET":
                return 200, self._pool_view(pool_full, query)
            if method in ("PATCH", "PUT"):
                assert body is not None
                self._update_pool(pool_full, body)
                return 200, self._pool_view(pool_full, query)
            if method == "DELETE":
                del self.pool_config[pool_full]
                for member_full in self.pools.pop(pool_full, {}):
                    self._written.pop((pool_full, member_full), None)
                    self._cur_conns.pop((pool_full, member_full), None)
                return 200, None
            raise F5Error(405, f"{method} not allowed on a pool")
        if rest[1:] == ["stats"] and method == "GET":
            return 200, self._pool_stats(pool_full)
        if rest[1] != "members":
            raise _not_found(f"Public URI path not registered: /tm/ltm/pool/{'/'.join(rest)}")
        if len(rest) == 2:
            if method == "GET":
                return 200, self._members_view(pool_full)
            if method == "POST":
                assert body is not None
                return 200, self._create_member(pool_full, body)
            raise F5Error(405, f"{method} not allowed on the members collection")
        if rest[2:] == ["stats"] and method == "GET":
            return 200, self._stats_body(
                f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(pool_full)}/members/stats",
                [(pool_full, m) for m in self.pools[pool_full]])
        member_full = _full_name(rest[2], pool["partition"])
        self._get_member(pool_full, member_full)
        if rest[3:] == ["stats"] and method == "GET":
            return 200, self._stats_body(
                f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(pool_full)}/members/"
                f"{_url_name(member_full)}/stats", [(pool_full, member_full)])
        if len(rest) > 3:
            raise _not_found(f"Public URI path not registered: /tm/ltm/pool/{'/'.join(rest)}")
        if method == "GET":
            return 200, copy.deepcopy(self.pools[pool_full][member_full])
        if method in ("PATCH", "PUT"):
            assert body is not None
            self._check_writable(body, MEMBER_MUTABLE, "modify", "/ltm/pool/members/")
            written = self._written[(pool_full, member_full)]
            written.update({k: v for k, v in body.items() if k in MEMBER_MUTABLE})
            written["generation"] = self._bump()
            return 200, copy.deepcopy(self._render_member(pool_full, member_full))
        if method == "DELETE":
            del self.pools[pool_full][member_full]
            del self._written[(pool_full, member_full)]
            self._cur_conns.pop((pool_full, member_full), None)
            return 200, None
        raise F5Error(405, f"{method} not allowed on a pool member")

    def _body_full_name(self, body: dict) -> str:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise F5Error(400, "The name property is required.", 26)
        if name.startswith("/"):
            return name
        return f"/{body.get('partition', self.partition)}/{name}"

    def _pool_view(self, pool_full: str, query: dict[str, list[str]]) -> dict:
        pool = copy.deepcopy(self.pool_config[pool_full])
        if query.get("expandSubcollections") == ["true"]:
            pool["membersReference"]["items"] = self._members_view(pool_full)["items"]
        return pool

    def _members_view(self, pool_full: str) -> dict:
        return {"kind": "tm:ltm:pool:members:memberscollectionstate",
                "selfLink": f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(pool_full)}/members"
                            f"?ver={VERSION}",
                "items": [copy.deepcopy(m) for m in self.pools[pool_full].values()]}

    def _create_member(self, pool_full: str, body: dict) -> dict:
        member_full = self._body_full_name(body)
        partition, name = _split_full(member_full)
        node, _port = _split_member(name)
        self._check_writable(body, MEMBER_MUTABLE | MEMBER_CREATE_ONLY, "create",
                             "/ltm/pool/members/")
        if member_full in self.pools[pool_full]:
            raise F5Error(409, f"01020066:3: The requested Pool Member "
                               f"({self._member_label(pool_full, member_full)}) already exists "
                               f"in partition {partition}.", 3)
        node_full = f"/{partition}/{node}"
        address = body.get("address")
        if node_full not in self.nodes:
            if not address:
                raise _not_found(f"01020036:3: The requested node ({node_full}) was not found.")
            self.nodes[node_full] = {
                "kind": "tm:ltm:node:nodestate", "name": node, "partition": partition,
                "fullPath": node_full, "generation": self._bump(),
                "selfLink": f"{HOST_LINK}/mgmt/tm/ltm/node/{_url_name(node_full)}"
                            f"?ver={VERSION}",
                "address": address, "session": "user-enabled", "state": "unchecked",
                "monitor": "default", "ratio": 1, "connectionLimit": 0}
        written = {k: v for k, v in body.items() if k in MEMBER_MUTABLE | MEMBER_CREATE_ONLY}
        written.setdefault("session", "user-enabled")
        written.setdefault("state", "user-up")
        written["address"] = self.nodes[node_full]["address"]
        written["generation"] = self._bump()
        self._written[(pool_full, member_full)] = written
        return copy.deepcopy(self._render_member(pool_full, member_full))

    # ---------------------------------------------------------------- stats

    def _member_stats(self, pool_full: str, member_full: str) -> dict:
        member = self.pools[pool_full][member_full]
        written = self._written[(pool_full, member_full)]
        monitored = self._has_monitor(pool_full)
        enabled = written["session"] == "user-enabled"
        conns = self._cur_conns.get((pool_full, member_full), 0)
        _, name = _split_full(member_full)
        node, port = _split_member(name)
        if written["state"] == "user-down":
            monitor_status, availability, reason = "user-down", "offline", "Forced down"
        elif monitored:
            monitor_status, availability = "up", "available"
            reason = "Pool member is available"
        else:
            monitor_status, availability = "unchecked", "unknown"
            reason = "Pool member does not have service checking enabled"
        if not enabled and written["state"] != "user-down":
            reason += ", user disabled"
        return {
            "addr": {"description": member["address"]},
            "connq.ageEdm": {"value": 0}, "connq.ageEma": {"value": 0},
            "connq.ageHead": {"value": 0}, "connq.ageMax": {"value": 0},
            "connq.depth": {"value": 0}, "connq.serviced": {"value": 0},
            "curSessions": {"value": conns},
            "monitorRule": {"description": member["monitor"]},
            "monitorStatus": {"description": monitor_status},
            "nodeName": {"description": f"/{_split_full(member_full)[0]}/{node}"},
            "poolName": {"description": pool_full},
            "port": {"value": int(port)},
            "serverside.bitsIn": {"value": 0}, "serverside.bitsOut": {"value": 0},
            "serverside.curConns": {"value": conns},
            "serverside.maxConns": {"value": conns}, "serverside.pktsIn": {"value": 0},
            "serverside.pktsOut": {"value": 0}, "serverside.totConns": {"value": conns},
            "sessionStatus": {"description": "enabled" if enabled else "user-disabled"},
            "status.availabilityState": {"description": availability},
            "status.enabledState": {"description": "enabled" if enabled else "disabled"},
            "status.statusReason": {"description": reason},
            "totRequests": {"value": 0},
        }

    def _stats_body(self, self_link: str, members: list[tuple[str, str]]) -> dict:
        entries = {}
        for pool_full, member_full in members:
            link = (f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(pool_full)}/members/"
                    f"{_url_name(member_full)}/stats")
            entries[link] = {"nestedStats": {"entries": self._member_stats(pool_full,
                                                                          member_full)}}
        return {"kind": "tm:ltm:pool:members:membersstats",
                "selfLink": f"{self_link}?ver={VERSION}", "entries": entries}

    def _pool_stats(self, pool_full: str) -> dict:
        members = [self._member_stats(pool_full, m) for m in self.pools[pool_full]]
        conns = sum(m["serverside.curConns"]["value"] for m in members)
        active = sum(1 for m in members
                     if m["status.availabilityState"]["description"] != "offline")
        availability = ("available" if any(m["status.availabilityState"]["description"]
                                           == "available" for m in members)
                        else "unknown" if active else "offline")
        link = f"{HOST_LINK}/mgmt/tm/ltm/pool/{_url_name(pool_full)}/stats"
        return {"kind": "tm:ltm:pool:poolstats", "selfLink": f"{link}?ver={VERSION}",
                "entries": {link: {"nestedStats": {"entries": {
                    "activeMemberCnt": {"value": active},
                    "memberCnt": {"value": len(members)},
                    "curSessions": {"value": conns},
                    "serverside.curConns": {"value": conns},
                    "status.availabilityState": {"description": availability},
                    "status.enabledState": {"description": "enabled"},
                    "tmName": {"description": pool_full},
                }}}}}

    # ---------------------------------------------------------------- nodes and monitors

    def _node_route(self, method: str, rest: list[str]) -> tuple[int, Any]:
        if not rest and method == "GET":
            return 200, {"kind": "tm:ltm:node:nodecollectionstate",
                         "items": [copy.deepcopy(n) for n in self.nodes.values()]}
        if len(rest) != 1:
            raise F5Error(405, f"{method} not allowed on the node collection")
        full = _full_name(rest[0], self.partition)
        node = self.nodes.get(full)
        if node is None:
            raise _not_found(f"01020036:3: The requested Node ({full}) was not found.")
        if method == "GET":
            return 200, copy.deepcopy(node)
        if method == "DELETE":
            _, node_name = _split_full(full)
            for pool_full, member_full in self._written:
                if _split_member(_split_full(member_full)[1])[0] == node_name:
                    raise F5Error(400, f"01070110:3: Node address '{full}' is referenced by a "
                                       f"member of pool '{pool_full}'.", 26)
            del self.nodes[full]
            return 200, None
        raise F5Error(405, f"{method} not allowed on a node")

    def _monitor_route(self, method: str, rest: list[str], body: dict | None) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                return 200, {"kind": "tm:ltm:monitor:http:httpcollectionstate",
                             "items": [copy.deepcopy(m) for m in self.monitors.values()]}
            if method == "POST":
                assert body is not None
                full = self._body_full_name(body)
                partition, name = _split_full(full)
                if full in self.monitors or full in BUILTIN_MONITORS:
                    raise F5Error(409, f"01020066:3: The requested Monitor ({full}) already "
                                       f"exists in partition {partition}.", 3)
                monitor = {"kind": "tm:ltm:monitor:http:httpstate", "name": name,
                           "partition": partition, "fullPath": full,
                           "generation": self._bump(),
                           "selfLink": f"{HOST_LINK}/mgmt/tm/ltm/monitor/http/"
                                       f"{_url_name(full)}?ver={VERSION}",
                           **HTTP_MONITOR_DEFAULTS}
                monitor.update({k: v for k, v in body.items() if k not in IDENTITY})
                self.monitors[full] = monitor
                return 200, copy.deepcopy(monitor)
            raise F5Error(405, f"{method} not allowed on the monitor collection")
        full = _full_name(rest[0], self.partition)
        monitor = self.monitors.get(full)
        if monitor is None or len(rest) != 1:
            raise _not_found(f"01020036:3: The requested Monitor ({full}) was not found.")
        if method == "GET":
            return 200, copy.deepcopy(monitor)
        if method in ("PATCH", "PUT"):
            assert body is not None
            monitor.update({k: v for k, v in body.items() if k not in IDENTITY})
            monitor["generation"] = self._bump()
            return 200, copy.deepcopy(monitor)
        if method == "DELETE":
            for pool_full, pool in self.pool_config.items():
                if full in pool.get("monitor", "").split():
                    raise F5Error(400, f"01070083:3: Monitor {full} is in use by pool "
                                       f"{pool_full}.", 26)
            del self.monitors[full]
            return 200, None
        raise F5Error(405, f"{method} not allowed on a monitor")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "Jetty(9.2.22.v20170606)"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        received = time.monotonic()
        split = urlsplit(self.path)
        path = split.path
        raw = self._read_body()
        try:
            parsed = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            parsed = None
        logged_body = parsed if isinstance(parsed, dict) else None

        if fake._take_fault("drop", path):
            fake._record(Call(method, path, logged_body, 0, received))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        delay = fake._take_fault("delay", path)
        fail = fake._take_fault("fail", path)
        if fail:
            status = fail.status
            phrase = _phrase(status)
            if fail.html:
                reason = "AsyncContext timeout" if status == 500 else phrase
                payload = JETTY_HTML.format(status=status, reason=reason, path=path).encode()
                ctype = "text/html;charset=iso-8859-1"
            else:
                payload = json.dumps(F5Error(status, phrase, 1).body()).encode()
                ctype = "application/json; charset=UTF-8"
        else:
            status, answer = fake._handle(method, path, parse_qs(split.query), self.headers, raw)
            payload = b"" if answer is None else json.dumps(answer).encode()
            ctype = "application/json; charset=UTF-8"
        fake._record(Call(method, path, logged_body, status, received))
        if delay:
            time.sleep(delay.seconds)
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Frame-Options", "SAMEORIGIN")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True
