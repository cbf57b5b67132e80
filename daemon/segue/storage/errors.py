"""Exceptions raised by chunk stores and by the read path built on them."""


class StoreError(Exception):
    """A store could not read or write what was asked; the message names track and file."""


class NotInStoreError(StoreError):
    """The manifest or chunk does not exist in this store."""


class BadCopyError(StoreError):
    """This copy is not what it should be (not a regular file, too large) or cannot be read
    (permissions, an I/O error on that file, a link loop) while its share answers: the share is
    not marked down; the next copy may be good."""


class StoreConfigError(Exception):
    """Shares that cannot be opened as given: (share name, what is wrong) for each.

    Storage knows nothing of the configuration file; whoever mapped its settings to share
    specs names the setting in the message people see.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {what}" for name, what in problems))
        self.problems = problems


class TrackUnavailable(Exception):
    """The track exists but cannot be served now (no valid manifest, chunk or key)."""


class TrackNotFound(Exception):
    """No such track on this node."""
