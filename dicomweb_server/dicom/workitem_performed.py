"""What is recorded as performed on a workitem: merged reports and output references.

Pure functions over the DICOM JSON of a workitem (PS3.4 Table CC.2.5-3, Unified
Procedure Step Performed Procedure Information and Progress Information modules).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
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


# (Study, Series, SOP Class, SOP Instance) UIDs of one stored instance.
OutputRef = tuple[str, str, str, str]


def with_output(
    dataset: dict[str, Any], study: str, series: str, sop_class: str, sop_instance: str
) -> dict[str, Any] | None:
    """``dataset`` with an instance added to Unified Procedure Step Performed Procedure
    Sequence > Output Information Sequence (PS3.4 Table CC.2.5-3; one item per series,
    as the Referenced Instances and Access Macro lists them); None if already there."""
    out, added = with_outputs(dataset, [(study, series, sop_class, sop_instance)])
    return out if added else None


def with_outputs(dataset: dict[str, Any], refs: Sequence[OutputRef]) -> tuple[dict[str, Any], int]:
    """``dataset`` with every instance of ``refs`` not yet referenced added (see
    ``with_output``), and how many were added; ``dataset`` itself is left as it was."""
    out = copy.deepcopy(dataset)
    added = merge_outputs(out, refs)
    return (out, added) if added else (dataset, 0)


def merge_outputs(out: dict[str, Any], refs: Sequence[OutputRef]) -> int:
    """Add to ``out`` in place the instances of ``refs`` it does not reference yet; how
    many. One pass however many (a store that keeps outputs apart merges them on read)."""
    performed = w.items(out, w.PERFORMED_PROCEDURE_SEQUENCE)
    item = performed[0] if performed else {}
    outputs = w.items(item, w.OUTPUT_INFORMATION_SEQUENCE)
    known: set[str] = set()
    by_series: dict[tuple[str, str], dict[str, Any]] = {}
    for output in outputs:
        for ref in w.items(output, w.REFERENCED_SOP_SEQUENCE):
            known.add(w.text(ref, w.REFERENCED_SOP_INSTANCE_UID) or "")
        key = (
            w.text(output, w.STUDY_INSTANCE_UID) or "",
            w.text(output, w.SERIES_INSTANCE_UID) or "",
        )
        by_series[key] = output  # the last item of a series takes new references
    added: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for study, series, sop_class, sop_instance in refs:
        if sop_instance in known:
            continue
        known.add(sop_instance)
        if (study, series) not in by_series:
            target = {
                w.STUDY_INSTANCE_UID: w.element("UI", study),
                w.SERIES_INSTANCE_UID: w.element("UI", series),
                w.TYPE_OF_INSTANCES: w.element("CS", "DICOM"),
                w.REFERENCED_SOP_SEQUENCE: w.element("SQ"),
            }
            outputs.append(target)
            by_series[(study, series)] = target
        added.setdefault((study, series), []).append(
            {
                w.REFERENCED_SOP_CLASS_UID: w.element("UI", sop_class),
                w.REFERENCED_SOP_INSTANCE_UID: w.element("UI", sop_instance),
            }
        )
    if not added:
        return 0
    for key, new_refs in added.items():
        target = by_series[key]
        refs_now = w.items(target, w.REFERENCED_SOP_SEQUENCE)
        target[w.REFERENCED_SOP_SEQUENCE] = w.element("SQ", *refs_now, *new_refs)
    item[w.OUTPUT_INFORMATION_SEQUENCE] = w.element("SQ", *[w.sort_keys(o) for o in outputs])
    out[w.PERFORMED_PROCEDURE_SEQUENCE] = w.element("SQ", w.sort_keys(item))
    ordered = w.sort_keys(out)
    out.clear()
    out.update(ordered)
    return sum(len(r) for r in added.values())
