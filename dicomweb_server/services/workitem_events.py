"""UPS events (PS3.4 CC.2.4): what the workitem service emits and who takes it.

The workitem service publishes one ``WorkitemEvent`` per state change, cancellation
request, assignment or progress update; the publisher delivers it to subscribers
(possibly connected to another server process). Publishing never fails the change
that caused it: the change is committed first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# Event Type ID (0000,1002) values for UPS N-EVENT-REPORTs, PS3.4 Table CC.2.4-1.
UPS_STATE_REPORT = 1
UPS_CANCEL_REQUESTED = 2
UPS_PROGRESS_REPORT = 3
SCP_STATUS_CHANGE = 4
UPS_ASSIGNED = 5


@dataclass(frozen=True)
class WorkitemEvent:
    workitem_uid: str
    event_type: int
    # The Event Information attributes as DICOM JSON (e.g. ProcedureStepState 00741000
    # and InputReadinessState 00404041 for a state report).
    info: dict[str, Any] = field(default_factory=dict)


class EventPublisher(Protocol):
    def publish(self, event: WorkitemEvent) -> None: ...


class NoEvents:
    """The publisher until subscriptions are wired: events go nowhere."""

    def publish(self, event: WorkitemEvent) -> None:
        return None
