"""What `segue init` makes in a node's folder: keys, a marked store, a catalogue, segued.toml.

Making a node again over an existing one is where data gets lost: the store's chunks can be
opened only with the edge keys they were sealed for, and nothing else holds those keys. So the
default refuses to touch anything; `force` rewrites the configuration and makes only what is
missing (a key that was deleted, the store, the catalogue), keeping every key and track there
is; and only `wipe`, which the command line confirms first, replaces keys and deletes tracks.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from segue.catalogue import Catalogue
from segue.config import Listen
from segue.seal.keys import generate, load_private_key, write_key_pair, write_public_key
from segue.storage.local import LocalStore
from segue.storage.marker import new_marker

#: (role, key type) of every key a node of each kind holds privately: a self-contained node
#: ("all") packs, issues tokens and serves; an edge only serves, with the public keys of the
#: packager and the token issuer copied in.
KEYS = {
    "all": (("edge", "x25519"), ("edge", "rsa"), ("packager", "ed25519"), ("auth", "ed25519")),
    "edge": (("edge", "x25519"), ("edge", "rsa")),
}
#: The public keys an edge needs from elsewhere, where its configuration expects them.
PEER_KEYS = ("keys/packager-ed25519.pem.pub", "keys/auth-ed25519.pem.pub")


@dataclass(frozen=True)
class NodeDir:
    """The paths of a node made by `segue init` in `root`."""

    root: Path
    role: str = "all"

    @property
    def conf(self) -> Path:
        return self.root / "segued.toml"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def catalogue(self) -> Path:
        return self.root / "catalogue.sqlite"

    def key(self, role: str, key_type: str) -> Path:
        return self.root / "keys" / f"{role}-{key_type}.pem"

    def existing(self) -> list[Path]:
        """What a new node would be made over."""
        keys = [self.key(*k) for k in KEYS[self.role]]
        paths = [self.conf, *keys, *(_pub(k) for k in keys), self.store, self.catalogue]
        return [p for p in paths if p.exists()]

    def make(self, listen: Listen, *, wipe: bool = False) -> list[str]:
        """Make (or complete) the node; lines saying what each path is and whether it was made
        or kept. With `wipe`, every key is new and the store and catalogue start empty."""
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [self._key(role, key_type, wipe) for role, key_type in KEYS[self.role]]
        if wipe:
            # The old chunks were sealed for the old keys; nothing could open them any more.
            shutil.rmtree(self.store, ignore_errors=True)
            for name in ("catalogue.sqlite", "catalogue.sqlite-wal", "catalogue.sqlite-shm"):
                (self.root / name).unlink(missing_ok=True)
        if self.store.exists():
            lines.append(f"{self.store} (chunk store, kept)")
        else:
            self.store.mkdir()
            LocalStore(self.store).write_marker(new_marker().to_bytes())
            lines.append(f"{self.store} (chunk store)")
        kept = self.catalogue.exists()
        Catalogue.create(self.catalogue).close()
        lines.append(f"{self.catalogue} (catalogue{', kept' if kept else ''})")
        self.conf.write_text(_CONFIG.format(
            listen=listen, packer=_PACKER if self.role == "all" else "",
            auth_signing=_AUTH_SIGNING if self.role == "all" else ""))
        lines.append(str(self.conf))
        return lines

    def _key(self, role: str, key_type: str, wipe: bool) -> str:
        path = self.key(role, key_type)
        if path.exists() and not wipe:
            key = load_private_key(path)
            kid = write_public_key(key, _pub(path))  # the same bytes, or a deleted .pub again
            return f"{path} ({role} {key_type} key, id {kid}, kept)"
        kid = write_key_pair(generate(key_type), path, overwrite=True)
        return f"{path} ({role} {key_type} key, id {kid})"


def _pub(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


_CONFIG = """\
# Segue node made by `segue init`. Paths are relative to this file.
# etc/segue/segued.toml in the source tree documents every key.

[http]
listen = "{listen}"

[seal]
edge_keys = ["keys/edge-x25519.pem", "keys/edge-rsa.pem"]
trusted_packagers = ["keys/packager-ed25519.pem.pub"]

{packer}[auth]
{auth_signing}public_keys = ["keys/auth-ed25519.pem.pub"]

[store]
path = "store"

[catalogue]
path = "catalogue.sqlite"
"""
_PACKER = """[packer]
signing_key = "keys/packager-ed25519.pem"
recipients = ["keys/edge-x25519.pem.pub", "keys/edge-rsa.pem.pub"]

"""
_AUTH_SIGNING = 'signing_key = "keys/auth-ed25519.pem"\n'
