"""Imaging orders as workitem datasets (DICOM JSON), in the shape all of issue #5
agreed on: Modality in ScheduledStationClassCodeSequence, the station's AE title in
ScheduledStationNameCodeSequence, the order in ReferencedRequestSequence."""

from __future__ import annotations

from typing import Any


def _v(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        "00080100": _v("SH", value),
        "00080102": _v("SH", scheme),
        "00080104": _v("LO", meaning),
    }


MEANINGS = {"CT": "Computed Tomography", "MR": "Magnetic Resonance", "DX": "Digital Radiography"}


def order(
    *,
    accession: str = "ACC-1",
    patient_id: str = "PID-1",
    patient_name: str = "Doe^John",
    birth_date: str = "19700101",
    sex: str = "M",
    modality: str = "CT",
    station_aet: str = "CT01",
    station_name: str = "CT room 1",
    start: str = "20261125093000",
    label: str = "CT head without contrast",
    study_uid: str | None = None,
    step_id: str | None = None,
    requested_procedure_id: str = "RP-1",
    requested_description: str = "CT head",
    referring: str = "Welby^Marcus",
    priority: str = "MEDIUM",
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "00080050": _v("SH", accession),
        "00401001": _v("SH", requested_procedure_id),
        "00321060": _v("LO", requested_description),
        "00321032": _v("PN", {"Alphabetic": "Kildare^James"}),
    }
    if study_uid:
        request["0020000D"] = _v("UI", study_uid)
    data: dict[str, Any] = {
        "00100010": _v("PN", {"Alphabetic": patient_name}),
        "00100020": _v("LO", patient_id),
        "00100030": _v("DA", birth_date),
        "00100040": _v("CS", sex),
        "00080090": _v("PN", {"Alphabetic": referring}),
        "00404005": _v("DT", start),
        "00741204": _v("LO", label),
        "00741200": _v("CS", priority),
        "00404041": _v("CS", "READY"),
        "0040A370": _v("SQ", request),
        "00404026": _v("SQ", _code(modality, "DCM", MEANINGS.get(modality, modality))),
        "00404025": _v("SQ", _code(station_aet, "99DCMWEB", station_name)),
    }
    if step_id:
        data["00400009"] = _v("SH", step_id)
    return data
