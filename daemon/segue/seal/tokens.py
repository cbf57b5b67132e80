"""Player tokens: JWTs that say who the player is, until when, and which tracks it may play.

`segue token` issues EdDSA tokens with the node's auth key; an existing identity provider may
instead issue ES256 or RS256 tokens, verified against configured public keys or a JWKS file.
Claims: `sub` (user), `exp`, `iat`, `aud`, and `tracks`: `"*"` or a list of track ids. A token
with no `tracks` claim grants every track, like `"*"` (what identity providers that know nothing
of tracks issue); a verifier made with `require_scope` refuses such tokens instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from segue.seal.errors import KeyFileError
from segue.seal.keys import key_id

ALL_TRACKS = "*"


class TokenError(Exception):
    """A token was missing, malformed, expired or forged. The message never holds the token.

    `reason` says which, in one word a log can be searched by: malformed, expired,
    bad_signature, unknown_key, audience, issuer, not_yet_valid or scope_required.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TokenScopeError(TokenError):
    """A genuine token that does not say which tracks it grants, where that is required."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "scope_required")


def algorithm_for(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """The JWS algorithm a key signs with: EdDSA, ES256 or RS256."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    raise KeyFileError(f"a {type(key).__name__} cannot sign tokens; use Ed25519, P-256 or RSA")


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    user: str
    tracks: frozenset[str] | None  # None: every track
    expires: float
    scoped: bool = True  # the token carried a "tracks" claim ("*" counts)

    def allows(self, track_id: str) -> bool:
        return self.tracks is None or track_id in self.tracks


def issue(
    signing_key: PrivateKeyTypes,
    user: str,
    *,
    ttl: int,
    tracks: Iterable[str] | None,
    audience: str,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a token for `user`, valid `ttl` seconds, for every track or only `tracks`."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": user,
        "iat": issued,
        "exp": issued + ttl,
        "aud": audience,
        "tracks": ALL_TRACKS if tracks is None else sorted(set(tracks)),
    }
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(
        claims,
        signing_key,  # type: ignore[arg-type]
        algorithm=algorithm_for(signing_key),
        headers={"kid": key_id(signing_key.public_key())},
    )


def load_jwks(path: Path) -> dict[str, PublicKeyTypes]:
    """Public token-signing keys from a JWKS file, by `kid` (keys without one get their segue
    key id).

    A key is taken only for what its JWK allows: one whose `use` is not "sig" (an encryption
    key) signs no token, and one whose `alg` is not the algorithm Segue verifies for its type
    (EdDSA, ES256, RS256) must not verify tokens of another. Such keys are left out; a file
    left with no key is refused, naming what was left out.
    """
    try:
        jwks = jwt.PyJWKSet.from_json(path.read_text())
    except OSError as e:
        raise KeyFileError(f"cannot read JWKS file {path}: {e.strerror}") from None
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, json.JSONDecodeError, ValueError) as e:
        raise KeyFileError(f"{path} is not a usable JWKS file: {e}") from None
    keys: dict[str, PublicKeyTypes] = {}
    skipped: list[str] = []
    for jwk in jwks.keys:
        public = jwk.key
        name = jwk.key_id or key_id(public)
        use, alg = jwk.public_key_use, jwk.algorithm_name
        try:
            verified_as = algorithm_for(public)
        except KeyFileError:
            verified_as = None
        if use is not None and use != "sig":
            skipped.append(f"{name} (use {use!r}, not \"sig\")")
        elif verified_as is None or alg != verified_as:  # alg: the JWK's, or its type's
            skipped.append(f"{name} (alg {alg!r}; Segue verifies {verified_as or 'no'} tokens "
                           "with this key type)")
        else:
            keys[name] = public
    if not keys:
        raise KeyFileError(f"{path} holds no key that signs tokens Segue verifies; left out: "
                           f"{', '.join(skipped)}")
    return keys


