"""Modality Performed Procedure Step N-CREATE / N-SET (PS3.4 F.7) over a real server with
pynetdicom, moving workitems to IN PROGRESS, COMPLETED and CANCELED. Both backends."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from dicomweb_server.bootstrap import Services, build_services
from dicomweb_server.config import load_settings
from dicomweb_server.dicom import mwl
from dicomweb_server.services.mpps import MppsService
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.mpps import SqlMpps
from tests.conftest import BACKENDS, Server, SmallFs, http, make_database_url, start_server
from tests.dicomgen import make_dataset, uid
from tests.mppsgen import ended, started
from tests.orders import order

MPPS = "1.2.840.10008.3.1.2.3.3"
MWL_FIND = "1.2.840.10008.5.1.4.31"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Site:
    server: Server
    services: Services
    tag: str

    def schedule(self, name: str, **fields: Any) -> tuple[str, str]:
        """(workitem UID, accession number) of a new SCHEDULED order."""
        accession = f"{self.tag}-{name}"
        return self.services.workitems.create(order(accession=accession, **fields)).uid, accession

    def state(self, workitem: str) -> str:
        return str(self.services.workitems.get(workitem).state)

    def dataset(self, workitem: str) -> Dataset:
        return Dataset.from_json(self.services.workitems.get(workitem).dataset)


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("mpps")
    url = make_database_url(request.param, tmp, request)
    # ECHOONLY is a known modality allowed nothing but C-ECHO.
    env = {"DICOMWEB_DIMSE_MODALITIES": "ECHOONLY@127.0.0.1:104/echo"}
    server = start_server(tmp / "data", url, env=env)
    services = build_services(load_settings(environ={}, data_dir=tmp / "data", database_url=url))
    yield Site(server, services, uid()[-8:])
    services.close()
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]


def _associate(site: Site, aet: str) -> Any:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(MPPS)
    ae.add_requested_context(MWL_FIND)
    association = ae.associate("127.0.0.1", site.server.dimse_port, ae_title="DICOMWEB")
    assert association.is_established
    return association


@pytest.fixture
def assoc(site: Site) -> Iterator[Any]:
    association = _associate(site, "CT01")
    yield association
    association.release()


def create(assoc: Any, ds: Dataset, instance: str | None = None) -> tuple[int, Any]:
    status, _ = assoc.send_n_create(ds, MPPS, instance)
    return int(status.Status), status


def n_set(assoc: Any, instance: str, ds: Dataset) -> Any:
    status, _ = assoc.send_n_set(ds, MPPS, instance)
    return status


def test_completed_step_moves_the_workitem_through_in_progress_to_completed(
    site: Site, assoc: Any
) -> None:
    workitem, accession = site.schedule("DONE")
    study = mwl.study_uid_for(workitem)
    step = uid()
    code, _ = create(assoc, started(accession, study), step)
    assert code == 0x0000
    assert site.state(workitem) == "IN PROGRESS"
    end = ended("COMPLETED")
    assert n_set(assoc, step, end).Status == 0x0000
    assert site.state(workitem) == "COMPLETED"
    ds = site.dataset(workitem)
    performed = ds.UnifiedProcedureStepPerformedProcedureSequence[0]
    assert performed.PerformedProcedureStepStartDateTime.startswith("20261125093500")
    assert performed.PerformedStationNameCodeSequence[0].CodeValue == "CT01"
    outputs = {
        ref.ReferencedSOPInstanceUID
        for out in performed.OutputInformationSequence
        for ref in out.ReferencedSOPSequence
    }
    reported = {
        r.ReferencedSOPInstanceUID for r in end.PerformedSeriesSequence[0].ReferencedImageSequence
    }
    assert reported <= outputs
    # The same workitem as a UPS-RS client sees it.
    seen = http().get(
        f"{site.server.url}/workitems/{workitem}", headers={"Accept": "application/dicom+json"}
    )
    assert seen.status_code == 200
    assert seen.json()[0]["00741000"]["Value"] == ["COMPLETED"]


def test_discontinued_step_cancels_the_workitem(site: Site, assoc: Any) -> None:
    workitem, accession = site.schedule("STOP")
    step = uid()
    assert create(assoc, started(accession), step)[0] == 0x0000
    assert site.state(workitem) == "IN PROGRESS"
    assert n_set(assoc, step, ended("DISCONTINUED")).Status == 0x0000
    assert site.state(workitem) == "CANCELED"


def test_the_step_id_from_the_worklist_links_without_an_accession_number(
    site: Site, assoc: Any
) -> None:
    workitem, _ = site.schedule("BYID")
    step = uid()
    ds = started("", step_id=mwl.step_id(workitem))
    assert create(assoc, ds, step)[0] == 0x0000
    assert site.state(workitem) == "IN PROGRESS"


def test_a_finished_step_cannot_be_set_again(site: Site, assoc: Any) -> None:
    workitem, accession = site.schedule("TWICE")
    step = uid()
    assert create(assoc, started(accession), step)[0] == 0x0000
    assert n_set(assoc, step, ended("COMPLETED")).Status == 0x0000
    before = site.services.workitems.get(workitem)
    again = n_set(assoc, step, ended("DISCONTINUED"))
    assert again.Status == 0x0110
    assert again.ErrorID == 0xA710
    assert site.services.workitems.get(workitem) == before


def test_illegal_n_sets_are_refused_and_change_nothing(site: Site, assoc: Any) -> None:
    workitem, accession = site.schedule("ILLEGAL")
    step = uid()
    assert create(assoc, started(accession), step)[0] == 0x0000
    fixed = Dataset()
    fixed.PatientID = "SOMEONE-ELSE"
    assert n_set(assoc, step, fixed).Status == 0x0106
    incomplete = Dataset()
    incomplete.PerformedProcedureStepStatus = "COMPLETED"
    assert n_set(assoc, step, incomplete).Status == 0x0121  # no end date, time, series
    assert site.state(workitem) == "IN PROGRESS"
    assert n_set(assoc, uid(), ended("COMPLETED")).Status == 0x0112
    assert n_set(assoc, "1.2.3.4.99999.0", ended("COMPLETED")).Status == 0x0112
    # Still IN PROGRESS, so the proper end is accepted.
    assert n_set(assoc, step, ended("COMPLETED")).Status == 0x0000
    assert site.state(workitem) == "COMPLETED"


def test_n_create_refusals(site: Site, assoc: Any) -> None:
    workitem, accession = site.schedule("BADCREATE")
    no_modality = started(accession)
    del no_modality.Modality
    assert create(assoc, no_modality, uid())[0] == 0x0120
    completed = started(accession)
    completed.PerformedProcedureStepStatus = "COMPLETED"
    assert create(assoc, completed, uid())[0] == 0x0106
    assert site.state(workitem) == "SCHEDULED"
    step = uid()
    assert create(assoc, started(accession), step)[0] == 0x0000
    assert create(assoc, started(accession), step)[0] == 0x0111  # duplicate


def test_unscheduled_step_is_recorded_and_the_scp_names_it(site: Site, assoc: Any) -> None:
    commands: list[Dataset] = []
    assoc.bind(evt.EVT_DIMSE_RECV, lambda event: commands.append(event.message.command_set))
    code, _ = create(assoc, started(f"{site.tag}-NOORDER"))
    assert code == 0x0000
    # No instance UID in the request: the N-CREATE-RSP names the one created.
    step = str(commands[-1].AffectedSOPInstanceUID)
    assert step and site.services.mpps.get(step) is not None  # in the index, shared
    assert n_set(assoc, step, ended("COMPLETED")).Status == 0x0000


def test_mpps_changes_are_audited(site: Site, assoc: Any) -> None:
    workitem, accession = site.schedule("AUDIT")
    step = uid()
    assert create(assoc, started(accession), step)[0] == 0x0000
    path = site.server.data_dir / "audit" / "audit.jsonl"
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    mine = [r for r in records if step in r.get("detail", "")]
    assert mine and mine[0]["method"] == "MPPS N-CREATE"
    assert mine[0]["event_id"]["code"] == "110111" and mine[0]["user"] == "CT01"
    assert workitem in mine[0]["detail"]


def test_an_ae_without_the_operations_is_refused(site: Site) -> None:
    workitem, accession = site.schedule("NOTALLOWED")
    limited = _associate(site, "ECHOONLY")
    try:
        status, _ = limited.send_n_create(started(accession), MPPS, uid())
        assert status.Status == 0x0124
        ident = Dataset()
        ident.PatientID = ""
        answers = list(limited.send_c_find(ident, MWL_FIND))
        assert [int(a[0].Status) for a in answers] == [0x0124]
    finally:
        limited.release()
    assert site.state(workitem) == "SCHEDULED"


def test_a_malformed_instance_uid_is_refused_and_nothing_recorded(site: Site) -> None:
    service = site.services.mpps
    outcome = service.set("../secret", ended("COMPLETED"))
    assert outcome.refusal is not None and outcome.refusal.status == 0x0112
    refused = service.create("../secret", started(f"{site.tag}-PATH"), "CT01")
    assert refused.refusal is not None and refused.refusal.status == 0x0117
    assert service.get("../secret") is None


def test_of_two_n_sets_read_at_once_one_applies(site: Site) -> None:
    """Two processes may read a step together: the second write must not undo the first."""
    workitem, accession = site.schedule("RACE")
    step = uid()
    service = site.services.mpps
    assert service.create(step, started(accession), "CT01").refusal is None
    stale = service.store.get_step(step)
    assert stale is not None
    assert service.set(step, ended("DISCONTINUED")).refusal is None
    assert not service.store.replace_step(step, "IN PROGRESS", stale[0], stale[1])
    record = service.get(step)
    assert record is not None and record.status == "DISCONTINUED"
    assert site.state(workitem) == "CANCELED"


def test_one_step_for_two_orders_claims_both(site: Site, assoc: Any) -> None:
    """A group case: one performed step names two scheduled steps (two items)."""
    first, acc1 = site.schedule("GROUP1")
    second, acc2 = site.schedule("GROUP2")
    ds = started(acc1)
    extra = Dataset()
    extra.StudyInstanceUID = uid()
    extra.AccessionNumber = acc2
    ds.ScheduledStepAttributesSequence.append(extra)
    step = uid()
    assert create(assoc, ds, step)[0] == 0x0000
    assert (site.state(first), site.state(second)) == ("IN PROGRESS", "IN PROGRESS")
    assert n_set(assoc, step, ended("COMPLETED")).Status == 0x0000
    assert (site.state(first), site.state(second)) == ("COMPLETED", "COMPLETED")


def test_the_step_id_picks_one_of_two_steps_of_an_order(site: Site, assoc: Any) -> None:
    head, accession = site.schedule("TWOSTEPS", step_id="HEAD")
    chest = site.services.workitems.create(order(accession=accession, step_id="CHEST")).uid
    assert create(assoc, started(accession, step_id="CHEST"), uid())[0] == 0x0000
    assert (site.state(head), site.state(chest)) == ("SCHEDULED", "IN PROGRESS")


def test_progress_n_set_keeps_the_step_open(site: Site, assoc: Any) -> None:
    workitem, accession = site.schedule("PROGRESS")
    step = uid()
    assert create(assoc, started(accession), step)[0] == 0x0000
    progress = ended("IN PROGRESS")
    progress.PerformedProcedureStepEndDate = None
    progress.PerformedProcedureStepEndTime = None
    assert n_set(assoc, step, progress).Status == 0x0000
    assert site.state(workitem) == "IN PROGRESS"
    assert n_set(assoc, step, ended("COMPLETED")).Status == 0x0000
    assert site.state(workitem) == "COMPLETED"


def test_a_modality_day(site: Site) -> None:
    """What a modality does, over real sockets: query the worklist, start the step
    (MPPS) with what the worklist said, store the images, end the step naming them.
    The workitem is COMPLETED with the images as its output, and QIDO by the
    Accession Number finds the study under the Study Instance UID the worklist gave."""
    workitem, accession = site.schedule("DAY", station_aet="CTDAY", patient_id=f"{site.tag}-P")
    ae = AE(ae_title="CTDAY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in (MWL_FIND, MPPS, CT_IMAGE_STORAGE):
        ae.add_requested_context(context)
    modality = ae.associate("127.0.0.1", site.server.dimse_port, ae_title="DICOMWEB")
    assert modality.is_established
    try:
        ident = Dataset()
        ident.AccessionNumber = ident.PatientID = ident.StudyInstanceUID = ""
        ident.PatientName = ""
        sps = Dataset()
        sps.ScheduledStationAETitle = "CTDAY"
        sps.ScheduledProcedureStepID = sps.ScheduledProcedureStepStartDate = ""
        ident.ScheduledProcedureStepSequence = [sps]
        entries = [ds for st, ds in modality.send_c_find(ident, MWL_FIND) if ds is not None]
        assert [e.AccessionNumber for e in entries] == [accession]
        entry = entries[0]
        study = str(entry.StudyInstanceUID)
        step_id = str(entry.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID)

        step = uid()
        start = started(accession, study, step_id)
        start.PatientID = entry.PatientID
        assert create(modality, start, step)[0] == 0x0000
        # The order had no study: it now has the one the worklist gave, so images can
        # be linked to it by study as well as by accession.
        assert [w.uid for w in site.services.workitems.find(study_uid=study)] == [workitem]
        series = uid()
        images = [
            make_dataset(
                study=study,
                series=series,
                accession=accession,
                patient_id=str(entry.PatientID),
                instance_number=n + 1,
            )
            for n in range(2)
        ]
        for image in images:
            assert modality.send_c_store(image).Status == 0x0000
        assert n_set(modality, step, ended("COMPLETED", images)).Status == 0x0000
    finally:
        modality.release()

    assert site.state(workitem) == "COMPLETED"
    performed = site.dataset(workitem).UnifiedProcedureStepPerformedProcedureSequence[0]
    outputs = performed.OutputInformationSequence
    assert {o.StudyInstanceUID for o in outputs} == {study}
    stored = {r.ReferencedSOPInstanceUID for o in outputs for r in o.ReferencedSOPSequence}
    assert stored == {str(i.SOPInstanceUID) for i in images}
    found = http().get(
        f"{site.server.url}/studies",
        params={"AccessionNumber": accession},
        headers={"Accept": "application/dicom+json"},
    )
    assert found.status_code == 200
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]


def test_a_full_disk_refuses_the_step_and_claims_nothing(site: Site, small_fs: SmallFs) -> None:
    """The step's index (SQLite here) lives on a disk that fills up: 0110, not an ACK."""
    workitem, accession = site.schedule("FULL")
    index = SqlIndex(f"sqlite:///{small_fs.path / 'index.sqlite'}")
    index.migrate()
    try:
        service = MppsService(site.services.workitems, SqlMpps(index))
        with open(small_fs.path / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        step = uid()
        outcome = service.create(step, started(accession), "CT01")
        assert outcome.refusal is not None and outcome.refusal.status == 0x0110
        assert site.state(workitem) == "SCHEDULED"
        (small_fs.path / "filler").unlink()
        assert service.get(step) is None
    finally:
        index.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_n_set_may_reach_another_server_process(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two `serve` processes on one index (two hosts behind one address): the step
    started through one is ended through the other."""
    url = make_database_url(backend, tmp_path, request)
    first = start_server(tmp_path / "a", url)
    second = start_server(tmp_path / "b", url)
    services = build_services(load_settings(environ={}, data_dir=tmp_path / "a", database_url=url))
    try:
        site_a, site_b = Site(first, services, uid()[-8:]), Site(second, services, "")
        workitem, accession = site_a.schedule("TWO")
        step = uid()
        on_a = _associate(site_a, "CT01")
        try:
            assert create(on_a, started(accession), step)[0] == 0x0000
        finally:
            on_a.release()
        on_b = _associate(site_b, "CT01")
        try:
            assert n_set(on_b, step, ended("COMPLETED")).Status == 0x0000
        finally:
            on_b.release()
        assert site_a.state(workitem) == "COMPLETED"
    finally:
        services.close()
        first.stop()
        second.stop()
    for server in (first, second):
        assert "Traceback" not in server.log(), server.log()[-3000:]
