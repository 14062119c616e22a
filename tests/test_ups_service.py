"""WorkitemService over the real index (SQLite and PostgreSQL): every transaction, the
state table of PS3.4 CC.1.1-2, the final-state requirements, events, archive operations."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydicom.uid import generate_uid

from dicomweb_server.dicom.workitem_states import UpsConflict
from dicomweb_server.errors import Conflict, InvalidRequest, NotFound
from dicomweb_server.services.workitem_events import (
    UPS_ASSIGNED,
    UPS_CANCEL_REQUESTED,
    UPS_PROGRESS_REPORT,
    UPS_STATE_REPORT,
    WorkitemEvent,
)
from dicomweb_server.services.workitems import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    WorkitemService,
)
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.workitems import SqlWorkitems
from tests.upsgen import cancellation, completion, el, order


class Recorder:
    def __init__(self) -> None:
        self.events: list[WorkitemEvent] = []

    def publish(self, event: WorkitemEvent) -> None:
        self.events.append(event)

    def types(self) -> list[int]:
        return [e.event_type for e in self.events]


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def svc(index: SqlIndex, rec: Recorder) -> WorkitemService:
    return WorkitemService(SqlWorkitems(index), rec, default_limit=100, max_limit=50)


def state_of(svc: WorkitemService, uid: str) -> str:
    item = svc.get(uid)
    assert item.dataset["00741000"]["Value"] == [item.state]
    return item.state


def test_create_and_get(svc: WorkitemService, rec: Recorder) -> None:
    uid = str(generate_uid())
    item = svc.create(order(), uid)
    assert item.uid == uid and item.state == SCHEDULED
    got = svc.get(uid)
    ds = got.dataset
    assert ds["00080016"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
    assert ds["00080018"]["Value"] == [uid]
    assert ds["00741000"]["Value"] == [SCHEDULED]
    assert "00404010" in ds and "00741202" in ds  # modification time, worklist label set
    assert ds["00400009"]["Value"] == ["SPS-ACC1"]  # extra attributes are kept
    assert "00081195" not in ds
    # created: a state report, and assigned (a scheduled station is named)
    assert rec.types() == [UPS_STATE_REPORT, UPS_ASSIGNED]
    assert rec.events[0].info["00741000"]["Value"] == [SCHEDULED]
    assert rec.events[1].info["00404025"]["Value"][0]["00080100"]["Value"] == ["CT1"]


def test_create_uid_from_dataset_and_conflict(svc: WorkitemService) -> None:
    uid = str(generate_uid())
    ds = order()
    ds["00080018"] = el("UI", uid)
    assert svc.create(ds).uid == uid
    with pytest.raises(Conflict):
        svc.create(order(), uid)
    with pytest.raises(InvalidRequest, match="differs"):
        svc.create(ds, str(generate_uid()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("00741204"), "ProcedureStepLabel"),
        (lambda d: d.pop("00404005"), "ScheduledProcedureStepStartDateTime"),
        (lambda d: d.update({"00741200": el("CS", "URGENT")}), "ScheduledProcedureStepPriority"),
        (lambda d: d.update({"00741000": el("CS", "IN PROGRESS")}), "SCHEDULED"),
        (lambda d: d.update({"00081195": el("UI", "1.2.3")}), "TransactionUID"),
        (lambda d: d.update({"00741002": el("SQ", {"00741004": el("DS", 1)})}), "empty"),
        (lambda d: d.update({"00404005": el("DT", "tomorrow")}), "date-time"),
        (lambda d: d.update({"0020000D": el("UI", "1.02.x")}), "not a valid UID"),
        (lambda d: d.update({"zz": {}}), "not an attribute tag"),
    ],
)
def test_create_refuses_invalid(svc: WorkitemService, change: Any, message: str) -> None:
    ds = order()
    change(ds)
    uid = str(generate_uid())
    with pytest.raises(InvalidRequest, match=message):
        svc.create(ds, uid)
    with pytest.raises(NotFound):
        svc.get(uid)


def test_unknown_uid(svc: WorkitemService) -> None:
    uid = str(generate_uid())
    for call in (
        lambda: svc.get(uid),
        lambda: svc.update(uid, {"00741204": el("LO", "x")}, None),
        lambda: svc.change_state(uid, IN_PROGRESS, "1.2.3"),
        lambda: svc.request_cancellation(uid, {}),
    ):
        with pytest.raises(NotFound):
            call()


def test_update_rules(svc: WorkitemService, rec: Recorder) -> None:
    uid = svc.create(order()).uid
    # SCHEDULED: no transaction UID needed
    svc.update(uid, {"00741204": el("LO", "CT abdomen")}, None)
    assert svc.get(uid).dataset["00741204"]["Value"] == ["CT abdomen"]
    for refused in ("00741000", "00081195", "00080016"):
        with pytest.raises(InvalidRequest, match="cannot be changed"):
            svc.update(uid, {refused: el("CS", "X")}, None)
    txn = str(generate_uid())
    svc.change_state(uid, IN_PROGRESS, txn)
    # IN PROGRESS: required and must match
    with pytest.raises(InvalidRequest, match="Transaction UID is required"):
        svc.update(uid, {"00741204": el("LO", "x")}, None)
    with pytest.raises(UpsConflict) as wrong:
        svc.update(uid, {"00741204": el("LO", "x")}, str(generate_uid()))
    assert wrong.value.status == 0xC301
    rec.events.clear()
    progress = {"00741002": el("SQ", {"00741004": el("DS", 50)})}
    svc.update(uid, progress, txn)
    assert rec.types() == [UPS_PROGRESS_REPORT]
    assert rec.events[0].info["00741002"]["Value"][0]["00741004"]["Value"] == [50]
    svc.update(uid, {"00741204": el("LO", "CT abdomen")}, txn)
    assert rec.types() == [UPS_PROGRESS_REPORT]  # no progress change: no new event
    assert svc.get(uid).dataset["00741204"]["Value"] == ["CT abdomen"]  # refusals changed nothing
    svc.update(uid, completion(), txn)
    svc.change_state(uid, COMPLETED, txn)
    with pytest.raises(UpsConflict) as final:
        svc.update(uid, {"00741204": el("LO", "x")}, txn)
    assert final.value.status == 0xC300


def test_change_state_table(svc: WorkitemService, rec: Recorder) -> None:
    """Every cell of PS3.4 Table CC.1.1-2 for Change State."""
    uid = svc.create(order()).uid
    txn, other = str(generate_uid()), str(generate_uid())

    def refused(state: str, given: str, status: int) -> None:
        with pytest.raises(UpsConflict) as exc:
            svc.change_state(uid, state, given)
        assert exc.value.status == status, (state, hex(exc.value.status))

    refused(SCHEDULED, txn, 0xC303)
    refused(COMPLETED, txn, 0xC310)
    refused(CANCELED, txn, 0xC310)
    with pytest.raises(InvalidRequest):
        svc.change_state(uid, "DONE", txn)
    with pytest.raises(InvalidRequest):
        svc.change_state(uid, IN_PROGRESS, "")
    assert state_of(svc, uid) == SCHEDULED
    rec.events.clear()
    assert svc.change_state(uid, IN_PROGRESS, txn) == []
    assert rec.types() == [UPS_STATE_REPORT]
    assert svc.get(uid).transaction_uid == txn
    assert "00081195" not in svc.get(uid).dataset
    refused(IN_PROGRESS, txn, 0xC302)
    refused(IN_PROGRESS, other, 0xC301)
    refused(COMPLETED, other, 0xC301)
    refused(CANCELED, other, 0xC301)
    refused(SCHEDULED, txn, 0xC303)
    # final-state requirements: nothing performed recorded yet
    refused(COMPLETED, txn, 0xC304)
    assert state_of(svc, uid) == IN_PROGRESS
    svc.update(uid, completion(), txn)
    assert svc.change_state(uid, COMPLETED, txn) == []
    assert state_of(svc, uid) == COMPLETED
    assert svc.change_state(uid, COMPLETED, txn) == [
        "The UPS is already in the requested state of COMPLETED."
    ]
    refused(COMPLETED, other, 0xC301)
    refused(CANCELED, txn, 0xC300)
    refused(IN_PROGRESS, txn, 0xC300)
    refused(SCHEDULED, txn, 0xC303)


def test_performer_cancels_without_update(svc: WorkitemService) -> None:
    """PS3.4 CC.2.5.1.3.2 note: two N-ACTIONs and no N-SET cancel a SCHEDULED workitem;
    the SCP fills the Cancellation DateTime (Table CC.2.5-3) and a reason."""
    uid = svc.create(order()).uid
    txn = str(generate_uid())
    svc.change_state(uid, IN_PROGRESS, txn)
    assert svc.change_state(uid, CANCELED, txn) == []
    progress = svc.get(uid).dataset["00741002"]["Value"][0]
    assert progress["00404052"]["Value"][0].startswith("20")
    assert progress["0074100E"]["Value"][0]["00080100"]["Value"] == ["110513"]


def test_cancel_by_performer(svc: WorkitemService, rec: Recorder) -> None:
    uid = svc.create(order()).uid
    txn = str(generate_uid())
    svc.change_state(uid, IN_PROGRESS, txn)
    svc.update(uid, cancellation(), txn)
    rec.events.clear()
    assert svc.change_state(uid, CANCELED, txn) == []
    assert rec.types() == [UPS_STATE_REPORT]
    info = rec.events[0].info
    assert info["00741000"]["Value"] == [CANCELED]
    assert info["00741238"]["Value"] == ["wrong patient"]
    assert svc.change_state(uid, CANCELED, txn) == [
        "The UPS is already in the requested state of CANCELED."
    ]
    with pytest.raises(UpsConflict) as exc:
        svc.change_state(uid, COMPLETED, txn)
    assert exc.value.status == 0xC300


def test_request_cancellation(svc: WorkitemService, rec: Recorder) -> None:
    scheduled = svc.create(order(accession="A1")).uid
    reason = {"00741238": el("LT", "patient left"), "0074100C": el("LO", "Dr. Who")}
    rec.events.clear()
    assert svc.request_cancellation(scheduled, reason) == []
    item = svc.get(scheduled)
    assert item.state == CANCELED
    progress = item.dataset["00741002"]["Value"][0]
    assert "00404052" in progress and progress["00741238"]["Value"] == ["patient left"]
    assert "0074100E" in progress  # a discontinuation reason code is required
    # PS3.4 CC.2.2.3: Cancel Requested, then SCHEDULED -> IN PROGRESS -> CANCELED
    assert rec.types() == [UPS_CANCEL_REQUESTED, UPS_STATE_REPORT, UPS_STATE_REPORT]
    assert [e.info["00741000"]["Value"][0] for e in rec.events[1:]] == [IN_PROGRESS, CANCELED]
    assert item.transaction_uid is not None  # the SCP performed it
    rec.events.clear()
    assert svc.request_cancellation(scheduled, {}) == [
        "The UPS is already in the requested state of CANCELED."
    ]
    assert rec.events == []  # nothing happened

    running = svc.create(order(accession="A2")).uid
    svc.change_state(running, IN_PROGRESS, str(generate_uid()))
    rec.events.clear()
    assert svc.request_cancellation(running, reason) == []
    assert state_of(svc, running) == IN_PROGRESS
    assert rec.types() == [UPS_CANCEL_REQUESTED]
    assert rec.events[0].info["0074100C"]["Value"] == ["Dr. Who"]
    assert rec.events[0].info["00741236"]["Value"] == ["DICOMWEB"]  # Requesting AE, Type 1

    done = svc.create(order(accession="A3")).uid
    txn = svc.claim(done)
    svc.update(done, completion(), txn)
    svc.change_state(done, COMPLETED, txn)
    with pytest.raises(UpsConflict) as exc:
        svc.request_cancellation(done, {})
    assert exc.value.status == 0xC311


def test_search(svc: WorkitemService) -> None:
    a = svc.create(
        order(accession="S1", patient_name="Müller^Hans", start="20260110080000", station="CT1")
    ).uid
    b = svc.create(
        order(accession="S2", patient_id="P2", start="20260111120000", station="MR1", modality="MR")
    ).uid
    c = svc.create(order(accession="S3", start="20260112090000")).uid
    svc.claim(c)

    def uids(**params: str) -> list[str]:
        found = svc.search({k: [v] for k, v in params.items()})
        return [r["00080018"]["Value"][0] for r in found]

    assert uids() == [a, b, c]  # ordered by scheduled start
    assert uids(ProcedureStepState="SCHEDULED") == [a, b]
    assert uids(PatientID="P2") == [b]
    assert uids(PatientName="muller*") == [a]  # case and accent insensitive
    assert uids(PatientName="Mül*") == [a]
    assert uids(ScheduledProcedureStepStartDateTime="20260111-20260112") == [b, c]
    assert uids(ScheduledProcedureStepStartDateTime="20260111120000-") == [b, c]
    assert uids(ScheduledProcedureStepStartDateTime="-20260110") == [a]
    assert uids(**{"ScheduledStationNameCodeSequence.CodeValue": "MR1"}) == [b]
    assert uids(**{"00404025.00080100": "CT*"}) == [a, c]
    assert uids(**{"ReferencedRequestSequence.AccessionNumber": "S3"}) == [c]
    assert uids(**{"00404026.00080100": "MR", "ProcedureStepState": "IN PROGRESS"}) == []
    assert uids(limit="1", offset="1") == [b]
    page = svc.search_page({"limit": ["500"]})
    assert page.warnings and "maximum of 50" in page.warnings[0]
    first = svc.search({"PatientID": ["P2"]})[0]
    assert "00400009" not in first and "00100010" in first
    full = svc.search({"PatientID": ["P2"], "includefield": ["ScheduledProcedureStepID"]})[0]
    assert full["00400009"]["Value"] == ["SPS-S2"]
    assert "00400009" in svc.search({"PatientID": ["P2"], "includefield": ["all"]})[0]
    for bad in (
        {"NoSuchKeyword": ["x"]},
        {"ScheduledProcedureStepStartDateTime": ["20260112-20260111"]},
        {"limit": ["-1"]},
        {"PatientID.CodeValue": ["x"]},
    ):
        with pytest.raises(InvalidRequest):
            svc.search(bad)


def test_matches(svc: WorkitemService) -> None:
    ds = svc.get(svc.create(order(station="CT7")).uid).dataset
    assert svc.matches(ds, {"ScheduledStationNameCodeSequence.CodeValue": ["CT7"]})
    assert not svc.matches(ds, {"ScheduledStationNameCodeSequence.CodeValue": ["CT8"]})
    assert svc.matches(ds, {})


def test_archive_operations(svc: WorkitemService, rec: Recorder) -> None:
    study = str(generate_uid())
    uid = svc.create(order(accession="ACC9", study_uid=study, patient_id="P9")).uid
    svc.create(order(accession="OTHER"))
    assert [i.uid for i in svc.find(accession_number="ACC9")] == [uid]
    assert [i.uid for i in svc.find(study_uid=study)] == [uid]
    assert [i.uid for i in svc.find(patient_id="P9")] == [uid]
    assert svc.find(accession_number="ACC9", states=(COMPLETED,)) == []
    # a top-level Accession Number counts too
    top = order(accession="ignored")
    top["00080050"] = el("SH", "TOP1")
    del top["0040A370"]
    top_uid = svc.create(top).uid
    assert [i.uid for i in svc.find(accession_number="TOP1")] == [top_uid]

    txn = svc.claim(uid)
    assert svc.get(uid).state == IN_PROGRESS and svc.get(uid).transaction_uid == txn
    with pytest.raises(UpsConflict):
        svc.claim(uid)
    assert svc.add_output(uid, study, "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1")
    assert not svc.add_output(uid, study, "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1")
    assert svc.add_output(uid, study, "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.2")
    assert svc.add_output(uid, study, "1.2.3.2", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.2.1")
    performed = {"00741216": el("SQ", {"00404050": el("DT", "20260115090000")})}
    rec.events.clear()
    svc.finish(uid, COMPLETED, performed)
    assert rec.types() == [UPS_STATE_REPORT]
    item = svc.get(uid)
    assert item.state == COMPLETED
    pps = item.dataset["00741216"]["Value"][0]
    assert pps["00404050"]["Value"] == ["20260115090000"]
    assert "00404051" in pps and "00404028" in pps and "00404019" in pps
    outputs = pps["00404033"]["Value"]
    assert [len(o["00081199"]["Value"]) for o in outputs] == [2, 1]
    svc.finish(uid, COMPLETED)  # finishing again the same way changes nothing
    with pytest.raises(UpsConflict):
        svc.finish(uid, CANCELED)
    with pytest.raises(Conflict):
        svc.cancel(uid, "order withdrawn")

    scheduled = svc.create(order(accession="C1")).uid
    rec.events.clear()
    svc.cancel(scheduled, "order withdrawn")
    assert rec.types() == [UPS_STATE_REPORT, UPS_STATE_REPORT]
    with pytest.raises(UpsConflict):
        svc.cancel(scheduled, "twice")
    canceled = svc.get(scheduled)
    assert canceled.state == CANCELED
    assert canceled.dataset["00741002"]["Value"][0]["00741238"]["Value"] == ["order withdrawn"]
    running = svc.create(order(accession="C2")).uid
    svc.claim(running)
    rec.events.clear()
    svc.cancel(running, "order withdrawn")
    assert svc.get(running).state == IN_PROGRESS
    assert rec.types() == [UPS_CANCEL_REQUESTED]
    svc.finish(running, CANCELED)
    assert svc.get(running).state == CANCELED
    with pytest.raises(UpsConflict):
        svc.finish(svc.create(order(accession="C3")).uid, COMPLETED)


def test_assignment_event_on_update(svc: WorkitemService, rec: Recorder) -> None:
    ds = order()
    del ds["00404025"]
    uid = svc.create(ds).uid
    assert rec.types() == [UPS_STATE_REPORT]
    rec.events.clear()
    performers = {"00404034": el("SQ", {"00404037": el("PN", {"Alphabetic": "Tech^Tina"})})}
    svc.update(uid, performers, None)
    assert rec.types() == [UPS_ASSIGNED]
    svc.update(uid, {"00741204": el("LO", "again")}, None)
    assert rec.types() == [UPS_ASSIGNED]  # no new event: nothing assigned changed


class Broken:
    def publish(self, event: WorkitemEvent) -> None:
        raise RuntimeError("subscriber store down")


def test_publisher_failure_does_not_fail_the_change(
    index: SqlIndex, caplog: pytest.LogCaptureFixture
) -> None:
    svc = WorkitemService(SqlWorkitems(index), Broken())
    uid = svc.create(order()).uid
    txn = svc.claim(uid)
    assert svc.get(uid).transaction_uid == txn
    assert "could not publish UPS event" in caplog.text


def test_concurrent_claims_one_wins(index: SqlIndex) -> None:
    """Row-locked read-modify-write: of several performers claiming one workitem at
    once, exactly one gets it; the others, with other Transaction UIDs, get 0xC301
    (PS3.4 Table CC.1.1-2)."""
    svc = WorkitemService(SqlWorkitems(index))
    uid = svc.create(order()).uid
    txns = [str(generate_uid()) for _ in range(6)]
    outcomes: list[str] = []

    def claim(txn: str) -> None:
        try:
            svc.change_state(uid, IN_PROGRESS, txn)
            outcomes.append("won")
        except UpsConflict as exc:
            outcomes.append(hex(exc.status))

    threads = [threading.Thread(target=claim, args=(t,)) for t in txns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["0xc301"] * 5 + ["won"]
    assert svc.get(uid).transaction_uid in txns


def test_linking_never_rewrites_the_workitem(
    index: SqlIndex, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs are rows of their own: a study of a thousand images sent by C-STORE (one
    link per image) must not rewrite the workitem's growing JSON each time."""
    store = SqlWorkitems(index)
    svc = WorkitemService(store, rec)
    uid = svc.create(order(accession="BATCH1")).uid
    rewrites: list[str] = []
    modify = store.modify_workitem

    def counted(workitem_uid: str, change: Any) -> Any:
        rewrites.append(workitem_uid)
        return modify(workitem_uid, change)

    monkeypatch.setattr(store, "modify_workitem", counted)
    ct, study = "1.2.840.10008.5.1.4.1.1.2", "1.2.3"
    refs = [(study, f"1.2.3.{n % 2 + 1}", ct, f"1.2.3.9.{n}") for n in range(64)]
    assert svc.add_outputs(uid, refs[:60]) == 60
    for ref in refs[60:]:
        assert svc.add_output(uid, *ref)
    assert rewrites == []
    # Again, with four already there, one repeated in the batch, and one new series.
    new = (study, "1.2.3.3", ct, "1.2.3.9.100")
    assert svc.add_outputs(uid, [*refs[:4], new, new]) == 1
    assert svc.add_outputs(uid, refs[:10]) == 0
    assert not svc.add_output(uid, *refs[0])

    def outputs_of(item_uid: str) -> dict[str, list[str]]:
        outputs = svc.get(item_uid).dataset["00741216"]["Value"][0]["00404033"]["Value"]
        return {
            o["0020000E"]["Value"][0]: [r["00081155"]["Value"][0] for r in o["00081199"]["Value"]]
            for o in outputs
        }

    by_series = outputs_of(uid)
    assert {k: len(v) for k, v in by_series.items()} == {"1.2.3.1": 32, "1.2.3.2": 32, "1.2.3.3": 1}
    assert len({s for v in by_series.values() for s in v}) == 65
    # A change of state writes the workitem back: the outputs stay, once each.
    monkeypatch.setattr(store, "modify_workitem", modify)
    svc.claim(uid)
    svc.finish(uid, COMPLETED)
    assert outputs_of(uid) == by_series
    (found,) = [w for w in svc.find(states=(COMPLETED,), accession_number="BATCH1")]
    assert found.dataset == svc.get(uid).dataset
    with pytest.raises(NotFound):
        svc.add_outputs("1.2.3.404", refs[:1])
