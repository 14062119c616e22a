"""The DIMSE gateway over TCP on loopback, started by `dicomweb-server serve`.

DCMTK's echoscu/storescu/findscu/movescu/getscu and pynetdicom as clients; the same
archive seen through DICOMweb (QIDO/WADO/STOW) for the cross-checks. Both index
backends.
"""

from __future__ import annotations

import io
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role

from tests.conftest import (
    BACKENDS,
    Server,
    free_port,
    make_database_url,
    qido_instances,
    retrieve_raw,
    start_server,
)
from tests.dicomgen import make_dataset, multipart, to_part10, uid

CTImageStorage = "1.2.840.10008.5.1.4.1.1.2"
MRImageStorage = "1.2.840.10008.5.1.4.1.1.4"
PatientRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.1.1"
PatientRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.1.3"
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"
StudyRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.2.2"
AET = "DICOMWEB"
DEST = "STORESCP"
RUN_TIMEOUT = 120


@dataclass
class Gateway:
    server: Server
    dest_port: int
    study: str
    series: str
    files: dict[str, Path] = field(default_factory=dict)  # SOP UID -> file sent by storescu
    stowed: str = ""  # the study stored through STOW-RS

    @property
    def port(self) -> int:
        return self.server.dimse_port


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, cwd=cwd
    )


