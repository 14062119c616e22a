"""Known remote AEs over /admin/modalities, and outbound DIMSE (SCU) over REST.

Two real archives: A (ours, AE DICOMWEB) and B (the "old PACS", AE PACSB, which
rejects unknown AEs). A echoes, queries, retrieves from and sends to B.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.conftest import Server, free_port, qido_instances, start_server
from tests.dicomgen import make_dataset, multipart, to_part10

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class Pair:
    a: Server
    b: Server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("admin")
    a = start_server(tmp / "a", f"sqlite:///{tmp / 'a.sqlite3'}")
    try:
        # B knows A from its configuration (so it may C-MOVE to A) and rejects others.
        env = {"DICOMWEB_DIMSE_MODALITIES": f"DICOMWEB@127.0.0.1:{a.dimse_port}"}
        b = start_server(
            tmp / "b",
            f"sqlite:///{tmp / 'b.sqlite3'}",
            "--dimse-aet",
            "PACSB",
            "--dimse-reject-unknown",
            env=env,
        )
    except BaseException:
        a.stop()
        raise
    yield Pair(a, b)
    for server in (a, b):
        server.stop()
        assert "Traceback" not in server.log(), server.log()[-5000:]


def admin(server: Server, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{server.root}/admin/modalities{path}", json=body, timeout=120)


def stow(server: Server, *datasets: Dataset) -> None:
    body, header = multipart([to_part10(ds) for ds in datasets])
    response = httpx.post(
        f"{server.url}/studies", content=body, headers={"Content-Type": header}, timeout=60
    )
    assert response.status_code == 200, response.text


def test_modality_crud_and_validation(pair: Pair) -> None:
    a = pair.a
    body = {"host": "127.0.0.1", "port": pair.b.dimse_port}
    assert admin(a, "PUT", "/PACSB", body).status_code == 201
    assert admin(a, "PUT", "/PACSB", body).status_code == 200  # replaced
    listed = admin(a, "GET", "").json()
    assert {"aet": "PACSB", "host": "127.0.0.1", "port": pair.b.dimse_port}.items() <= listed[
        0
    ].items()
    assert admin(a, "GET", "/PACSB").json()["source"] == "index"
    for bad in (
        {"host": "127.0.0.1", "port": 0},
        {"host": "127.0.0.1", "port": "104"},
        {"port": 104},
        {"host": "h", "port": 104, "operations": ["teleport"]},
        {"host": "h", "port": 104, "allowed_ips": ["not-an-ip"]},
        {"host": "h", "port": 104, "colour": "red"},
    ):
        response = admin(a, "PUT", "/BAD", bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["message"]
    assert admin(a, "PUT", "/WAY-TOO-LONG-AE-TITLE", body).status_code == 400
    assert admin(a, "GET", "/BAD").status_code == 404
    assert admin(a, "DELETE", "/NOBODY").status_code == 404
    # A configured AE is read-only at run time.
    assert admin(pair.b, "DELETE", "/DICOMWEB").status_code == 409
    assert admin(pair.b, "GET", "/DICOMWEB").json()["source"] == "config"


def test_echo_a_known_modality_and_a_dead_one(pair: Pair) -> None:
    a = pair.a
    admin(a, "PUT", "/PACSB", {"host": "127.0.0.1", "port": pair.b.dimse_port})
    response = admin(a, "POST", "/PACSB/echo")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "0x0000"
    admin(a, "PUT", "/DEAD", {"host": "127.0.0.1", "port": free_port()})
    response = admin(a, "POST", "/DEAD/echo")
    assert response.status_code == 502
    assert "cannot open an association" in response.json()["message"]
    assert admin(a, "DELETE", "/DEAD").status_code == 204
    assert admin(a, "POST", "/NOBODY/echo").status_code == 404


def test_query_and_retrieve_priors_from_a_remote_pacs(pair: Pair) -> None:
    a, b = pair.a, pair.b
    admin(a, "PUT", "/PACSB", {"host": "127.0.0.1", "port": b.dimse_port})
    prior = [make_dataset(patient_id="PRIOR-1", instance_number=n) for n in (1, 2)]
    prior[1].StudyInstanceUID = prior[0].StudyInstanceUID
    prior[1].SeriesInstanceUID = prior[0].SeriesInstanceUID
    stow(b, *prior)
    study = str(prior[0].StudyInstanceUID)
    response = admin(
        a,
        "POST",
        "/PACSB/query",
        {"level": "STUDY", "keys": {"PatientID": "PRIOR-1", "StudyInstanceUID": ""}},
    )
    assert response.status_code == 200, response.text
    matches = response.json()["matches"]
    assert [m["0020000D"]["Value"][0] for m in matches] == [study]
    assert qido_instances(a, StudyInstanceUID=study) == []
    response = admin(
        a, "POST", "/PACSB/retrieve", {"level": "STUDY", "keys": {"StudyInstanceUID": study}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["completed"] == 2
    assert len(qido_instances(a, StudyInstanceUID=study)) == 2
    bad = admin(a, "POST", "/PACSB/query", {"level": "STUDY", "keys": {"NoSuchKeyword": "x"}})
    assert bad.status_code == 400


def test_send_a_study_to_a_modality(pair: Pair) -> None:
    a, b = pair.a, pair.b
    admin(a, "PUT", "/PACSB", {"host": "127.0.0.1", "port": b.dimse_port})
    ds = make_dataset(patient_id="SEND-1")
    stow(a, ds)
    response = admin(a, "POST", "/PACSB/store", {"study": str(ds.StudyInstanceUID)})
    assert response.status_code == 200, response.text
    assert response.json()["completed"] == 1
    assert len(qido_instances(b, StudyInstanceUID=str(ds.StudyInstanceUID))) == 1
    missing = admin(a, "POST", "/PACSB/store", {"study": "1.2.3.4"})
    assert missing.status_code == 404


def _associate(server: Server, calling: str, called: str = "PACSB") -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for cx in (VERIFICATION, STUDY_ROOT_FIND, CT_IMAGE_STORAGE):
        ae.add_requested_context(cx)
    return ae.associate("127.0.0.1", server.dimse_port, ae_title=called)


def _settled(server: Server, calling: str, established: bool) -> Any:
    """The gateway caches known AEs for 2 s: a change applies within that time."""
    deadline = time.monotonic() + 10
    while True:
        assoc = _associate(server, calling)
        if assoc.is_established == established or time.monotonic() > deadline:
            return assoc
        if assoc.is_established:
            assoc.release()
        time.sleep(0.25)


def test_unknown_ae_rejected_until_added_then_limited_to_its_operations(pair: Pair) -> None:
    b = pair.b
    assoc = _associate(b, "STRANGER")
    assert assoc.is_rejected
    assert not _associate(b, "DICOMWEB", called="WRONG").is_established  # called AE check
    added = admin(b, "PUT", "/STRANGER", {"host": "127.0.0.1", "port": 1, "operations": ["echo"]})
    assert added.status_code == 201
    assoc = _settled(b, "STRANGER", established=True)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = ""
        statuses = [int(r.Status) for r, _ in assoc.send_c_find(ident, STUDY_ROOT_FIND)]
        assert statuses == [0x0124]  # not authorized to query
        rsp = assoc.send_c_store(make_dataset())
        assert rsp.Status == 0x0124
    finally:
        assoc.release()
    assert admin(b, "DELETE", "/STRANGER").status_code == 204
    assert _settled(b, "STRANGER", established=False).is_rejected


def test_admin_paths_are_not_under_the_dicomweb_root(pair: Pair, tmp_path: Path) -> None:
    response = httpx.get(f"{pair.a.url}/admin/modalities", timeout=30)
    assert response.status_code == 404
