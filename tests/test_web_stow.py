"""STOW-RS (PS3.18 10.5, Annex I) against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import io
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomweb_server.dicom.multipart import MultipartParser, parse_content_type
from tests.conftest import Server, make_database_url, spooled, start_server
from tests.dicomgen import make_dataset, multipart, to_part10, uid

EVRLE = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
SMALL_LIMIT = 200_000  # max_request_bytes of the policy servers

# Annex I attribute tags.
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQ = "00081198"
REFERENCED_SOP_SEQ = "00081199"
OTHER_FAILURES_SEQ = "0008119A"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
WARNING_REASON = "00081196"
FAILURE_REASON = "00081197"


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def policy_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """Servers with duplicate_policy replace / reject and a small max_request_bytes,
    configured through a TOML file given with --config."""
    configs: dict[str, tuple[Path, str, str, str]] = {}
    for policy in ("replace", "reject"):
        tmp = tmp_path_factory.mktemp(f"stow-{policy}")
        config = tmp / "dicomweb.toml"
        config.write_text(
            f'[server]\nduplicate_policy = "{policy}"\nmax_request_bytes = {SMALL_LIMIT}\n'
        )
        url = make_database_url(str(request.param), tmp, request)
        configs[policy] = (tmp / "data", url, "--config", str(config))
    with ThreadPoolExecutor(len(configs)) as pool:
        futures = {name: pool.submit(start_server, *args) for name, args in configs.items()}
        servers = {name: future.result() for name, future in futures.items()}
    yield servers
    for srv in servers.values():
        srv.stop()
        assert "Traceback" not in srv.log(), srv.log()


# -- helpers ----------------------------------------------------------------------------


def store(
    server: Server,
    parts: list[bytes],
    *,
    study: str | None = None,
    content_type: str = "application/dicom",
) -> httpx.Response:
    body, header = multipart(parts, content_type=content_type)
    url = f"{server.url}/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=body, headers={"Content-Type": header}, timeout=30)


def instance_count(server: Server, study: str | None = None) -> int:
    """How many instances QIDO finds (in one study, or in all)."""
    url = f"{server.url}/studies/{study}/instances" if study else f"{server.url}/instances"
    response = httpx.get(url, params={"limit": "1000"}, timeout=10)
    assert response.status_code == 200, response.text
    return len(response.json())


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()} if path.exists() else set()


class Snapshot:
    """What must not change when a request is refused: index and files on disk."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.count = instance_count(server)
        self.blobs = files_under(server.data_dir / "blobs")

    def assert_unchanged(self) -> None:
        srv = self.server
        assert srv.alive()
        assert httpx.get(f"{srv.root}/health", timeout=5).status_code == 200
        assert instance_count(srv) == self.count
        assert files_under(srv.data_dir / "blobs") == self.blobs
        assert spooled(srv.data_dir) == set()
        assert "Traceback" not in srv.log()  # refused, never crashed


