"""Worklist entries from workitems and Modality Worklist matching (pure, no server)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomweb_server.dicom import mwl
from dicomweb_server.errors import InvalidRequest
from tests.orders import order

UID1, UID2, UID3 = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.3.4.5"


def entries() -> list[dict[str, Any]]:
    return [
        mwl.entry(UID1, mwl.SCHEDULED, order(accession="A1", modality="CT", station_aet="CT01",
                                             start="20261125093000", patient_name="Müller^Jürgen",
                                             patient_id="P1", study_uid="1.2.3.9")),
        mwl.entry(UID2, mwl.SCHEDULED, order(accession="A2", modality="MR", station_aet="MR01",
                                             start="20261126140000+0100", patient_id="P2",
                                             patient_name="Smith^Anna", step_id="SPS-7")),
        mwl.entry(UID3, mwl.IN_PROGRESS, order(accession="A3", modality="CT", station_aet="CT02",
                                               start="20261127", patient_id="P3")),
    ]  # fmt: skip


def identifier(sps: dict[str, Any] | None = None, **top: Any) -> Dataset:
    """An identifier as a modality sends it; invalid values too (pydicom would warn)."""
    ds, item = Dataset(), Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in top.items():
            setattr(ds, keyword, value)
        for keyword, value in (sps or {}).items():
            setattr(item, keyword, value)
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def found(ident: Dataset) -> list[str]:
    query = mwl.parse(ident)
    return [e["00080050"]["Value"][0] for e in entries() if mwl.matches(query, e)]


def test_entry_maps_the_contract_attributes_to_table_k6_1() -> None:
    e = Dataset.from_json(entries()[0])
    sps = e.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT"
    assert sps.ScheduledStationAETitle == "CT01"
    assert sps.ScheduledStationName == "CT room 1"
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == (
        "20261125",
        "093000",
    )
    assert sps.ScheduledProcedureStepDescription == "CT head without contrast"
    assert sps.ScheduledProcedureStepID == mwl.step_id(UID1)
    assert sps.ScheduledProcedureStepStatus == "SCHEDULED"
    assert e.AccessionNumber == "A1" and e.StudyInstanceUID == "1.2.3.9"
    assert e.RequestedProcedureID == "RP-1" and e.RequestedProcedureDescription == "CT head"
    assert str(e.RequestingPhysician) == "Kildare^James"
    assert str(e.ReferringPhysicianName) == "Welby^Marcus"
    assert (e.PatientID, str(e.PatientName), e.PatientBirthDate, e.PatientSex) == (
        "P1",
        "Müller^Jürgen",
        "19700101",
        "M",
    )


def test_step_id_and_study_uid_are_taken_when_given_and_derived_stably_when_not() -> None:
    second = Dataset.from_json(entries()[1])
    assert second.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "SPS-7"
    # No Study Instance UID in the order: a stable 2.25 UID, the same every time.
    assert second.StudyInstanceUID == mwl.study_uid_for(UID2)
    assert second.StudyInstanceUID.startswith("2.25.") and len(second.StudyInstanceUID) <= 64
    assert mwl.study_uid_for(UID2) == mwl.study_uid_for(UID2) != mwl.study_uid_for(UID1)
    assert len(mwl.step_id(UID1)) == 16 and mwl.step_id(UID1) != mwl.step_id(UID2)
    # A UTC offset is not part of the scheduled time.
    assert second.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "140000"
    third = Dataset.from_json(entries()[2]).ScheduledProcedureStepSequence[0]
    assert third.ScheduledProcedureStepStatus == "STARTED"
    assert "ScheduledProcedureStepStartTime" not in third


def test_an_explicit_scheduled_step_item_wins() -> None:
    data = order()
    data["00400100"] = {"vr": "SQ", "Value": [{"00080060": {"vr": "CS", "Value": ["DX"]}}]}
    sps = Dataset.from_json(mwl.entry(UID1, mwl.SCHEDULED, data)).ScheduledProcedureStepSequence
    assert len(sps) == 1 and sps[0].Modality == "DX" and sps[0].ScheduledStationAETitle == "CT01"


@pytest.mark.parametrize(
    ("sps", "top", "expected"),
    [
        ({}, {}, ["A1", "A2", "A3"]),
        ({"Modality": "CT"}, {}, ["A1", "A3"]),
        ({"Modality": "CT\\MR"}, {}, ["A1", "A2", "A3"]),
        ({"Modality": "US"}, {}, []),
        ({"ScheduledStationAETitle": "MR01"}, {}, ["A2"]),
        ({"ScheduledStationAETitle": "CT*"}, {}, ["A1", "A3"]),
        ({"ScheduledProcedureStepStartDate": "20261125"}, {}, ["A1"]),
        ({"ScheduledProcedureStepStartDate": "20261126-"}, {}, ["A2", "A3"]),
        ({"ScheduledProcedureStepStartDate": "-20261126"}, {}, ["A1", "A2"]),
        ({"ScheduledProcedureStepStartDate": "20261125-20261126"}, {}, ["A1", "A2"]),
        ({"ScheduledProcedureStepStartTime": "0900-1000"}, {}, ["A1"]),
        ({"ScheduledProcedureStepStartTime": "1400"}, {}, ["A2"]),
        ({"ScheduledProcedureStepID": "SPS-7"}, {}, ["A2"]),
        ({"ScheduledProcedureStepStatus": "STARTED"}, {}, ["A3"]),
        ({}, {"PatientID": "P2"}, ["A2"]),
        ({}, {"PatientName": "muller^*"}, ["A1"]),
        ({}, {"PatientName": "SMITH^ANNA"}, ["A2"]),
        ({}, {"PatientName": "Sm?th*"}, ["A2"]),
        ({}, {"AccessionNumber": "A3"}, ["A3"]),
        ({}, {"AccessionNumber": "A*"}, ["A1", "A2", "A3"]),
        ({}, {"StudyInstanceUID": "1.2.3.9"}, ["A1"]),
        ({"Modality": "CT"}, {"PatientID": "P3"}, ["A3"]),
        ({"Modality": "MR"}, {"PatientID": "P3"}, []),
    ],
)
def test_matching(sps: dict[str, str], top: dict[str, str], expected: list[str]) -> None:
    assert found(identifier(sps, **top)) == expected


def test_states_follow_the_step_status_key() -> None:
    assert mwl.states(mwl.parse(identifier())) == (mwl.SCHEDULED,)
    started = mwl.parse(identifier({"ScheduledProcedureStepStatus": "STARTED"}))
    assert mwl.states(started) == (mwl.IN_PROGRESS,)
    both = mwl.parse(identifier({"ScheduledProcedureStepStatus": "SCHEDULED\\STARTED"}))
    assert mwl.states(both) == (mwl.SCHEDULED, mwl.IN_PROGRESS)
    assert mwl.exact(mwl.parse(identifier(AccessionNumber="A1")), mwl.ACCESSION_NUMBER) == "A1"
    assert mwl.exact(mwl.parse(identifier(AccessionNumber="A*")), mwl.ACCESSION_NUMBER) is None


@pytest.mark.parametrize(
    "ident",
    [
        identifier({"ScheduledProcedureStepStartDate": "20261340"}),
        identifier({"ScheduledProcedureStepStartDate": "20261126-20261125"}),
        identifier({"ScheduledProcedureStepStartTime": "2500"}),
        identifier(StudyInstanceUID="not-a-uid"),
    ],
)
def test_bad_identifiers_are_refused(ident: Dataset) -> None:
    with pytest.raises(InvalidRequest):
        mwl.parse(ident)


def test_nested_sequence_keys_are_return_keys_and_may_match() -> None:
    data = order()
    protocol = {
        "00080100": {"vr": "SH", "Value": ["P-1"]},
        "00080104": {"vr": "LO", "Value": ["Head"]},
    }
    data["00404018"] = {"vr": "SQ", "Value": [protocol]}
    entry = mwl.entry(UID1, mwl.SCHEDULED, data)
    code = Dataset()
    code.CodeValue = ""
    code.CodeMeaning = ""
    ident = identifier({"Modality": ""}, QueryRetrieveLevel="WORKLIST")
    ident.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = [code]
    query = mwl.parse(ident)
    assert mwl.matches(query, entry)
    item = mwl.render(query, entry).ScheduledProcedureStepSequence[0]
    assert item.ScheduledProtocolCodeSequence[0].CodeValue == "P-1"
    assert "QueryRetrieveLevel" not in mwl.render(query, entry)
    code.CodeValue = "P-2"
    assert not mwl.matches(mwl.parse(ident), entry)


def test_two_items_in_a_sequence_key_are_refused() -> None:
    ident = identifier()
    ident.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(InvalidRequest, match="at most one item"):
        mwl.parse(ident)


def test_render_returns_the_requested_keys_only() -> None:
    ident = identifier(
        {"Modality": "", "ScheduledProcedureStepID": "", "ScheduledPerformingPhysicianName": ""},
        PatientName="",
        AccessionNumber="",
        AdmissionID="",
    )
    query = mwl.parse(ident)
    out = mwl.render(query, entries()[0])
    assert [e.keyword for e in out] == [
        "AccessionNumber",
        "PatientName",
        "AdmissionID",
        "ScheduledProcedureStepSequence",
    ]
    assert out.AccessionNumber == "A1" and out.AdmissionID in (None, "")
    item = out.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in item] == [
        "Modality",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepID",
    ]
    assert item.Modality == "CT" and item.ScheduledPerformingPhysicianName in (None, "")


def test_an_empty_sequence_key_returns_whole_items() -> None:
    ident = Dataset()
    ident.ScheduledProcedureStepSequence = []
    out = mwl.render(mwl.parse(ident), entries()[1])
    item = out.ScheduledProcedureStepSequence[0]
    assert item.Modality == "MR" and item.ScheduledProcedureStepID == "SPS-7"
    assert "Jürgen" not in "".join(mwl.text_values(out))
    assert "Müller^Jürgen" in mwl.text_values(
        mwl.render(mwl.parse(identifier(PatientName="")), entries()[0])
    )


def test_scheduled_performer_and_priority() -> None:
    data = order(priority="HIGH")
    performer = {"00404037": {"vr": "PN", "Value": [{"Alphabetic": "Tech^Tina"}]}}
    data["00404034"] = {"vr": "SQ", "Value": [performer]}
    e = Dataset.from_json(mwl.entry(UID1, mwl.SCHEDULED, data))
    assert str(e.ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName) == "Tech^Tina"
    assert e.RequestedProcedurePriority == "HIGH"
    query = mwl.parse(identifier({"ScheduledPerformingPhysicianName": "tech*"}))
    assert mwl.matches(query, mwl.entry(UID1, mwl.SCHEDULED, data))
