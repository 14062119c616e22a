"""UID syntax (PS3.5 9.1) and well-known transfer syntaxes.

Every UID from a URL or a dataset is checked here before it reaches a path, a
query or a file name: only digits and dots, no leading zeros, at most 64 chars.
"""

from __future__ import annotations

import re

from dicomweb_server.errors import InvalidRequest

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
UNCOMPRESSED = frozenset(
    {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}
)

# This application, in the File Meta Information of files it writes itself (PS3.10
# 7.1): a UUID-derived UID (PS3.5 B.2, uuid5 of "dicomweb-server/implementation").
IMPLEMENTATION_CLASS_UID = "2.25.288713005183818414340079877465794936264"
IMPLEMENTATION_VERSION_NAME = "DICOMWEB_SRV_0_1"


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID_RE.match(value) is not None


def check_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` if it is a syntactically valid UID, else raise InvalidRequest."""
    if not is_valid_uid(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidRequest(f"invalid {what}: {shown!r} is not a valid DICOM UID (PS3.5 9.1)")
    return value
