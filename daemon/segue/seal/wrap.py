"""Content-key wrapping: one wrapped copy of a track's content key per recipient key.

RSA recipients get RSA-OAEP with SHA-256 (MGF1-SHA256); X25519 and P-256 recipients get HPKE
(RFC 9180, base mode) with HKDF-SHA256 and AES-256-GCM. Both bind the track id: RSA through the
OAEP label, HPKE through its `info`, so a wrapped key cannot be moved to another track.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from segue.seal.errors import NoRecipientKeyError, SealError
from segue.seal.keys import key_id

RSA_OAEP = "RSA-OAEP-SHA256"
HPKE_X25519 = "HPKE-X25519-SHA256-AES256GCM"
HPKE_P256 = "HPKE-P256-SHA256-AES256GCM"

_SUITES = {
    HPKE_X25519: Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM),
    HPKE_P256: Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM),
}
_CONTEXT = b"segue/v1 content key\x00"


@dataclass(frozen=True)
class WrappedKey:
    """The content key sealed for one recipient, named by the recipient's key id."""

    key_id: str
    alg: str
    wrapped: bytes


def _context(track_id: str) -> bytes:
    return _CONTEXT + track_id.encode("ascii")


def _oaep(track_id: str) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()),
        algorithm=hashes.SHA256(),
        label=_context(track_id),
    )


def wrap(content_key: bytes, recipient: PublicKeyTypes, track_id: str) -> WrappedKey:
    """Wrap `content_key` for one recipient public key (RSA, X25519 or P-256)."""
    kid = key_id(recipient)
    if isinstance(recipient, rsa.RSAPublicKey):
        return WrappedKey(kid, RSA_OAEP, recipient.encrypt(content_key, _oaep(track_id)))
    if isinstance(recipient, x25519.X25519PublicKey):
        alg = HPKE_X25519
    elif isinstance(recipient, ec.EllipticCurvePublicKey) and isinstance(
        recipient.curve, ec.SECP256R1
    ):
        alg = HPKE_P256
    else:
        raise SealError(f"a {type(recipient).__name__} cannot receive content keys")
    return WrappedKey(kid, alg, _SUITES[alg].encrypt(content_key, recipient, _context(track_id)))


def unwrap(
    wrapped: list[WrappedKey], private_keys: dict[str, PrivateKeyTypes], track_id: str
) -> bytes:
    """Recover the content key with whichever of this node's keys (by key id) it was wrapped for."""
    for item in wrapped:
        private = private_keys.get(item.key_id)
        if private is None:
            continue
        try:
            if item.alg == RSA_OAEP and isinstance(private, rsa.RSAPrivateKey):
                return private.decrypt(item.wrapped, _oaep(track_id))
            suite = _SUITES.get(item.alg)
            if suite is not None and isinstance(
                private, x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey
            ):
                return suite.decrypt(item.wrapped, private, _context(track_id))
        except (ValueError, InvalidTag):
            continue
    raise NoRecipientKeyError(
        f"track {track_id}: none of this node's keys ({', '.join(sorted(private_keys)) or 'none'})"
        f" unwraps its content key (wrapped for {', '.join(w.key_id for w in wrapped)})"
    )
