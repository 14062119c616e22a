"""C-STORE failures: a full disk, an invalid dataset, a connection dropped mid-transfer.

Each answers the standard's status (or nothing, for a dropped connection), stores
nothing and leaves the gateway serving (PS3.4 B.2.3).
"""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE

from tests.conftest import Server, SmallFs, qido_instances, spooled, start_server
from tests.dicomgen import make_dataset

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _ae() -> AE:
    ae = AE(ae_title="FAILSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CT, EXPLICIT_LE)
    ae.add_requested_context(VERIFICATION)
    return ae


def _still_serving(server: Server) -> None:
    assoc = _ae().associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert server.alive()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fail")
    srv = start_server(tmp / "data", f"sqlite:///{tmp / 'index.sqlite3'}")
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


def test_invalid_dataset_fails_and_stores_nothing(server: Server) -> None:
    ds = make_dataset()
    sop = str(ds.SOPInstanceUID)
    del ds.StudyInstanceUID  # Type 1 in every storage IOD
    assoc = _ae().associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(rsp.Status)
    assert code == 0xA900 or 0xC000 <= code <= 0xCFFF, hex(code)
    assert rsp.ErrorComment
    assert qido_instances(server, SOPInstanceUID=sop) == []
    _still_serving(server)


def test_duplicates_follow_the_duplicate_policy(server: Server) -> None:
    """Same bytes again: success; other content under the same UID: the keep-first
    warning B111 (the policy's STOW-RS code), and the first stays stored."""
    first = make_dataset(pixel_seed=1)
    other = make_dataset(sop=str(first.SOPInstanceUID), pixel_seed=2)
    assoc = _ae().associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    try:
        codes = [int(assoc.send_c_store(ds).Status) for ds in (first, first, other)]
    finally:
        assoc.release()
    assert codes == [0x0000, 0x0000, 0xB111]
    assert len(qido_instances(server, SOPInstanceUID=str(first.SOPInstanceUID))) == 1


def _command(sop: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = CT
    cmd.CommandField = 0x0001
    cmd.MessageID = message_id
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, cmd)
    group = DicomBytesIO()
    group.is_little_endian, group.is_implicit_VR = True, True
    length = Dataset()
    length.CommandGroupLength = len(body.getvalue())
    write_dataset(group, length)
    return group.getvalue() + body.getvalue()


def _p_data(context_id: int, control: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV item (PS3.8 9.3.5, E.2)."""
    item = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BBI", 0x04, 0x00, len(item)) + item


def test_connection_dropped_mid_transfer_stores_nothing(server: Server) -> None:
    ds = make_dataset(rows=64, columns=64)
    del ds.file_meta
    encoded = io.BytesIO()
    pydicom.dcmwrite(encoded, ds, implicit_vr=False, little_endian=True)
    data = encoded.getvalue()
    assoc = _ae().associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CT)
    assert assoc.dul.socket is not None and context.context_id is not None
    raw = assoc.dul.socket.socket
    assert isinstance(raw, socket.socket)
    raw.sendall(_p_data(context.context_id, 0x03, _command(str(ds.SOPInstanceUID))))
    raw.sendall(_p_data(context.context_id, 0x00, data[: len(data) // 2]))
    raw.shutdown(socket.SHUT_RDWR)
    assoc.abort()
    raw.close()
    time.sleep(1)
    assert qido_instances(server, StudyInstanceUID=str(ds.StudyInstanceUID)) == []
    _still_serving(server)


@pytest.mark.parametrize("small_fs", [3], indirect=True)
def test_disk_full_is_out_of_resources(tmp_path: Path, small_fs: SmallFs) -> None:
    """No space for the blob: A700 Out of Resources, nothing stored, still serving."""
    srv = start_server(
        small_fs.path / "data",
        f"sqlite:///{tmp_path / 'index.sqlite3'}",
        env={"DICOMWEB_MIN_FREE_BYTES": "0"},
    )
    try:
        big = make_dataset(rows=1024, columns=1024, frames=2)  # 4 MiB of pixels
        small = make_dataset(rows=8, columns=8)
        assoc = _ae().associate("127.0.0.1", srv.dimse_port, ae_title="DICOMWEB")
        assert assoc.is_established
        try:
            failed = assoc.send_c_store(big)
            stored = assoc.send_c_store(small)
        finally:
            assoc.release()
        assert failed.Status == 0xA700, hex(failed.Status)
        assert stored.Status == 0x0000
        assert qido_instances(srv, StudyInstanceUID=str(big.StudyInstanceUID)) == []
        assert len(qido_instances(srv, StudyInstanceUID=str(small.StudyInstanceUID))) == 1
        assert spooled(small_fs.path / "data") == set()
        _still_serving(srv)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log(), srv.log()[-5000:]
