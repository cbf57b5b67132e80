"""`segue fsck`: every manifest signature and every chunk digest on every share.

Needs no private key: manifests are checked against the trusted packager keys and chunks
against the SHA-256 digests the signed manifest lists. A manifest copy is valid only if it also
names the track whose folder holds it and is not older than the version this node accepted
(rollback protection), as the edge itself would check. With repair, a missing or bad copy is
rewritten from a good one (the newest valid manifest; a chunk copy whose digest matches); a
valid but older manifest copy is replaced only when asked for, never on fsck's own judgement.

The catalogue is checked against the manifests both ways: a catalogued track no share holds is
found by search and 404s on every play; a packed track the catalogue lacks cannot be found.
Repair adds the missing rows from the signed manifests' own metadata; it never drops a row
(that is `segue tracks remove`, a person's decision).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from segue.seal import manifest as mf
from segue.seal.chunks import TAG_BYTES
from segue.seal.errors import ManifestError
from segue.storage.errors import NotInStoreError, StoreError
from segue.storage.shares import Share, ShareSet
from segue.storage.store import ChunkStore


@dataclass
class Problem:
    """One thing wrong with one copy."""

    track_id: str
    share: str
    what: str
    repaired: bool = False

    def __str__(self) -> str:
        state = "repaired" if self.repaired else "NOT repaired"
        return f"{self.track_id} on {self.share}: {self.what} ({state})"


@dataclass
class Report:
    tracks: int = 0
    chunks: int = 0
    problems: list[Problem] | None = None

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems or [] if not p.repaired]


def check(
    shares: ShareSet,
    trusted: Mapping[str, PublicKeyTypes],
    *,
    accepted_version: Callable[[str], int | None],
    track_ids: Iterable[str] | None = None,
    repair: bool = False,
    replace_older: bool = False,
    report_problem: Callable[[Problem], None] = lambda p: None,
    catalogued: Collection[str] | None = None,
    add_to_catalogue: Callable[[mf.Manifest], None] | None = None,
) -> Report:
    """Check (and with `repair`, mend) the given tracks, or every track on any share or in
    `catalogued` (the catalogue's track ids).

    `accepted_version` gives the newest manifest version the node accepted for a track (the
    catalogue's); older copies are rollbacks. `replace_older` lets repair also overwrite a
    valid copy whose version is older than the newest valid one. With `catalogued`, a track
    on the shares but not in it is a problem, repaired by `add_to_catalogue(manifest)`, and
    one in it but on no share is one too.
    """
    if track_ids is None:
        found: set[str] = set(catalogued or ())
        for share in shares.shares:
            found.update(share.store.track_ids())
        track_ids = sorted(found)
    report = Report(problems=[])
    assert report.problems is not None

    def problem(p: Problem) -> None:
        assert report.problems is not None
        report.problems.append(p)
        report_problem(p)

    for track_id in track_ids:
        report.tracks += 1
        manifest = _check_manifests(shares, trusted, accepted_version(track_id), track_id,
                                    repair, replace_older, problem)
        if catalogued is not None:
            _check_catalogue(track_id, manifest, catalogued, repair, add_to_catalogue, problem)
        if manifest is None:
            continue
        for index, digest in enumerate(manifest.chunk_digests):
            report.chunks += 1
            _check_chunk(shares, manifest, index, digest, repair, problem)
    return report


def _check_manifests(
    shares: ShareSet,
    trusted: Mapping[str, PublicKeyTypes],
    accepted: int | None,
    track_id: str,
    repair: bool,
    replace_older: bool,
    problem: Callable[[Problem], None],
) -> mf.Manifest | None:
    """The newest valid manifest of a track. Copies that are missing or invalid are problems,
    rewritten from the newest with `repair`; older valid copies too, but rewritten only with
    `replace_older` as well."""
    raw: dict[str, bytes] = {}
    states: dict[str, str] = {}
    valid: dict[str, mf.Manifest] = {}
    for share in shares.shares:
        try:
            data = share.store.read_manifest(track_id)
            manifest = mf.verify(data, trusted)
            if manifest.track_id != track_id:
                raise ManifestError(f"it is the manifest of track {manifest.track_id}")
            mf.check_not_rolled_back(manifest, accepted)
        except NotInStoreError:
            states[share.name] = "missing"
        except StoreError as e:
            states[share.name] = f"unreadable: {e}"
        except ManifestError as e:
            states[share.name] = f"invalid: {e}"
        else:
            raw[share.name], valid[share.name] = data, manifest
    if not valid:
        for name, state in states.items():
            problem(Problem(track_id, name, f"manifest {state}; no valid copy on any share"))
        return None
    newest = max(valid, key=lambda name: valid[name].version)
    best, data = valid[newest], raw[newest]
    for share in shares.shares:
        copy = valid.get(share.name)
        if copy is None:
            found, rewrite = Problem(track_id, share.name, f"manifest {states[share.name]}"), repair
        elif copy.version < best.version:
            found = Problem(track_id, share.name,
                            f"manifest version {copy.version} older than {best.version}")
            rewrite = repair and replace_older
            if not rewrite:
                found.what += " (a valid copy: --repair --replace-older replaces it)"
        else:
            continue
        if rewrite:
            _repair(found, share, lambda store: store.write_manifest(track_id, data))
        problem(found)
    return best


def _check_catalogue(
    track_id: str,
    manifest: mf.Manifest | None,
    catalogued: Collection[str],
    repair: bool,
    add: Callable[[mf.Manifest], None] | None,
    problem: Callable[[Problem], None],
) -> None:
    """A track's catalogue row against its manifest: each without the other is a problem."""
    if manifest is None and track_id in catalogued:
        problem(Problem(track_id, "catalogue", "catalogued, but no share holds a valid manifest: "
                        "search finds it and plays fail (pack it again, or remove it)"))
    elif manifest is not None and track_id not in catalogued:
        found = Problem(track_id, "catalogue", "on the shares but not in the catalogue")
        if repair and add is not None:
            add(manifest)
            found.repaired = True
        problem(found)


def _check_chunk(
    shares: ShareSet,
    manifest: mf.Manifest,
    index: int,
    digest: str,
    repair: bool,
    problem: Callable[[Problem], None],
) -> None:
    """Every copy placement says should exist must match the signed digest."""
    track_id = manifest.track_id
    holders = sorted(shares.holders(track_id, index, manifest.extra.get("placement")),
                     key=lambda s: s.name)
    buf = bytearray(manifest.chunk_size + TAG_BYTES + 1)
    states: dict[str, str] = {}
    good: bytes | None = None
    for share in holders:
        try:
            copy = bytes(buf[:share.store.read_chunk_into(track_id, index, buf)])
        except NotInStoreError:
            states[share.name] = "missing"
            continue
        except StoreError as e:
            states[share.name] = f"unreadable: {e}"
            continue
        if hashlib.sha256(copy).hexdigest() == digest:
            good = copy
        else:
            states[share.name] = "corrupt (digest mismatch)"
    for name, state in sorted(states.items()):
        found = Problem(track_id, name, f"chunk {index} {state}")
        target = shares.get(name)
        if good is None:
            found.what += "; no good copy on any share"
        elif repair and target is not None:
            _repair(found, target, _chunk_writer(track_id, index, good))
        problem(found)


def _chunk_writer(track_id: str, index: int, data: bytes) -> Callable[[ChunkStore], None]:
    def write(store: ChunkStore) -> None:
        store.write_chunk(track_id, index, data)

    return write


def _repair(found: Problem, share: Share, write: Callable[[ChunkStore], None]) -> None:
    """Rewrite the copy `found` is about; a write refused says why in the problem."""
    try:
        write(share.store)
    except StoreError as e:
        found.what += f"; cannot repair: {e}"
    else:
        found.repaired = True
