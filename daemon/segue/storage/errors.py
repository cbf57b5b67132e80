"""Exceptions raised by chunk stores."""


class StoreError(Exception):
    """A store could not read or write what was asked; the message names track and file."""


class NotInStoreError(StoreError):
    """The manifest or chunk does not exist in this store."""
