"""Storage Commitment Push Model SCP (PS3.4 J.3): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION is answered at once (Success when the request is well formed); the
result follows as an N-EVENT-REPORT (Event Type 1: all committed, 2: some failed),
sent on the same association while it is still open, else on a new association to
the requester's configured address, where we propose the SCP role for the SOP class
(PS3.4 J.3.3, PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE

from dicomweb_server.dimse import status
from dicomweb_server.dimse.audit import caller
from dicomweb_server.dimse.handlers import Gateway, _permitted
from dicomweb_server.dimse.syntaxes import UNCOMPRESSED
from dicomweb_server.dimse.tcp import NO_DELAY
from dicomweb_server.services.commitment import CommitmentResult, CommitmentService

log = logging.getLogger(__name__)

PUSH_MODEL = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance (J.3.5)
REQUEST_COMMITMENT = 1  # Action Type ID (J.3.2.1)
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type IDs (J.3.3.1)
# N-ACTION failures (PS3.7 10.1.4.1.10).
NO_SUCH_ACTION = 0x0123
INVALID_ARGUMENT = 0x0115
# How long to wait for the association's reactor to let us send on it.
_PAUSE_WAIT = 5.0
# How long a requester has to start releasing before we report on its association.
_RELEASE_GRACE = 0.5
_REPORT_TIMEOUT = 15.0


def _references(info: Dataset | None) -> tuple[str, list[tuple[str, str]]]:
    if info is None or "TransactionUID" not in info:
        raise ValueError("the Action Information has no Transaction UID")
    refs = []
    for item in info.get("ReferencedSOPSequence", []):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if not sop_class or not sop_instance:
            raise ValueError("a Referenced SOP Sequence item lacks a class or instance UID")
        refs.append((sop_class, sop_instance))
    if not refs:
        raise ValueError("the Referenced SOP Sequence is empty")
    return str(info.TransactionUID), refs


def event_information(transaction: str, result: CommitmentResult, aet: str) -> Dataset:
    """The Event Information of J.3.3.1.1 (Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.RetrieveAETitle = aet
    done = []
    for sop_class, sop_instance in result.committed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        done.append(item)
    if done:
        ds.ReferencedSOPSequence = done
    failed = []
    for sop_class, sop_instance, reason in result.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.FailureReason = reason
        failed.append(item)
    if failed:
        ds.FailedSOPSequence = failed
    return ds


def on_action(event: Event, gateway: Gateway) -> tuple[int | Dataset, Dataset | None]:
    """N-ACTION Request Storage Commitment (J.3.2)."""
    request: Any = event.request  # an N_ACTION primitive
    if str(request.RequestedSOPClassUID) != PUSH_MODEL:
        return status.with_comment(0x0118, "no such SOP class"), None
    if not _permitted(event, gateway, "commit"):
        return status.with_comment(status.NOT_AUTHORIZED, "this AE may not commit"), None
    if int(request.ActionTypeID) != REQUEST_COMMITMENT:
        return status.with_comment(NO_SUCH_ACTION, "the only action is 1"), None
    try:
        transaction, refs = _references(event.action_information)
    except ValueError as exc:
        return status.with_comment(INVALID_ARGUMENT, str(exc)), None
    aet, _ = caller(event)
    services = gateway.services
    checker = CommitmentService(services.index, services.blobs)
    thread = threading.Thread(
        target=_report,
        args=(gateway, event.assoc, aet, transaction, refs, checker),
        name=f"commit-{transaction[-8:]}",
        daemon=True,
    )
    # Started now; it sends only once the reactor pauses, i.e. after this response.
    thread.start()
    return status.SUCCESS, None


def _report(
    gateway: Gateway,
    assoc: Association,
    aet: str,
    transaction: str,
    refs: list[tuple[str, str]],
    checker: CommitmentService,
) -> None:
    try:
        result = checker.check(refs)
        info = event_information(transaction, result, gateway.aet)
        event_type = SOME_FAILED if result.failed else ALL_COMMITTED
        if _send_on_same(assoc, info, event_type):
            return
        _send_on_new(gateway, aet, info, event_type)
    except Exception:
        log.exception("storage commitment %s: the report could not be sent", transaction)


def _send_on_same(assoc: Association, info: Dataset, event_type: int) -> bool:
    """Send on the requester's association unless it is closing; False if not sent.

    pynetdicom's send_n_event_report waits for the reactor to pause without a
    deadline; we wait with one. A requester that wants the report on a new
    association releases right after the N-ACTION response, so a release request
    seen within the grace period sends us to a new association instead.
    """
    checkpoint: Any = assoc._reactor_checkpoint
    checkpoint.clear()
    try:
        deadline = time.monotonic() + _PAUSE_WAIT
        while not assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.001)
        if not (assoc._is_paused and assoc.is_established):
            return False
        grace = time.monotonic() + _RELEASE_GRACE
        while time.monotonic() < grace:
            # Peek only: acse.is_release_requested() would consume the request.
            if isinstance(assoc.dul.peek_next_pdu(), (A_RELEASE, A_ABORT, A_P_ABORT)):
                return False
            if not assoc.is_established:
                return False
            time.sleep(0.01)
        assoc.dimse_timeout = min(assoc.dimse_timeout or _REPORT_TIMEOUT, _REPORT_TIMEOUT)
        rsp, _ = assoc.send_n_event_report(info, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)
        return "Status" in rsp
    finally:
        checkpoint.set()


def _send_on_new(gateway: Gateway, aet: str, info: Dataset, event_type: int) -> None:
    modality = gateway.modalities.find(aet)
    if modality is None:
        log.error("storage commitment: %r is not a known modality; cannot report", aet)
        return
    settings = gateway.services.settings
    ae = AE(ae_title=settings.dimse_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.dimse_timeout
    ae.add_requested_context(PUSH_MODEL, UNCOMPRESSED)
    role = build_role(PUSH_MODEL, scu_role=False, scp_role=True)
    assoc = ae.associate(
        modality.host, modality.port, ae_title=aet, ext_neg=[role], evt_handlers=NO_DELAY
    )
    if not assoc.is_established:
        log.error("storage commitment: cannot associate with %s to report", aet)
        return
    try:
        rsp, _ = assoc.send_n_event_report(info, event_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)
        if int(rsp.get("Status", 0xFFFF)) != 0:
            log.warning("storage commitment: %s answered the report with %s", aet, rsp)
    finally:
        if assoc.is_established:
            assoc.release()
