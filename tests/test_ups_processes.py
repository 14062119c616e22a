"""Two server processes on one index (SQLite and PostgreSQL): a workitem created through
one is seen by the other, and of performers claiming it through both at once exactly one
wins; the row lock holds across processes, not only across threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

from tests.conftest import Server, start_server
from tests.test_ups_web import JSON, get, new_workitem
from tests.upsgen import el


def test_two_processes_one_worklist(shared_server: Server, tmp_path: Path) -> None:
    other = start_server(tmp_path / "data", shared_server.database_url, "--no-dimse")
    try:
        uid = new_workitem(shared_server)
        assert get(other, uid)["00741000"]["Value"] == ["SCHEDULED"]
        servers = [shared_server, other] * 3
        txns = [str(generate_uid()) for _ in servers]
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(max_workers=6) as pool:

            def claim(pair: tuple[Server, str]) -> int:
                server, txn = pair
                body = {"00741000": el("CS", "IN PROGRESS"), "00081195": el("UI", txn)}
                url = f"{server.url}/workitems/{uid}/state"
                return client.put(url, json=body, headers=JSON).status_code

            codes = list(pool.map(claim, zip(servers, txns, strict=True)))
        assert sorted(codes) == [200] + [400] * 5, codes
        winner = txns[codes.index(200)]
        assert get(shared_server, uid)["00741000"]["Value"] == ["IN PROGRESS"]
        # the winner may update through the other process
        changed = httpx.post(
            f"{other.url}/workitems/{uid}?{winner}",
            json={"00741204": el("LO", "claimed")},
            headers=JSON,
            timeout=60,
        )
        assert changed.status_code == 200, changed.text
        assert get(shared_server, uid)["00741204"]["Value"] == ["claimed"]
    finally:
        other.stop()
    assert "Traceback" not in other.log(), other.log()
