"""The hospital's order-to-image loop, end to end over real sockets, as issue #5 tells it.

One `dicomweb-server serve --workers 2 --hl7` is archive, worklist server and viewer:

1. a monitor subscribes to the whole worklist over UPS-RS and opens its WebSocket;
2. the HIS sends a new order as HL7 ORM^O01 over MLLP (python-hl7's own client): ACK;
3. the modality (pynetdicom) asks the Modality Worklist and gets the Accession Number;
4. it starts the step (MPPS N-CREATE), stores the images (C-STORE), ends the step
   (MPPS N-SET COMPLETED) naming them;
5. the workitem is COMPLETED with the images as its output, the monitor saw SCHEDULED,
   IN PROGRESS, COMPLETED in that order (events made by the DIMSE listener in the
   parent process, delivered by an HTTP worker), QIDO by Accession Number finds the
   study, and `/open?AccessionNumber=` sends a browser to the viewer on it.

A second modality stores images with an Accession Number typed by hand (no order):
QIDO finds those as well. Both index backends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import orjson
import pytest
from hl7.mllp import open_hl7_connection
from pydicom.dataset import Dataset
from pynetdicom import AE
from websockets.sync.client import ClientConnection, connect

from tests.conftest import BACKENDS, Server, free_port, http, make_database_url, start_server
from tests.dicomgen import make_dataset, uid
from tests.hl7samples import orm
from tests.mppsgen import ended, started

MWL_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
WORKLIST = "1.2.840.10008.5.1.4.34.5"  # the global subscription's well-known UID
STATE_REPORT = 1


@pytest.fixture(params=BACKENDS)
def hospital(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, int]]:
    url = make_database_url(request.param, tmp_path, request)
    hl7_port = free_port()
    server = start_server(
        tmp_path / "data",
        url,
        "--workers",
        "2",
        "--hl7",
        "--hl7-port",
        str(hl7_port),
    )
    yield server, hl7_port
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]


def send_hl7(port: int, text: str) -> hl7.Message:
    async def exchange() -> hl7.Message:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        try:
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            return await asyncio.wait_for(reader.readmessage(), 60)
        finally:
            writer.close()
            await writer.wait_closed()

    return asyncio.run(exchange())


def reports_for(ws: ClientConnection, workitem: str, count: int) -> list[str]:
    """The states of the next ``count`` UPS State Reports about ``workitem``."""
    states: list[str] = []
    deadline = time.monotonic() + 60
    while len(states) < count and time.monotonic() < deadline:
        report = orjson.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if report["00001000"]["Value"][0] != workitem:
            continue
        if report["00001002"]["Value"][0] == STATE_REPORT:
            states.append(report["00741000"]["Value"][0])
    return states


def modality_association(server: Server, aet: str) -> Any:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in (MWL_FIND, MPPS, CT_IMAGE_STORAGE):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    return assoc


def worklist_query(station: str) -> Dataset:
    ident = Dataset()
    ident.AccessionNumber = ident.PatientID = ident.PatientName = ""
    ident.StudyInstanceUID = ident.RequestedProcedureID = ""
    sps = Dataset()
    sps.ScheduledStationAETitle = station
    sps.Modality = "MR"
    sps.ScheduledProcedureStepID = sps.ScheduledProcedureStepStartDate = ""
    ident.ScheduledProcedureStepSequence = [sps]
    return ident


def step_started(entry: Dataset) -> Dataset:
    """MPPS N-CREATE with what the worklist entry gave."""
    return started(
        str(entry.AccessionNumber),
        str(entry.StudyInstanceUID),
        str(entry.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID),
        requested_procedure_id=str(entry.RequestedProcedureID),
        PatientName=entry.PatientName,
        PatientID=entry.PatientID,
        PerformedStationAETitle="MR01",
        Modality="MR",
    )


def studies_by_accession(server: Server, accession: str) -> list[dict[str, Any]]:
    found = http().get(
        f"{server.url}/studies",
        params={"AccessionNumber": accession},
        headers={"Accept": "application/dicom+json"},
    )
    assert found.status_code in (200, 204), found.text
    return [] if found.status_code == 204 else list(found.json())


def test_order_to_image_loop(hospital: tuple[Server, int]) -> None:
    server, hl7_port = hospital
    accession = "E2E" + uid()[-10:]
    station = "MR01"

    with connect(
        f"ws://127.0.0.1:{server.port}/dicom-web/ws/subscribers/MONITOR",
        proxy=None,
        open_timeout=30,
    ) as ws:
        subscribed = http().post(f"{server.url}/workitems/{WORKLIST}/subscribers/MONITOR")
        assert subscribed.status_code == 201, subscribed.text

        # 2. The HIS orders the exam.
        ack = send_hl7(hl7_port, orm(accession, control_id="E2E1", station_ae=station))
        assert str(ack.segment("MSA")[1]) == "AA", str(ack)
        found = http().get(
            f"{server.url}/workitems",
            params={"ReferencedRequestSequence.AccessionNumber": accession},
        )
        assert found.status_code == 200, found.text
        (workitem,) = [w["00080018"]["Value"][0] for w in found.json()]

        # 3-4. The modality: worklist, MPPS start, images, MPPS end.
        modality = modality_association(server, station)
        try:
            entries = [
                ds
                for status, ds in modality.send_c_find(worklist_query(station), MWL_FIND)
                if status and status.Status in (0xFF00, 0xFF01) and ds is not None
            ]
            assert [e.AccessionNumber for e in entries] == [accession]
            entry = entries[0]
            assert entry.PatientID == "PAT002"
            study = str(entry.StudyInstanceUID)
            step = uid()
            status, _ = modality.send_n_create(step_started(entry), MPPS, step)
            assert status.Status == 0x0000
            series = uid()
            images = [
                make_dataset(
                    study=study,
                    series=series,
                    accession=accession,
                    patient_id=str(entry.PatientID),
                    patient_name=str(entry.PatientName),
                    modality="MR",
                    sop_class=CT_IMAGE_STORAGE,
                    instance_number=n + 1,
                )
                for n in range(3)
            ]
            for image in images:
                assert modality.send_c_store(image).Status == 0x0000
            status, _ = modality.send_n_set(ended("COMPLETED", images), MPPS, step)
            assert status.Status == 0x0000
        finally:
            modality.release()

        # 5. What the monitor saw, in order, across processes.
        assert reports_for(ws, workitem, 3) == ["SCHEDULED", "IN PROGRESS", "COMPLETED"]

    got = http().get(f"{server.url}/workitems/{workitem}")
    assert got.status_code == 200, got.text
    body = got.json()
    item = body[0] if isinstance(body, list) else body
    assert item["00741000"]["Value"] == ["COMPLETED"]
    assert "00081195" not in item  # the Transaction UID is never shown
    performed = item["00741216"]["Value"][0]
    outputs = performed["00404033"]["Value"]
    assert {o["0020000D"]["Value"][0] for o in outputs} == {study}
    linked = {ref["00081155"]["Value"][0] for o in outputs for ref in o["00081199"]["Value"]}
    assert linked == {str(i.SOPInstanceUID) for i in images}

    (found_study,) = studies_by_accession(server, accession)
    assert found_study["0020000D"]["Value"] == [study]
    assert found_study["00201208"]["Value"] == [3]

    opened = http().get(
        f"{server.root}/open", params={"AccessionNumber": accession}, follow_redirects=False
    )
    assert opened.status_code in (302, 303), opened.text
    assert study in opened.headers["location"]

    # A technician types the number by hand on a modality without a worklist.
    typed = "HAND" + uid()[-8:]
    other = modality_association(server, "DX01")
    try:
        hand = make_dataset(accession=typed, modality="DX")
        assert other.send_c_store(hand).Status == 0x0000
    finally:
        other.release()
    (by_hand,) = studies_by_accession(server, typed)
    assert by_hand["0020000D"]["Value"] == [str(hand.StudyInstanceUID)]
