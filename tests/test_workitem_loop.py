"""The order-to-image loop and HL7 order application over the real services (no sockets),
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomweb_server.bootstrap import Services, build_services, prepare
from dicomweb_server.config import Settings
from dicomweb_server.hl7v2.codes import OrderRejected
from dicomweb_server.hl7v2.orders import parse_message
from dicomweb_server.hl7v2.workitems import WorkitemOrders
from dicomweb_server.services.workitem_loop import WorkitemLoop
from dicomweb_server.services.workitems import CANCELED, COMPLETED, IN_PROGRESS, SCHEDULED
from tests.dicomgen import make_dataset, to_part10, uid
from tests.hl7samples import omi, orm
from tests.upsgen import order

Build = Callable[..., Services]


@pytest.fixture
def build(database_url: str, tmp_path: Path) -> Iterator[Build]:
    built: list[Services] = []

    def make(**settings: Any) -> Services:
        config = Settings(data_dir=tmp_path / "data", database_url=database_url, **settings)
        prepare(config)
        services = build_services(config)
        built.append(services)
        return services

    yield make
    for services in built:
        services.close()


def store(services: Services, *, accession: str, study: str, count: int = 1) -> list[str]:
    series = uid()
    paths, sops = [], []
    for n in range(count):
        sop = uid()
        ds = make_dataset(
            study=study, series=series, sop=sop, accession=accession, instance_number=n + 1
        )
        path, fh = services.store.new_spool_file()
        with fh:
            fh.write(to_part10(ds))
        paths.append(path)
        sops.append(sop)
    outcomes = services.store.store_batch(paths)
    assert all(o.stored for o in outcomes), outcomes
    return sops


def outputs(services: Services, workitem_uid: str) -> list[str]:
    """SOP Instance UIDs in the workitem's Output Information Sequence."""
    ds = services.workitems.get(workitem_uid).dataset
    found: list[str] = []
    for performed in ds.get("00741216", {}).get("Value", []):
        for output in performed.get("00404033", {}).get("Value", []):
            for ref in output.get("00081199", {}).get("Value", []):
                found.append(ref["00081155"]["Value"][0])
    return found


def test_stored_instances_are_linked_by_accession_number(build: Build) -> None:
    services = build()
    item = services.workitems.create(order(accession="LOOP1"))
    sops = store(services, accession="LOOP1", study=uid(), count=3)
    assert sorted(outputs(services, item.uid)) == sorted(sops)
    assert services.workitems.get(item.uid).state == SCHEDULED  # rule "never"
    again = store(services, accession="LOOP1", study=uid())
    assert sorted(outputs(services, item.uid)) == sorted(sops + again)


def test_without_accession_the_study_uid_links(build: Build) -> None:
    services = build()
    study = uid()
    item = services.workitems.create(order(accession="LOOP2", study_uid=study))
    sops = store(services, accession="", study=study)
    assert outputs(services, item.uid) == sops


def test_other_accessions_and_cancelled_orders_are_not_linked(build: Build) -> None:
    services = build()
    item = services.workitems.create(order(accession="LOOP3"))
    cancelled = services.workitems.create(order(accession="LOOP4"))
    services.workitems.cancel(cancelled.uid, "test")
    store(services, accession="OTHER", study=uid())
    store(services, accession="LOOP4", study=uid())
    assert outputs(services, item.uid) == []
    assert outputs(services, cancelled.uid) == []


def test_a_mixed_batch_links_each_study_to_its_own_order_in_one_lookup_per_kind(
    build: Build,
) -> None:
    """A STOW batch of several studies: each instance goes to its own order (by
    accession, else study UID), and the workitems are looked up once per key kind for
    the whole batch, not once per study."""
    from sqlalchemy import event

    services = build()
    studies = [uid() for _ in range(5)]
    items = [services.workitems.create(order(accession=f"MIX{i}")) for i in range(4)]
    by_study = services.workitems.create(order(accession="MIXS", study_uid=studies[4]))
    paths: list[Path] = []
    expected: dict[str, list[str]] = {item.uid: [] for item in [*items, by_study]}
    for i, study in enumerate(studies):
        for n in range(2):
            sop = uid()
            accession = f"MIX{i}" if i < 4 else ""
            ds = make_dataset(study=study, sop=sop, accession=accession, instance_number=n)
            path, fh = services.store.new_spool_file()
            with fh:
                fh.write(to_part10(ds))
            paths.append(path)
            expected[(items[i] if i < 4 else by_study).uid].append(sop)
    lookups: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM workitem" in statement and "workitem.state IN" in statement:
            lookups.append(statement)

    engine = services.index.read_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        assert all(o.stored for o in services.store.store_batch(paths))
    finally:
        event.remove(engine, "before_cursor_execute", before)
    for workitem_uid, sops in expected.items():
        assert sorted(outputs(services, workitem_uid)) == sorted(sops)
    assert len(lookups) == 2, lookups


