"""UPS-RS over a real server (SQLite and PostgreSQL) with httpx: every transaction, the
state rules with their PS3.18 status codes and Warning texts, and that a refused request
changes nothing."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from pydicom.uid import generate_uid

from tests.conftest import Server, http
from tests.upsgen import cancellation, completion, el, order

JSON = {"Content-Type": "application/dicom+json", "Accept": "application/dicom+json"}


def create(server: Server, dataset: dict[str, Any], uid: str | None = None) -> httpx.Response:
    uid = uid or str(generate_uid())
    return http().post(f"{server.url}/workitems?{uid}", json=dataset, headers=JSON)


def new_workitem(server: Server, **kwargs: Any) -> str:
    uid = str(generate_uid())
    response = create(server, order(**kwargs), uid)
    assert response.status_code == 201, response.text
    return uid


def get(server: Server, uid: str) -> dict[str, Any]:
    response = http().get(f"{server.url}/workitems/{uid}", headers=JSON)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list) and len(body) == 1
    result: dict[str, Any] = body[0]
    return result


def put_state(server: Server, uid: str, state: str, txn: str | None) -> httpx.Response:
    body: dict[str, Any] = {"00741000": el("CS", state)}
    if txn is not None:
        body["00081195"] = el("UI", txn)
    return http().put(f"{server.url}/workitems/{uid}/state", json=body, headers=JSON)


def post_update(
    server: Server, uid: str, changes: dict[str, Any], txn: str | None = None
) -> httpx.Response:
    query = f"?{txn}" if txn else ""
    return http().post(f"{server.url}/workitems/{uid}{query}", json=changes, headers=JSON)


def warning(response: httpx.Response) -> str:
    return str(response.headers.get("warning", ""))


def refused(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert warning(response).startswith("299 ") and warning(response).endswith(text), warning(
        response
    )
    assert response.json()["message"]


def test_create_and_retrieve(shared_server: Server) -> None:
    uid = str(generate_uid())
    response = create(shared_server, order(accession="W1"), uid)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{shared_server.url}/workitems/{uid}"
    assert response.headers["content-location"] == response.headers["location"]
    item = get(shared_server, uid)
    assert item["00080018"]["Value"] == [uid]
    assert item["00741000"]["Value"] == ["SCHEDULED"]
    assert item["0040A370"]["Value"][0]["00080050"]["Value"] == ["W1"]
    assert "00081195" not in item
    # the UID may also come in the dataset itself
    other = str(generate_uid())
    ds = order()
    ds["00080018"] = el("UI", other)
    assert http().post(f"{shared_server.url}/workitems", json=[ds], headers=JSON).status_code == 201
    assert get(shared_server, other)["00080018"]["Value"] == [other]
    # XML on request
    xml = http().get(
        f"{shared_server.url}/workitems/{uid}",
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    assert xml.status_code == 200 and b"NativeDicomModel" in xml.content


def test_create_refusals(shared_server: Server) -> None:
    uid = new_workitem(shared_server)
    again = create(shared_server, order(), uid)
    assert again.status_code == 409
    bad = order()
    del bad["00741204"]
    fresh = str(generate_uid())
    response = create(shared_server, bad, fresh)
    assert response.status_code == 400 and "ProcedureStepLabel" in response.json()["message"]
    bad_state = order()
    bad_state["00741000"] = el("CS", "COMPLETED")
    assert create(shared_server, bad_state, fresh).status_code == 400
    no_uid = http().post(f"{shared_server.url}/workitems", json=order(), headers=JSON)
    assert no_uid.status_code == 400 and "Workitem UID" in no_uid.json()["message"]
    not_json = http().post(f"{shared_server.url}/workitems?{fresh}", content=b"{oops", headers=JSON)
    assert not_json.status_code == 400
    xml_body = http().post(
        f"{shared_server.url}/workitems?{fresh}",
        content=b"<x/>",
        headers={"Content-Type": "application/dicom+xml"},
    )
    assert xml_body.status_code == 415
    assert (
        http().post(f"{shared_server.url}/workitems?1.02.3", json=order(), headers=JSON).status_code
        == 400
    )
    assert http().get(f"{shared_server.url}/workitems/{fresh}", headers=JSON).status_code == 404
    assert http().get(f"{shared_server.url}/workitems/not-a-uid", headers=JSON).status_code == 400


def test_unknown_workitem(shared_server: Server) -> None:
    uid = str(generate_uid())
    assert post_update(shared_server, uid, {"00741204": el("LO", "x")}).status_code == 404
    assert put_state(shared_server, uid, "IN PROGRESS", str(generate_uid())).status_code == 404
    cancel = http().post(f"{shared_server.url}/workitems/{uid}/cancelrequest")
    assert cancel.status_code == 404


def test_update(shared_server: Server) -> None:
    uid = new_workitem(shared_server)
    changed = post_update(shared_server, uid, {"00741204": el("LO", "CT head")})
    assert changed.status_code == 200, changed.text
    assert get(shared_server, uid)["00741204"]["Value"] == ["CT head"]
    for key, vr in (("00741000", "CS"), ("00081195", "UI"), ("00080016", "UI")):
        response = post_update(shared_server, uid, {key: el(vr, "1.2.3")})
        assert response.status_code == 400, response.text
    txn = str(generate_uid())
    assert put_state(shared_server, uid, "IN PROGRESS", txn).status_code == 200
    before = get(shared_server, uid)
    claimed = "The target URI did not reference a claimed Workitem."
    refused(post_update(shared_server, uid, {"00741204": el("LO", "x")}), 400, claimed)
    refused(
        post_update(shared_server, uid, {"00741204": el("LO", "x")}, str(generate_uid())),
        400,
        claimed,
    )
    assert get(shared_server, uid) == before  # refusals changed nothing
    assert post_update(shared_server, uid, completion(), txn).status_code == 200
    assert put_state(shared_server, uid, "COMPLETED", txn).status_code == 200
    refused(
        post_update(shared_server, uid, {"00741204": el("LO", "x")}, txn),
        400,
        "The submitted request is inconsistent with the current state of the Workitem.",
    )


def test_change_state_transitions(shared_server: Server) -> None:
    uid = new_workitem(shared_server)
    txn, other = str(generate_uid()), str(generate_uid())
    inconsistent = "The submitted request is inconsistent with the state of the UPS Instance."
    refused(put_state(shared_server, uid, "COMPLETED", txn), 409, inconsistent)
    refused(put_state(shared_server, uid, "CANCELED", txn), 409, inconsistent)
    refused(put_state(shared_server, uid, "SCHEDULED", txn), 409, inconsistent)
    refused(
        put_state(shared_server, uid, "IN PROGRESS", None), 400, "The Transaction UID is missing."
    )
    assert put_state(shared_server, uid, "PAUSED", txn).status_code == 400
    no_state = http().put(
        f"{shared_server.url}/workitems/{uid}/state", json={"00081195": el("UI", txn)}, headers=JSON
    )
    assert no_state.status_code == 400
    assert get(shared_server, uid)["00741000"]["Value"] == ["SCHEDULED"]

    assert put_state(shared_server, uid, "IN PROGRESS", txn).status_code == 200
    assert get(shared_server, uid)["00741000"]["Value"] == ["IN PROGRESS"]
    refused(put_state(shared_server, uid, "IN PROGRESS", txn), 409, inconsistent)
    refused(
        put_state(shared_server, uid, "IN PROGRESS", other),
        400,
        "The Transaction UID is incorrect.",
    )
    refused(
        put_state(shared_server, uid, "COMPLETED", other), 400, "The Transaction UID is incorrect."
    )
    refused(
        put_state(shared_server, uid, "COMPLETED", None), 400, "The Transaction UID is missing."
    )
    # final-state requirements (PS3.4 CC.2.5.1.1) not met yet
    unmet = put_state(shared_server, uid, "COMPLETED", txn)
    refused(unmet, 409, inconsistent)
    assert (
        "PerformedProcedureStepEndDateTime" in unmet.json()["message"]
        or "UnifiedProcedureStepPerformedProcedureSequence" in unmet.json()["message"]
    )
    assert get(shared_server, uid)["00741000"]["Value"] == ["IN PROGRESS"]

    assert post_update(shared_server, uid, completion(), txn).status_code == 200
    done = put_state(shared_server, uid, "COMPLETED", txn)
    assert done.status_code == 200 and not warning(done)
    again = put_state(shared_server, uid, "COMPLETED", txn)
    assert again.status_code == 200
    assert warning(again).endswith("The UPS is already in the requested state of COMPLETED.")
    refused(put_state(shared_server, uid, "CANCELED", txn), 409, inconsistent)
    refused(put_state(shared_server, uid, "IN PROGRESS", txn), 409, inconsistent)
    assert get(shared_server, uid)["00741000"]["Value"] == ["COMPLETED"]


def test_cancel_by_performer(shared_server: Server) -> None:
    uid = new_workitem(shared_server)
    txn = str(generate_uid())
    assert put_state(shared_server, uid, "IN PROGRESS", txn).status_code == 200
    assert post_update(shared_server, uid, cancellation(), txn).status_code == 200
    assert put_state(shared_server, uid, "CANCELED", txn).status_code == 200
    progress = get(shared_server, uid)["00741002"]["Value"][0]
    assert progress["00741238"]["Value"] == ["wrong patient"]  # the performer's reason kept
    assert progress["0074100E"]["Value"][0]["00080100"]["Value"] == ["110514"]
    again = put_state(shared_server, uid, "CANCELED", txn)
    assert again.status_code == 200
    assert warning(again).endswith("The UPS is already in the requested state of CANCELED.")
    # without an update first, the SCP fills the cancellation date-time and a reason
    quick = new_workitem(shared_server)
    assert put_state(shared_server, quick, "IN PROGRESS", txn).status_code == 200
    assert put_state(shared_server, quick, "CANCELED", txn).status_code == 200
    assert "00404052" in get(shared_server, quick)["00741002"]["Value"][0]


def test_request_cancellation(shared_server: Server) -> None:
    scheduled = new_workitem(shared_server)
    reason = {"00741238": el("LT", "patient left")}
    response = http().post(
        f"{shared_server.url}/workitems/{scheduled}/cancelrequest", json=reason, headers=JSON
    )
    assert response.status_code == 202, response.text
    item = get(shared_server, scheduled)
    assert item["00741000"]["Value"] == ["CANCELED"]
    assert item["00741002"]["Value"][0]["00741238"]["Value"] == ["patient left"]
    again = http().post(f"{shared_server.url}/workitems/{scheduled}/cancelrequest")
    assert again.status_code == 202
    assert warning(again).endswith("The UPS is already in the requested state of CANCELED.")

    running = new_workitem(shared_server)
    txn = str(generate_uid())
    put_state(shared_server, running, "IN PROGRESS", txn)
    asked = http().post(
        f"{shared_server.url}/workitems/{running}/cancelrequest", json=[reason], headers=JSON
    )
    assert asked.status_code == 202
    assert get(shared_server, running)["00741000"]["Value"] == ["IN PROGRESS"]

    post_update(shared_server, running, completion(), txn)
    put_state(shared_server, running, "COMPLETED", txn)
    refused(
        http().post(f"{shared_server.url}/workitems/{running}/cancelrequest"),
        409,
        "The UPS is already COMPLETED.",
    )


def test_search(shared_server: Server) -> None:
    pid = "P" + secrets.token_hex(4)
    a = new_workitem(
        shared_server, patient_id=pid, start="20300101080000", station="CTA", accession="SA"
    )
    b = new_workitem(
        shared_server,
        patient_id=pid,
        start="20300102100000",
        station="MRB",
        modality="MR",
        accession="SB",
    )
    c = new_workitem(
        shared_server, patient_id=pid, start="20300103120000", station="CTC", accession="SC"
    )
    put_state(shared_server, c, "IN PROGRESS", str(generate_uid()))

    def uids(**params: str) -> list[str]:
        response = http().get(
            f"{shared_server.url}/workitems", params={"PatientID": pid, **params}, headers=JSON
        )
        assert response.status_code == 200, response.text
        return [r["00080018"]["Value"][0] for r in response.json()]

    assert uids() == [a, b, c]
    assert uids(ProcedureStepState="SCHEDULED") == [a, b]
    assert uids(ScheduledProcedureStepStartDateTime="20300102-20300103") == [b, c]
    assert uids(ScheduledProcedureStepStartDateTime="20300101080000-20300101080000") == [a]
    assert uids(**{"ScheduledStationNameCodeSequence.CodeValue": "MRB"}) == [b]
    assert uids(**{"00404025.00080100": "CT?"}) == [a, c]
    assert uids(**{"ScheduledStationClassCodeSequence.CodeValue": "MR"}) == [b]
    assert uids(**{"ReferencedRequestSequence.AccessionNumber": "SC"}) == [c]
    assert uids(PatientName="doe^jane") == [a, b, c]
    assert uids(PatientName="Nobody*") == []
    assert uids(limit="1", offset="2") == [c]
    paged = http().get(
        f"{shared_server.url}/workitems", params={"PatientID": pid, "limit": "1"}, headers=JSON
    )
    assert "additional results" in warning(paged)
    big = http().get(
        f"{shared_server.url}/workitems", params={"PatientID": pid, "limit": "5000"}, headers=JSON
    )
    assert big.status_code == 200 and "exceeds the maximum" in warning(big)
    include = (
        http()
        .get(
            f"{shared_server.url}/workitems",
            params={"PatientID": pid, "includefield": "ScheduledProcedureStepID", "limit": "1"},
            headers=JSON,
        )
        .json()[0]
    )
    assert include["00400009"]["Value"] == ["SPS-SA"]
    for bad in (
        {"NoSuchKeyword": "1"},
        {"ScheduledProcedureStepStartDateTime": "2030x"},
        {"limit": "x"},
    ):
        response = http().get(f"{shared_server.url}/workitems", params=bad, headers=JSON)
        assert response.status_code == 400, (bad, response.text)
    assert (
        http().get(f"{shared_server.url}/workitems?PatientID=none-such", headers=JSON).json() == []
    )


def test_concurrent_claims_over_http(shared_server: Server) -> None:
    """Several performers claim one workitem at once: one wins, the rest are told the
    Transaction UID is not theirs, and the workitem keeps the winner's."""
    uid = new_workitem(shared_server)
    txns = [str(generate_uid()) for _ in range(5)]
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(max_workers=5) as pool:

        def claim(txn: str) -> int:
            body = {"00741000": el("CS", "IN PROGRESS"), "00081195": el("UI", txn)}
            url = f"{shared_server.url}/workitems/{uid}/state"
            return client.put(url, json=body, headers=JSON).status_code

        codes = list(pool.map(claim, txns))
    assert sorted(codes) == [200, 400, 400, 400, 400]
    winner = txns[codes.index(200)]
    update = post_update(shared_server, uid, {"00741204": el("LO", "mine")}, winner)
    assert update.status_code == 200
