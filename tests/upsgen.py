"""Synthetic UPS workitems shaped like imaging orders (see /work/briefs/ups-contract.md)."""

from __future__ import annotations

from typing import Any

from pydicom.uid import generate_uid


def el(vr: str, *value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(value)} if value else {"vr": vr}


def code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        "00080100": el("SH", value),
        "00080102": el("SH", scheme),
        "00080104": el("LO", meaning),
    }


def order(
    *,
    accession: str = "ACC1",
    patient_id: str = "PAT1",
    patient_name: str = "Doe^Jane",
    start: str = "20260115093000",
    modality: str = "CT",
    station: str = "CT1",
    study_uid: str | None = None,
    label: str = "CT chest",
    priority: str = "MEDIUM",
) -> dict[str, Any]:
    """A SCHEDULED imaging order as a UPS dataset (DICOM JSON)."""
    return {
        "00100010": el("PN", {"Alphabetic": patient_name}),
        "00100020": el("LO", patient_id),
        "00100030": el("DA", "19700101"),
        "00100040": el("CS", "F"),
        "00080090": el("PN", {"Alphabetic": "House^Gregory"}),
        "00404005": el("DT", start),
        "00741204": el("LO", label),
        "00741200": el("CS", priority),
        "00404041": el("CS", "READY"),
        "00400009": el("SH", "SPS-" + accession),
        "0040A370": el(
            "SQ",
            {
                "00080050": el("SH", accession),
                "0020000D": el("UI", study_uid or str(generate_uid())),
                "00401001": el("SH", "RP-" + accession),
                "00321060": el("LO", label),
                "00321032": el("PN", {"Alphabetic": "House^Gregory"}),
            },
        ),
        "00404026": el("SQ", code(modality, "DCM", "Computed Tomography")),
        "00404025": el("SQ", code(station, "99DCMWEB", station)),
    }


def completion(start: str = "20260115093500", end: str = "20260115094500") -> dict[str, Any]:
    """What a performer sets (Update) before COMPLETED (PS3.4 CC.2.5.1.1)."""
    return {
        "00741216": el(
            "SQ",
            {
                "00404028": el("SQ", code("CT1", "99DCMWEB", "CT1")),
                "00404050": el("DT", start),
                "00404019": el("SQ", code("CTCHEST", "99LOCAL", "CT chest")),
                "00404051": el("DT", end),
                "00404033": el(
                    "SQ",
                    {
                        "0020000D": el("UI", "1.2.3"),
                        "0020000E": el("UI", "1.2.3.4"),
                        "0040E020": el("CS", "DICOM"),
                        "00081199": el(
                            "SQ",
                            {
                                "00081150": el("UI", "1.2.840.10008.5.1.4.1.1.2"),
                                "00081155": el("UI", "1.2.3.4.5"),
                            },
                        ),
                    },
                ),
            },
        )
    }


def cancellation(when: str = "20260115094000") -> dict[str, Any]:
    """What a performer sets (Update) before CANCELED (PS3.4 CC.2.5.1.1)."""
    return {
        "00741002": el(
            "SQ",
            {
                "00404052": el("DT", when),
                "0074100E": el("SQ", code("110514", "DCM", "Incorrect worklist entry selected")),
                "00741238": el("LT", "wrong patient"),
            },
        )
    }
