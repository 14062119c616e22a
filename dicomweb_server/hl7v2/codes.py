"""HL7 v2 tables the order intake uses, and its one error.

ORC-1 order control (HL7 v2.5 Table 0119), the message types taken, the message
error condition codes of acknowledgements (Table 0357), and the CID 29 meanings given
to the modality codes of orders.
"""

from __future__ import annotations

NEW = "NW"
CANCEL = "CA"
CHANGE = "XO"
# ORC-1 values and what they do to a workitem.
ORDER_CONTROLS = {
    "NW": NEW,
    "CA": CANCEL,
    "DC": CANCEL,
    "OC": CANCEL,
    "OD": CANCEL,
    "XO": CHANGE,
    "XX": CHANGE,
}
SUPPORTED_TYPES = {("ORM", "O01"), ("OMI", "O23")}

# HL7 Table 0357, message error condition codes.
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_VERSION_ID = 203
UNKNOWN_KEY_IDENTIFIER = 204
DUPLICATE_KEY_IDENTIFIER = 205
APPLICATION_RECORD_LOCKED = 206
APPLICATION_INTERNAL_ERROR = 207
ERROR_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_RECORD_LOCKED: "Application record locked",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

# CID 29 (Acquisition Modality) meanings of the common codes; others keep the code.
MODALITY_MEANINGS = {
    "CR": "Computed Radiography",
    "CT": "Computed Tomography",
    "DX": "Digital Radiography",
    "ES": "Endoscopy",
    "IO": "Intra-oral Radiography",
    "MG": "Mammography",
    "MR": "Magnetic Resonance",
    "NM": "Nuclear Medicine",
    "OP": "Ophthalmic Photography",
    "OT": "Other",
    "PT": "Positron emission tomography",
    "PX": "Panoramic X-Ray",
    "RF": "Radio Fluoroscopy",
    "US": "Ultrasound",
    "XA": "X-Ray Angiography",
    "XC": "External-camera Photography",
}


class OrderRejected(Exception):
    """The message cannot be taken; becomes a NAK (MSA-1 ``ack_code``, ERR segment)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        ack_code: str = "AE",
        segment: str = "",
        sequence: int = 1,
        field: int = 0,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ack_code = ack_code
        self.segment = segment
        self.sequence = sequence
        self.field = field
