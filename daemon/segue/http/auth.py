"""Player authorisation: the bearer token (header or ?token=) checked against the verifier.

The verifier is swapped whole on reload (new trusted keys), so requests in flight finish with
the one they started with and new requests get the new one.

Every refusal (401, 403) says why in the request's log line, as the field `auth_refused`:
missing, malformed, expired, bad_signature, unknown_key, audience, issuer, not_yet_valid,
scope_required, track_not_granted, or for a ticket wrong_scope; `credential` says whether a
token or a ticket was refused. The token itself is never logged: the words are the
verifier's, not the client's.
"""

from __future__ import annotations

from segue.http.messages import Request, Response, error
from segue.seal.tokens import Grant, TokenError, TokenScopeError, TokenVerifier

_BEARER_REALM = 'Bearer realm="segue"'
_INVALID_TOKEN = f'{_BEARER_REALM}, error="invalid_token"'
TRACK_NOT_GRANTED = "track_not_granted"


def refusal(status: int, message: str, reason: str, *, credential: str = "token",
            track: str | None = None) -> Response:
    """The 401 or 403 answer, with `reason` (one of the words above) for the log line.

    A 401 carries the Bearer challenge (RFC 6750 3), with error="invalid_token" when a
    credential was given and refused.
    """
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = (("WWW-Authenticate", _BEARER_REALM if reason == "missing"
                    else _INVALID_TOKEN),)
    response = error(status, message, *headers)
    response.fields = {"auth_refused": reason, "credential": credential}
    if track is not None:
        response.fields["track"] = track
    return response


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
            return refusal(401, "a player token is required (Authorization: Bearer or ?token=)",
                           "missing", track=track_id)
        try:
            grant = self._verifier.verify(token)
        except TokenError as e:
            # A genuine token refused for its scope is not one for this node: forbidden.
            status = 403 if isinstance(e, TokenScopeError) else 401
            return refusal(status, str(e), e.reason, track=track_id)
        if track_id is not None and not grant.allows(track_id):
            return refusal(403, "this token does not grant that track", TRACK_NOT_GRANTED,
                           track=track_id)
        return grant
