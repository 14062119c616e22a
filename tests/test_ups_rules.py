"""The pure UPS rules, without a database: the whole state table, final-state
requirements, create/update checks, and the search matching edge cases."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb_server.dicom import workitem as w
from dicomweb_server.dicom import workitem_states as rules
from dicomweb_server.dicom.workitem_match import matches, parse_search, result
from dicomweb_server.dicom.workitem_performed import merge_performed, with_output
from dicomweb_server.errors import InvalidRequest
from tests.upsgen import cancellation, completion, el, order

S, P, C, X = w.SCHEDULED, w.IN_PROGRESS, w.COMPLETED, w.CANCELED
MINE, OTHER = "1.2.3.1", "1.2.3.2"

# PS3.4 Table CC.1.1-2 for Change State: (current, requested, UID given) -> outcome, where
# an outcome is the new state, "warn" (unchanged with B304/B306) or the failure status.
TABLE: list[tuple[str, str, str, str | int]] = [
    (S, P, OTHER, P),
    (S, C, MINE, 0xC310),
    (S, X, MINE, 0xC310),
    (S, S, MINE, 0xC303),
    (P, P, MINE, 0xC302),
    (P, P, OTHER, 0xC301),
    (P, C, MINE, C),
    (P, C, OTHER, 0xC301),
    (P, X, MINE, X),
    (P, X, OTHER, 0xC301),
    (P, S, MINE, 0xC303),
    (C, C, MINE, "warn"),
    (C, C, OTHER, 0xC301),
    (C, X, MINE, 0xC300),
    (C, P, MINE, 0xC300),
    (C, P, OTHER, 0xC301),
    (X, X, MINE, "warn"),
    (X, X, OTHER, 0xC301),
    (X, C, MINE, 0xC300),
    (X, P, MINE, 0xC300),
    (X, S, MINE, 0xC303),
]


@pytest.mark.parametrize(("current", "requested", "given", "expected"), TABLE)
def test_state_table(current: str, requested: str, given: str, expected: str | int) -> None:
    stored = None if current == S else MINE
    if isinstance(expected, int):
        with pytest.raises(rules.UpsConflict) as exc:
            rules.change_state(current, requested, stored, given)
        assert exc.value.status == expected
        return
    outcome = rules.change_state(current, requested, stored, given)
    if expected == "warn":
        assert outcome.state is None
        assert outcome.warnings == (f"The UPS is already in the requested state of {current}.",)
        assert outcome.warning_status == (0xB306 if current == C else 0xB304)
    else:
        assert outcome.state == expected and not outcome.warnings


@pytest.mark.parametrize(("current", "expected"), [(S, X), (P, None), (X, "warn"), (C, 0xC311)])
def test_request_cancel_table(current: str, expected: str | int | None) -> None:
    if isinstance(expected, int):
        with pytest.raises(rules.UpsConflict) as exc:
            rules.request_cancel(current)
        assert exc.value.status == expected
        return
    outcome = rules.request_cancel(current)
    if expected == "warn":
        assert outcome.state is None and outcome.warning_status == 0xB304
    else:
        assert outcome.state == expected and not outcome.warnings


def test_updatable() -> None:
    rules.check_updatable(S, None, None)
    rules.check_updatable(S, None, OTHER)  # ignored while SCHEDULED
    rules.check_updatable(P, MINE, MINE)
    with pytest.raises(rules.MissingTransactionUid):
        rules.check_updatable(P, MINE, None)
    with pytest.raises(rules.UpsConflict) as wrong:
        rules.check_updatable(P, MINE, OTHER)
    assert wrong.value.status == 0xC301
    for final in (C, X):
        with pytest.raises(rules.UpsConflict) as frozen:
            rules.check_updatable(final, MINE, MINE)
        assert frozen.value.status == 0xC300


def created() -> dict[str, Any]:
    return w.prepare_create(order(), "1.2.3", w.now_dt())[1]


def test_final_state_requirements() -> None:
    ds = created()
    missing = rules.missing_for_final(ds, C)
    assert missing == ["UnifiedProcedureStepPerformedProcedureSequence (00741216)"]
    assert rules.missing_for_final(ds, X) == ["ProcedureStepProgressInformationSequence (00741002)"]
    done = w.apply_update(ds, completion(), w.now_dt())
    assert rules.missing_for_final(done, C) == []
    canceled = w.apply_update(ds, cancellation(), w.now_dt())
    assert rules.missing_for_final(canceled, X) == []
    partial = w.apply_update(
        ds, {"00741216": el("SQ", {"00404050": el("DT", "20260101")})}, w.now_dt()
    )
    names = " ".join(rules.missing_for_final(partial, C))
    assert "PerformedProcedureStepEndDateTime" in names and "OutputInformationSequence" in names
    assert "PerformedProcedureStepStartDateTime" not in names
    del ds["00741200"]
    assert "ScheduledProcedureStepPriority (00741200)" in rules.missing_for_final(ds, X)


def test_archive_fills_what_final_states_need() -> None:
    ds = with_output(created(), "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")
    assert ds is not None
    assert rules.missing_for_final(rules.fill_completed(ds, w.now_dt()), C) == []
    assert rules.missing_for_final(rules.fill_canceled(created(), w.now_dt(), {}), X) == []
    reason = {"0074100E": el("SQ", {"00080100": el("SH", "110514")})}
    filled = rules.fill_canceled(created(), w.now_dt(), reason)
    item = filled["00741002"]["Value"][0]
    assert item["0074100E"]["Value"][0]["00080100"]["Value"] == ["110514"]


def test_merge_performed_keeps_outputs() -> None:
    ds = with_output(created(), "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")
    assert ds is not None
    assert with_output(ds, "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5") is None
    merged = merge_performed(
        ds,
        {
            "00741216": el("SQ", {"00404050": el("DT", "20260101")}),
            "00741000": el("CS", "COMPLETED"),  # identity, state and lock are never merged
            "00081195": el("UI", "9.9"),
        },
    )
    item = merged["00741216"]["Value"][0]
    assert "00404033" in item and item["00404050"]["Value"] == ["20260101"]
    assert merged["00741000"]["Value"] == ["SCHEDULED"] and "00081195" not in merged


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"00741000": el("CS", "COMPLETED")}, "ProcedureStepState"),
        ({"00404010": el("DT", "20260101")}, "ScheduledProcedureStepModificationDateTime"),
        ({"00741204": el("LO")}, "cannot be emptied"),
        ({"00404041": el("CS", "MAYBE")}, "InputReadinessState"),
        ({"0040A370": el("SQ", {"0020000D": el("UI", "x.y")})}, "not a valid UID"),
        ([], "DICOM JSON object"),
    ],
)
def test_update_checks(changes: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        w.check_update(changes)


def test_create_takes_an_empty_transaction_uid() -> None:
    ds = order()
    ds["00081195"] = el("UI")  # "2/2, shall be empty" (Table CC.2.5-3)
    uid, stored = w.prepare_create(ds, "1.2.3", w.now_dt())
    assert uid == "1.2.3" and "00081195" not in stored
    assert stored["00741210"] == el("SQ")  # a Type 2 attribute added empty


def test_index_keys_prefer_the_request_item() -> None:
    ds = order(accession="REQ", study_uid="1.2.3.9", patient_id="PX", station="AE1")
    ds["00080050"] = el("SH", "TOP")
    keys = w.index_keys(ds)
    assert keys.accession_number == "REQ" and keys.study_uid == "1.2.3.9"
    assert keys.patient_id == "PX" and keys.station_ae == "AE1" and keys.modality == "CT"
    assert keys.scheduled_start == "20260115093000.000000"


@pytest.mark.parametrize(
    ("value", "pad", "expected"),
    [
        ("2026", "0", "20260101000000.000000"),
        ("202601151230", "0", "20260115123000.000000"),
        ("20260115123045.5+0100", "0", "20260115123045.500000"),
        ("20260115", "9", "20260115999999.999999"),
        ("tomorrow", "0", None),
    ],
)
def test_normalize_dt(value: str, pad: str, expected: str | None) -> None:
    assert w.normalize_dt(value, pad) == expected


def q(**params: str) -> dict[str, list[str]]:
    return {k.replace("__", "."): [v] for k, v in params.items()}


DATASET: dict[str, Any] = {
    "00100010": el("PN", {"Alphabetic": "Müller^Hans", "Ideographic": "ミュラー"}),
    "00100020": el("LO", "P1"),
    "00080060": el("CS", "CT", "PT"),
    "00404005": el("DT", "20260115093000"),
    "00404010": el("DT", "2026"),
    "00741200": el("CS", "HIGH"),
    "00741204": el("LO"),
    "00404025": el(
        "SQ",
        {"00080100": el("SH", "CT1"), "00080102": el("SH", "99DCMWEB")},
        {"00080100": el("SH", "CT2"), "00080102": el("SH", "OTHER")},
    ),
}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (q(), True),
        (q(PatientID="P1"), True),
        (q(PatientID="P2"), False),
        (q(PatientID="P?"), True),
        (q(PatientName="MULLER^HANS"), True),
        (q(PatientName="mül*"), True),
        (q(PatientName="hans"), False),
        (q(Modality="PT"), True),  # any value of a multi-valued attribute
        (q(ScheduledProcedureStepStartDateTime="20260115"), True),
        (q(ScheduledProcedureStepStartDateTime="20260115093000-20260115093000"), True),
        (q(ScheduledProcedureStepStartDateTime="202601150931-"), False),
        (q(ScheduledProcedureStepStartDateTime="-202601150930"), True),
        (q(ScheduledProcedureStepModificationDateTime="20260601"), True),  # stored "2026"
        (q(ProcedureStepLabel="x*"), False),  # empty values match only universal keys
        (q(ProcedureStepLabel=""), True),
        (q(ScheduledStationNameCodeSequence__CodeValue="CT2"), True),
        (
            q(
                ScheduledStationNameCodeSequence__CodeValue="CT2",
                ScheduledStationNameCodeSequence__CodingSchemeDesignator="99DCMWEB",
            ),
            False,  # both keys must hold in the same item
        ),
        (
            q(
                ScheduledStationNameCodeSequence__CodeValue="CT1",
                ScheduledStationNameCodeSequence__CodingSchemeDesignator="99DCMWEB",
            ),
            True,
        ),
        (q(ScheduledStationClassCodeSequence__CodeValue="CT"), False),  # absent sequence
    ],
)
def test_matching(params: dict[str, list[str]], expected: bool) -> None:
    assert matches(DATASET, parse_search(params)) is expected


def test_fuzzy_and_results() -> None:
    query = parse_search({"PatientName": ["hans"], "fuzzymatching": ["true"]})
    assert matches(DATASET, query)
    shaped = result(DATASET, parse_search({"Modality": ["CT"]}))
    assert "00080060" in shaped and "00404025" in shaped and "00100020" in shaped
    everything = result(DATASET, parse_search({"includefield": ["all"]}))
    assert everything == DATASET


@pytest.mark.parametrize(
    "params",
    [
        {"NoSuchKeyword": ["1"]},
        {"ScheduledProcedureStepStartDateTime": ["20260102-20260101"]},
        {"ScheduledProcedureStepStartDateTime": ["soon"]},
        {"PatientID.CodeValue": ["1"]},
        {"ScheduledStationNameCodeSequence": ["CT1"]},
        {"limit": ["-1"]},
        {"offset": ["x"]},
        {"fuzzymatching": ["maybe"]},
        {"PatientID": ["a", "b"]},
        {"SOPInstanceUID": ["1.02"]},
        {"TransactionUID": ["1.2.3"]},
    ],
)
def test_bad_search(params: dict[str, list[str]]) -> None:
    with pytest.raises(InvalidRequest):
        parse_search(params)
