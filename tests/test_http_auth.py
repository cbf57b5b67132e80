"""Player tokens at the door: who gets 401, who gets 403, and which issuers are trusted."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from conftest import MP3, Node, make_tone, track_of
from segue.seal import keys
from segue.seal.tokens import issue


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(url, headers={**headers, "Range": "bytes=0-99"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def auth_key(node: Node):
    return keys.load_private_key(node.root / "keys" / "auth-ed25519.pem")


@pytest.fixture(scope="module")
def track(node: Node) -> str:
    return track_of(node, ".mp3")


def test_a_valid_token_in_the_header_or_the_query_plays(node: Node, track: str) -> None:
    token = node.token()
    assert get(node.url(track), token)[0] == 206
    assert get(node.url(track, token))[0] == 206


def test_no_token_is_401_with_a_bearer_challenge(node: Node, track: str) -> None:
    status, headers, _ = get(node.url(track))
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "Zm9v.YmFy.YmF6", "x" * 5000])
def test_a_malformed_token_is_401(node: Node, track: str, token: str) -> None:
    assert get(node.url(track), token)[0] == 401


def test_an_expired_token_is_401(node: Node, track: str) -> None:
    token = issue(auth_key(node), "alice", ttl=60, tracks=None, audience="segue",
                  now=time.time() - 3600)
    status, _, body = get(node.url(track), token)
    assert status == 401
    assert "expired" in json.loads(body)["detail"]


def test_a_token_signed_by_another_key_is_401(node: Node, track: str) -> None:
    forger = keys.generate("ed25519")
    real_kid = keys.key_id(auth_key(node).public_key())
    claims = {"sub": "mallory", "exp": int(time.time()) + 600, "aud": "segue", "tracks": "*"}
    forged = jwt.encode(claims, forger, algorithm="EdDSA", headers={"kid": real_kid})
    assert get(node.url(track), forged)[0] == 401


def test_a_token_with_altered_claims_is_401(node: Node, track: str) -> None:
    other = track_of(node, ".flac")
    header, payload, signature = node.token("carol", "--tracks", other).split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["tracks"] = "*"
    altered = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    assert get(node.url(track), f"{header}.{altered}.{signature}")[0] == 401


@pytest.mark.parametrize("header", [{"kid": 1}, {"kid": "x", "crit": ["nope"]}])
def test_a_token_with_a_malformed_header_is_401(node: Node, track: str, header: dict) -> None:
    claims = {"sub": "eve", "exp": int(time.time()) + 600, "aud": "segue", "tracks": "*"}

    def part(doc: dict) -> str:
        return jwt.utils.base64url_encode(json.dumps(doc).encode()).decode()

    token = f"{part({'alg': 'EdDSA', 'typ': 'JWT', **header})}.{part(claims)}.c2lnbmF0dXJl"
    assert get(node.url(track), token)[0] == 401


def test_an_unsigned_token_is_401(node: Node, track: str) -> None:
    claims = {"sub": "eve", "exp": int(time.time()) + 600, "aud": "segue", "tracks": "*"}
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert get(node.url(track), unsigned)[0] == 401


def test_a_token_for_another_audience_is_401(node: Node, track: str) -> None:
    token = issue(auth_key(node), "alice", ttl=600, tracks=None, audience="another-service")
    assert get(node.url(track), token)[0] == 401


def test_a_token_scoped_to_other_tracks_is_403(node: Node, track: str) -> None:
    token = node.token("dave", "--tracks", track_of(node, ".flac"))
    assert get(node.url(track), token)[0] == 403
    assert get(node.url(track, suffix="/meta"), token)[0] == 403
    assert get(node.url(track_of(node, ".flac")), token)[0] == 206


def test_an_unknown_track_is_404(node: Node) -> None:
    assert get(node.url("0" * 32), node.token())[0] == 404


def test_tokens_never_reach_the_log(node: Node, track: str) -> None:
    token = node.token("erin")
    assert get(node.url(track, token))[0] == 206
    assert get(node.url(track), token)[0] == 206
    log = node.log_text()
    assert token not in log
    assert token.split(".")[2] not in log
    assert "erin" not in log  # users appear as a hash


def track_ticket(node: Node, track: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(node.url(track, suffix="/ticket"), method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_track_ticket_opens_that_track_alone_in_a_url(node: Node, track: str) -> None:
    """What the web player's <audio> element uses: the token stays in a header."""
    token = node.token("frank")
    status, doc = track_ticket(node, track, token)
    assert status == 200 and 60 < doc["expires_in_s"] <= 900
    ticket = doc["ticket"]
    assert token not in ticket
    assert get(f"{node.url(track)}?ticket={ticket}")[0] == 206
    other = track_of(node, ".flac")
    assert get(f"{node.url(other)}?ticket={ticket}")[0] == 401  # another track
    assert get(f"{node.url(track)}?ticket={ticket[:-3]}xyz")[0] == 401  # forged
    # It is no player token, and no event-stream ticket either.
    assert get(f"{node.url(track)}?token={ticket}")[0] == 401
    assert get(f"{node.base}/v1/session/events?ticket={ticket}")[0] == 401
    assert "frank" not in node.log_text() and ticket not in node.log_text()


def test_a_track_ticket_needs_a_token_that_grants_the_track(node: Node, track: str) -> None:
    scoped = node.token("gina", "--tracks", track_of(node, ".flac"))
    assert track_ticket(node, track, scoped)[0] == 403
    assert track_ticket(node, track, "not-a-token")[0] == 401
    # It never outlives the token it was traded for.
    short = node.token("gina", "--ttl", "120")
    assert 0 < track_ticket(node, track, short)[1]["expires_in_s"] <= 120


def test_es256_rs256_and_jwks_tokens_from_an_identity_provider(fresh_node: Node,
                                                               tmp_path: Path) -> None:
    n = fresh_node
    es_key, rs_key, jwks_key = keys.generate("p256"), keys.generate("rsa"), keys.generate("p256")
    keys.write_key_pair(es_key, n.root / "keys" / "idp-es256.pem")
    keys.write_key_pair(rs_key, n.root / "keys" / "idp-rs256.pem")
    jwk = json.loads(ECAlgorithm.to_jwk(jwks_key.public_key()))
    jwk.update(kid="idp-2026", use="sig", alg="ES256")
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(keys.generate("rsa").public_key()))
    rsa_jwk.update(kid="unused-rsa")
    (n.root / "jwks.json").write_text(json.dumps({"keys": [jwk, rsa_jwk]}))
    conf = n.conf.read_text().replace(
        'public_keys = ["keys/auth-ed25519.pem.pub"]',
        'public_keys = ["keys/auth-ed25519.pem.pub", "keys/idp-es256.pem.pub", '
        '"keys/idp-rs256.pem.pub"]\njwks = "jwks.json"',
    )
    n.conf.write_text(conf)
    (track,) = n.pack(make_tone(tmp_path / "idp.mp3", MP3, seconds=5, title="IdP"))
    n.start()
    claims = {"sub": "idp-user", "exp": int(time.time()) + 600, "aud": "segue",
              "tracks": [track]}
    for key, alg, kid in ((es_key, "ES256", keys.key_id(es_key.public_key())),
                          (rs_key, "RS256", keys.key_id(rs_key.public_key())),
                          (jwks_key, "ES256", "idp-2026")):
        token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
        assert get(n.url(track), token)[0] == 206, alg
    # A kid the node does not know, signed by an unknown key: refused.
    stranger = jwt.encode(claims, keys.generate("p256"), algorithm="ES256",
                          headers={"kid": "idp-2027"})
    assert get(n.url(track), stranger)[0] == 401

