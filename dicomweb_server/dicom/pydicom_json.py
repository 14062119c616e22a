"""DICOM JSON (PS3.18 F.2) of a pydicom Dataset: the ingest path for what the raw
reader leaves to pydicom (big endian, deflated, unusual structures)."""

from __future__ import annotations

import base64
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicomweb_server.dicom.attributes import tag_hex, vr_of
from dicomweb_server.dicom.fastjson import codec_for, element_json
from dicomweb_server.dicom.rawread import BULK_VRS, PIXEL_DATA, UNDEFINED_LENGTH

# Width of one value of the binary VRs whose byte order follows the encoding (PS3.5 7.3).
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class JsonBuilder:
    """DICOM JSON via pydicom's per-element encoder, with bulk values never loaded."""

    def __init__(self, uri_base: str, threshold: int, *, big_endian: bool = False) -> None:
        self.uri_base = uri_base
        self.threshold = threshold
        self.big_endian = big_endian
        self.bulk: dict[str, list[int]] = {}

    def dataset(
        self, ds: Dataset, path: str, top: bool, codec: str | None = "ascii"
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.big_endian:
            codec = None  # the raw fast path reads little endian only
        elif 0x00080005 in ds:
            codec = codec_for(ds[0x00080005].value)
        for base_tag in sorted(ds.keys()):
            tag = int(base_tag)
            if tag >> 16 == 0x0002 or tag & 0xFFFF == 0:
                # File meta and Group Length "shall not be included" (PS3.18 F.2.2).
                continue
            key = tag_hex(tag)
            elem_path = f"{path}.{key}" if path else key
            raw = ds.get_item(tag, keep_deferred=True)
            vr = raw.VR if raw.VR else vr_of(tag)
            if isinstance(raw, RawDataElement) and vr in BULK_VRS and raw.length != 0:
                large = raw.value is None or len(raw.value) > self.threshold
                if large or tag == PIXEL_DATA:
                    json_vr = "OB" if vr not in ("OD", "OF", "OL", "OV", "OW", "UN") else vr
                    if tag == PIXEL_DATA and raw.length != UNDEFINED_LENGTH and vr != "OB":
                        json_vr = "OW"
                    out[key] = {"vr": json_vr, "BulkDataURI": f"{self.uri_base}/{elem_path}"}
                    if top:
                        length = -1 if raw.length == UNDEFINED_LENGTH else raw.length
                        self.bulk[key] = [raw.value_tell, length]
                    continue
            if codec is not None and isinstance(raw, RawDataElement) and raw.value is not None:
                # Most elements: straight from the raw bytes (see fastjson for why).
                fast = element_json(vr, raw.value, codec)
                if fast is not None:
                    out[key] = fast
                    continue
            try:
                elem = ds[tag]
            except Exception:
                continue  # undecodable value: left out of the metadata, kept in the file
            if elem.VR == "SQ":
                items = [
                    self.dataset(item, f"{elem_path}.{i}", False, codec)
                    for i, item in enumerate(elem.value)
                ]
                out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                continue
            width = _SWAP_WIDTH.get(str(elem.VR))
            if self.big_endian and width and isinstance(elem.value, bytes) and elem.value:
                # InlineBinary is little endian (PS3.18 F.2.7 with the default transfer
                # syntax of DICOM JSON): swap the words pydicom kept as read.
                swapped = _to_little_endian(elem.value, width)
                out[key] = {"vr": elem.VR, "InlineBinary": base64.b64encode(swapped).decode()}
                continue
            try:
                out[key] = elem.to_json_dict(None, 0)
            except Exception:
                continue
        return out


def _to_little_endian(value: bytes, width: int) -> bytes:
    if len(value) % width:
        return value
    import numpy as np

    dtype = np.dtype(f">u{width}")
    return np.frombuffer(value, dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()
