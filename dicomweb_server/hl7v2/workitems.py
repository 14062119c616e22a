"""Apply mapped HL7 orders to the workitems: create, cancel, change.

- NW: create the SCHEDULED workitem under the order's stable UID. A resent order (its
  ACK was lost) finds its workitem still open and is acknowledged again without a
  second one; an order whose workitem already ended (CANCELED, COMPLETED) is refused
  (Duplicate key identifier): reusing an accession number is not a new order.
- CA / DC / OC / OD: every open workitem of the accession number is cancelled
  (SCHEDULED -> CANCELED; IN PROGRESS -> a cancellation request to its performer,
  PS3.4 CC.2.4). A second cancel is acknowledged; an unknown accession number or a
  completed order is refused.
- XO / XX: a SCHEDULED workitem takes the new patient and scheduling attributes; one
  IN PROGRESS is refused (Application record locked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dicomweb_server.dicom.workitem import UPDATE_REFUSED
from dicomweb_server.errors import Conflict, InvalidRequest, NotFound
from dicomweb_server.hl7v2.codes import (
    APPLICATION_INTERNAL_ERROR,
    APPLICATION_RECORD_LOCKED,
    CANCEL,
    DATA_TYPE_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
    NEW,
    UNKNOWN_KEY_IDENTIFIER,
    OrderRejected,
)
from dicomweb_server.hl7v2.orders import Order, OrderMessage
from dicomweb_server.services.workitems import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    WorkitemService,
)

ALL_STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
# What an order change does not change: what UPS N-SET may not (PS3.4 Table CC.2.5-3,
# e.g. the state, the Issuer of Patient ID) and the request (its Study Instance UID may
# already be on images).
_NOT_CHANGED = UPDATE_REFUSED | {"0040A370"}


class WorkitemOrders:
    def __init__(
        self, workitems: WorkitemService, on_created: Callable[[str], object] | None = None
    ) -> None:
        self.workitems = workitems
        # Told the UID of each workitem created (to link images that came first).
        self.on_created = on_created

    def apply(self, message: OrderMessage) -> str:
        """Apply each order in turn; the text of MSA-3, or OrderRejected."""
        done: list[str] = []
        for order in message.orders:
            try:
                if order.action == NEW:
                    done.append(self._create(order))
                elif order.action == CANCEL:
                    done.append(self._cancel(order))
                else:
                    done.append(self._change(order))
            except InvalidRequest as exc:
                raise OrderRejected(
                    DATA_TYPE_ERROR, f"order {order.accession}: {exc.message}"
                ) from exc
        return "; ".join(done)

    def _create(self, order: Order) -> str:
        try:
            self.workitems.create(order.dataset, uid=order.workitem_uid)
        except Conflict:
            existing = self.workitems.get(order.workitem_uid)
            if existing.state in (SCHEDULED, IN_PROGRESS):
                return f"order {order.accession} was already scheduled"
            raise OrderRejected(
                DUPLICATE_KEY_IDENTIFIER,
                f"order {order.accession} exists and is {existing.state}; "
                "a new order needs a new accession number",
                segment="OBR",
                field=18,
            ) from None
        if self.on_created is not None:
            self.on_created(order.workitem_uid)
        return f"order {order.accession} scheduled"

    def _cancel(self, order: Order) -> str:
        items = self.workitems.find(states=ALL_STATES, accession_number=order.accession)
        if not items:
            raise OrderRejected(
                UNKNOWN_KEY_IDENTIFIER,
                f"no order with accession number {order.accession}",
                segment="OBR",
                field=18,
            )
        open_items = [i for i in items if i.state in (SCHEDULED, IN_PROGRESS)]
        if not open_items:
            if any(i.state == CANCELED for i in items):
                return f"order {order.accession} was already cancelled"
            raise OrderRejected(
                APPLICATION_RECORD_LOCKED,
                f"order {order.accession} is already COMPLETED and cannot be cancelled",
            )
        requested = 0
        for item in open_items:
            try:
                self.workitems.cancel(item.uid, f"order {order.control} from the HIS")
            except (Conflict, NotFound):
                continue  # ended meanwhile
            requested += item.state == IN_PROGRESS
        if requested:
            return f"order {order.accession}: cancellation requested from its performer"
        return f"order {order.accession} cancelled"

    def _change(self, order: Order) -> str:
        items = self.workitems.find(states=ALL_STATES, accession_number=order.accession)
        scheduled = [i for i in items if i.state == SCHEDULED]
        if not scheduled:
            if items:
                raise OrderRejected(
                    APPLICATION_RECORD_LOCKED,
                    f"order {order.accession} is {items[0].state} and can no longer change",
                )
            raise OrderRejected(
                UNKNOWN_KEY_IDENTIFIER,
                f"no order with accession number {order.accession}",
                segment="OBR",
                field=18,
            )
        changes: dict[str, Any] = {k: v for k, v in order.dataset.items() if k not in _NOT_CHANGED}
        for item in scheduled:
            try:
                self.workitems.update(item.uid, changes, None)
            except Conflict as exc:
                raise OrderRejected(APPLICATION_INTERNAL_ERROR, exc.message) from exc
        return f"order {order.accession} changed"
