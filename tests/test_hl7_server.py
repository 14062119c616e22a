"""HL7 orders and the order-to-image loop end to end, over real sockets: python-hl7's
MLLP client sends orders to `dicomweb-server serve --hl7`, UPS-RS search and retrieve
show the workitems, pynetdicom C-STOREs and httpx STOWs the images, QIDO-RS finds
them. Both index backends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from pynetdicom import AE

from tests.conftest import (
    BACKENDS,
    Server,
    free_port,
    http,
    make_database_url,
    run_cli,
    start_server,
)
from tests.dicomgen import make_dataset, multipart, to_part10, uid
from tests.hl7samples import omi, orm
from tests.upsgen import order

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class Site:
    def __init__(self, server: Server, hl7_port: int) -> None:
        self.server = server
        self.hl7_port = hl7_port

    def send(self, *messages: str) -> list[hl7.Message]:
        return asyncio.run(self._send(messages))

    async def _send(self, messages: tuple[str, ...]) -> list[hl7.Message]:
        reader, writer = await open_hl7_connection("127.0.0.1", self.hl7_port)
        try:
            replies = []
            for text in messages:
                writer.writemessage(hl7.parse(text))
                await writer.drain()
                replies.append(await asyncio.wait_for(reader.readmessage(), 60))
            return replies
        finally:
            writer.close()
            await writer.wait_closed()

    def workitems(self, accession: str) -> list[dict[str, Any]]:
        """The order's workitems as UPS-RS shows them: Search Workitems by the accession
        number in the Referenced Request Sequence, then Retrieve Workitem each."""
        found = http().get(
            f"{self.server.url}/workitems",
            params={"ReferencedRequestSequence.AccessionNumber": accession},
            headers={"Accept": "application/dicom+json"},
        )
        assert found.status_code in (200, 204), found.text
        if found.status_code == 204:
            return []
        items = []
        for hit in found.json():
            uid = hit["00080018"]["Value"][0]
            got = http().get(
                f"{self.server.url}/workitems/{uid}", headers={"Accept": "application/dicom+json"}
            )
            assert got.status_code == 200, got.text
            body = got.json()
            items.append(body[0] if isinstance(body, list) else body)
        return items


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("hl7")
    url = make_database_url(request.param, tmp, request)
    hl7_port = free_port()
    server = start_server(
        tmp / "data",
        url,
        "--hl7",
        "--hl7-port",
        str(hl7_port),
        "--worklist-complete-on-store",
        "first-instance",
    )
    built = Site(server, hl7_port)
    yield built
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def msa(reply: hl7.Message) -> tuple[str, str]:
    segment = reply.segment("MSA")
    return str(segment(1)), str(segment(2))


def value(ds: dict[str, Any], tag: str) -> Any:
    return ds[tag]["Value"][0]


def state(ds: dict[str, Any]) -> str:
    return str(value(ds, "00741000"))


def output_sops(ds: dict[str, Any]) -> list[str]:
    return [
        ref["00081155"]["Value"][0]
        for performed in ds.get("00741216", {}).get("Value", [])
        for output in performed.get("00404033", {}).get("Value", [])
        for ref in output.get("00081199", {}).get("Value", [])
    ]


def test_orm_and_omi_orders_become_workitems(site: Site) -> None:
    replies = site.send(omi(accession="E2E-OMI", control_id="C1"), orm(accession="E2E-ORM"))
    assert [msa(r) for r in replies] == [("AA", "C1"), ("AA", "ORM00001")]
    [ds] = site.workitems("E2E-OMI")
    assert state(ds) == "SCHEDULED"
    assert value(ds, "00100020") == "PAT001"
    assert value(value(ds, "00404026"), "00080100") == "CT"
    [ds] = site.workitems("E2E-ORM")
    assert value(value(ds, "00404025"), "00080100") == "MR01"


def test_cancel_message_cancels_and_a_resend_is_acknowledged(site: Site) -> None:
    site.send(omi(accession="E2E-CA"))
    [cancel, again] = site.send(
        omi(accession="E2E-CA", control="CA", control_id="CA1"),
        omi(accession="E2E-CA", control="CA", control_id="CA2"),
    )
    assert msa(cancel) == ("AA", "CA1") and msa(again) == ("AA", "CA2")
    [ds] = site.workitems("E2E-CA")
    assert state(ds) == "CANCELED"


def test_malformed_orders_get_a_nak_and_create_nothing(site: Site) -> None:
    [reply] = site.send(omi(accession="E2E-BAD", patient_id="", control_id="BAD"))
    assert msa(reply) == ("AE", "BAD")
    assert str(reply.segment("ERR")(3)).startswith("101^")
    assert site.workitems("E2E-BAD") == []
    [reply] = site.send(omi(accession="E2E-UNKNOWN", control="CA", control_id="BAD2"))
    assert msa(reply) == ("AE", "BAD2")
    assert site.server.alive()


def test_each_message_leaves_an_order_record_in_the_audit_trail(site: Site) -> None:
    site.send(omi(accession="E2E-AUDIT", control_id="AUD1", patient_id="PAT-AUDIT"))
    site.send(omi(accession="E2E-AUDIT", control="CA", control_id="AUD2"))
    site.send(omi(accession="E2E-AUDIT2", control_id="AUD3", patient_id=""))
    lines = (site.server.data_dir / "audit" / "audit.jsonl").read_text().splitlines()
    records = {
        r["detail"].split(":")[0]: r
        for r in map(json.loads, lines)
        if r["event_id"]["code"] == "110109"
    }
    created, cancelled, refused = records["AUD1"], records["AUD2"], records["AUD3"]
    assert (created["action"], created["outcome"], created["user"]) == ("C", 0, "RIS@HOSP")
    assert created["patient_ids"] == ["PAT-AUDIT"] and created["source_ip"] == "127.0.0.1"
    assert created["user_kind"] == "hl7-application" and created["method"] == "OMI^O23"
    assert (cancelled["action"], cancelled["outcome"]) == ("U", 0)
    assert (refused["action"], refused["outcome"]) == ("E", 4)


def test_refused_peers_are_a_security_alert(tmp_path: Path) -> None:
    hl7_port = free_port()
    server = start_server(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'index.sqlite3'}",
        "--no-dimse",
        "--hl7",
        "--hl7-port",
        str(hl7_port),
        "--hl7-allowed-peers",
        "192.0.2.0/24",
    )
    try:
        with socket.create_connection(("127.0.0.1", hl7_port), timeout=10) as sock:
            sock.sendall(b"\x0b" + omi().encode() + b"\x1c\r")
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
    finally:
        server.stop()
    audit_file = tmp_path / "data" / "audit" / "audit.jsonl"
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    [alert] = [r for r in records if r["event_id"]["code"] == "110113"]
    assert alert["source_ip"] == "127.0.0.1" and "hl7_allowed_peers" in alert["detail"]
    assert not any(r["event_id"]["code"] == "110109" for r in records)


def test_mllp_send_tool_of_the_library(site: Site, tmp_path: Path) -> None:
    """python-hl7's own command line client, as an operator would test an interface."""
    message = tmp_path / "order.hl7"
    message.write_text(omi(accession="E2E-TOOL", control_id="TOOL1").replace("\r", "\n"))
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "mllp_send"),
            "--port",
            str(site.hl7_port),
            "--file",
            str(message),
            "--loose",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "MSA|AA|TOOL1" in done.stdout
    assert len(site.workitems("E2E-TOOL")) == 1


