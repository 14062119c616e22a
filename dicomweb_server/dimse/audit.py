"""Audit records for DIMSE (PS3.15 A.5), in the same trail as HTTP: the calling AE
title is the user, the peer address the source."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicomweb_server.bootstrap import Services
from dicomweb_server.services import audit
from dicomweb_server.services.audit import AuditEvent
from dicomweb_server.services.modalities import StoredInstance

# PS3.15 A.5.3 Procedure Record (DCM 110111): a performed procedure step created or updated.
PROCEDURE_RECORD = ("110111", "Procedure Record")
# UIDs listed per record; a retrieve of a large study names its studies and series,
# and the first instances.
_LISTED = 1000


def caller(event: Event) -> tuple[str, str]:
    """(calling AE title, peer address): who is asking, for permissions and records."""
    requestor = event.assoc.requestor
    aet = requestor.ae_title
    if not aet.strip() and requestor.primitive is not None:
        # At EVT_REQUESTED only the A-ASSOCIATE-RQ primitive carries the title.
        aet = requestor.primitive.calling_ae_title
    return str(aet).strip(), str(requestor.address)


def record(services: Services, event: Event, entry: AuditEvent, operation: str) -> None:
    aet, entry.source_ip = caller(event)
    entry.user = aet or "unknown"
    entry.user_kind, entry.method = "ae-title", operation
    services.audit.record(entry)


def refused(services: Services, event: Event, operation: str, why: str) -> None:
    """An association or operation the configuration does not allow."""
    entry = AuditEvent(
        audit.SECURITY_ALERT,
        "E",
        audit.OUTCOME_MINOR_FAILURE,
        event_type=audit.USE_OF_RESTRICTED_FUNCTION,
        detail=why,
    )
    record(services, event, entry, operation)


def stored(
    services: Services, event: Event, study: str | None, series: str | None, sop: str | None,
    ok: bool, detail: str,
) -> None:  # fmt: skip
    entry = AuditEvent(
        audit.INSTANCES_TRANSFERRED,
        "C",
        audit.OUTCOME_SUCCESS if ok else audit.OUTCOME_MINOR_FAILURE,
        study_uids=[study] if study else [],
        series_uids=[series] if series else [],
        sop_instance_uids=[sop] if sop else [],
        detail=detail,
    )
    record(services, event, entry, "C-STORE")


def queried(
    services: Services, event: Event, identifier: Dataset | None, operation: str = "C-FIND"
) -> None:
    keys: dict[str, str] = {}
    for elem in identifier or ():
        value: Any = elem.value
        if elem.VR != "SQ" and value not in (None, "", b""):
            keys[elem.keyword or f"{elem.tag:08X}"] = str(value)[:200]
    entry = AuditEvent(audit.QUERY, "E", audit.OUTCOME_SUCCESS, query=keys)
    record(services, event, entry, operation)


def transferred(
    services: Services, event: Event, operation: str, instances: Iterable[StoredInstance]
) -> None:
    items = list(instances)
    entry = AuditEvent(
        audit.INSTANCES_TRANSFERRED,
        "R",
        audit.OUTCOME_SUCCESS,
        study_uids=sorted({i.study_uid for i in items}),
        series_uids=sorted({i.series_uid for i in items})[:_LISTED],
        sop_instance_uids=[i.sop_instance_uid for i in items[:_LISTED]],
        detail=f"{len(items)} instance(s)",
    )
    record(services, event, entry, operation)


def procedure_step(
    services: Services, event: Event, operation: str, ok: bool, studies: list[str], detail: str
) -> None:
    """An MPPS N-CREATE (action C) or N-SET (action U), accepted or refused."""
    entry = AuditEvent(
        PROCEDURE_RECORD,
        "C" if "CREATE" in operation else "U",
        audit.OUTCOME_SUCCESS if ok else audit.OUTCOME_MINOR_FAILURE,
        study_uids=studies,
        detail=detail[:1000],
    )
    record(services, event, entry, operation)
