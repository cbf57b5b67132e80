"""Exceptions raised by the seal. Each says what failed and for which track."""


class SealError(Exception):
    """Base class: something about sealed content or keys is not acceptable."""


class KeyFileError(SealError):
    """A key file is missing, unreadable, of the wrong type, or too widely readable."""


class ManifestError(SealError):
    """A manifest is malformed, unsigned by a trusted key, or otherwise unacceptable."""


class RollbackError(ManifestError):
    """A manifest is older than one already accepted for the same track."""


class NoRecipientKeyError(SealError):
    """None of this node's private keys can unwrap the track's content key."""


class ChunkAuthenticationError(SealError):
    """A chunk failed AES-GCM verification: it was altered, moved, truncated or swapped."""

    def __init__(self, track_id: str, index: int) -> None:
        super().__init__(f"chunk {index} of track {track_id} failed authentication")
        self.track_id = track_id
        self.index = index
