"""Modality Worklist Information Model - FIND SCP (PS3.4 K.4.1.3, K.6.1) over workitems.

The worklist is the SCHEDULED workitems (and IN PROGRESS ones when the identifier asks
for STARTED steps), each seen as its worklist entry (``dicom/mwl.py``). The index
prefilters on an exact Accession Number or Patient ID; the other keys are matched on the
entries (worklists are small). Each match is one pending response with the requested
keys only; C-CANCEL ends the responses with Cancel (FE00) (PS3.7 9.3.2.3). A bad
identifier gets A900, anything unexpected C000, and the association lives on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicomweb_server.dicom import mwl
from dicomweb_server.dimse import audit as dimse_audit
from dicomweb_server.dimse import status
from dicomweb_server.dimse.handlers import Gateway, _permitted, find_responses
from dicomweb_server.services.workitems import WorkitemService

log = logging.getLogger(__name__)

# Workitems read for one query at most; more are left out (and logged).
MAX_ENTRIES = 10_000


def entries(
    workitems: WorkitemService, query: mwl.Query, match_empty: bool
) -> Iterator[dict[str, Any]]:
    """The worklist entries matching the query, in the order the service gives them."""
    # With match_empty, entries without a value match too: no index prefilter then.
    found = workitems.find(
        states=mwl.states(query),
        accession_number=None if match_empty else mwl.exact(query, mwl.ACCESSION_NUMBER),
        patient_id=None if match_empty else mwl.exact(query, mwl.PATIENT_ID),
        limit=MAX_ENTRIES,
    )
    if len(found) >= MAX_ENTRIES:
        log.warning("MWL C-FIND: more than %d workitems; the rest are not answered", MAX_ENTRIES)
    for item in found:
        entry = mwl.entry(item.uid, item.state, item.dataset)
        if mwl.matches(query, entry, match_empty):
            yield entry


def _charset(ds: Dataset, asked: list[str]) -> str | list[str] | None:
    """Answer in the requester's character set when the values fit, else in UTF-8
    (PS3.4 C.4.1.1.3.1), as the Query/Retrieve SCP does."""
    texts = mwl.text_values(ds)
    if all(t.isascii() for t in texts):
        return asked[0] if len(asked) == 1 else (asked or None)
    if asked == ["ISO_IR 100"] and all(_latin1(t) for t in texts):
        return "ISO_IR 100"
    return "ISO_IR 192"


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def response(query: mwl.Query, entry: dict[str, Any]) -> Dataset:
    ds = mwl.render(query, entry)
    charset = _charset(ds, query.charset)
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def _flat(identifier: Dataset | None) -> Dataset | None:
    """The identifier with the scheduled step's keys lifted to the top, for the audit
    record (which lists top-level keys): a worklist query is mostly made of those."""
    if identifier is None:
        return None
    flat = Dataset()
    for elem in identifier:
        if elem.VR == "SQ":
            for item in elem.value or []:
                for inner in item:
                    if inner.VR != "SQ":
                        flat.add(inner)
        else:
            flat.add(elem)
    return flat


def on_find(event: Event, gateway: Gateway) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND on the Modality Worklist Information Model (PS3.4 K.4.1.3)."""
    if not _permitted(event, gateway, "find"):
        yield status.with_comment(status.NOT_AUTHORIZED, "this AE may not query"), None
        return
    services = gateway.services

    def answers() -> Iterator[Dataset]:
        dimse_audit.queried(services, event, _flat(event.identifier), "MWL C-FIND")
        query = mwl.parse(event.identifier)
        for entry in entries(services.workitems, query, services.settings.qido_match_empty):
            yield response(query, entry)

    yield from find_responses(event, answers(), "MWL C-FIND")
