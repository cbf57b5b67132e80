"""The keys the configuration names, loaded from their files.

Errors name the configuration key that pointed at the bad file, so a sysadmin knows which line
of segued.toml to look at.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from segue.config import ConfigError, Settings
from segue.seal.errors import KeyFileError
from segue.seal.keyring import EdgeKeys
from segue.seal.keys import key_id, load_private_key, load_public_key, read_secret
from segue.seal.tokens import TokenVerifier, load_jwks


def _load_many(
    paths: Iterable[Path], key: str, settings: Settings, loader, errors: list[str]
) -> dict[str, object]:
    loaded: dict[str, object] = {}
    for path in paths:
        try:
            k = loader(path)
        except KeyFileError as e:
            errors.append(f"{settings.path}: {key}: {e}")
            continue
        public = k.public_key() if hasattr(k, "private_bytes") else k
        loaded[key_id(public)] = k
    return loaded


def load_trusted_packagers(settings: Settings) -> dict[str, PublicKeyTypes]:
    """The packager public keys of [seal] trusted_packagers; raises ConfigError."""
    errors: list[str] = []
    if not settings.seal.trusted_packagers:
        errors.append(
            f"{settings.path}: seal.trusted_packagers is empty; list the packager public keys"
        )
    trusted = _load_many(settings.seal.trusted_packagers, "seal.trusted_packagers", settings,
                         load_public_key, errors)
    if errors:
        raise ConfigError(errors)
    return trusted  # type: ignore[return-value]


def load_edge_keys(settings: Settings) -> EdgeKeys:
    """Load [seal] edge_keys and trusted_packagers; raises ConfigError listing every problem."""
    errors: list[str] = []
    if not settings.seal.edge_keys:
        errors.append(f"{settings.path}: seal.edge_keys is empty; list this node's private keys")
    if not settings.seal.trusted_packagers:
        errors.append(
            f"{settings.path}: seal.trusted_packagers is empty; list the packager public keys"
        )
    private = _load_many(
        settings.seal.edge_keys, "seal.edge_keys", settings, load_private_key, errors
    )
    trusted = _load_many(
        settings.seal.trusted_packagers,
        "seal.trusted_packagers",
        settings,
        load_public_key,
        errors,
    )
    if errors:
        raise ConfigError(errors)
    return EdgeKeys(private=private, trusted_packagers=trusted)  # type: ignore[arg-type]


def load_token_verifier(settings: Settings) -> TokenVerifier:
    """Build the player-token verifier from [auth] public_keys and jwks."""
    errors: list[str] = []
    keys = _load_many(
        settings.auth.public_keys, "auth.public_keys", settings, load_public_key, errors
    )
    if settings.auth.jwks is not None:
        try:
            keys.update(load_jwks(settings.auth.jwks))
        except KeyFileError as e:
            errors.append(f"{settings.path}: auth.jwks: {e}")
    if not keys and not errors:
        errors.append(
            f"{settings.path}: [auth] names no public_keys and no jwks; players could not be "
            "authenticated"
        )
    if errors:
        raise ConfigError(errors)
    return TokenVerifier(
        keys,  # type: ignore[arg-type]
        audience=settings.auth.audience,
        issuer=settings.auth.issuer,
        leeway_s=settings.auth.leeway_s,
        require_scope=settings.auth.require_scope,
    )


def load_signing_key(path: Path | None, key: str, settings: Settings) -> PrivateKeyTypes:
    """Load a private signing key named by config `key` (packer.signing_key, auth.signing_key)."""
    if path is None:
        raise ConfigError([f"{settings.path}: {key} is not set; it must name a private key file"])
    try:
        return load_private_key(path)
    except KeyFileError as e:
        raise ConfigError([f"{settings.path}: {key}: {e}"]) from None


def load_recipients(settings: Settings) -> list[PublicKeyTypes]:
    """The public keys `segue pack` wraps content keys for ([packer] recipients)."""
    errors: list[str] = []
    if not settings.packer.recipients:
        errors.append(f"{settings.path}: packer.recipients is empty; list edge public keys")
    keys = _load_many(
        settings.packer.recipients, "packer.recipients", settings, load_public_key, errors
    )
    if errors:
        raise ConfigError(errors)
    return list(keys.values())  # type: ignore[arg-type]


USER_HASH_SALT_MIN_CHARS = 16


def load_user_hash_salt(settings: Settings) -> bytes:
    """The salt of user hashes in logs ([log] user_hash_salt_file); empty when none is set."""
    path = settings.log.user_hash_salt_file
    if path is None:
        return b""
    try:
        salt = read_secret(path)
    except KeyFileError as e:
        raise ConfigError([f"{settings.path}: log.user_hash_salt_file: {e}"]) from None
    if len(salt) < USER_HASH_SALT_MIN_CHARS:
        raise ConfigError([
            f"{settings.path}: log.user_hash_salt_file: {path} holds fewer than "
            f"{USER_HASH_SALT_MIN_CHARS} characters; make one with `head -c 32 /dev/urandom | "
            f"base64 > {path}` (mode 0600) and copy it to every node"])
    return salt.encode()
