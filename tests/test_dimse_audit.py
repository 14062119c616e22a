"""DIMSE operations land in the same audit trail as HTTP (PS3.15 A.5), by AE title."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.conftest import Server, start_server
from tests.dicomgen import make_dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dimse-audit")
    # LIMITED may only echo: its C-STORE is refused, and that is a security event.
    env = {"DICOMWEB_DIMSE_MODALITIES": "LIMITED@127.0.0.1:104/echo"}
    srv = start_server(tmp / "data", f"sqlite:///{tmp / 'i.sqlite3'}", env=env)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


def _records(server: Server, count: int) -> list[dict[str, Any]]:
    path = server.data_dir / "audit" / "audit.jsonl"
    deadline = time.monotonic() + 30
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= count:
            break
        time.sleep(0.1)
    return [orjson.loads(line) for line in lines]


def _associate(server: Server, aet: str, *contexts: str) -> Any:
    ae = AE(ae_title=aet)
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    return assoc


def test_store_find_and_refusal_are_audited(server: Server) -> None:
    ds = make_dataset(patient_id="AUDIT-P1")
    assoc = _associate(server, "AUDITSCU", CT_IMAGE_STORAGE, STUDY_ROOT_FIND)
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "AUDIT-P1"
        query.StudyInstanceUID = ""
        answers = [s.Status for s, _ in assoc.send_c_find(query, STUDY_ROOT_FIND)]
        assert answers[-1] == 0x0000
    finally:
        assoc.release()
    limited = _associate(server, "LIMITED", CT_IMAGE_STORAGE)
    try:
        assert limited.send_c_store(make_dataset()).Status != 0x0000
    finally:
        limited.release()

    records = [r for r in _records(server, 3) if r["user_kind"] == "ae-title"]
    store = next(r for r in records if r["method"] == "C-STORE" and r["user"] == "AUDITSCU")
    assert store["event_id"]["code"] == "110104" and store["action"] == "C"
    assert store["outcome"] == 0
    assert store["sop_instance_uids"] == [str(ds.SOPInstanceUID)]
    assert store["study_uids"] == [str(ds.StudyInstanceUID)]
    assert store["source_ip"] == "127.0.0.1"
    find = next(r for r in records if r["method"] == "C-FIND")
    assert find["event_id"]["code"] == "110112" and find["query"]["PatientID"] == "AUDIT-P1"
    alert = next(r for r in records if r["user"] == "LIMITED")
    assert alert["event_id"]["code"] == "110113" and alert["outcome"] == 4
    assert "may not store" in alert["detail"]