class TokenVerifier:
    """Verifies tokens against trusted public keys, caching the grants of good tokens.

    The cache is keyed by SHA-256 of the token, so no token text is kept, and it is bounded;
    a cached grant is still refused once its expiry passes.
    """

    def __init__(
        self,
        keys: Mapping[str, PublicKeyTypes],
        *,
        audience: str,
        issuer: str | None = None,
        leeway_s: float = 30.0,
        cache_size: int = 10_000,
        require_scope: bool = False,
    ) -> None:
        """`require_scope`: refuse (TokenScopeError) tokens with no "tracks" claim, which would
        otherwise grant every track."""
        self._keys = dict(keys)
        self._require_scope = require_scope
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway_s
        self._cache: OrderedDict[bytes, Grant] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str, now: float | None = None) -> Grant:
        """Return the token's grant, or raise TokenError saying why it is refused
        (TokenScopeError for a genuine token refused for its missing "tracks" claim)."""
        grant = self._verified(token, now)
        if self._require_scope and not grant.scoped:
            raise TokenScopeError('this token has no "tracks" claim, and this node accepts only '
                                  "tokens that name the tracks they grant")
        return grant

    def _verified(self, token: str, now: float | None) -> Grant:
        current = time.time() if now is None else now
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        grant = self._cache.get(digest)
        if grant is not None:
            if current > grant.expires + self._leeway:
                del self._cache[digest]
                raise TokenError("token expired", "expired")
            self._cache.move_to_end(digest)
            return grant
        grant = self._decode(token, current)
        self._cache[digest] = grant
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return grant

    def _decode(self, token: str, now: float) -> Grant:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("token is not a JWT", "malformed") from None
        if not isinstance(header.get("kid", ""), str) or not isinstance(header.get("alg"), str):
            raise TokenError("token header is malformed", "malformed")
        kid = header.get("kid")
        candidates = [self._keys[kid]] if kid in self._keys else list(self._keys.values())
        alg = header.get("alg")
        refusal = TokenError("no trusted key matches the token", "unknown_key")
        for public in candidates:
            try:
                if algorithm_for(public) != alg:
                    continue
            except KeyFileError:
                continue
            try:
                claims = jwt.decode(
                    token,
                    public,  # type: ignore[arg-type]
                    algorithms=[alg],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    options={"require": ["exp", "sub"], "verify_iat": False},
                )
            except jwt.ExpiredSignatureError:
                raise TokenError("token expired", "expired") from None
            except jwt.InvalidSignatureError:
                # With a kid no trusted key has, every key was tried: the signer is unknown.
                if kid is None or kid in self._keys:
                    refusal = TokenError("token signature does not verify", "bad_signature")
                continue
            except jwt.InvalidTokenError as e:
                raise TokenError(f"token refused: {e}", _reason(e)) from None
            return _grant(claims)
        raise refusal


def _grant(claims: Mapping[str, object]) -> Grant:
    tracks = claims.get("tracks", ALL_TRACKS)  # none: every track (see the module docstring)
    if tracks == ALL_TRACKS:
        allowed = None
    elif isinstance(tracks, list) and all(isinstance(t, str) for t in tracks):
        allowed = frozenset(tracks)
    else:
        raise TokenError('token claim "tracks" must be "*" or a list of track ids', "malformed")
    exp = claims["exp"]
    if not isinstance(exp, int | float):
        raise TokenError('token claim "exp" is not a number', "malformed")
    return Grant(user=str(claims["sub"]), tracks=allowed, expires=float(exp),
                 scoped="tracks" in claims)


def _reason(e: jwt.InvalidTokenError) -> str:
    """The reason word of a refusal PyJWT raised (see TokenError)."""
    if isinstance(e, jwt.InvalidAudienceError):
        return "audience"
    if isinstance(e, jwt.InvalidIssuerError):
        return "issuer"
    if isinstance(e, jwt.ImmatureSignatureError):
        return "not_yet_valid"
    return "malformed"  # a claim missing or of the wrong type, a header PyJWT refuses
