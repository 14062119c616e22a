"""The audit trail over a real server: store, query, retrieve, delete and security
events as PS3.15 A.5 records in the JSON lines file, a syslog copy, and the search
endpoint and CLI."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from dicomweb_client.api import DICOMwebClient

from dicomweb_server.services.credentials import hash_secret
from tests.conftest import Server, run_cli, start_server
from tests.dicomgen import make_dataset, uid

KEYS = {"pipeline": ("writer", "dwk_pipeline-0123456789abcdef"),
        "ops": ("admin", "dwk_ops-0123456789abcdef0123"),
        "viewer": ("reader", "dwk_viewer-0123456789abcdef01")}  # fmt: skip
PATIENT = "AUDIT-PID-77"


@dataclass
class Audited:
    server: Server
    syslog: socket.socket
    study: str
    series: str
    sops: list[str]

    def records(self) -> list[dict[str, Any]]:
        path = self.server.data_dir / "audit" / "audit.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]

    def headers(self, name: str) -> dict[str, str]:
        return {"X-API-Key": KEYS[name][1]}


def _records(audited: Audited, code: str) -> list[dict[str, Any]]:
    return [r for r in audited.records() if r["event_id"]["code"] == code]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    tmp = tmp_path_factory.mktemp("audit")
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(10)
    keys = ",".join(f"{n}:{role}:{hash_secret(k, fast=True)}" for n, (role, k) in KEYS.items())
    env = {
        "DICOMWEB_AUTH_API_KEYS": keys,
        "DICOMWEB_AUDIT_SYSLOG": f"udp://127.0.0.1:{syslog.getsockname()[1]}",
    }
    server = start_server(tmp / "data", f"sqlite:///{tmp / 'i.sqlite3'}", env=env)
    study, series = uid(), uid()
    sops = [uid(), uid()]
    try:
        writer = DICOMwebClient(server.url, headers={"X-API-Key": KEYS["pipeline"][1]})
        writer.store_instances(
            [make_dataset(study=study, series=series, sop=s, patient_id=PATIENT) for s in sops]
        )
        yield Audited(server, syslog, study, series, sops)
    finally:
        server.stop()
        syslog.close()
    assert "Traceback" not in server.log(), server.log()


def test_store_is_recorded_with_the_stored_uids(audited: Audited) -> None:
    (record,) = [r for r in _records(audited, "110104") if r.get("method") == "POST"]
    assert record["event_id"] == {"code": "110104", "scheme": "DCM",
                                  "meaning": "DICOM Instances Transferred"}  # fmt: skip
    assert record["action"] == "C" and record["outcome"] == 0 and record["status"] == 200
    assert record["user"] == "pipeline" and record["user_kind"] == "api-key"
    assert record["roles"] == ["writer"] and record["source_ip"] == "127.0.0.1"
    assert record["study_uids"] == [audited.study]
    assert sorted(record["sop_instance_uids"]) == sorted(audited.sops)
    assert record["time"].endswith("+00:00")


def test_query_retrieve_and_delete_are_recorded(audited: Audited) -> None:
    root = audited.server.url
    viewer, ops = audited.headers("viewer"), audited.headers("ops")
    q = httpx.get(f"{root}/studies", params={"PatientID": PATIENT}, headers=viewer, timeout=30)
    assert q.status_code == 200
    instance = f"{root}/studies/{audited.study}/series/{audited.series}/instances/{audited.sops[0]}"
    accept = 'multipart/related; type="application/dicom"'
    got = httpx.get(instance, headers={**viewer, "Accept": accept}, timeout=30)
    assert got.status_code == 200
    assert httpx.get(instance + "/metadata", headers=viewer, timeout=30).status_code == 200
    frames = httpx.get(instance + "/frames/1", headers=viewer, timeout=30)
    # The second is answered from memory (web/fast_frames.py): still behind the gate.
    again = httpx.get(instance + "/frames/1", headers=viewer, timeout=30)
    assert frames.status_code == again.status_code == 200
    assert httpx.get(instance + "/frames/1", timeout=30).status_code == 401
    deleted = httpx.delete(instance, headers=ops, timeout=30)
    assert deleted.status_code == 204

    (query,) = [r for r in _records(audited, "110112") if r["query"].get("PatientID") == PATIENT]
    assert query["action"] == "E" and query["user"] == "viewer" and query["outcome"] == 0
    sent = [r for r in _records(audited, "110104") if r.get("method") == "GET"]
    assert sent and sent[-1]["sop_instance_uids"] == [audited.sops[0]]
    assert sent[-1]["action"] == "R" and sent[-1]["series_uids"] == [audited.series]
    accessed = _records(audited, "110103")
    assert [r["path"].rsplit("/", 1)[-1] for r in accessed][-3:] == ["metadata", "1", "1"]
    outcomes = [(r["outcome"], r["status"], r["user"]) for r in accessed[-2:]]
    assert outcomes == [(0, 200, "viewer")] * 2
    assert accessed[-1]["study_uids"] == [audited.study]
    (gone,) = _records(audited, "110105")
    assert gone["action"] == "D" and gone["user"] == "ops" and gone["status"] == 204
    assert gone["patient_ids"] == [PATIENT]
    assert gone["sop_instance_uids"] == [audited.sops[0]]


def test_security_events_are_recorded(audited: Audited) -> None:
    root = audited.server.url
    marker = uid()
    bad = httpx.get(f"{root}/studies/{marker}", headers={"X-API-Key": "guess"}, timeout=30)
    none = httpx.get(f"{root}/studies/{marker}/metadata", timeout=30)
    forbidden = httpx.delete(f"{root}/studies/{marker}", headers=audited.headers("viewer"))
    assert (bad.status_code, none.status_code, forbidden.status_code) == (401, 401, 403)
    logins = [r for r in _records(audited, "110114") if marker in r["path"]]
    assert [r["detail"] for r in logins] == ["unknown API key", "no credentials"]
    assert all(r["outcome"] == 4 and r["event_type"]["code"] == "110122" for r in logins)
    assert "guess" not in str(logins)  # the secret itself is never written
    (alert,) = [r for r in _records(audited, "110113") if marker in r["path"]]
    assert (
        alert["user"] == "viewer" and alert["event_type"]["meaning"] == "Use of Restricted Function"
    )


def test_every_record_also_goes_to_syslog(audited: Audited) -> None:
    httpx.get(f"{audited.server.url}/studies", headers=audited.headers("viewer"), timeout=30)
    messages = []
    while True:
        try:
            messages.append(audited.syslog.recv(65536))
        except TimeoutError:
            break
        if b'"110112"' in messages[-1]:
            break
    message = messages[-1]
    # RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
    head, _, body = message.partition(b" - {")
    pri_version, stamp, host, app, pid, msgid = head.split(b" ")
    assert pri_version == b"<85>1"  # facility 10 (security), severity 5 (notice)
    assert app == b"dicomweb-server" and msgid == b"AUDIT" and stamp.endswith(b"Z")
    assert host and pid.isdigit()
    assert orjson.loads(b"{" + body)["event_id"]["code"] == "110112"


def test_search_by_patient_user_and_time(audited: Audited) -> None:
    ops = audited.headers("ops")
    url = f"{audited.server.root}/admin/audit"
    found = httpx.get(url, params={"patient": PATIENT}, headers=ops, timeout=30).json()
    codes = {r["event_id"]["code"] for r in found}
    assert {"110104", "110112"} <= codes  # store and query (by UID and by PatientID)
    assert all(
        PATIENT in r.get("patient_ids", []) or r.get("query", {}).get("PatientID") == PATIENT
        or audited.study in r.get("study_uids", []) for r in found
    )  # fmt: skip
    by_user = httpx.get(url, params={"user": "pipeline"}, headers=ops, timeout=30).json()
    assert by_user and {r["user"] for r in by_user} == {"pipeline"}
    future = httpx.get(url, params={"since": "2999-01-01"}, headers=ops, timeout=30).json()
    assert future == []
    one = httpx.get(url, params={"limit": "1"}, headers=ops, timeout=30).json()
    assert len(one) == 1
    assert httpx.get(url, params={"limit": "x"}, headers=ops, timeout=30).status_code == 400
    assert httpx.get(url, params={"patient": "A*"}, headers=ops, timeout=30).status_code == 400
    assert httpx.get(url, params={"bogus": "1"}, headers=ops, timeout=30).status_code == 400
    # Reading the trail is itself recorded.
    assert _records(audited, "110101")


def test_cli_audit_search(audited: Audited) -> None:
    server = audited.server
    result = run_cli(
        "audit", "search", "--data-dir", str(server.data_dir), "--database-url",
        server.database_url, "--patient", PATIENT, "--limit", "50",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert any(r["event_id"]["code"] == "110104" for r in lines)


def test_records_survive_rotation(audited: Audited, tmp_path: Path) -> None:
    path = audited.server.data_dir / "audit" / "audit.jsonl"
    before = len(audited.records())
    path.rename(path.with_name("audit.jsonl.1"))  # what logrotate does
    httpx.get(f"{audited.server.url}/studies", headers=audited.headers("viewer"), timeout=30)
    assert path.exists() and len(audited.records()) == 1
    ops = audited.headers("ops")
    found = httpx.get(f"{audited.server.root}/admin/audit", params={"limit": "10000"},
                      headers=ops, timeout=30).json()  # fmt: skip
    assert len(found) >= before + 1  # rotated files are searched too
