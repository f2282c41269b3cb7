"""Errors of the storage layer that callers must tell apart from bad input."""


class StorageError(OSError):
    """Writing to the work folder failed (a full disk, a read-only mount, lost permissions): the
    item being written and the OS's reason are in the message. Nothing done before it is lost."""
