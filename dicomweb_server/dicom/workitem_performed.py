"""What is recorded as performed on a workitem: merged reports and output references.

Pure functions over the DICOM JSON of a workitem (PS3.4 Table CC.2.5-3, Unified
Procedure Step Performed Procedure Information and Progress Information modules).
"""

from __future__ import annotations

import copy
from typing import Any

from dicomweb_server.dicom import workitem as w


def merge_performed(dataset: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``dataset`` with what a performer reports (an MPPS N-SET, say) merged in: top-level
    attributes replaced, except the identity, state and lock; the first item of the
    Performed Procedure and Progress Information sequences merged into the stored one,
    so outputs recorded earlier are kept."""
    out = copy.deepcopy(dataset)
    for key, value in extra.items():
        if key in w.UPDATE_REFUSED:
            continue
        if key in (w.PERFORMED_PROCEDURE_SEQUENCE, w.PROGRESS_INFORMATION_SEQUENCE):
            new_items = w.items(extra, key)
            old_items = w.items(out, key)
            if new_items:
                merged = dict(old_items[0]) if old_items else {}
                merged.update(copy.deepcopy(new_items[0]))
                out[key] = w.element("SQ", w.sort_keys(merged))
            continue
        out[key] = copy.deepcopy(value)
    return w.sort_keys(out)


def with_output(
    dataset: dict[str, Any], study: str, series: str, sop_class: str, sop_instance: str
) -> dict[str, Any] | None:
    """``dataset`` with an instance added to Unified Procedure Step Performed Procedure
    Sequence > Output Information Sequence (PS3.4 Table CC.2.5-3; one item per series,
    as the Referenced Instances and Access Macro lists them); None if already there."""
    out = copy.deepcopy(dataset)
    performed = w.items(out, w.PERFORMED_PROCEDURE_SEQUENCE)
    item = performed[0] if performed else {}
    outputs = w.items(item, w.OUTPUT_INFORMATION_SEQUENCE)
    reference = {
        w.REFERENCED_SOP_CLASS_UID: w.element("UI", sop_class),
        w.REFERENCED_SOP_INSTANCE_UID: w.element("UI", sop_instance),
    }
    target = None
    for output in outputs:
        for ref in w.items(output, w.REFERENCED_SOP_SEQUENCE):
            if w.text(ref, w.REFERENCED_SOP_INSTANCE_UID) == sop_instance:
                return None
        if (
            w.text(output, w.STUDY_INSTANCE_UID) == study
            and w.text(output, w.SERIES_INSTANCE_UID) == series
        ):
            target = output
    if target is None:
        target = {
            w.STUDY_INSTANCE_UID: w.element("UI", study),
            w.SERIES_INSTANCE_UID: w.element("UI", series),
            w.TYPE_OF_INSTANCES: w.element("CS", "DICOM"),
            w.REFERENCED_SOP_SEQUENCE: w.element("SQ"),
        }
        outputs.append(target)
    refs = w.items(target, w.REFERENCED_SOP_SEQUENCE)
    target[w.REFERENCED_SOP_SEQUENCE] = w.element("SQ", *refs, reference)
    item[w.OUTPUT_INFORMATION_SEQUENCE] = w.element("SQ", *[w.sort_keys(o) for o in outputs])
    out[w.PERFORMED_PROCEDURE_SEQUENCE] = w.element("SQ", w.sort_keys(item))
    return w.sort_keys(out)
