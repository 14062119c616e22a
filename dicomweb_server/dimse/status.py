"""DIMSE status codes as a table (PS3.7 Annex C; PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).

A STOW-RS failure or warning reason is already a PS3.4 Storage status code (PS3.18
10.5.3 takes them from PS3.4 B.2.3), so C-STORE reuses the one ingest path's outcome
as its status without a second table.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicomweb_server.dicom import status as reasons
from dicomweb_server.services.store import StoreOutcome

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = 0xFF00
# C-FIND "Matches are continuing - Warning that one or more Optional Keys were not
# supported" (PS3.4 C.4.1.1.4): a key that exists but is not indexed was ignored.
PENDING_UNSUPPORTED_KEYS = 0xFF01

# Failures shared by Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_MATCHES = 0xA701  # unable to calculate the number of matches
OUT_OF_RESOURCES_SUBOPS = 0xA702  # unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
CANNOT_UNDERSTAND = 0xC000  # C-STORE (PS3.4 B.2.3)
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.10 (used for per-operation allow lists)
# "Sub-operations Complete - One or more Failures or Warnings" (C.4.2.1.5).
SUBOPS_WARNING = 0xB000

# Storage Commitment (PS3.4 J.3.3, J.3.4 Failure Reasons in Failed SOP Sequence).
COMMIT_PROCESSING_FAILURE = 0x0110
COMMIT_NO_SUCH_OBJECT = 0x0112

TEXT: dict[int, str] = {
    SUCCESS: "Success",
    CANCEL: "Cancel",
    PENDING: "Pending",
    PENDING_UNSUPPORTED_KEYS: "Pending: optional keys not supported",
    OUT_OF_RESOURCES: "Out of Resources",
    OUT_OF_RESOURCES_MATCHES: "Out of Resources: unable to calculate number of matches",
    OUT_OF_RESOURCES_SUBOPS: "Out of Resources: unable to perform sub-operations",
    MOVE_DESTINATION_UNKNOWN: "Move Destination unknown",
    IDENTIFIER_DOES_NOT_MATCH: "Identifier does not match SOP Class",
    UNABLE_TO_PROCESS: "Unable to process",
    NOT_AUTHORIZED: "Not authorized",
    SUBOPS_WARNING: "Sub-operations complete: one or more failures or warnings",
    **reasons.REASON_TEXT,
}


def store_status(outcome: StoreOutcome) -> int:
    """The C-STORE status of one ingest outcome (PS3.4 B.2.3).

    Success 0000; the duplicate policy's warnings keep their STOW-RS Bxxx codes
    (PS3.7 C.1.2 lets an implementation define warnings); failures keep their code:
    A700 Out of Resources, A900 Data Set does not match SOP Class, Cxxx Cannot
    understand, 0110 Processing failure, 0111 Duplicate SOP Instance.
    """
    if outcome.stored:
        return outcome.warning_reason or SUCCESS
    return outcome.failure_reason or reasons.PROCESSING_FAILURE


def with_comment(code: int, comment: str) -> Dataset:
    """A status with an Error Comment (0000,0902: at most 64 characters, PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds
