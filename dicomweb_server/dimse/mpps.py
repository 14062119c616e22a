"""Modality Performed Procedure Step SCP (PS3.4 F.7): N-CREATE and N-SET.

The rules live in ``dicom/mpps.py`` and ``services/mpps.py``; this adapter turns their
refusals into the response status (with Error Comment and, for a finished step, the
Error ID of PS3.4 Table F.7.2-2) and records each change in the audit trail.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicomweb_server.dicom.mpps import MODALITY_PERFORMED_PROCEDURE_STEP, Refusal
from dicomweb_server.dimse import audit as dimse_audit
from dicomweb_server.dimse import status
from dicomweb_server.dimse.handlers import Gateway, _permitted
from dicomweb_server.services.mpps import MppsOutcome, MppsService

log = logging.getLogger(__name__)

NO_SUCH_SOP_CLASS = 0x0118


def _refused(refusal: Refusal) -> Dataset:
    ds = status.with_comment(refusal.status, refusal.comment)
    if refusal.error_id is not None:
        ds.ErrorID = refusal.error_id
    return ds


def _study_uids(outcome: MppsOutcome) -> list[str]:
    if outcome.record is None:
        return []
    items = outcome.record.dataset.get("00400270", {}).get("Value") or []
    uids = [str((i.get("0020000D", {}).get("Value") or [""])[0]) for i in items]
    return sorted({u for u in uids if u})


def _audit(gateway: Gateway, event: Event, operation: str, uid: str, outcome: MppsOutcome) -> None:
    record = outcome.record
    if outcome.refusal is not None:
        detail = f"{uid}: refused {outcome.refusal.status:04X} {outcome.refusal.comment}"
    else:
        linked = "; ".join(outcome.notes)
        detail = f"{uid}: {record.status if record else ''}; {linked}".strip("; ")
    dimse_audit.procedure_step(
        gateway.services, event, operation, outcome.refusal is None, _study_uids(outcome), detail
    )


def on_create(event: Event, gateway: Gateway, service: MppsService) -> tuple[Any, Dataset | None]:
    """N-CREATE (PS3.4 F.7.2.1): a modality starts a performed step."""
    request: Any = event.request
    if str(request.AffectedSOPClassUID) != MODALITY_PERFORMED_PROCEDURE_STEP:
        return status.with_comment(NO_SUCH_SOP_CLASS, "no such SOP class"), None
    if not _permitted(event, gateway, "mpps"):
        return status.with_comment(status.NOT_AUTHORIZED, "this AE may not report steps"), None
    uid = str(request.AffectedSOPInstanceUID or "") or None
    aet, _ = dimse_audit.caller(event)
    outcome = service.create(uid, event.attribute_list, aet)
    _audit(gateway, event, "MPPS N-CREATE", uid or "", outcome)
    if outcome.refusal is not None or outcome.record is None:
        assert outcome.refusal is not None
        return _refused(outcome.refusal), None
    reply = Dataset()
    if uid is None:
        # PS3.7 10.1.5.1.4: the SCP names the instance it created.
        reply.AffectedSOPInstanceUID = outcome.record.uid
    return status.SUCCESS, reply


def on_set(event: Event, gateway: Gateway, service: MppsService) -> tuple[Any, Dataset | None]:
    """N-SET (PS3.4 F.7.2.2): progress, or the end (COMPLETED / DISCONTINUED)."""
    request: Any = event.request
    if str(request.RequestedSOPClassUID) != MODALITY_PERFORMED_PROCEDURE_STEP:
        return status.with_comment(NO_SUCH_SOP_CLASS, "no such SOP class"), None
    if not _permitted(event, gateway, "mpps"):
        return status.with_comment(status.NOT_AUTHORIZED, "this AE may not report steps"), None
    uid = str(request.RequestedSOPInstanceUID or "")
    outcome = service.set(uid, event.modification_list)
    _audit(gateway, event, "MPPS N-SET", uid, outcome)
    if outcome.refusal is not None:
        return _refused(outcome.refusal), None
    return status.SUCCESS, None