def test_first_instance_rule_completes_a_scheduled_workitem(build: Build) -> None:
    services = build(worklist_complete_on_store="first-instance")
    item = services.workitems.create(order(accession="LOOP5"))
    sops = store(services, accession="LOOP5", study=uid(), count=2)
    done = services.workitems.get(item.uid)
    assert done.state == COMPLETED
    assert sorted(outputs(services, item.uid)) == sorted(sops)
    assert "00404051" in done.dataset["00741216"]["Value"][0]  # performed end, filled
    late = store(services, accession="LOOP5", study=uid())
    assert set(late) <= set(outputs(services, item.uid))  # late images still linked


def test_first_instance_rule_leaves_a_performer_its_workitem(build: Build) -> None:
    services = build(worklist_complete_on_store="first-instance")
    item = services.workitems.create(order(accession="LOOP6"))
    services.workitems.claim(item.uid)  # e.g. MPPS N-CREATE
    store(services, accession="LOOP6", study=uid())
    assert services.workitems.get(item.uid).state == IN_PROGRESS
    assert len(outputs(services, item.uid)) == 1


def test_link_off_means_no_hook(build: Build) -> None:
    services = build(worklist_link_on_store=False)
    assert services.store.after_store is None
    item = services.workitems.create(order(accession="LOOP7"))
    store(services, accession="LOOP7", study=uid())
    assert outputs(services, item.uid) == []


def test_identical_duplicates_do_not_look_up_workitems(build: Build) -> None:
    services = build()
    calls: list[int] = []
    hook = services.store.after_store
    assert hook is not None

    def counting(records: Any) -> None:
        calls.append(len(records))
        hook(records)

    services.store.after_store = counting
    ds = make_dataset(accession="LOOP8")
    for _ in range(2):
        path, fh = services.store.new_spool_file()
        with fh:
            fh.write(to_part10(ds))
        assert services.store.store_batch([path])[0].stored
    assert calls == [1]


def test_a_failing_loop_never_fails_the_store(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = build()

    def broken(**_: Any) -> list[Any]:
        raise RuntimeError("index trouble")

    monkeypatch.setattr(services.workitems, "find", broken)
    sops = store(services, accession="LOOP9", study=uid())
    assert services.index.find_instance(sops[0]) is not None


def _apply(services: Services, text: str) -> str:
    return WorkitemOrders(services.workitems).apply(parse_message(text))


def test_hl7_new_order_is_idempotent_and_cancel_cancels(build: Build) -> None:
    services = build()
    assert "scheduled" in _apply(services, omi(accession="HL1"))
    assert "already scheduled" in _apply(services, omi(accession="HL1", control_id="resent"))
    items = services.workitems.find(accession_number="HL1")
    assert len(items) == 1 and items[0].state == SCHEDULED
    assert items[0].dataset["00100020"]["Value"] == ["PAT001"]
    assert "cancelled" in _apply(services, omi(accession="HL1", control="CA"))
    assert services.workitems.get(items[0].uid).state == CANCELED
    assert "already cancelled" in _apply(services, omi(accession="HL1", control="CA"))
    with pytest.raises(OrderRejected) as info:
        _apply(services, omi(accession="HL1"))  # a cancelled order is not re-created
    assert info.value.code == 205


def test_hl7_cancel_of_an_order_in_progress_requests_cancellation(build: Build) -> None:
    services = build()
    _apply(services, orm(accession="HL2"))
    [item] = services.workitems.find(accession_number="HL2")
    services.workitems.claim(item.uid)
    assert "cancellation requested" in _apply(services, orm(accession="HL2", control="DC"))
    assert services.workitems.get(item.uid).state == IN_PROGRESS


def test_hl7_cancel_of_unknown_or_completed_orders_is_refused(build: Build) -> None:
    services = build(worklist_complete_on_store="first-instance")
    with pytest.raises(OrderRejected) as info:
        _apply(services, omi(accession="NOSUCH", control="CA"))
    assert info.value.code == 204
    _apply(services, omi(accession="HL3"))
    store(services, accession="HL3", study=uid())
    with pytest.raises(OrderRejected) as info:
        _apply(services, omi(accession="HL3", control="CA"))
    assert info.value.code == 206


def test_hl7_change_updates_a_scheduled_order(build: Build) -> None:
    services = build()
    _apply(services, omi(accession="HL4"))
    [before] = services.workitems.find(accession_number="HL4")
    _apply(services, omi(accession="HL4", control="XO", start="202612011200", station_ae="CT09"))
    after = services.workitems.get(before.uid)
    assert after.dataset["00404005"]["Value"] == ["202612011200"]
    station = after.dataset["00404025"]["Value"][0]["00080100"]["Value"]
    assert station == ["CT09"]
    # the request (and its Study Instance UID) is kept
    assert after.dataset["0040A370"] == before.dataset["0040A370"]


def test_images_stored_before_the_order_are_linked_when_it_arrives(build: Build) -> None:
    services = build(worklist_complete_on_store="first-instance")
    sops = store(services, accession="EMERG1", study=uid(), count=3)
    store(services, accession="OTHER1", study=uid())
    loop = WorkitemLoop(services.workitems, services.settings, services.index)
    orders = WorkitemOrders(services.workitems, loop.link_existing)
    orders.apply(parse_message(omi(accession="EMERG1")))
    [item] = services.workitems.find(states=(COMPLETED,), accession_number="EMERG1")
    assert sorted(outputs(services, item.uid)) == sorted(sops)
    assert loop.link_existing(item.uid) == 0  # idempotent
