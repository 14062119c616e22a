"""Modality Worklist C-FIND (PS3.4 K.6.1) over a real server: DCMTK findscu -W and
pynetdicom against workitems created through the workitem service and UPS-RS REST.
Both index backends."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from dicomweb_server.bootstrap import Services, build_services
from dicomweb_server.config import load_settings
from dicomweb_server.dicom import mwl
from tests.conftest import BACKENDS, Server, http, make_database_url, start_server
from tests.dicomgen import uid
from tests.orders import order

MWL_FIND = "1.2.840.10008.5.1.4.31"
VERIFICATION = "1.2.840.10008.1.1"
AET = "DICOMWEB"


@dataclass
class Worklist:
    server: Server
    services: Services  # the same index, from the test process
    tag: str  # unique per backend, so accession numbers never collide

    def add(self, **fields: Any) -> str:
        """A SCHEDULED workitem made through the workitem service; its UID."""
        fields["accession"] = f"{self.tag}-{fields.get('accession', 'A')}"
        return self.services.workitems.create(order(**fields)).uid


@pytest.fixture(scope="module", params=BACKENDS)
def worklist(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worklist]:
    tmp = tmp_path_factory.mktemp("mwl")
    url = make_database_url(request.param, tmp, request)
    server = start_server(tmp / "data", url)
    services = build_services(load_settings(environ={}, data_dir=tmp / "data", database_url=url))
    wl = Worklist(server, services, uid()[-8:])
    wl.add(
        accession="CT1",
        modality="CT",
        station_aet="CT01",
        start="20261125093000",
        patient_id=f"{wl.tag}-P1",
        patient_name="Müller^Jürgen",
        study_uid="1.2.3.901",
    )
    wl.add(
        accession="CT2",
        modality="CT",
        station_aet="CT02",
        start="20261126081500",
        patient_id=f"{wl.tag}-P2",
        patient_name="Smith^Anna",
        step_id="SPS-CT2",
    )
    wl.add(accession="MR1", modality="MR", station_aet="MR01", start="20261126140000",
           patient_id=f"{wl.tag}-P3", patient_name="Nguyen^Thi")  # fmt: skip
    yield wl
    services.close()
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]


def _associate(port: int, *contexts: str) -> Any:
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in contexts or (MWL_FIND,):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    return assoc


def query(**top: Any) -> Dataset:
    """An identifier as modalities send it: patient and order keys, one SPS item."""
    sps_keys = {k[4:]: v for k, v in top.items() if k.startswith("sps_")}
    ds = Dataset()
    ds.PatientName = top.get("PatientName", "")
    ds.PatientID = top.get("PatientID", "")
    ds.AccessionNumber = top.get("AccessionNumber", "")
    ds.StudyInstanceUID = ""
    item = Dataset()
    item.Modality = sps_keys.get("Modality", "")
    item.ScheduledStationAETitle = sps_keys.get("ScheduledStationAETitle", "")
    item.ScheduledProcedureStepStartDate = sps_keys.get("ScheduledProcedureStepStartDate", "")
    item.ScheduledProcedureStepStartTime = sps_keys.get("ScheduledProcedureStepStartTime", "")
    item.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def find(port: int, identifier: Dataset) -> tuple[list[Dataset], int]:
    """(pending identifiers, final status) of one C-FIND."""
    assoc = _associate(port)
    try:
        answers = list(assoc.send_c_find(identifier, MWL_FIND))
    finally:
        assoc.release()
    pending = [ds for st, ds in answers if st and st.Status in (0xFF00, 0xFF01)]
    final = answers[-1][0]
    return pending, int(final.Status)


def accessions(wl: Worklist, **keys: Any) -> list[str]:
    pending, final = find(wl.server.dimse_port, query(**keys))
    assert final == 0x0000
    mine = sorted(str(ds.AccessionNumber) for ds in pending if ds.AccessionNumber)
    return [a.removeprefix(f"{wl.tag}-") for a in mine if a.startswith(wl.tag)]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, ["CT1", "CT2", "MR1"]),
        ({"sps_Modality": "CT"}, ["CT1", "CT2"]),
        ({"sps_Modality": "MR"}, ["MR1"]),
        ({"sps_ScheduledStationAETitle": "CT02"}, ["CT2"]),
        ({"sps_ScheduledProcedureStepStartDate": "20261126"}, ["CT2", "MR1"]),
        ({"sps_ScheduledProcedureStepStartDate": "20261120-20261125"}, ["CT1"]),
        (
            {
                "sps_ScheduledProcedureStepStartDate": "20261126",
                "sps_ScheduledProcedureStepStartTime": "1200-",
            },
            ["MR1"],
        ),
        ({"PatientName": "MULLER*"}, ["CT1"]),
        ({"sps_Modality": "CT", "sps_ScheduledStationAETitle": "MR01"}, []),
    ],
)
def test_matching_keys(worklist: Worklist, keys: dict[str, str], expected: list[str]) -> None:
    assert accessions(worklist, **keys) == expected


def test_patient_id_and_accession_number(worklist: Worklist) -> None:
    assert accessions(worklist, PatientID=f"{worklist.tag}-P2") == ["CT2"]
    assert accessions(worklist, AccessionNumber=f"{worklist.tag}-MR1") == ["MR1"]
    assert accessions(worklist, AccessionNumber=f"{worklist.tag}-NONE") == []


def test_the_response_has_the_requested_keys_and_the_order_values(worklist: Worklist) -> None:
    ident = query(AccessionNumber=f"{worklist.tag}-CT2")
    ident.RequestedProcedureID = ""
    ident.PatientSex = ""
    pending, final = find(worklist.server.dimse_port, ident)
    assert final == 0 and len(pending) == 1
    ds = pending[0]
    assert sorted(e.keyword for e in ds if e.keyword != "SpecificCharacterSet") == sorted(
        [
            "PatientName",
            "PatientID",
            "AccessionNumber",
            "StudyInstanceUID",
            "ScheduledProcedureStepSequence",
            "RequestedProcedureID",
            "PatientSex",
        ]
    )
    assert str(ds.PatientName) == "Smith^Anna" and ds.PatientSex == "M"
    assert ds.RequestedProcedureID == "RP-1"
    assert ds.StudyInstanceUID.startswith("2.25.")  # derived, stable: the order had none
    item = ds.ScheduledProcedureStepSequence[0]
    assert sorted(e.keyword for e in item) == sorted(
        [
            "Modality",
            "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime",
            "ScheduledProcedureStepID",
        ]
    )
    assert (item.Modality, item.ScheduledStationAETitle) == ("CT", "CT02")
    assert (item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime) == (
        "20261126",
        "081500",
    )
    assert item.ScheduledProcedureStepID == "SPS-CT2"
    again, _ = find(worklist.server.dimse_port, ident)
    assert again[0].StudyInstanceUID == ds.StudyInstanceUID


def test_a_bad_identifier_gets_a900_and_the_association_lives_on(worklist: Worklist) -> None:
    assoc = _associate(worklist.server.dimse_port, MWL_FIND, VERIFICATION)
    try:
        bad = query(sps_ScheduledProcedureStepStartDate="20261126-20261101")
        answers = list(assoc.send_c_find(bad, MWL_FIND))
        assert len(answers) == 1 and answers[0][0].Status == 0xA900
        assert "range start" in str(answers[0][0].get("ErrorComment", ""))
        assert assoc.send_c_echo().Status == 0x0000
        good = list(assoc.send_c_find(query(sps_Modality="MR"), MWL_FIND))
        assert good[-1][0].Status == 0x0000
    finally:
        assoc.release()


def test_findscu_worklist(worklist: Worklist, tmp_path: Path) -> None:
    """DCMTK's findscu -W, with sequence keys given by path, responses written out."""
    cmd = [
        "findscu", "-W", "-aet", "FINDSCU", "-aec", AET, "-X", "-od", str(tmp_path),
        "-k", f"AccessionNumber={worklist.tag}-CT1",
        "-k", "PatientName", "-k", "PatientID", "-k", "StudyInstanceUID",
        "-k", "RequestedProcedureID", "-k", "ReferringPhysicianName",
        "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
        "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261125",
        "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
        "127.0.0.1", str(worklist.server.dimse_port),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("rsp*.dcm"))
    assert len(files) == 1, done.stderr
    ds = pydicom.dcmread(files[0])
    assert ds.AccessionNumber == f"{worklist.tag}-CT1"
    assert str(ds.PatientName) == "Müller^Jürgen"  # sent as ISO_IR 192 or 100
    assert ds.StudyInstanceUID == "1.2.3.901"
    assert str(ds.ReferringPhysicianName) == "Welby^Marcus"
    item = ds.ScheduledProcedureStepSequence[0]
    assert (item.Modality, item.ScheduledStationAETitle) == ("CT", "CT01")
    assert item.ScheduledProcedureStepDescription == "CT head without contrast"


