"""Imaging orders as workitem datasets (DICOM JSON), in the shape all of issue #5
agreed on: Modality in ScheduledStationClassCodeSequence, the station's AE title in
ScheduledStationNameCodeSequence, the order in ReferencedRequestSequence.

Unlike ``tests.upsgen.order``, the Study Instance UID and the Scheduled Procedure Step
ID are left out unless given: the worklist tests check what is derived without them."""

from __future__ import annotations

from typing import Any

from tests.upsgen import code, el

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
        "00080050": el("SH", accession),
        "00401001": el("SH", requested_procedure_id),
        "00321060": el("LO", requested_description),
        "00321032": el("PN", {"Alphabetic": "Kildare^James"}),
    }
    if study_uid:
        request["0020000D"] = el("UI", study_uid)
    data: dict[str, Any] = {
        "00100010": el("PN", {"Alphabetic": patient_name}),
        "00100020": el("LO", patient_id),
        "00100030": el("DA", birth_date),
        "00100040": el("CS", sex),
        "00080090": el("PN", {"Alphabetic": referring}),
        "00404005": el("DT", start),
        "00741204": el("LO", label),
        "00741200": el("CS", priority),
        "00404041": el("CS", "READY"),
        "0040A370": el("SQ", request),
        "00404026": el("SQ", code(modality, "DCM", MEANINGS.get(modality, modality))),
        "00404025": el("SQ", code(station_aet, "99DCMWEB", station_name)),
    }
    if step_id:
        data["00400009"] = el("SH", step_id)
    return data