def test_the_whole_loop_over_c_store(site: Site) -> None:
    study = uid()
    [reply] = site.send(omi(accession="E2E-LOOP", study_uid=study, control_id="LOOP"))
    assert msa(reply) == ("AA", "LOOP")
    response = http().get(f"{site.server.root}/open", params={"AccessionNumber": "E2E-LOOP"})
    assert response.status_code == 404
    assert "No images yet" in response.text and "SCHEDULED" in response.text
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", site.server.dimse_port, ae_title="DICOMWEB")
    assert assoc.is_established
    sops = [uid(), uid()]
    series = uid()
    try:
        for n, sop in enumerate(sops, start=1):
            image = make_dataset(
                study=study, series=series, sop=sop, accession="E2E-LOOP", instance_number=n
            )
            assert assoc.send_c_store(image).Status == 0x0000
    finally:
        assoc.release()
    [ds] = site.workitems("E2E-LOOP")
    assert state(ds) == "COMPLETED"  # rule first-instance
    assert sorted(output_sops(ds)) == sorted(sops)
    found = http().get(
        f"{site.server.url}/studies",
        params={"AccessionNumber": "E2E-LOOP"},
        headers={"Accept": "application/dicom+json"},
    )
    assert found.status_code == 200
    assert [value(s, "0020000D") for s in found.json()] == [study]
    opened = http().get(f"{site.server.root}/open", params={"AccessionNumber": "E2E-LOOP"})
    assert opened.status_code == 302
    assert opened.headers["location"] == f"/viewer?StudyInstanceUIDs={study}"


