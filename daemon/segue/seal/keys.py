"""Key files: generation, key ids, and loading with the permission checks a sysadmin expects.

Private keys are PKCS#8 PEM files that must not be readable by group or others; public keys are
SubjectPublicKeyInfo PEM files. A key id is the first 16 bytes of SHA-256 over the public key's
DER encoding, in hex, so any implementation can compute it from the public key alone.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)

from segue.seal.errors import KeyFileError

KeyType = Literal["x25519", "rsa", "p256", "ed25519"]
Role = Literal["edge", "packager", "auth"]

# Which key types fit which role: edges unwrap content keys, packagers sign manifests,
# auth keys sign player tokens (EdDSA, ES256 or RS256).
ROLE_KEY_TYPES: dict[str, tuple[str, ...]] = {
    "edge": ("x25519", "rsa", "p256"),
    "packager": ("ed25519", "p256"),
    "auth": ("ed25519", "p256", "rsa"),
}

RSA_BITS = 3072


def generate(key_type: str) -> PrivateKeyTypes:
    """Return a new private key of `key_type` (x25519, rsa, p256 or ed25519)."""
    if key_type == "x25519":
        return x25519.X25519PrivateKey.generate()
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ValueError(f"unknown key type {key_type!r}; choose x25519, rsa, p256 or ed25519")


def key_type_of(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """Name the type of a private or public key as `generate` spells it."""
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "x25519"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "p256"
        raise KeyFileError(f"unsupported elliptic curve {key.curve.name}; use P-256")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    raise KeyFileError(f"unsupported key type {type(key).__name__}")


def public_der(key: PublicKeyTypes) -> bytes:
    """The SubjectPublicKeyInfo DER encoding of a public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKeyTypes) -> str:
    """The key id: hex of the first 16 bytes of SHA-256(SubjectPublicKeyInfo DER)."""
    return hashlib.sha256(public_der(key)).digest()[:16].hex()


def write_key_pair(key: PrivateKeyTypes, path: Path, *, overwrite: bool = False) -> str:
    """Write `path` (private, mode 0600) and `path.pub` (public); return the key id.

    The private file is created with mode 0600 from the start, so it is never readable by
    others, not even for a moment.
    """
    pub_path = path.with_name(path.name + ".pub")
    if not overwrite:
        for existing in (path, pub_path):
            if existing.exists():
                raise KeyFileError(f"{existing} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    return write_public_key(key, pub_path)


def write_public_key(key: PrivateKeyTypes, pub_path: Path) -> str:
    """Write the public half of `key` to `pub_path` (PEM); return the key id."""
    public = key.public_key()
    pub_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(public)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror}") from None


def _read_private(path: Path, what: str) -> bytes:
    """Read a secret file, refusing one that group or others can read."""
    check_private_file(path, what)
    return _read(path, what)


def check_private_file(path: Path, what: str) -> None:
    """Raise KeyFileError unless `path` exists and only its owner may read it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{what} {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}"
        )


def read_secret(path: Path) -> str:
    """A password or token from a secret file (mode 0600), without its trailing newline."""
    return _read_private(path, "secret file").decode("utf-8").rstrip("\r\n")


_PUBLIC_PEM = b"-----BEGIN PUBLIC KEY-----"
_PRIVATE_PEM = b"PRIVATE KEY-----"


def load_private_key(path: Path) -> PrivateKeyTypes:
    """Load a PEM private key, refusing a file that group or others can read.

    A public key given instead (the `.pub` of a pair, mode 0644) is named as such first:
    otherwise its mode would be the complaint, and `chmod 600` the wrong fix.
    """
    if _PUBLIC_PEM in _read(path, "private key")[:100]:
        private = path.with_name(path.name.removesuffix(".pub"))
        hint = f" ({private}?)" if private != path else ""
        raise KeyFileError(f"{path} is a public key; this needs the private key file{hint}")
    data = _read_private(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {e}") from None


def load_public_key(path: Path) -> PublicKeyTypes:
    """Load a PEM public key (SubjectPublicKeyInfo)."""
    data = _read(path, "public key")
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        if _PRIVATE_PEM in data:
            raise KeyFileError(f"{path} is a private key; this needs its public half "
                               f"({path}.pub)") from None
        raise KeyFileError(f"{path} is not a PEM public key: {e}") from None


def load_any_key(path: Path) -> tuple[PublicKeyTypes, bool]:
    """The public key of a key file, private or public: (public key, whether it was private)."""
    if _PRIVATE_PEM in _read(path, "key file"):
        return load_private_key(path).public_key(), True
    return load_public_key(path), False


def roles_of(key_type: str) -> list[str]:
    """The roles a key of this type can have."""
    return [role for role, types in ROLE_KEY_TYPES.items() if key_type in types]


@dataclass(frozen=True)
class PublicKeyRef:
    """A public key with its id, as the manifest and token code use it."""

    key_id: str
    key: PublicKeyTypes

    @classmethod
    def of(cls, key: PublicKeyTypes) -> PublicKeyRef:
        return cls(key_id(key), key)