def sample(name: str, study: str, series: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName = "DIMSE-1", "Müller^Jürgen"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module", params=BACKENDS)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A server whose archive holds one study sent with storescu (a folder of native,
    JPEG 2000 and RLE files) and one stored with STOW-RS."""
    tmp = tmp_path_factory.mktemp("dimse")
    dest_port = free_port()
    env = {"DICOMWEB_DIMSE_MODALITIES": f"{DEST}@127.0.0.1:{dest_port}"}
    url = make_database_url(request.param, tmp, request)
    server = start_server(tmp / "data", url, env=env)
    study, series = uid(), uid()
    gw = Gateway(server, dest_port, study, series)
    folder = tmp / "send"
    folder.mkdir()
    datasets = [
        make_dataset(
            study=study,
            series=series,
            instance_number=n,
            patient_id="DIMSE-1",
            patient_name="Müller^Jürgen",
            charset="ISO_IR 100",
            accession="ACC-D1",
            study_date="20240315",
        )
        for n in (1, 2)
    ]
    compressed = {  # storescu option proposing the file's compressed syntax
        "-xw": sample("JPEG2000.dcm", study, uid()),
        "-xr": sample("MR_small_RLE.dcm", study, uid()),
    }
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_part10(ds))
        gw.files[ds.SOPInstanceUID] = path
    commands = [["+sd", str(folder)]]
    for option, ds in compressed.items():
        path = tmp / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        gw.files[ds.SOPInstanceUID] = path
        commands.append([option, str(path)])
    try:
        for args in commands:
            result = run("storescu", "-aec", AET, *args[:-1], "127.0.0.1", str(gw.port), args[-1])
            assert result.returncode == 0, result.stderr + result.stdout
    except BaseException:
        server.stop()
        raise
    stowed = make_dataset(patient_id="STOW-1", patient_name="Stow^Only", modality="MR")
    body, header = multipart([to_part10(stowed)])
    response = httpx.post(
        f"{server.url}/studies", content=body, headers={"Content-Type": header}, timeout=60
    )
    assert response.status_code == 200, response.text
    gw.stowed = stowed.StudyInstanceUID
    yield gw
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]


def scu(*contexts: str) -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for cx in contexts:
        ae.add_requested_context(cx)
    return ae


def c_find(gw: Gateway, model: str, **keys: object) -> list[Dataset]:
    """Matches of a C-FIND (pynetdicom as SCU); asserts the final status is success."""
    found, final = c_find_status(gw, model, **keys)
    assert final == 0x0000, hex(final)
    return found


def c_find_status(gw: Gateway, model: str, **keys: object) -> tuple[list[Dataset], int]:
    ae = scu(model)
    assoc = ae.associate("127.0.0.1", gw.port, ae_title=AET)
    assert assoc.is_established
    ident = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # malformed values on purpose
        for key, value in keys.items():
            setattr(ident, key, value)
    found: list[Dataset] = []
    final = -1
    try:
        for rsp, ds in assoc.send_c_find(ident, model):
            code = int(rsp.Status)
            if code in (0xFF00, 0xFF01):
                assert ds is not None
                found.append(ds)
            else:
                final = code
    finally:
        assoc.release()
    return found, final


# -- C-ECHO and C-STORE -------------------------------------------------------------


def test_echoscu(gateway: Gateway) -> None:
    result = run("echoscu", "-aec", AET, "127.0.0.1", str(gateway.port))
    assert result.returncode == 0, result.stderr


def test_storescu_folder_is_visible_through_dicomweb_as_received(gateway: Gateway) -> None:
    server = gateway.server
    found = {sop for _, _, sop in qido_instances(server, StudyInstanceUID=gateway.study)}
    assert found == set(gateway.files)
    for sop, path in gateway.files.items():
        sent = pydicom.dcmread(path)
        raw = retrieve_raw(server, gateway.study, str(sent.SeriesInstanceUID), sop)
        got = pydicom.dcmread(io.BytesIO(raw))
        # Stored as received: the same transfer syntax and the same pixel bytes.
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got.PixelData == sent.PixelData
        assert str(got.PatientName) == "Müller^Jürgen"


# -- C-FIND -------------------------------------------------------------------------


def test_findscu_at_each_level_study_root(gateway: Gateway, tmp_path: Path) -> None:
    """DCMTK findscu, responses extracted to files (-X) and read back."""
    cases = {
        "STUDY": (["StudyInstanceUID=" + gateway.study, "AccessionNumber", "PatientName"], 1),
        "SERIES": (["StudyInstanceUID=" + gateway.study, "SeriesInstanceUID", "Modality"], 3),
        "IMAGE": (
            [
                "StudyInstanceUID=" + gateway.study,
                "SeriesInstanceUID=" + gateway.series,
                "SOPInstanceUID",
                "InstanceNumber",
            ],
            2,
        ),
    }
    for level, (keys, expected) in cases.items():
        out = tmp_path / level
        out.mkdir()
        args = [
            "findscu",
            "-S",
            "-aec",
            AET,
            "-X",
            "-od",
            str(out),
            "-k",
            f"QueryRetrieveLevel={level}",
        ]
        for key in keys:
            args += ["-k", key]
        result = run(*args, "127.0.0.1", str(gateway.port))
        assert result.returncode == 0, result.stderr
        responses = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
        assert len(responses) == expected, (level, result.stderr)
        for rsp in responses:
            assert rsp.QueryRetrieveLevel == level
            assert rsp.StudyInstanceUID == gateway.study
    study = pydicom.dcmread(next((tmp_path / "STUDY").iterdir()))
    assert study.AccessionNumber == "ACC-D1"
    assert str(study.PatientName) == "Müller^Jürgen"
    # Only the requested keys come back (PS3.4 C.2.2.1.3), plus level and charset.
    assert {e.keyword for e in study} <= {
        "QueryRetrieveLevel",
        "SpecificCharacterSet",
        "StudyInstanceUID",
        "AccessionNumber",
        "PatientName",
    }


def test_findscu_patient_root_patient_level(gateway: Gateway, tmp_path: Path) -> None:
    result = run(
        "findscu",
        "-P",
        "-aec",
        AET,
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=DIMSE-1",
        "-k",
        "PatientName",
        "-k",
        "NumberOfPatientRelatedStudies",
        "127.0.0.1",
        str(gateway.port),
    )
    assert result.returncode == 0, result.stderr
    responses = [pydicom.dcmread(p) for p in tmp_path.iterdir()]
    assert len(responses) == 1
    assert responses[0].PatientID == "DIMSE-1"
    assert responses[0].NumberOfPatientRelatedStudies == 1


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientName": "M*LLER*"}, 1),  # wildcard, case- and accent-insensitive names
        ({"PatientName": "Müller^Jürgen"}, 1),  # single value
        ({"StudyDate": "20240301-20240331"}, 1),  # range
        ({"StudyDate": "20250101-"}, 0),
        ({"AccessionNumber": "ACC-D?"}, 1),
        ({"ModalitiesInStudy": "CT\\SR"}, 1),  # multi-valued key: any value
    ],
)
def test_c_find_matching_types(gateway: Gateway, keys: dict[str, str], expected: int) -> None:
    found = c_find(
        gateway,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID="",
        SpecificCharacterSet="ISO_IR 192",
        **keys,
    )
    mine = [d for d in found if d.StudyInstanceUID == gateway.study]
    assert len(mine) == expected


def test_c_find_uid_list_and_patient_root(gateway: Gateway) -> None:
    found = c_find(
        gateway,
        PatientRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        PatientID="",
        StudyInstanceUID=[gateway.study, gateway.stowed],
    )
    assert {d.StudyInstanceUID for d in found} == {gateway.study, gateway.stowed}
    # The STOW-stored study is found by C-FIND (one query engine, one store).
    stowed = next(d for d in found if d.StudyInstanceUID == gateway.stowed)
    assert stowed.PatientID == "STOW-1"


def test_c_find_answers_utf8_when_latin1_cannot_carry_the_names(gateway: Gateway) -> None:
    found = c_find(
        gateway,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID=gateway.study,
        PatientName="",
        SpecificCharacterSet="ISO_IR 100",
    )
    assert found[0].SpecificCharacterSet == "ISO_IR 100"
    assert str(found[0].PatientName) == "Müller^Jürgen"


@pytest.mark.parametrize(
    "keys",
    [
        {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-03-01"},  # not a date
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.abc"},  # not a UID
        {"QueryRetrieveLevel": "STUDY", "SOPInstanceUID": "1.2.3"},  # lower level key
        {"QueryRetrieveLevel": "FRAME"},  # unknown level
        {"QueryRetrieveLevel": "PATIENT", "PatientID": "x"},  # no PATIENT in Study Root
        {"StudyInstanceUID": "1.2.3"},  # no level at all
    ],
)
def test_malformed_identifiers_fail_with_a900(gateway: Gateway, keys: dict[str, str]) -> None:
    found, final = c_find_status(gateway, StudyRootQueryRetrieveInformationModelFind, **keys)
    assert found == [] and final == 0xA900
    assert run("echoscu", "-aec", AET, "127.0.0.1", str(gateway.port)).returncode == 0


# -- C-MOVE and C-GET ---------------------------------------------------------------


def _storescp(port: int, out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["storescp", "-aet", DEST, "-od", str(out), "+xa", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if run("echoscu", "-aec", DEST, "127.0.0.1", str(port)).returncode == 0:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("storescp did not start")


def test_movescu_to_storescp_sends_dimse_and_stow_stored_studies(
    gateway: Gateway, tmp_path: Path
) -> None:
    proc = _storescp(gateway.dest_port, tmp_path)
    try:
        for study in (gateway.study, gateway.stowed):
            result = run(
                "movescu",
                "-S",
                "-aec",
                AET,
                "-aem",
                DEST,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "127.0.0.1",
                str(gateway.port),
            )
            assert result.returncode == 0, result.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    received = {pydicom.dcmread(p).SOPInstanceUID for p in tmp_path.iterdir()}
    assert set(gateway.files) < received
    assert len(received) == len(gateway.files) + 1


def test_c_move_counts_and_unknown_destination(gateway: Gateway, tmp_path: Path) -> None:
    ae = scu(StudyRootQueryRetrieveInformationModelMove)
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = gateway.study
    ident.SeriesInstanceUID = gateway.series
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=AET)
    assert assoc.is_established
    try:
        statuses = [
            int(rsp.Status)
            for rsp, _ in assoc.send_c_move(
                ident, "NOBODY", StudyRootQueryRetrieveInformationModelMove
            )
        ]
        assert statuses == [0xA801]
        proc = _storescp(gateway.dest_port, tmp_path)
        try:
            responses = list(
                assoc.send_c_move(ident, DEST, StudyRootQueryRetrieveInformationModelMove)
            )
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    finally:
        assoc.release()
    pending = [r for r, _ in responses if r.Status == 0xFF00]
    final = responses[-1][0]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 2
    assert final.get("NumberOfFailedSuboperations", 0) == 0
    assert [p.NumberOfRemainingSuboperations for p in pending] == [1, 0][: len(pending)]
    assert len(list(tmp_path.iterdir())) == 2


def test_getscu_retrieves_on_the_same_association(gateway: Gateway, tmp_path: Path) -> None:
    result = run(
        "getscu",
        "-S",
        "-aec",
        AET,
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={gateway.study}",
        "127.0.0.1",
        str(gateway.port),
    )
    assert result.returncode == 0, result.stderr
    received = {pydicom.dcmread(p).SOPInstanceUID for p in tmp_path.iterdir()}
    assert received == set(gateway.files)


def test_c_get_with_pynetdicom_counts_and_stow_stored(gateway: Gateway) -> None:
    got: list[Dataset] = []

    def on_store(event: object) -> int:
        got.append(event.dataset)  # type: ignore[attr-defined]
        return 0x0000

    from pynetdicom import evt

    ae = scu(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(CTImageStorage)
    roles: list[Any] = [
        build_role(CTImageStorage, scp_role=True),
        build_role(MRImageStorage, scp_role=True),
    ]
    assoc = ae.associate(
        "127.0.0.1",
        gateway.port,
        ae_title=AET,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = "STOW-1"
    try:
        responses = list(assoc.send_c_get(ident, PatientRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000, hex(final.Status)
    assert final.NumberOfCompletedSuboperations == 1
    assert [d.StudyInstanceUID for d in got] == [gateway.stowed]


@pytest.fixture(scope="module")
def big_study(gateway: Gateway) -> str:
    """A study of 300 tiny instances (STOW-RS), enough to cancel in the middle."""
    study, series = uid(), uid()
    parts = [
        to_part10(make_dataset(study=study, series=series, instance_number=n, rows=2, columns=2))
        for n in range(300)
    ]
    body, header = multipart(parts)
    response = httpx.post(
        f"{gateway.server.url}/studies", content=body, headers={"Content-Type": header}, timeout=120
    )
    assert response.status_code == 200
    return study


def test_c_find_cancel(gateway: Gateway, big_study: str) -> None:
    """C-CANCEL-FIND (PS3.7 9.3.2.3): the SCP stops sending matches and answers FE00.

    A cancel that arrives after the last match was sent has nothing to stop (the
    final status is then Success with every match), and on loopback the 300 answers
    can outrun it; so try several times: the gateway must honour at least one. (It
    cannot be sent sooner: pynetdicom drops a C-CANCEL that arrives before the SCP
    starts on the request.)
    """
    model = StudyRootQueryRetrieveInformationModelFind
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = big_study
    ident.SOPInstanceUID = ""
    outcomes = []
    for attempt in range(12):
        assoc = scu(model).associate("127.0.0.1", gateway.port, ae_title=AET)
        assert assoc.is_established
        statuses = []
        try:
            for rsp, _ in assoc.send_c_find(ident, model, msg_id=7 + attempt):
                statuses.append(int(rsp.Status))
                if len(statuses) == 1:
                    assoc.send_c_cancel(7 + attempt, query_model=model)
        finally:
            assoc.release()
        outcomes.append((statuses[-1], len(statuses)))
        if statuses[-1] == 0xFE00:
            assert len(statuses) < 300  # it stopped before the end
            return
        assert statuses[-1] == 0x0000 and len(statuses) == 301, outcomes  # all sent
    raise AssertionError(f"no C-CANCEL honoured in 12 tries: {outcomes}")


def test_c_move_cancel(gateway: Gateway, big_study: str, tmp_path: Path) -> None:
    """C-CANCEL-MOVE: sub-operations stop; FE00 with the counts so far."""
    ae = scu(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=AET)
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = big_study
    proc = _storescp(gateway.dest_port, tmp_path)
    responses = []
    try:
        model = StudyRootQueryRetrieveInformationModelMove
        for rsp, _ in assoc.send_c_move(ident, DEST, model, msg_id=11):
            responses.append(rsp)
            if len(responses) == 2:
                assoc.send_c_cancel(11, query_model=model)
    finally:
        assoc.release()
        proc.terminate()
        proc.wait(timeout=20)
    final = responses[-1]
    assert final.Status == 0xFE00, hex(final.Status)
    done = final.NumberOfCompletedSuboperations
    assert 2 <= done < 300
    assert final.NumberOfRemainingSuboperations == 300 - done
    assert len(list(tmp_path.iterdir())) == done


def _get_association(gateway: Gateway, on_store: Any, *syntaxes: str) -> Any:
    from pynetdicom import evt

    ae = scu(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, list(syntaxes) or None)
    roles: list[Any] = [
        build_role(CTImageStorage, scp_role=True),
        build_role(MRImageStorage, scp_role=True),
    ]
    assoc = ae.associate(
        "127.0.0.1",
        gateway.port,
        ae_title=AET,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    return assoc


def test_c_get_cancel(gateway: Gateway, big_study: str) -> None:
    """C-CANCEL-GET: sub-operations stop; the final response is FE00 with counts."""
    received: list[str] = []
    assoc: Any = None

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        if len(received) == 3:
            assoc.send_c_cancel(9, query_model=StudyRootQueryRetrieveInformationModelGet)
        return 0x0000

    assoc = _get_association(gateway, on_store)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = big_study
    try:
        responses = list(
            assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet, msg_id=9)
        )
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00, hex(final.Status)
    assert 3 <= final.NumberOfCompletedSuboperations < 300
    assert final.NumberOfRemainingSuboperations == 300 - final.NumberOfCompletedSuboperations


def test_c_get_decompresses_what_the_requester_cannot_take(gateway: Gateway) -> None:
    rle = next(
        pydicom.dcmread(p)
        for p in gateway.files.values()
        if pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
        == "1.2.840.10008.1.2.5"
    )
    got: list[tuple[str, Any]] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append((str(event.context.transfer_syntax), ds.pixel_array))
        return 0x0000

    assoc = _get_association(gateway, on_store, "1.2.840.10008.1.2.1")
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = rle.StudyInstanceUID
    ident.SeriesInstanceUID = rle.SeriesInstanceUID
    ident.SOPInstanceUID = rle.SOPInstanceUID
    try:
        responses = list(assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0x0000
    assert len(got) == 1 and got[0][0] == "1.2.840.10008.1.2.1"
    assert (got[0][1] == rle.pixel_array).all()


def test_unknown_sop_class_is_not_accepted(gateway: Gateway) -> None:
    ae = scu("1.2.3.4.5.6.7.8.9")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=AET)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == {CTImageStorage}
