"""Transfer syntaxes accepted for storage (PS3.5 Section 10 and Annex A).

Compressed objects are stored as received; the order is our preference when a
requester proposes several in one presentation context (uncompressed first, so that a
modality's own choice of compression is only kept when it offers nothing else).
"""

from __future__ import annotations

from pydicom import uid

UNCOMPRESSED: list[str | uid.UID] = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian]

STORAGE_SYNTAXES: list[str | uid.UID] = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
    uid.MPEG2MPML,
    uid.MPEG4HP41,
    uid.HEVCMP51,
]
