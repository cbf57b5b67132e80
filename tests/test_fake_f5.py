"""The fake F5 on its own, against the documented iControl REST examples."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fake_f5 import FakeF5

POOL = "/mgmt/tm/ltm/pool/~Common~edge_pool"
MEMBERS = f"{POOL}/members"
MEMBER = f"{MEMBERS}/~Common~127.0.0.1:8480"
MEMBER_BODY = {"name": "127.0.0.1:8480", "partition": "Common", "address": "127.0.0.1",
               "description": "managed-by=segue host=edge-17", "session": "user-disabled",
               "state": "user-up", "ratio": 1, "connectionLimit": 0, "priorityGroup": 0}
MONITOR_BODY = {"name": "segue_health", "partition": "Common", "defaultsFrom": "/Common/http",
                "send": "GET /lb/health HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n",
                "recv": "EDGE=UP", "recvDisable": "EDGE=DRAIN", "interval": 5, "timeout": 16}


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def call(f5: FakeF5, method: str, path: str, body: Any = None, token: str | None = None,
         raw: bytes | None = None, timeout: float = 5) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", int(f5.url.rsplit(":", 1)[1]), timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-F5-Auth-Token"] = token
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def login(f5: FakeF5, user: str = "svc-segue", password: str = "pw") -> Reply:  # noqa: S107
    return call(f5, "POST", "/mgmt/shared/authn/login",
                {"username": user, "password": password, "loginProviderName": "tmos"})


def assert_f5_error(reply: Reply, code: int, message: str, api_error: int | None = None) -> None:
    assert reply.status == code
    body = reply.json
    assert set(body) == {"code", "message", "errorStack", "apiError"}
    assert body["code"] == code
    assert body["message"] == message
    assert body["errorStack"] == []
    if api_error is not None:
        assert body["apiError"] == api_error


@pytest.fixture
def f5() -> Iterator[FakeF5]:
    fake = FakeF5()
    fake.add_pool("edge_pool")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def token(f5: FakeF5) -> str:
    return login(f5).json["token"]["token"]


# ---------------------------------------------------------------- auth


def test_login_and_token_use(f5: FakeF5) -> None:
    reply = login(f5)
    assert reply.status == 200
    body = reply.json
    tok = body["token"]
    assert body["username"] == "svc-segue"
    assert tok["userName"] == "svc-segue"
    assert tok["timeout"] == 1200
    assert tok["selfLink"].endswith(f"/mgmt/shared/authz/tokens/{tok['token']}")
    assert tok["expirationMicros"] > time.time() * 1e6 + 1190e6
    assert "startTime" in tok
    assert f5.tokens[tok["token"]].user == "svc-segue"
    assert f5.tokens[tok["token"]].timeout_s == 1200

    got = call(f5, "GET", POOL, token=tok["token"])
    assert got.status == 200
    assert got.json["fullPath"] == "/Common/edge_pool"
    assert got.json["kind"] == "tm:ltm:pool:poolstate"

    assert_f5_error(call(f5, "GET", POOL, token="NOSUCHTOKEN"), 401,
                    "X-F5-Auth-Token does not exist.")
    assert call(f5, "GET", POOL).status == 401
    assert_f5_error(login(f5, password="wrong"), 401, "Authentication failed.")


def test_expired_token(f5: FakeF5, token: str) -> None:
    assert call(f5, "GET", POOL, token=token).status == 200
    f5.expire_tokens()
    assert token not in f5.tokens  # `tokens` holds live tokens only
    assert_f5_error(call(f5, "GET", POOL, token=token), 401, "X-F5-Auth-Token has expired.")
    fresh = login(f5).json["token"]["token"]
    assert call(f5, "GET", POOL, token=fresh).status == 200
    # An expired token cannot be revived by PATCHing it with a live one.
    revive = call(f5, "PATCH", f"/mgmt/shared/authz/tokens/{token}", {"timeout": 600},
                  token=fresh)
    assert revive.status == 404
    assert list(f5.tokens) == [fresh]


def test_token_timeout_patch_and_delete(f5: FakeF5, token: str) -> None:
    link = f"/mgmt/shared/authz/tokens/{token}"
    ok = call(f5, "PATCH", link, {"timeout": 36000}, token=token)
    assert ok.status == 200
    assert ok.json["timeout"] == 36000
    assert ok.json["expirationMicros"] > time.time() * 1e6 + 35990e6
    assert f5.tokens[token].timeout_s == 36000
    assert f5.tokens[token].expires_at > time.monotonic() + 35990

    too_long = call(f5, "PATCH", link, {"timeout": 36001}, token=token)
    assert too_long.status == 406
    assert set(too_long.json) == {"code", "message", "errorStack", "apiError"}
    assert too_long.json["code"] == 406
    assert "36000" in too_long.json["message"]
    assert f5.tokens[token].timeout_s == 36000

    assert call(f5, "GET", link, token=token).json["token"] == token
    assert call(f5, "DELETE", link, token=token).status == 200
    assert token not in f5.tokens
    assert_f5_error(call(f5, "GET", POOL, token=token), 401, "X-F5-Auth-Token does not exist.")


def test_token_cap_per_user_and_admin_exempt(f5: FakeF5) -> None:
    f5.users["admin"] = "adminpw"
    for _ in range(100):
        assert login(f5).status == 200
    assert_f5_error(login(f5), 400, "user svc-segue has reached maximum active login tokens")
    for _ in range(101):
        assert login(f5, "admin", "adminpw").status == 200
    # A deleted token frees a slot; so does an expired one.
    mine = next(t for t, v in f5.tokens.items() if v.user == "svc-segue")
    assert call(f5, "DELETE", f"/mgmt/shared/authz/tokens/{mine}", token=mine).status == 200
    assert login(f5).status == 200
    assert login(f5).status == 400
    f5.expire_tokens()
    assert login(f5).status == 200


# ---------------------------------------------------------------- members


def test_create_disabled_member_and_read_back(f5: FakeF5, token: str) -> None:
    created = call(f5, "POST", MEMBERS, MEMBER_BODY, token=token)
    assert created.status == 200
    body = created.json
    assert body["kind"] == "tm:ltm:pool:members:membersstate"
    assert body["name"] == "127.0.0.1:8480"
    assert body["partition"] == "Common"
    assert body["fullPath"] == "/Common/127.0.0.1:8480"
    assert body["address"] == "127.0.0.1"
    assert body["description"] == "managed-by=segue host=edge-17"
    assert "/mgmt/tm/ltm/pool/~Common~edge_pool/members/~Common~127.0.0.1:8480" in \
        body["selfLink"]
    assert body["session"] == "user-disabled"
    assert body["state"] == "unchecked"  # no monitor on the pool

    got = call(f5, "GET", MEMBER, token=token)
    assert got.status == 200
    assert got.json == body
    assert f5.member("edge_pool", "127.0.0.1:8480") == body
    assert f5.pools["/Common/edge_pool"]["/Common/127.0.0.1:8480"] == body
    listing = call(f5, "GET", MEMBERS, token=token).json
    assert listing["kind"] == "tm:ltm:pool:members:memberscollectionstate"
    assert listing["items"] == [body]
    # The node was created from the address.
    assert call(f5, "GET", "/mgmt/tm/ltm/node/~Common~127.0.0.1", token=token).status == 200


def test_read_back_values_are_not_writable(f5: FakeF5, token: str) -> None:
    bad = call(f5, "POST", MEMBERS, {**MEMBER_BODY, "state": "up"}, token=token)
    assert_f5_error(bad, 400, 'invalid property value "state":"up"')
    assert f5.member("edge_pool", "127.0.0.1:8480") is None
    assert call(f5, "POST", MEMBERS, MEMBER_BODY, token=token).status == 200
    for patch in ({"session": "monitor-enabled"}, {"state": "unchecked"}, {"state": "up"}):
        reply = call(f5, "PATCH", MEMBER, patch, token=token)
        assert reply.status == 400
        assert reply.json["message"].startswith("invalid property value")
    address = call(f5, "PATCH", MEMBER, {"address": "10.0.0.9"}, token=token)
    assert address.status == 400
    assert f5.member("edge_pool", "127.0.0.1:8480")["session"] == "user-disabled"


def test_duplicate_member_is_409(f5: FakeF5, token: str) -> None:
    assert call(f5, "POST", MEMBERS, MEMBER_BODY, token=token).status == 200
    assert_f5_error(call(f5, "POST", MEMBERS, MEMBER_BODY, token=token), 409,
                    "01020066:3: The requested Pool Member (/Common/edge_pool /Common/127.0.0.1 "
                    "8480) already exists in partition Common.", 3)


def test_missing_objects_are_404(f5: FakeF5, token: str) -> None:
    assert_f5_error(call(f5, "GET", MEMBER, token=token), 404,
                    "01020036:3: The requested Pool Member (/Common/edge_pool /Common/127.0.0.1 "
                    "8480) was not found.", 3)
    assert_f5_error(call(f5, "GET", "/mgmt/tm/ltm/pool/~Common~nope", token=token), 404,
                    "01020036:3: The requested Pool (/Common/nope) was not found.", 3)
    assert call(f5, "PATCH", MEMBER, {"session": "user-enabled"}, token=token).status == 404
    assert call(f5, "DELETE", MEMBER, token=token).status == 404
    # No address and no node of that name.
    no_node = {k: v for k, v in MEMBER_BODY.items() if k != "address"}
    assert_f5_error(call(f5, "POST", MEMBERS, no_node, token=token), 404,
                    "01020036:3: The requested node (/Common/127.0.0.1) was not found.", 3)


def test_invalid_json_is_400(f5: FakeF5, token: str) -> None:
    reply = call(f5, "POST", MEMBERS, raw=b'{"name": ', token=token)
    assert_f5_error(reply, 400, "Found invalid JSON body in the request.", 1)
    assert f5.calls[-1].body is None
    assert f5.calls[-1].status == 400


def test_enable_read_back_without_and_with_monitor(f5: FakeF5, token: str) -> None:
    assert call(f5, "POST", MEMBERS, MEMBER_BODY, token=token).status == 200
    enabled = call(f5, "PATCH", MEMBER, {"session": "user-enabled", "state": "user-up"},
                   token=token)
    assert enabled.status == 200
    assert (enabled.json["session"], enabled.json["state"]) == ("user-enabled", "unchecked")

    monitor = call(f5, "POST", "/mgmt/tm/ltm/monitor/http", MONITOR_BODY, token=token)
    assert monitor.status == 200
    assert monitor.json["recv"] == "EDGE=UP"
    assert call(f5, "POST", "/mgmt/tm/ltm/monitor/http", MONITOR_BODY, token=token).status == 409
    assert call(f5, "GET", "/mgmt/tm/ltm/monitor/http/~Common~segue_health",
                token=token).status == 200
    assert call(f5, "GET", "/mgmt/tm/ltm/monitor/http/~Common~other", token=token).status == 404
    pool = call(f5, "PATCH", POOL, {"monitor": "/Common/segue_health"}, token=token)
    assert pool.status == 200
    assert pool.json["monitor"].strip() == "/Common/segue_health"

    got = call(f5, "GET", MEMBER, token=token).json
    assert (got["session"], got["state"]) == ("monitor-enabled", "up")
    drained = call(f5, "PATCH", MEMBER, {"session": "user-disabled"}, token=token).json
    assert (drained["session"], drained["state"]) == ("user-disabled", "up")
    forced = call(f5, "PATCH", MEMBER, {"state": "user-down"}, token=token).json
    assert (forced["session"], forced["state"]) == ("user-disabled", "user-down")
    # Attaching a monitor that does not exist is refused.
    assert call(f5, "PATCH", POOL, {"monitor": "/Common/missing"}, token=token).status == 404


def test_stats_cur_conns(f5: FakeF5, token: str) -> None:
    assert call(f5, "POST", MEMBERS, MEMBER_BODY, token=token).status == 200
    f5.set_cur_conns("edge_pool", "127.0.0.1:8480", 3)
    stats = call(f5, "GET", f"{MEMBER}/stats", token=token)
    assert stats.status == 200
    key = ("https://localhost/mgmt/tm/ltm/pool/~Common~edge_pool/members/"
           "~Common~127.0.0.1:8480/stats")
    entries = stats.json["entries"][key]["nestedStats"]["entries"]
    assert entries["serverside.curConns"] == {"value": 3}
    assert entries["status.enabledState"] == {"description": "disabled"}
    assert entries["sessionStatus"] == {"description": "user-disabled"}
    assert entries["monitorStatus"] == {"description": "unchecked"}
    assert "status.availabilityState" in entries

    f5.set_cur_conns("/Common/edge_pool", "/Common/127.0.0.1:8480", 0)
    call(f5, "PATCH", MEMBER, {"session": "user-enabled"}, token=token)
    entries = call(f5, "GET", f"{MEMBER}/stats", token=token).json["entries"][key]
    entries = entries["nestedStats"]["entries"]
    assert entries["serverside.curConns"] == {"value": 0}
    assert entries["status.enabledState"] == {"description": "enabled"}
    assert entries["sessionStatus"] == {"description": "enabled"}
    everyone = call(f5, "GET", f"{MEMBERS}/stats", token=token).json
    assert list(everyone["entries"]) == [key]


def test_delete_member(f5: FakeF5, token: str) -> None:
    assert call(f5, "POST", MEMBERS, MEMBER_BODY, token=token).status == 200
    deleted = call(f5, "DELETE", MEMBER, token=token)
    assert deleted.status == 200
    assert f5.member("edge_pool", "127.0.0.1:8480") is None
    assert call(f5, "GET", MEMBER, token=token).status == 404
    # The node stays, so the member can come back without an address.
    again = {k: v for k, v in MEMBER_BODY.items() if k != "address"}
    assert call(f5, "POST", MEMBERS, again, token=token).status == 200


def test_calls_are_recorded(f5: FakeF5, token: str) -> None:
    call(f5, "GET", f"{POOL}?expandSubcollections=true", token=token)
    call(f5, "POST", MEMBERS, MEMBER_BODY, token=token)
    assert [(c.method, c.path, c.status) for c in f5.calls] == [
        ("POST", "/mgmt/shared/authn/login", 200),
        ("GET", POOL, 200),
        ("POST", MEMBERS, 200),
    ]
    assert f5.calls[1].body is None
    assert f5.calls[2].body == MEMBER_BODY
    assert f5.calls[0].time <= f5.calls[1].time <= f5.calls[2].time


def test_concurrent_creates(f5: FakeF5, token: str) -> None:
    def create(port: int) -> None:
        body = {**MEMBER_BODY, "name": f"127.0.0.1:{port}"}
        assert call(f5, "POST", MEMBERS, body, token=token).status == 200

    threads = [threading.Thread(target=create, args=(9000 + i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(f5.pools["/Common/edge_pool"]) == 16


# ---------------------------------------------------------------- fault injection


def test_fail_next_html_and_json(f5: FakeF5, token: str) -> None:
    f5.fail_next(2, path_contains="/members")
    assert call(f5, "GET", POOL, token=token).status == 200  # does not match
    for _ in range(2):
        reply = call(f5, "GET", MEMBERS, token=token)
        assert reply.status == 500
        assert reply.headers["Content-Type"].startswith("text/html")
        assert b"AsyncContext timeout" in reply.raw
        with pytest.raises(ValueError):
            json.loads(reply.raw)
    assert call(f5, "GET", MEMBERS, token=token).status == 200

    f5.fail_next(1, status=503, html=False)
    reply = call(f5, "GET", POOL, token=token)
    assert reply.status == 503
    assert reply.json["code"] == 503
    assert set(reply.json) == {"code", "message", "errorStack", "apiError"}
    # A failed write is not applied.
    f5.fail_next(1)
    assert call(f5, "POST", MEMBERS, MEMBER_BODY, token=token).status == 500
    assert f5.member("edge_pool", "127.0.0.1:8480") is None
    assert [c.status for c in f5.calls[-2:]] == [503, 500]


def test_delay_next(f5: FakeF5, token: str) -> None:
    f5.delay_next(1, 0.3, path_contains="/members")
    start = time.monotonic()
    assert call(f5, "GET", POOL, token=token).status == 200
    assert time.monotonic() - start < 0.25
    start = time.monotonic()
    assert call(f5, "GET", MEMBERS, token=token).status == 200
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    assert call(f5, "GET", MEMBERS, token=token).status == 200
    assert time.monotonic() - start < 0.25
    # A client that gives up still leaves the write applied.
    f5.delay_next(1, 0.3)
    with pytest.raises(TimeoutError):
        call(f5, "POST", MEMBERS, MEMBER_BODY, token=token, timeout=0.1)
    assert f5.member("edge_pool", "127.0.0.1:8480") is not None
    # A delayed read answers with the state as it was when the request arrived.
    f5.delay_next(1, 0.3, path_contains="~Common~127.0.0.1:8480")
    result: list[Reply] = []
    reader = threading.Thread(target=lambda: result.append(call(f5, "GET", MEMBER, token=token)))
    reader.start()
    deadline = time.monotonic() + 2
    while not any(c.method == "GET" and c.path == MEMBER for c in f5.calls):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert call(f5, "DELETE", MEMBER, token=token).status == 200
    reader.join()
    assert result[0].status == 200
    assert result[0].json["session"] == "user-disabled"


def test_drop_next(f5: FakeF5, token: str) -> None:
    f5.drop_next(1, path_contains="/members")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        call(f5, "POST", MEMBERS, MEMBER_BODY, token=token)
    assert (f5.calls[-1].path, f5.calls[-1].status) == (MEMBERS, 0)
    assert f5.member("edge_pool", "127.0.0.1:8480") is None
    assert call(f5, "POST", MEMBERS, MEMBER_BODY, token=token).status == 200


def test_set_down_and_up_same_port(f5: FakeF5, token: str) -> None:
    url = f5.url
    port = int(url.rsplit(":", 1)[1])
    keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    keep_alive.request("GET", POOL, headers={"X-F5-Auth-Token": token})
    assert keep_alive.getresponse().read()

    f5.set_down(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        keep_alive.request("GET", POOL, headers={"X-F5-Auth-Token": token})
        keep_alive.getresponse()
    keep_alive.close()

    f5.set_down(False)
    assert f5.url == url
    assert call(f5, "GET", POOL, token=token).status == 200  # state survives


def test_helpers_accept_short_and_full_names(f5: FakeF5, token: str) -> None:
    assert f5.member("edge_pool", "127.0.0.1:8480") is None
    call(f5, "POST", MEMBERS, MEMBER_BODY, token=token)
    assert f5.member("/Common/edge_pool", "/Common/127.0.0.1:8480") is not None
    with pytest.raises(KeyError):
        f5.set_cur_conns("edge_pool", "127.0.0.1:9999", 1)
    f5.add_pool("other", partition="Tenant")
    assert "/Tenant/other" in f5.pools
    assert call(f5, "GET", "/mgmt/tm/ltm/pool/~Tenant~other", token=token).status == 200
