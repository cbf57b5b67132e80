"""Signed track manifests: what a track is, how it was sealed, and who may open it.

The manifest file is a small JSON envelope around the exact payload bytes that were signed, so
verification never depends on re-serialising JSON the same way (see docs/format.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from segue.seal.chunks import MAX_CHUNKS, SALT_BYTES, chunk_count
from segue.seal.errors import ManifestError, RollbackError
from segue.seal.keys import key_id
from segue.seal.wrap import WrappedKey

FORMAT = 1
MAX_CONTENT_VERSION = 2**64 - 1
# Manifest versions are stored in SQLite (64-bit) and incremented; 2^53 - 1 is also the largest
# integer that every JSON reader holds exactly.
MAX_VERSION = 2**53 - 1
# Chunks are held whole in memory by readers; 64 MiB bounds what a manifest can ask for.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
ED25519 = "Ed25519"
ECDSA_P256 = "ECDSA-P256-SHA256"
SIGNATURE_LABEL = b"segue/v1 manifest\x00"
_TRACK_ID = re.compile(r"[a-z0-9]{8,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{32}")
_HEADER_TEXT = re.compile(r"[ -~]+")


def is_track_id(text: str) -> bool:
    """True for 8 to 64 lowercase ASCII letters and digits, and nothing else (no newline)."""
    return _TRACK_ID.fullmatch(text) is not None


def b64e(data: bytes) -> str:
    """Unpadded base64url, the encoding of every binary field in a manifest."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Decode strict unpadded base64url; raises ManifestError on anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ManifestError("expected an unpadded base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ManifestError("invalid base64url") from None


@dataclass(frozen=True)
class TrackMeta:
    """What a player and the catalogue show about a track."""

    title: str
    artist: str = ""
    album: str = ""
    duration_s: float = 0.0
    mime: str = "application/octet-stream"


@dataclass(frozen=True)
class Manifest:
    """The signed description of one sealed track."""

    track_id: str
    version: int
    content_version: int
    size: int
    chunk_size: int
    salt: bytes
    chunk_digests: tuple[str, ...]
    recipients: tuple[WrappedKey, ...]
    meta: TrackMeta
    created: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_digests)

    def payload(self) -> bytes:
        """The canonical payload bytes that the packager signs."""
        doc = {
            "track_id": self.track_id,
            "version": self.version,
            "content_version": self.content_version,
            "created": self.created,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunk_count": self.chunk_count,
            "salt": b64e(self.salt),
            "chunks": list(self.chunk_digests),
            "recipients": [
                {"key_id": r.key_id, "alg": r.alg, "wrapped": b64e(r.wrapped)}
                for r in self.recipients
            ],
            "meta": {
                "title": self.meta.title,
                "artist": self.meta.artist,
                "album": self.meta.album,
                "duration_s": self.meta.duration_s,
                "mime": self.meta.mime,
            },
            **dict(self.extra),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(manifest: Manifest, signer: PrivateKeyTypes) -> bytes:
    """Return the manifest file bytes: the payload signed with an Ed25519 or P-256 key."""
    if not 1 <= manifest.version <= MAX_VERSION:
        raise ManifestError(f"track {manifest.track_id}: version {manifest.version} is not "
                            f"between 1 and {MAX_VERSION}; readers would refuse the manifest")
    payload = manifest.payload()
    message = SIGNATURE_LABEL + payload
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        alg, sig = ED25519, signer.sign(message)
    elif isinstance(signer, ec.EllipticCurvePrivateKey) and isinstance(
        signer.curve, ec.SECP256R1
    ):
        alg, sig = ECDSA_P256, signer.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        raise ManifestError(
            f"a {type(signer).__name__} cannot sign manifests; use Ed25519 or P-256"
        )
    envelope = {
        "segue_manifest": FORMAT,
        "payload": b64e(payload),
        "signatures": [{"key_id": key_id(signer.public_key()), "alg": alg, "sig": b64e(sig)}],
    }
    return json.dumps(envelope, indent=1).encode() + b"\n"


def _verify_one(public: PublicKeyTypes, alg: str, sig: bytes, message: bytes) -> bool:
    try:
        if alg == ED25519 and isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(sig, message)
            return True
        if (
            alg == ECDSA_P256
            and isinstance(public, ec.EllipticCurvePublicKey)
            and isinstance(public.curve, ec.SECP256R1)
        ):
            public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def signer_ids(data: bytes) -> list[str]:
    """The key ids a manifest file says signed it (not verified: call verify for that)."""
    try:
        signatures = json.loads(data).get("signatures")
        return [str(entry["key_id"]) for entry in signatures]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def verify(data: bytes, trusted: Mapping[str, PublicKeyTypes]) -> Manifest:
    """Parse manifest file bytes and check a signature by one of the `trusted` packager keys.

    `trusted` maps key ids to public keys. The bytes come from a share anyone with write access
    may have changed, so every failure, whatever the shape of the JSON, is a ManifestError:
    callers catch that one type and go on to the next copy or track.
    """
    envelope = _object(_loads(data, "manifest"), "manifest")
    if not _is_format(envelope.get("segue_manifest")):
        raise ManifestError(f"not a segue manifest of format {FORMAT}")
    payload = b64d(envelope.get("payload", ""))
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list):
        raise ManifestError("manifest has no signatures")
    message = SIGNATURE_LABEL + payload
    signers = []
    for entry in signatures:
        kid = entry.get("key_id") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
            signers.append("(a malformed key id)")
            continue
        signers.append(kid)
        public, alg = trusted.get(kid), entry.get("alg")
        if public is not None and isinstance(alg, str) and _verify_one(
            public, alg, b64d(entry.get("sig", "")), message
        ):
            return _parse_payload(payload)
    named = ", ".join(signers[:4]) + (f" and {len(signers) - 4} more" if len(signers) > 4 else "")
    raise ManifestError(f"manifest carries no valid signature by a trusted packager key ({named})")


