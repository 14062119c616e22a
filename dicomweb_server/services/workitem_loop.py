"""The order-to-image loop: instances that arrive for an order are linked to its workitem.

Called by the store path after a batch's index commit (STOW-RS, C-STORE and import all
store through ``StoreService.store_batch``). An instance belongs to an order by its
Accession Number, or by its Study Instance UID when it has no Accession Number (a
modality that took both from the worklist copies both; a technician who typed the
number by hand typed the Accession Number). The link is the instance's reference in
the workitem's Performed Procedure Sequence > Output Information Sequence (PS3.4
Table CC.2.5-3), visible through UPS-RS retrieve.

Cost: one indexed workitem lookup per distinct key of a batch (a STOW request or a
C-STORE is nearly always one study: one lookup), nothing more when no workitem
matches, and nothing at all when ``worklist_link_on_store`` is off. Trouble here
never fails a store: the instances are already committed; it is logged.

Completion (``worklist_complete_on_store``): "never" leaves it to the performer (MPPS
N-SET, UPS-RS change state); "first-instance" completes a SCHEDULED workitem when its
first instance arrives (the archive claims it and finishes it, PS3.4 CC.2.5.1.3.1
requirements filled by the workitem service). A workitem IN PROGRESS has a performer
who will complete it and is left to it. Instances that arrive later are still linked
to the completed workitem (so the link names the whole study).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dicomweb_server.config import Settings
from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.ingest import InstanceRecord
from dicomweb_server.dicom.matching import STUDY_INSTANCE_UID, Condition, Kind, QueryRequest
from dicomweb_server.dicom.workitem import Workitem, request_value
from dicomweb_server.errors import Conflict, NotFound
from dicomweb_server.services.workitems import (
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    WorkitemService,
)
from dicomweb_server.storage.interfaces import IndexStore

log = logging.getLogger(__name__)

# Workitems that still take outputs: a CANCELED order's images stay unlinked.
LINKABLE = (SCHEDULED, IN_PROGRESS, COMPLETED)
ACCESSION_NUMBER = 0x00080050
ACCESSION_NUMBER_TAG = "00080050"
STUDY_UID_TAG = "0020000D"
# Values per IN list of one lookup.
_CHUNK = 500
# An accession number names one order; more studies than this under it is a data error.
_MAX_STUDIES = 20


class WorkitemLoop:
    def __init__(
        self, workitems: WorkitemService, settings: Settings, index: IndexStore | None = None
    ) -> None:
        self.workitems = workitems
        self.complete_on_store = settings.worklist_complete_on_store
        self.index = index  # only ``link_existing`` needs it

    def stored(self, records: Sequence[InstanceRecord]) -> None:
        """Link newly stored instances to their workitems; never raises."""
        try:
            self._link(records)
        except Exception:
            log.exception("linking %d stored instance(s) to workitems failed", len(records))

    def _link(self, records: Sequence[InstanceRecord]) -> None:
        groups: dict[tuple[str, str], list[InstanceRecord]] = {}
        for rec in records:
            accession = (rec.study.get("accession_number") or "").strip()
            key = ("accession", accession) if accession else ("study", rec.study_uid)
            groups.setdefault(key, []).append(rec)
        found = self._linkable(list(groups))
        for key, recs in groups.items():
            items = found.get(key, [])
            for item in items:
                added = self.workitems.add_outputs(
                    item.uid,
                    [
                        (r.study_uid, r.series_uid, r.sop_class_uid, r.sop_instance_uid)
                        for r in recs
                    ],
                )
                if added:
                    log.info(
                        "linked %d instance(s) of study %s to workitem %s",
                        added,
                        recs[0].study_uid,
                        item.uid,
                    )
                if self.complete_on_store == "first-instance" and item.state == SCHEDULED:
                    self._complete(item.uid)

    def _linkable(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[Workitem]]:
        """The open workitems of each (kind, value) key, by scheduled start: one lookup
        per kind for the whole batch, not one per study."""
        found: dict[tuple[str, str], list[Workitem]] = {}
        for kind, tag in (("accession", ACCESSION_NUMBER_TAG), ("study", STUDY_UID_TAG)):
            values = [value for k, value in keys if k == kind]
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                items = self.workitems.find(
                    states=LINKABLE,
                    outputs=False,
                    accession_numbers=chunk if kind == "accession" else None,
                    study_uids=chunk if kind == "study" else None,
                )
                for item in items:
                    found.setdefault((kind, request_value(item.dataset, tag) or ""), []).append(
                        item
                    )
        return found

    def link_existing(self, uid: str) -> int:
        """Link the instances stored before their order arrived (an emergency: the
        images came first, with the number typed by hand); returns how many were added.
        The same rules as on store: by Accession Number, else Study Instance UID."""
        assert self.index is not None, "link_existing needs the index"
        item = self.workitems.get(uid)
        accession = request_value(item.dataset, ACCESSION_NUMBER_TAG)
        study = request_value(item.dataset, STUDY_UID_TAG)
        if accession:
            condition = Condition(ACCESSION_NUMBER, Kind.SINGLE, (accession,))
        elif study:
            condition = Condition(STUDY_INSTANCE_UID, Kind.SINGLE, (study,))
        else:
            return 0
        query = QueryRequest(level=Level.STUDY, conditions=[condition], limit=_MAX_STUDIES)
        added = 0
        for row in self.index.search(query).rows:
            added += self.workitems.add_outputs(
                uid,
                [
                    (i.study_uid, i.series_uid, i.sop_class_uid, i.sop_instance_uid)
                    for i in self.index.instances(str(row["study_uid"]))
                ],
            )
        if added:
            log.info("linked %d instance(s) stored before its order to workitem %s", added, uid)
            if self.complete_on_store == "first-instance" and item.state == SCHEDULED:
                self._complete(uid)
        return added

    def _complete(self, uid: str) -> None:
        try:
            self.workitems.claim(uid)
            self.workitems.finish(uid, COMPLETED)
        except (Conflict, NotFound) as exc:
            # Claimed, completed or cancelled by someone else meanwhile: theirs wins.
            log.info("workitem %s not completed on store: %s", uid, exc.message)
            return
        log.info("workitem %s completed: its images arrived", uid)
