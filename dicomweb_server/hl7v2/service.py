"""Start and stop the HL7 order intake: services, the order applier, the MLLP listener;
each message leaves an audit record, and so does each refused connection."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dicomweb_server.bootstrap import Services, build_services
from dicomweb_server.config import Settings
from dicomweb_server.hl7v2.codes import NEW
from dicomweb_server.hl7v2.handler import Handled, handle_message
from dicomweb_server.hl7v2.listener import MllpListener
from dicomweb_server.hl7v2.workitems import WorkitemOrders
from dicomweb_server.services import audit
from dicomweb_server.services.audit import AuditEvent
from dicomweb_server.services.workitem_loop import WorkitemLoop

log = logging.getLogger(__name__)

# PS3.15 A.5.3 Order Record (EventID 110109, DCM): an order created, changed or cancelled.
ORDER_RECORD = ("110109", "Order Record")
_OUTCOMES = {"AA": audit.OUTCOME_SUCCESS, "AE": audit.OUTCOME_MINOR_FAILURE}


@dataclass
class HL7Service:
    services: Services
    listener: MllpListener
    # Links images stored before their order, after the order's ACK has gone: a large
    # study takes a while and the HIS waits for its ACK.
    linker: ThreadPoolExecutor

    @property
    def port(self) -> int:
        return self.listener.port

    def stop(self) -> None:
        self.listener.stop()
        self.linker.shutdown(wait=True)
        self.services.close()


def audit_event(handled: Handled, source_ip: str) -> AuditEvent:
    """The Order Record for one message: the sending application is the user; C when
    it created orders, U when it cancelled or changed them, E when it was refused."""
    header, message = handled.header, handled.message
    actions = {o.action for o in message.orders} if message else set()
    action = "E" if handled.ack_code != "AA" else ("C" if actions == {NEW} else "U")
    sender = "@".join(p for p in (header.sending_application, header.sending_facility) if p)
    return AuditEvent(
        ORDER_RECORD,
        action,
        _OUTCOMES.get(handled.ack_code, audit.OUTCOME_SERIOUS_FAILURE),
        user=sender or "unknown",
        user_kind="hl7-application",
        source_ip=source_ip or None,
        method=message.message_type if message else "HL7",
        patient_ids=[message.patient_id] if message and message.patient_id else [],
        detail=f"{header.control_id}: {handled.detail}"[:500],
    )


def start(settings: Settings) -> HL7Service:
    """Listen on (host, hl7_port); raises OSError when the port cannot be bound."""
    services = build_services(settings)
    linker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-link")
    on_created = None
    if settings.worklist_link_on_store:
        loop = WorkitemLoop(services.workitems, settings, services.index)

        def link(uid: str) -> None:
            try:
                loop.link_existing(uid)
            except Exception:
                log.exception("linking stored images to the new workitem %s failed", uid)

        def on_created(uid: str) -> None:
            linker.submit(link, uid)

    orders = WorkitemOrders(services.workitems, on_created)

    def handle(payload: bytes, source_ip: str) -> bytes:
        handled = handle_message(payload, orders.apply)
        # Recorded before the ACK leaves: no sender sees an outcome the trail lacks.
        services.audit.record(audit_event(handled, source_ip))
        return handled.reply

    def refused(source_ip: str, why: str) -> None:
        services.audit.record(
            AuditEvent(
                audit.SECURITY_ALERT,
                "E",
                audit.OUTCOME_MINOR_FAILURE,
                user="unknown",
                user_kind="hl7-application",
                source_ip=source_ip or None,
                method="HL7",
                event_type=audit.USE_OF_RESTRICTED_FUNCTION,
                detail=f"MLLP connection refused: {why}",
            )
        )

    listener = MllpListener(settings, handle, refused)
    try:
        listener.start()
    except BaseException:
        linker.shutdown()
        services.close()
        raise
    return HL7Service(services, listener, linker)
