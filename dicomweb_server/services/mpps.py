"""Modality Performed Procedure Step instances (PS3.4 F.7) and their workitems.

An MPPS instance is kept in the index (``MppsStore``, schema v7) as its DICOM JSON,
status, linked workitems and creator: the N-SET rules need the step's own status and
attributes, and an unscheduled step has no workitem to live in. In the index, because
the N-CREATE and the N-SET of one step may reach two `serve` processes (hosts behind one
address). Each write is conditional on the version read, so of two concurrent N-SETs of
a step one applies and the other is refused (0110), never silently lost.

An N-CREATE is linked to the workitems its Scheduled Step Attributes Sequence names
(Accession Number, Study Instance UID, Scheduled Procedure Step ID, as the worklist
gave them) and claims those still SCHEDULED; an N-SET to COMPLETED records the
reported objects on each workitem and finishes it, DISCONTINUED cancels it. The step is
acknowledged once the index committed it; what then happens to the workitems (already
finished by someone else, say) is reported in the outcome's notes, never a failure.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomweb_server.dicom import mpps, mwl
from dicomweb_server.dicom.mpps import Refusal, StepReference
from dicomweb_server.dicom.uids import check_uid, is_valid_uid
from dicomweb_server.errors import DicomWebError, InvalidRequest
from dicomweb_server.services.workitems import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    Workitem,
    WorkitemService,
)
from dicomweb_server.storage.interfaces import MppsStore

log = logging.getLogger(__name__)

ACTIVE = (SCHEDULED, IN_PROGRESS)
# Workitems looked through when a step names only a derived step ID or study UID.
SCAN_LIMIT = 5000
INVALID_OBJECT_INSTANCE = 0x0117  # PS3.7 C.5: the SOP Instance UID is not a UID


@dataclass
class MppsRecord:
    uid: str
    status: str
    dataset: dict[str, Any]
    workitems: list[str] = field(default_factory=list)
    creator: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


@dataclass
class MppsOutcome:
    refusal: Refusal | None = None
    record: MppsRecord | None = None
    notes: list[str] = field(default_factory=list)


def _encoded(record: MppsRecord) -> bytes:
    return json.dumps(asdict(record), ensure_ascii=False).encode()


class MppsService:
    def __init__(self, workitems: WorkitemService, store: MppsStore) -> None:
        self.workitems = workitems
        self.store = store

    def get(self, uid: str) -> MppsRecord | None:
        found = self._read(uid)
        return None if found is None else found[0]

    def _read(self, uid: str) -> tuple[MppsRecord, int] | None:
        """The step and its version; None for an unknown or malformed UID."""
        found = self.store.get_step(uid) if is_valid_uid(uid) else None
        return None if found is None else (MppsRecord(**json.loads(found[0])), found[1])

    def create(self, uid: str | None, ds: Dataset | None, creator: str) -> MppsOutcome:
        """N-CREATE (PS3.4 F.7.2.1.3): record the step, link and claim its workitems."""
        refusal = mpps.check_create(ds)
        if refusal is not None or ds is None:
            return MppsOutcome(refusal)
        try:
            uid = check_uid(uid, "Affected SOP Instance UID") if uid else str(generate_uid())
        except InvalidRequest as exc:
            return MppsOutcome(Refusal(INVALID_OBJECT_INSTANCE, exc.message))
        if self.store.get_step(uid) is not None:
            return MppsOutcome(Refusal(mpps.DUPLICATE_SOP_INSTANCE, "the step exists"))
        try:
            data = mpps.json_of(ds)
        except (ValueError, TypeError) as exc:
            return MppsOutcome(Refusal(mpps.INVALID_ATTRIBUTE_VALUE, str(exc)))
        links = self._link(mpps.references(ds))
        linked = list(links)
        record = MppsRecord(uid, mpps.IN_PROGRESS, data, linked, creator)
        try:
            if not self.store.add_step(uid, record.status, _encoded(record)):
                return MppsOutcome(Refusal(mpps.DUPLICATE_SOP_INSTANCE, "the step exists"))
        except (OSError, DicomWebError) as exc:
            return MppsOutcome(self._not_recorded(uid, exc))
        outcome = MppsOutcome(record=record)
        if not linked:
            outcome.notes.append("unscheduled: no workitem matches")
        for wuid, study in links.items():
            outcome.notes.append(self._claim(wuid, study))
        return outcome

    def set(self, uid: str, changes: Dataset | None) -> MppsOutcome:
        """N-SET (PS3.4 F.7.2.2.3); a final status finishes the linked workitems."""
        found = self._read(uid)
        if found is None:
            return MppsOutcome(Refusal(mpps.NO_SUCH_OBJECT_INSTANCE, "no such step"))
        record, version = found
        refusal = mpps.check_set(record.status, changes)
        if refusal is not None or changes is None:
            return MppsOutcome(refusal, record)
        try:
            merged = mpps.merged(record.dataset, changes)
            merged_ds = Dataset.from_json(merged)
        except (ValueError, TypeError) as exc:
            return MppsOutcome(Refusal(mpps.INVALID_ATTRIBUTE_VALUE, str(exc)), record)
        status = mpps.status_of(merged_ds)
        if status in mpps.FINAL:
            refusal = mpps.check_final(merged_ds)
            if refusal is not None:
                return MppsOutcome(refusal, record)
        changed = MppsRecord(
            record.uid, status, merged, record.workitems, record.creator, record.created
        )
        try:
            if not self.store.replace_step(uid, status, _encoded(changed), version):
                # Another N-SET of this step won the race: this one applies to nothing.
                return MppsOutcome(
                    Refusal(mpps.PROCESSING_FAILURE, "the step changed meanwhile; send again"),
                    record,
                )
        except (OSError, DicomWebError) as exc:
            return MppsOutcome(self._not_recorded(uid, exc), record)
        record = changed
        outcome = MppsOutcome(record=record)
        if status in mpps.FINAL:
            for wuid in record.workitems:
                outcome.notes.append(self._finish(wuid, status, merged_ds))
        return outcome

    @staticmethod
    def _not_recorded(uid: str, exc: Exception) -> Refusal:
        """A full disk or an unreachable index refuses the request (0110) rather than
        acknowledging what was not kept."""
        reason = exc.message if isinstance(exc, DicomWebError) else str(exc)
        log.error("MPPS: cannot record %s: %s", uid, reason)
        return Refusal(mpps.PROCESSING_FAILURE, f"cannot record the step: {reason}")

    # -- workitems -------------------------------------------------------------------

    def _link(self, refs: list[StepReference]) -> dict[str, str]:
        """Workitem UID -> the Study Instance UID the modality uses for it."""
        found: dict[str, str] = {}
        for ref in refs:
            for item in self._candidates(ref):
                found.setdefault(item.uid, ref.study_uid)
        return found

    def _candidates(self, ref: StepReference) -> list[Workitem]:
        """Workitems one scheduled step item names: by Accession Number, else by Study
        Instance UID; narrowed by the step ID (and study) when several share them. A
        derived step ID or study UID (dicom/mwl.py) is found by looking through the
        active workitems."""
        items: list[Workitem] = []
        if ref.accession_number:
            items = self.workitems.find(states=ACTIVE, accession_number=ref.accession_number)
        elif ref.study_uid:
            items = self.workitems.find(states=ACTIVE, study_uid=ref.study_uid)
        if not items and not ref.accession_number and (ref.step_id or ref.study_uid):
            items = [
                w
                for w in self.workitems.find(states=ACTIVE, limit=SCAN_LIMIT)
                if (ref.step_id and mwl.step_id_of(w.uid, w.dataset) == ref.step_id)
                or (ref.study_uid and mwl.study_uid_of(w.uid, w.dataset) == ref.study_uid)
            ]
        if ref.step_id and len(items) > 1:
            same = [w for w in items if mwl.step_id_of(w.uid, w.dataset) == ref.step_id]
            items = same or items
        if ref.study_uid and len(items) > 1:
            same = [w for w in items if mwl.study_uid_of(w.uid, w.dataset) == ref.study_uid]
            items = same or items
        return items

    def _claim(self, uid: str, study: str) -> str:
        """Claim a SCHEDULED workitem; an order without a Study Instance UID takes the
        one the modality uses (the worklist's derived one, usually), so the images that
        follow can be linked to it by study as well as by Accession Number."""
        try:
            item = self.workitems.get(uid)
            if item.state != SCHEDULED:
                return f"{uid}: {item.state}, not claimed"
            transaction = self.workitems.claim(uid)
        except DicomWebError as exc:
            log.warning("MPPS: cannot claim workitem %s: %s", uid, exc.message)
            return f"{uid}: not claimed ({exc.message})"
        if study and mwl.order_study_uid(item.dataset) is None:
            try:
                self.workitems.update(
                    uid, {"0020000D": {"vr": "UI", "Value": [study]}}, transaction
                )
            except DicomWebError as exc:
                log.warning("MPPS: cannot set the study of workitem %s: %s", uid, exc.message)
        return f"{uid}: IN PROGRESS"

    def _finish(self, uid: str, status: str, ds: Dataset) -> str:
        state = COMPLETED if status == mpps.COMPLETED else CANCELED
        try:
            item = self.workitems.get(uid)
            if item.state == SCHEDULED:
                self.workitems.claim(uid)
            elif item.state != IN_PROGRESS:
                return f"{uid}: already {item.state}"
            if state == COMPLETED:
                self.workitems.add_outputs(uid, list(mpps.outputs(ds)))
            self.workitems.finish(uid, state, performed=mpps.performed(ds))
            return f"{uid}: {state}"
        except DicomWebError as exc:
            log.warning("MPPS: cannot finish workitem %s: %s", uid, exc.message)
            return f"{uid}: not {state} ({exc.message})"
