"""The keys an edge opens tracks with: its private keys and the packagers it trusts.

Loading them from the files the configuration names is segue.configured_keys' work; this
module holds only the value, so that seal and storage never depend on the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes


@dataclass(frozen=True)
class EdgeKeys:
    """What an edge needs to open tracks: its private keys and the packagers it trusts."""

    private: dict[str, PrivateKeyTypes]
    trusted_packagers: dict[str, PublicKeyTypes]