def retrieve_stored_bytes(server: Server, ds: Dataset) -> bytes:
    """The instance as stored (transfer-syntax=*), as one application/dicom part."""
    url = (
        f"{server.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    response = httpx.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert response.status_code == 200, response.text
    return response.content


def items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = dataset.get(tag, {}).get("Value", [])
    return value


def sample(name: str, **uids: str) -> tuple[Dataset, bytes]:
    """A pydicom test file with fresh UIDs, saved in its own transfer syntax."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is not installed"
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = uids.get("study", uid())
    ds.SeriesInstanceUID = uids.get("series", uid())
    ds.SOPInstanceUID = uids.get("sop", uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return ds, out.getvalue()


# -- success ----------------------------------------------------------------------------


def test_all_stored_is_200_with_the_annex_i_response(shared_server: Server) -> None:
    study = uid()
    series = [uid(), uid()]
    datasets = [
        make_dataset(study=study, series=series[i % 2], instance_number=i) for i in range(3)
    ]
    response = store(shared_server, [to_part10(ds) for ds in datasets])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    result = response.json()
    assert list(result) == sorted(result)  # PS3.18 F.2: ascending tags
    assert FAILED_SOP_SEQ not in result and OTHER_FAILURES_SEQ not in result
    assert result[RETRIEVE_URL] == {"vr": "UR", "Value": [f"{shared_server.url}/studies/{study}"]}
    referenced = items(result, REFERENCED_SOP_SEQ)
    assert len(referenced) == 3
    for ds, item in zip(datasets, referenced, strict=True):
        url = (
            f"{shared_server.url}/studies/{study}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        assert item == {
            SOP_CLASS: {"vr": "UI", "Value": [ds.SOPClassUID]},
            SOP_INSTANCE: {"vr": "UI", "Value": [ds.SOPInstanceUID]},
            RETRIEVE_URL: {"vr": "UR", "Value": [url]},
        }
        got = httpx.get(url, headers={"Accept": "application/dicom"})
        assert got.status_code == 200
        assert pydicom.dcmread(io.BytesIO(got.content)).SOPInstanceUID == ds.SOPInstanceUID
    assert instance_count(shared_server, study) == 3


def test_dicomweb_client_store_and_many_parts(shared_server: Server) -> None:
    study = uid()
    datasets = [make_dataset(study=study, instance_number=i, pixel_seed=i) for i in range(40)]
    client = DICOMwebClient(shared_server.url)
    result = client.store_instances(datasets)
    assert [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    assert result.RetrieveURL == f"{shared_server.url}/studies/{study}"
    assert instance_count(shared_server, study) == 40


def test_store_to_a_study_rejects_parts_of_another_study(shared_server: Server) -> None:
    study = uid()
    mine = make_dataset(study=study)
    foreign = make_dataset()
    response = store(shared_server, [to_part10(mine), to_part10(foreign)], study=study)
    assert response.status_code == 202, response.text
    result = response.json()
    assert [i[SOP_INSTANCE]["Value"][0] for i in items(result, REFERENCED_SOP_SEQ)] == [
        mine.SOPInstanceUID
    ]
    assert items(result, FAILED_SOP_SEQ) == [
        {
            SOP_CLASS: {"vr": "UI", "Value": [foreign.SOPClassUID]},
            SOP_INSTANCE: {"vr": "UI", "Value": [foreign.SOPInstanceUID]},
            FAILURE_REASON: {"vr": "US", "Value": [0xA901]},
        }
    ]
    assert result[RETRIEVE_URL]["Value"] == [f"{shared_server.url}/studies/{study}"]
    assert "differs from" in response.headers["warning"]
    assert instance_count(shared_server, study) == 1
    assert instance_count(shared_server, foreign.StudyInstanceUID) == 0
    # Only foreign parts: nothing stored, a conflict (409), not 202.
    other = make_dataset()
    response = store(shared_server, [to_part10(other)], study=study)
    assert response.status_code == 409, response.text
    assert items(response.json(), FAILED_SOP_SEQ)[0][FAILURE_REASON]["Value"] == [0xA901]
    assert REFERENCED_SOP_SEQ not in response.json()


def test_storing_identical_bytes_again_is_idempotent(shared_server: Server) -> None:
    ds = make_dataset()
    data = to_part10(ds)
    first = store(shared_server, [data])
    again = store(shared_server, [data])
    assert (first.status_code, again.status_code) == (200, 200)
    assert WARNING_REASON not in items(again.json(), REFERENCED_SOP_SEQ)[0]
    assert instance_count(shared_server, ds.StudyInstanceUID) == 1
    studies = httpx.get(
        f"{shared_server.url}/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}
    ).json()
    assert studies[0]["00201208"]["Value"] == [1]  # NumberOfStudyRelatedInstances


def _conflicting_pair() -> tuple[Dataset, bytes, bytes]:
    ds = make_dataset(patient_name="First^Version")
    changed = copy.deepcopy(ds)
    changed.PatientName = "Second^Version"
    return ds, to_part10(ds), to_part10(changed)


def test_duplicate_keep_first_warns_and_keeps_the_original(shared_server: Server) -> None:
    ds, original, other = _conflicting_pair()
    assert store(shared_server, [original]).status_code == 200
    response = store(shared_server, [other])
    assert response.status_code == 202, response.text
    item = items(response.json(), REFERENCED_SOP_SEQ)[0]
    assert item[WARNING_REASON] == {"vr": "US", "Value": [0xB111]}
    assert "first was kept" in response.headers["warning"]
    assert retrieve_stored_bytes(shared_server, ds) == original
    assert instance_count(shared_server, ds.StudyInstanceUID) == 1


def test_duplicate_replace_stores_the_new_bytes(policy_servers: dict[str, Server]) -> None:
    server = policy_servers["replace"]
    ds, original, other = _conflicting_pair()
    assert store(server, [original]).status_code == 200
    response = store(server, [other])
    assert response.status_code == 202, response.text
    item = items(response.json(), REFERENCED_SOP_SEQ)[0]
    assert item[WARNING_REASON] == {"vr": "US", "Value": [0xB112]}
    assert retrieve_stored_bytes(server, ds) == other
    assert instance_count(server, ds.StudyInstanceUID) == 1
    # The replaced blob is gone: one file for the one instance.
    assert len([p for p in files_under(server.data_dir / "blobs") if ds.SOPInstanceUID in p.name])
    assert sum(ds.SOPInstanceUID in p.name for p in files_under(server.data_dir / "blobs")) == 1


def test_duplicate_reject_fails_with_0111(policy_servers: dict[str, Server]) -> None:
    server = policy_servers["reject"]
    ds, original, other = _conflicting_pair()
    assert store(server, [original]).status_code == 200
    response = store(server, [other])
    assert response.status_code == 409, response.text
    assert items(response.json(), FAILED_SOP_SEQ) == [
        {
            SOP_CLASS: {"vr": "UI", "Value": [ds.SOPClassUID]},
            SOP_INSTANCE: {"vr": "UI", "Value": [ds.SOPInstanceUID]},
            FAILURE_REASON: {"vr": "US", "Value": [0x0111]},
        }
    ]
    assert retrieve_stored_bytes(server, ds) == original
    # Identical bytes are still an idempotent success under "reject".
    assert store(server, [original]).status_code == 200


def test_bare_dataset_and_missing_preamble_are_stored_as_part10(shared_server: Server) -> None:
    bare_ds = make_dataset()
    del bare_ds.file_meta
    bare = io.BytesIO()
    pydicom.dcmwrite(bare, bare_ds, implicit_vr=True, little_endian=True)
    assert bare.getvalue()[128:132] != b"DICM"
    meta_ds = make_dataset()
    no_preamble = to_part10(meta_ds)[132:]
    assert no_preamble[:2] == b"\x02\x00"
    response = store(shared_server, [bare.getvalue(), no_preamble])
    assert response.status_code == 200, response.text
    for ds in (bare_ds, meta_ds):
        data = retrieve_stored_bytes(shared_server, ds)
        assert data[128:132] == b"DICM"
        got = pydicom.dcmread(io.BytesIO(data))
        assert got.file_meta.TransferSyntaxUID == EVRLE
        assert got.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert got.PixelData == ds.PixelData
        assert str(got.PatientName) == "Doe^John"


def test_implicit_vr_is_retrieved_as_explicit_even_for_any_syntax(shared_server: Server) -> None:
    ds, data = sample("MR_small_implicit.dcm")
    assert store(shared_server, [data]).status_code == 200
    url = f"{shared_server.url}/studies/{ds.StudyInstanceUID}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    response = httpx.get(url, headers={"Accept": accept})
    assert response.status_code == 200
    _, params = parse_content_type(response.headers["content-type"])
    sink = _Parts()
    parser = MultipartParser(params["boundary"], sink)
    parser.feed(response.content)
    parser.close()
    [(headers, body)] = sink.parts
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == EVRLE
    assert not got.original_encoding[0]  # really explicit VR on the wire
    assert (got.pixel_array == ds.pixel_array).all()


class _Parts:
    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytes]] = []

    def start_part(self, headers: dict[str, str]) -> None:
        self.parts.append((headers, b""))

    def write(self, data: bytes) -> None:
        headers, body = self.parts[-1]
        self.parts[-1] = (headers, body + data)

    def end_part(self) -> None:
        pass


def test_xml_response_when_asked(shared_server: Server) -> None:
    body, header = multipart([to_part10(make_dataset())])
    accept = 'multipart/related; type="application/dicom+xml"'
    response = httpx.post(
        f"{shared_server.url}/studies",
        content=body,
        headers={"Content-Type": header, "Accept": accept},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    assert b'<DicomAttribute tag="00081199" vr="SQ"' in response.content


# -- refused requests: nothing stored, nothing left behind ------------------------------


def _post_raw(server: Server, body: bytes, content_type: str | None) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return httpx.post(f"{server.url}/studies", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("body", "content_type", "code", "words"),
    [
        # Malformed multipart: 400 (PS3.18 Table 10.5.3-1, bad syntax).
        ("unclosed", None, 400, "ended before the closing boundary"),
        (b"this is not a multipart body at all", None, 400, "no boundary delimiter"),
        ("garbage-after-boundary", None, 400, "unexpected data"),
        # Missing boundary parameter: 400.
        ("good", 'multipart/related; type="application/dicom"', 400, "boundary"),
        # Media types STOW-RS does not take: 415.
        ("good", "application/dicom", 415, "multipart/related"),
        ("good", "text/plain", 415, "multipart/related"),
        ("good", 'multipart/related; type="application/dicom+json"; boundary=x', 415, "json"),
        ("good", "", 415, "Content-Type"),
        ("good", "missing", 415, "Content-Type"),
    ],
)
def test_malformed_requests_change_nothing(
    shared_server: Server, body: bytes | str, content_type: str | None, code: int, words: str
) -> None:
    before = Snapshot(shared_server)
    good, header = multipart([to_part10(make_dataset())])
    if body == "good":
        payload = good
    elif body == "unclosed":
        payload = good[: good.rindex(b"--test-boundary")]
    elif body == "garbage-after-boundary":
        payload = b"--test-boundary-7d3f" + b"XXXX\r\n" + good
    else:
        assert isinstance(body, bytes)
        payload = body
    if content_type == "missing":
        content_type = None
    elif content_type is None:
        content_type = header
    response = _post_raw(shared_server, payload, content_type)
    assert response.status_code == code, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["message"]
    before.assert_unchanged()


def test_truncated_dicom_is_refused(shared_server: Server) -> None:
    before = Snapshot(shared_server)
    path = get_testdata_file("MR_truncated.dcm")
    assert path is not None
    truncated = Path(path).read_bytes()
    data = to_part10(make_dataset())
    cut = data[: len(data) - 50]
    response = store(shared_server, [truncated, cut])
    # Nothing stored and every part unreadable: "bad syntax", 400 (Table 10.5.3-1).
    assert response.status_code == 400, response.text
    result = response.json()
    assert REFERENCED_SOP_SEQ not in result
    reasons = [i[FAILURE_REASON]["Value"][0] for i in items(result, OTHER_FAILURES_SEQ)]
    assert reasons == [0xC000, 0xC000]
    assert "truncated" in response.headers["warning"]
    before.assert_unchanged()


def test_a_text_part_fails_alone(shared_server: Server) -> None:
    ds = make_dataset()
    boundary = "mixed-boundary"
    body = (
        (
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello, not DICOM\r\n"
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
        ).encode()
        + to_part10(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    header = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = _post_raw(shared_server, body, header)
    assert response.status_code == 202, response.text
    result = response.json()
    assert [i[SOP_INSTANCE]["Value"][0] for i in items(result, REFERENCED_SOP_SEQ)] == [
        ds.SOPInstanceUID
    ]
    assert items(result, OTHER_FAILURES_SEQ) == [{FAILURE_REASON: {"vr": "US", "Value": [0xC000]}}]
    assert "text/plain is not a DICOM object" in response.headers["warning"]
    assert instance_count(shared_server, ds.StudyInstanceUID) == 1
    # A part declared application/dicom that holds text is not understood either.
    before = Snapshot(shared_server)
    response = store(shared_server, [b"just some text, certainly not a DICOM data set\n" * 3])
    assert response.status_code == 400
    assert "not a DICOM object" in response.headers["warning"]
    before.assert_unchanged()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: invalid UIDs, on purpose
@pytest.mark.parametrize(
    ("keyword", "value", "words"),
    [
        ("StudyInstanceUID", "1.2.abc", "Study Instance UID '1.2.abc' is not a valid UID"),
        ("SeriesInstanceUID", "1.02.3", "Series Instance UID '1.02.3' is not a valid UID"),
        ("StudyInstanceUID", "1." + "2" * 70, "is not a valid UID"),
        ("SOPInstanceUID", None, "SOP Instance UID is missing"),
    ],
)
def test_invalid_or_missing_uids_are_refused(
    shared_server: Server, keyword: str, value: str | None, words: str
) -> None:
    before = Snapshot(shared_server)
    ds = make_dataset()
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    response = store(shared_server, [out.getvalue()])
    assert response.status_code == 409, response.text
    result = response.json()
    assert words in response.headers["warning"]
    if keyword == "SOPInstanceUID":
        # Not identifiable: reported under Other Failures Sequence.
        failure = items(result, OTHER_FAILURES_SEQ)[0]
    else:
        # Identifiable: Failed SOP Sequence with both Type 1 UIDs (Table I.1-1).
        failure = items(result, FAILED_SOP_SEQ)[0]
        assert failure[SOP_INSTANCE]["Value"] == [ds.SOPInstanceUID]
    assert failure[FAILURE_REASON]["Value"] == [0xA900]
    before.assert_unchanged()


def test_request_over_max_request_bytes_is_413(policy_servers: dict[str, Server]) -> None:
    server = policy_servers["reject"]
    before = Snapshot(server)
    parts = [to_part10(make_dataset(rows=128, columns=128, pixel_seed=i)) for i in range(8)]
    body, header = multipart(parts)
    assert len(body) > SMALL_LIMIT
    # Declared length over the limit: refused before reading the body.
    response = httpx.post(f"{server.url}/studies", content=body, headers={"Content-Type": header})
    assert response.status_code == 413
    assert str(SMALL_LIMIT) in response.json()["message"]
    before.assert_unchanged()

    # Chunked (no Content-Length), as dicomweb-client sends large bodies: counted while read.
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 32768):
            yield body[start : start + 32768]

    response = httpx.post(
        f"{server.url}/studies", content=chunks(), headers={"Content-Type": header}
    )
    assert response.status_code == 413
    before.assert_unchanged()
    # Under the limit, the same server stores.
    assert store(server, parts[:1]).status_code == 200


def test_client_disconnect_mid_body_leaves_nothing(shared_server: Server) -> None:
    before = Snapshot(shared_server)
    parts = [to_part10(make_dataset(rows=256, columns=256, pixel_seed=i)) for i in range(4)]
    body, header = multipart(parts)
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{shared_server.port}\r\n"
        f"Content-Type: {header}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2 + 1000])  # ends inside the third part
        deadline = time.monotonic() + 10
        while not spooled(shared_server.data_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert spooled(shared_server.data_dir), "the server should be spooling the parts"
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while spooled(shared_server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    before.assert_unchanged()
    for ds_bytes in parts:
        ds = pydicom.dcmread(io.BytesIO(ds_bytes))
        assert instance_count(shared_server, ds.StudyInstanceUID) == 0
    assert "Traceback" not in shared_server.log()


def test_a_stopped_server_leaves_an_empty_spool(server: Server) -> None:
    """The spool holds files made ahead of need while the server runs (empty ones,
    left out by ``spooled``); a clean stop removes them, so nothing at all is left."""
    parts = [to_part10(make_dataset()) for _ in range(12)]
    assert store(server, parts).status_code == 200
    spool = server.data_dir / "tmp"
    deadline = time.monotonic() + 10
    while not any(spool.iterdir()):  # the reserve is refilled in the background
        assert time.monotonic() < deadline, "no spool files were made ahead of need"
        time.sleep(0.02)
    assert spooled(server.data_dir) == set()
    server.stop()
    assert list(spool.iterdir()) == []