def _loads(data: bytes, what: str) -> Any:
    """json.loads for untrusted bytes: bad UTF-8, NaN or Infinity, a number too long to
    convert and nesting deep enough to exhaust the stack all become a ManifestError."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError are too
        raise ManifestError(f"{what} is not valid JSON: {e}") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _is_format(value: Any) -> bool:
    return type(value) is int and value == FORMAT


def _parse_payload(payload: bytes) -> Manifest:
    doc = _object(_loads(payload, "manifest payload"), "manifest payload")
    meta = _object(_required(doc, "meta"), "manifest payload field meta")
    manifest = Manifest(
        track_id=_str(doc, "track_id"),
        version=_int(doc, "version", 1, MAX_VERSION),
        content_version=_int(doc, "content_version", 1, MAX_CONTENT_VERSION),
        created=_int(doc, "created", 0, default=0),
        size=_int(doc, "size", 0),
        chunk_size=_int(doc, "chunk_size", 1, MAX_CHUNK_SIZE),
        salt=b64d(_str(doc, "salt")),
        chunk_digests=tuple(_str_item(d, "chunks") for d in _list(doc, "chunks")),
        recipients=tuple(_recipient(r) for r in _list(doc, "recipients")),
        meta=TrackMeta(
            title=_str(meta, "title"),
            artist=_str(meta, "artist", ""),
            album=_str(meta, "album", ""),
            duration_s=_number(meta, "duration_s", 0.0),
            mime=_str(meta, "mime", "application/octet-stream"),
        ),
        extra={k: v for k, v in doc.items() if k not in _KNOWN_FIELDS},
    )
    declared_count = _int(doc, "chunk_count", 1)
    if not is_track_id(manifest.track_id):
        raise ManifestError(f"manifest names an invalid track id {manifest.track_id!r}")
    if len(manifest.salt) != SALT_BYTES:
        raise ManifestError(f"track {manifest.track_id}: salt must be {SALT_BYTES} bytes")
    if not all(_SHA256_HEX.fullmatch(d) for d in manifest.chunk_digests):
        raise ManifestError(f"track {manifest.track_id}: chunk digests must be SHA-256 in hex")
    if not _HEADER_TEXT.fullmatch(manifest.meta.mime):
        # The edge sends it as Content-Type: a line break would split the response.
        raise ManifestError(f"track {manifest.track_id}: meta.mime must be printable ASCII")
    if "placement" in doc:
        _check_placement(doc["placement"], manifest.track_id)
    expected = chunk_count(manifest.size, manifest.chunk_size)
    if expected > MAX_CHUNKS:
        raise ManifestError(f"track {manifest.track_id}: more than {MAX_CHUNKS} chunks")
    if declared_count != expected or manifest.chunk_count != expected:
        raise ManifestError(
            f"track {manifest.track_id}: {manifest.size} bytes in chunks of "
            f"{manifest.chunk_size} need {expected} chunks, manifest lists {manifest.chunk_count}"
        )
    return manifest


_KNOWN_FIELDS = frozenset([
    "track_id", "version", "content_version", "created", "size", "chunk_size", "chunk_count",
    "salt", "chunks", "recipients", "meta",
])
_REQUIRED: Any = object()


def _malformed(what: str) -> ManifestError:
    return ManifestError(f"manifest payload is malformed: {what}")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{what} must be a JSON object, not {_kind(value)}")
    return value


def _required(doc: Mapping[str, Any], name: str, default: Any = _REQUIRED) -> Any:
    if name in doc:
        return doc[name]
    if default is _REQUIRED:
        raise _malformed(f"{name} is missing")
    return default


def _str(doc: Mapping[str, Any], name: str, default: Any = _REQUIRED) -> str:
    return _str_item(_required(doc, name, default), name)


def _str_item(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _malformed(f"{name} must be a string, not {_kind(value)}")
    return value


def _int(doc: Mapping[str, Any], name: str, minimum: int, maximum: int | None = None,
         default: Any = _REQUIRED) -> int:
    """An integer field (not a boolean, not 1.0: the format asks for JSON integers)."""
    value = _required(doc, name, default)
    if type(value) is not int:
        raise _malformed(f"{name} must be an integer, not {_kind(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        raise _malformed(f"{name} must be at least {minimum}"
                         + ("" if maximum is None else f" and at most {maximum}"))
    return value


def _number(doc: Mapping[str, Any], name: str, default: float) -> float:
    value = _required(doc, name, default)
    if type(value) not in (int, float):
        raise _malformed(f"{name} must be a number, not {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise _malformed(f"{name} must be a finite number")
    return number


def _list(doc: Mapping[str, Any], name: str) -> list[Any]:
    value = _required(doc, name)
    if not isinstance(value, list):
        raise _malformed(f"{name} must be a list, not {_kind(value)}")
    return value


def _recipient(value: Any) -> WrappedKey:
    entry = _object(value, "a manifest recipients entry")
    return WrappedKey(_str(entry, "key_id"), _str(entry, "alg"), b64d(_str(entry, "wrapped")))


def _check_placement(value: Any, track_id: str) -> None:
    """Readers compute chunk holders from `placement`; refuse one they could not use."""
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("shares"), list)
        or not value["shares"]
        or not all(isinstance(name, str) for name in value["shares"])
        or type(value.get("replicas")) is not int
        or value["replicas"] < 1
    ):
        raise ManifestError(
            f"track {track_id}: placement must be {{\"shares\": [names], \"replicas\": N >= 1}}"
        )


def _kind(value: Any) -> str:
    """A JSON value's type for an error message (the value itself may be huge or hostile)."""
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), "a value")


def check_not_rolled_back(manifest: Manifest, accepted_version: int | None) -> None:
    """Refuse a manifest older than the newest one already accepted for its track."""
    if accepted_version is not None and manifest.version < accepted_version:
        raise RollbackError(
            f"track {manifest.track_id}: manifest version {manifest.version} is older than "
            f"version {accepted_version} already accepted"
        )
