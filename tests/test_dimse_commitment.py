"""Storage Commitment Push Model (PS3.4 J.3) against the gateway, with pynetdicom as SCU.

The report comes on the same association while it is open, else on a new association
to the requester's configured address. Only durably stored instances are committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from tests.conftest import Server, free_port, start_server
from tests.dicomgen import make_dataset, uid

PUSH = "1.2.840.10008.1.20.1"
PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
Verification = "1.2.840.10008.1.1"
SCU_AET = "COMMITSCU"


@dataclass
class Setup:
    server: Server
    listen_port: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("commit")
    port = free_port()
    env = {"DICOMWEB_DIMSE_MODALITIES": f"{SCU_AET}@127.0.0.1:{port}"}
    srv = start_server(tmp / "data", f"sqlite:///{tmp / 'index.sqlite3'}", env=env)
    yield Setup(srv, port)
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


class Reports:
    def __init__(self) -> None:
        self.got: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()

    def handler(self, event: Any) -> tuple[int, None]:
        self.got.append((int(event.request.EventTypeID), event.event_information))
        self.arrived.set()
        return 0x0000, None


def _ae() -> AE:
    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(PUSH)
    ae.add_requested_context(CT)
    ae.add_requested_context(Verification)
    return ae


def _request(stored: list[Dataset]) -> tuple[Dataset, set[str], str, str]:
    info = Dataset()
    info.TransactionUID = uid()
    missing, conflicting = uid(), str(stored[0].SOPInstanceUID)
    items = []
    for sop_class, sop in [(CT, str(d.SOPInstanceUID)) for d in stored] + [
        (CT, missing),
        (MR, conflicting),
    ]:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        items.append(item)
    info.ReferencedSOPSequence = items
    return info, {str(d.SOPInstanceUID) for d in stored}, missing, conflicting


def _check(report: tuple[int, Dataset], info: Dataset, stored: set[str], missing: str) -> None:
    event_type, result = report
    assert event_type == 2  # some failed
    assert result.TransactionUID == info.TransactionUID
    assert {i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence} == stored
    reasons = {
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID): i.FailureReason
        for i in result.FailedSOPSequence
    }
    assert reasons[(CT, missing)] == 0x0112
    assert [r for (c, _), r in reasons.items() if c == MR] == [0x0119]


def test_commitment_reported_on_the_same_association(setup: Setup) -> None:
    reports = Reports()
    assoc = _ae().associate(
        "127.0.0.1",
        setup.server.dimse_port,
        ae_title="DICOMWEB",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
    )
    assert assoc.is_established
    try:
        datasets = [make_dataset(), make_dataset()]
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
        info, stored, missing, _ = _request(datasets)
        rsp, _ = assoc.send_n_action(info, 1, PUSH, PUSH_INSTANCE)
        assert rsp.Status == 0x0000
        assert reports.arrived.wait(30), "no N-EVENT-REPORT on the association"
        # The handler signals before pynetdicom sends its response; releasing first
        # would make that response a protocol error. A round trip orders them.
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    _check(reports.got[0], info, stored, missing)


def test_commitment_reported_on_a_new_association(setup: Setup) -> None:
    reports = Reports()
    listener = AE(ae_title=SCU_AET)
    listener.add_supported_context(PUSH, scu_role=False, scp_role=True)
    server = listener.start_server(
        ("127.0.0.1", setup.listen_port),
        block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
    )
    assert server is not None
    try:
        assoc = _ae().associate("127.0.0.1", setup.server.dimse_port, ae_title="DICOMWEB")
        assert assoc.is_established
        datasets = [make_dataset()]
        assert assoc.send_c_store(datasets[0]).Status == 0x0000
        info, stored, missing, _ = _request(datasets)
        rsp, _ = assoc.send_n_action(info, 1, PUSH, PUSH_INSTANCE)
        assoc.release()  # gone before the report: it must come on a new association
        assert rsp.Status == 0x0000
        assert reports.arrived.wait(30), "no N-EVENT-REPORT on a new association"
    finally:
        server.shutdown()
    _check(reports.got[0], info, stored, missing)


def test_malformed_commitment_request_fails(setup: Setup) -> None:
    assoc = _ae().associate("127.0.0.1", setup.server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    try:
        empty = Dataset()
        empty.TransactionUID = uid()
        rsp, _ = assoc.send_n_action(empty, 1, PUSH, PUSH_INSTANCE)
        assert rsp.Status == 0x0115
        rsp, _ = assoc.send_n_action(empty, 7, PUSH, PUSH_INSTANCE)
        assert rsp.Status == 0x0123
    finally:
        assoc.release()
    time.sleep(0.1)