def test_in_progress_workitems_leave_the_worklist(worklist: Worklist) -> None:
    wuid = worklist.add(accession="US1", modality="US", station_aet="US01")
    assert accessions(worklist, sps_Modality="US") == ["US1"]
    worklist.services.workitems.claim(wuid)
    assert accessions(worklist, sps_Modality="US") == []
    started = query(sps_Modality="US")
    started.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = "STARTED"
    pending, final = find(worklist.server.dimse_port, started)
    assert final == 0 and [p.ScheduledProcedureStepSequence[0].Modality for p in pending] == ["US"]
    assert pending[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"


def test_a_workitem_created_over_ups_rs_is_on_the_worklist(
    worklist: Worklist, tmp_path: Path
) -> None:
    data = order(accession=f"{worklist.tag}-REST1", modality="DX", station_aet="DX01")
    response = http().post(
        f"{worklist.server.url}/workitems?{uid()}",
        json=data,
        headers={"Content-Type": "application/dicom+json", "Accept": "application/dicom+json"},
    )
    assert response.status_code == 201, response.text
    assert accessions(worklist, sps_Modality="DX") == ["REST1"]
    # And as DCMTK sees it.
    cmd = [
        "findscu", "-W", "-aec", AET, "-X", "-od", str(tmp_path),
        "-k", "AccessionNumber", "-k", "PatientName",
        "-k", "ScheduledProcedureStepSequence[0].Modality=DX",
        "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=DX01",
        "127.0.0.1", str(worklist.server.dimse_port),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = [pydicom.dcmread(f) for f in sorted(tmp_path.glob("rsp*.dcm"))]
    assert [ds.AccessionNumber for ds in found] == [f"{worklist.tag}-REST1"]
    assert found[0].ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "DX01"


def test_queries_are_audited(worklist: Worklist) -> None:
    accessions(worklist, AccessionNumber=f"{worklist.tag}-AUDIT", sps_Modality="NM")
    path = worklist.server.data_dir / "audit" / "audit.jsonl"
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    mine = [
        r for r in records if r.get("query", {}).get("AccessionNumber") == f"{worklist.tag}-AUDIT"
    ]
    assert len(mine) == 1 and mine[0]["method"] == "MWL C-FIND"
    assert mine[0]["event_id"]["code"] == "110112" and mine[0]["user"] == "MODALITY"
    assert mine[0]["query"]["Modality"] == "NM"


def test_the_mapping_module_is_what_the_server_uses(worklist: Worklist) -> None:
    """The derived step ID a modality sees is dicom/mwl.py's, so MPPS can link back."""
    wuid = worklist.add(accession="ID1", modality="XA", station_aet="XA01")
    pending, _ = find(worklist.server.dimse_port, query(sps_Modality="XA"))
    step = pending[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepID
    assert step == mwl.step_id(wuid)


def test_c_cancel_stops_the_responses(worklist: Worklist) -> None:
    """C-CANCEL-FIND (PS3.7 9.3.2.3): the SCP stops and answers FE00.

    A cancel that arrives after the last match has nothing to stop, and on loopback
    the answers can outrun it; so try a few times: one must be honoured.
    """
    for n in range(250):
        worklist.add(accession=f"OT{n}", modality="OT", station_aet="OT01")
    ident = query(sps_Modality="OT")
    outcomes = []
    for attempt in range(5):
        assoc = _associate(worklist.server.dimse_port)
        statuses = []
        try:
            for rsp, _ in assoc.send_c_find(ident, MWL_FIND, msg_id=11 + attempt):
                statuses.append(int(rsp.Status))
                if len(statuses) == 1:
                    assoc.send_c_cancel(11 + attempt, query_model=MWL_FIND)
        finally:
            assoc.release()
        outcomes.append((statuses[-1], len(statuses)))
        if statuses[-1] == 0xFE00:
            assert len(statuses) < 251
            return
        assert statuses[-1] == 0x0000 and len(statuses) == 251, outcomes
    raise AssertionError(f"no C-CANCEL honoured in 5 tries: {outcomes}")
