"""Status and reason codes as tables (PS3.18 Table 10.5.3-3 / PS3.4 Annex B, PS3.7 C)."""

from __future__ import annotations

# STOW-RS FailureReason values (PS3.18 10.5.3 with PS3.4 B.2.3 Storage statuses).
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
# No code is defined for a part whose study differs from the URL (PS3.18 10.5.1); an
# A9xx value, as Microsoft's DICOM server uses, keeps it in the standard's class.
STUDY_UID_MISMATCH = 0xA901
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

# STOW-RS WarningReason values.
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

REASON_TEXT: dict[int, str] = {
    PROCESSING_FAILURE: "Processing failure",
    DUPLICATE_SOP_INSTANCE: "Duplicate SOP Instance",
    SOP_CLASS_NOT_SUPPORTED: "SOP Class not supported",
    NOT_AUTHORIZED: "Not authorized",
    OUT_OF_RESOURCES: "Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Cannot understand",
    STUDY_UID_MISMATCH: "Study Instance UID does not match the request",
    TRANSFER_SYNTAX_NOT_SUPPORTED: "Transfer Syntax not supported",
    COERCION_OF_DATA_ELEMENTS: "Coercion of data elements",
    ELEMENTS_DISCARDED: "Elements discarded",
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "Data Set does not match SOP Class",
}

# Duplicate SOP Instance UIDs with other content: implementation-specific codes in the
# Bxxx warning range (PS3.7 C.1.2 lets implementations assign them); documented in
# conformance/. The "reject" policy uses the failure 0x0111 (PS3.7 C.5.8).
DUPLICATE_KEPT_WARNING = 0xB111
DUPLICATE_REPLACED_WARNING = 0xB112

REASON_TEXT[DUPLICATE_KEPT_WARNING] = "Duplicate SOP Instance: the instance already stored was kept"
REASON_TEXT[DUPLICATE_REPLACED_WARNING] = "Duplicate SOP Instance: the stored instance was replaced"


def is_syntax_failure(code: int) -> bool:
    """Cxxx "Cannot understand" (PS3.7 C.1.4, PS3.18 Table I.2-2): the part could not
    be parsed at all, as opposed to a well-formed object that was refused. C122 (an
    unsupported transfer syntax) is a refusal of a readable object, like 0122."""
    return 0xC000 <= code <= 0xCFFF and code != TRANSFER_SYNTAX_NOT_SUPPORTED
