"""The domain error tree.

Lower layers raise these; each adapter (web, dimse, cli) maps them to its own
protocol in exactly one place. Third-party errors are chained with ``raise ... from``.
"""

import errno

# Errors meaning "the disk is full": no space, quota exhausted, file too large.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


class DicomWebError(Exception):
    """Base of every error the archive raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(DicomWebError):
    """The request itself is malformed (bad UID, bad query parameter, broken multipart)."""


class NotFound(DicomWebError):
    """The addressed study, series, instance or resource does not exist."""


class NotAcceptable(DicomWebError):
    """No representation matches what the client accepts."""


class UnsupportedMediaType(DicomWebError):
    """The request body has a media type this service does not take."""


class PayloadTooLarge(DicomWebError):
    """The request body exceeds the configured maximum."""


class Conflict(DicomWebError):
    """The request conflicts with the stored state."""


class OutOfResources(DicomWebError):
    """Storage is exhausted (disk full, quota reached)."""


class StorageUnavailable(DicomWebError):
    """A stored blob is missing or unreadable."""


# --- wado-anon ---
class Refused(DicomWebError):
    """A valid request the archive declines for the data it addresses (e.g. an object
    it cannot safely de-identify)."""
