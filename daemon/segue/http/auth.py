"""Player authorisation: the bearer token (header or ?token=) checked against the verifier.

The verifier is swapped whole on reload (new trusted keys), so requests in flight finish with
the one they started with and new requests get the new one.
"""

from __future__ import annotations

from segue.http.messages import Request, Response, error
from segue.seal.tokens import Grant, TokenError, TokenScopeError, TokenVerifier

_BEARER_REALM = 'Bearer realm="segue"'


class Authorizer:
    """Checks player tokens with the verifier now in force."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def use(self, verifier: TokenVerifier) -> None:
        """Verify tokens with `verifier` from now on (after a reload)."""
        self._verifier = verifier

    def authorize(self, request: Request, track_id: str | None = None) -> Grant | Response:
        """The request's grant, or the 401/403 response that refuses it."""
        header = request.headers.get("authorization")
        token = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None:
            token = request.query_one("token")
        if not token:
            return error(401, "a player token is required (Authorization: Bearer or ?token=)",
                         ("WWW-Authenticate", _BEARER_REALM))
        try:
            grant = self._verifier.verify(token)
        except TokenScopeError as e:  # a genuine token, but not one for this node: forbidden
            return error(403, str(e))
        except TokenError as e:
            return error(401, str(e), ("WWW-Authenticate",
                                       f'{_BEARER_REALM}, error="invalid_token"'))
        if track_id is not None and not grant.allows(track_id):
            return error(403, "this token does not grant that track")
        return grant