def test_a_ups_rs_order_is_linked_by_stow_rs(site: Site) -> None:
    """The loop does not care how the order came: UPS-RS create, then STOW-RS."""
    workitem = uid()
    created = http().post(
        f"{site.server.url}/workitems?{workitem}",
        json=order(accession="E2E-REST"),
        headers={"Content-Type": "application/dicom+json", "Accept": "application/dicom+json"},
    )
    assert created.status_code == 201, created.text
    study, sop = uid(), uid()
    body, content_type = multipart(
        [to_part10(make_dataset(study=study, sop=sop, accession="E2E-REST"))]
    )
    stored = http().post(
        f"{site.server.url}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert stored.status_code == 200, stored.text
    [ds] = site.workitems("E2E-REST")
    assert output_sops(ds) == [sop]
    assert state(ds) == "COMPLETED"  # the server runs with first-instance


def test_hand_typed_accession_without_order_is_found_by_qido(site: Site) -> None:
    study = uid()
    body, content_type = multipart([to_part10(make_dataset(study=study, accession="TYPED-123"))])
    stored = http().post(
        f"{site.server.url}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert stored.status_code == 200, stored.text
    found = http().get(
        f"{site.server.url}/studies",
        params={"AccessionNumber": "TYPED-123"},
        headers={"Accept": "application/dicom+json"},
    )
    assert [value(s, "0020000D") for s in found.json()] == [study]
    assert site.workitems("TYPED-123") == []


def test_images_that_came_before_their_order_are_linked(site: Site) -> None:
    study = uid()
    sops = [uid(), uid()]
    body, content_type = multipart(
        [to_part10(make_dataset(study=study, sop=s, accession="E2E-EMERG")) for s in sops]
    )
    stored = http().post(
        f"{site.server.url}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert stored.status_code == 200, stored.text
    [reply] = site.send(omi(accession="E2E-EMERG", study_uid="", control_id="EMERG"))
    assert msa(reply) == ("AA", "EMERG")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # linked after the ACK, in the background
        [ds] = site.workitems("E2E-EMERG")
        if state(ds) == "COMPLETED":
            break
        time.sleep(0.2)
    assert state(ds) == "COMPLETED"
    assert sorted(output_sops(ds)) == sorted(sops)


def test_serve_help_documents_the_hl7_flags() -> None:
    done = run_cli("serve", "--help")
    for flag in ("--hl7", "--hl7-port", "--hl7-max-message-bytes", "--worklist-complete-on-store"):
        assert flag in done.stdout
    assert "DICOMWEB_HL7_PORT" in done.stdout


def test_hl7_port_in_use_exits_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
            "--dimse-port",
            str(free_port()),
            "--hl7",
            "--hl7-port",
            str(port),
            timeout=60,
        )
    assert done.returncode == 1
    assert f"HL7 port {port}" in done.stderr
