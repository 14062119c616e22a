"""HL7 v2 imaging orders (ORM^O01, OMI^O23) to workitem datasets (DICOM JSON).

Parsing is python-hl7's; this module decides what the fields mean. The mapping follows
the IHE Radiology Scheduled Workflow (RAD-4 "Procedure Scheduled", RAD TF-2 4.4 and
its OMI^O23 form in RAD TF-2 4.4 / Appendix B) as far as it reaches, and the workitem
shape agreed for the archive (a UPS dataset, PS3.4 Table CC.2.5-3):

====================================  ==================================  ==========================
workitem attribute                    OMI^O23 (v2.5)                      ORM^O01 (v2.3.1)
====================================  ==================================  ==========================
PatientID / IssuerOfPatientID         PID-3.1 / PID-3.4 (first repeat)    same
PatientName                           PID-5 (XPN -> PN)                   same
PatientBirthDate / PatientSex         PID-7 (date part) / PID-8           same
AccessionNumber (in the request)      IPC-1, else OBR-18                  OBR-18, else ORC-3 / OBR-3
                                      (then ORC-3 / OBR-3, ORC-2 / OBR-2) (filler), ORC-2 / OBR-2
RequestedProcedureID                  IPC-2, else OBR-19                  OBR-19, else accession
StudyInstanceUID                      IPC-3, else ZDS-1                   ZDS-1, else generated
ScheduledProcedureStepID              IPC-4, else OBR-20                  OBR-20, else RP ID
Modality (station class code)         IPC-5.1, else OBR-24                OBR-24
Scheduled Station AE (name code)      IPC-9, name IPC-7.1                 OBR-21
ScheduledProcedureStepStartDateTime   TQ1-7, else OBR-27.4 / ORC-7.4,     OBR-27.4 / ORC-7.4,
                                      else OBR-36, else MSH-7             OBR-36, MSH-7
ScheduledProcedureStepPriority        TQ1-9 / OBR-27.6 / ORC-7.6: S, A    same
                                      -> HIGH, R -> MEDIUM (default)
ProcedureStepLabel, Requested-        OBR-4.2 (text), else OBR-4.5,       same
ProcedureDescription                  else OBR-4.1
RequestingPhysician                   ORC-12, else OBR-16 (XCN -> PN)     same
ReferringPhysicianName                PV1-8, else ORC-12                  same
====================================  ==================================  ==========================

ORC-1 order control (HL7 v2.5 Table 0119): NW (new order) creates; CA (cancel request),
DC (discontinue request), OC (order canceled) and OD (order discontinued) cancel; XO
(change request) and XX (changed as requested) update a scheduled order. Anything
else is refused with an application error naming the value.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hl7

from dicomweb_server.dicom.uids import is_valid_uid
from dicomweb_server.hl7v2.codes import (
    CANCEL,
    DATA_TYPE_ERROR,
    MODALITY_MEANINGS,
    ORDER_CONTROLS,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    SUPPORTED_TYPES,
    TABLE_VALUE_NOT_FOUND,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_VERSION_ID,
    OrderRejected,
)

_PRIORITY = {"S": "HIGH", "A": "HIGH", "T": "HIGH", "R": "MEDIUM"}
_DT_RE = re.compile(r"^(\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?)")
_TZ_RE = re.compile(r"[+-]\d{4}$")
_CS_RE = re.compile(r"^[A-Z0-9 _]{1,16}$")
# A workitem UID derived from the order identifiers: a HIS that resends an order
# (its ACK was lost) finds the same workitem instead of creating a second one.
_ORDER_NAMESPACE = uuid.UUID("6f0c1a52-7d44-4a4e-9a87-2f4cbe1c0b7e")


@dataclass(frozen=True)
class Order:
    """One requested procedure step of a message: what to do, to which workitem."""

    action: str  # NEW, CANCEL or CHANGE
    control: str  # the ORC-1 value as sent
    accession: str
    requested_procedure_id: str
    step_id: str
    workitem_uid: str
    dataset: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OrderMessage:
    control_id: str  # MSH-10, echoed in MSA-2
    message_type: str  # e.g. "OMI^O23"
    orders: list[Order]
    patient_id: str = ""  # PID-3.1, for the audit trail


@dataclass(frozen=True)
class Header:
    """What an acknowledgement needs from the MSH segment."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    trigger: str = ""
    processing_id: str = "P"
    version: str = "2.5"
    separators: str = "|^~\\&"


def decode(payload: bytes) -> tuple[str, str]:
    """HL7 text from the bytes of one MLLP block, and the encoding to answer in: UTF-8
    when it decodes, else ISO 8859-1 (the common 8-bit set of HIS systems, HL7 Table
    0211 "8859/1")."""
    encoding = "utf-8"
    try:
        text = payload.decode(encoding)
    except UnicodeDecodeError:
        encoding = "latin-1"
        text = payload.decode(encoding)
    # Segments end with CR (HL7 v2.5 2.8); files edited by hand carry LF or CRLF.
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t\ufeff")
    return text, encoding


def read_header(text: str) -> Header:
    """The MSH fields, read without the full parser so that even a message the parser
    refuses gets an acknowledgement echoing its control id (HL7 v2.5 2.9.2)."""
    if not text.startswith("MSH") or len(text) < 8:
        return Header()
    fs = text[3]
    first = text.split("\r", 1)[0]
    parts = first.split(fs)
    # parts[1] is MSH-2 (encoding characters); MSH-n is parts[n - 1] for n >= 3.

    def msh(n: int) -> str:
        return parts[n - 1] if len(parts) >= n else ""

    encoding = msh(2)
    component = encoding[0] if encoding else "^"
    return Header(
        sending_application=msh(3),
        sending_facility=msh(4),
        receiving_application=msh(5),
        receiving_facility=msh(6),
        control_id=msh(10)[:199],
        trigger=msh(9).split(component)[1] if component in msh(9) else "",
        processing_id=msh(11) or "P",
        version=msh(12).split(component)[0] or "2.5",
        separators=fs + (encoding[:4] if len(encoding) >= 4 else "^~\\&"),
    )


def _value(seg: Any, field_num: int, component: int = 1, rep: int = 1, sub: int = 1) -> str:
    try:
        value = seg.extract_field(1, field_num, rep, component, sub)
    except (IndexError, KeyError, TypeError):
        return ""
    text = str(value).strip()
    return "" if text == '""' else text  # '""' is HL7's explicit null


def _segments(message: Any) -> list[Any]:
    return [seg for seg in message if len(seg) and str(seg[0]).strip()]


def _seg_id(seg: Any) -> str:
    return str(seg[0]).strip()


def _groups(segments: list[Any]) -> Iterator[tuple[Any, list[Any]]]:
    """Each ORC with the segments after it, up to the next ORC."""
    current: tuple[Any, list[Any]] | None = None
    for seg in segments:
        if _seg_id(seg) == "ORC":
            if current is not None:
                yield current
            current = (seg, [])
        elif current is not None:
            current[1].append(seg)
    if current is not None:
        yield current


def _first(segs: list[Any], seg_id: str) -> Any | None:
    return next((s for s in segs if _seg_id(s) == seg_id), None)


def _pn(seg: Any, field_num: int, xcn: bool = False) -> str:
    """An XPN (family^given^middle^suffix^prefix) or XCN (id^family^given^middle^
    suffix^prefix) as a DICOM PN (family^given^middle^prefix^suffix, PS3.5 6.2)."""
    at = 2 if xcn else 1
    family, given, middle, suffix, prefix = (_value(seg, field_num, at + i) for i in range(5))
    parts = [family, given, middle, prefix, suffix]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)[: 64 * 5]


def _dt(value: str) -> str | None:
    """An HL7 TS/DTM as a DICOM DT (same digits, fraction at most 6, +ZZZZ offset)."""
    if not value:
        return None
    match = _DT_RE.match(value)
    if not match or len(match.group(1)) < 8:
        return None
    tz = _TZ_RE.search(value)
    return match.group(1) + (tz.group(0) if tz else "")


def _elem(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _text(vr: str, value: str) -> dict[str, Any]:
    return _elem(vr, value) if value else _elem(vr)


def _person(value: str) -> dict[str, Any]:
    return _elem("PN", {"Alphabetic": value}) if value else _elem("PN")


def _code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        "00080100": _elem("SH", value),
        "00080102": _elem("SH", scheme),
        "00080104": _elem("LO", meaning[:64]),
    }


def _check_length(value: str, limit: int, seg: str, field_num: int, what: str) -> str:
    if len(value) > limit:
        raise OrderRejected(
            DATA_TYPE_ERROR,
            f"{what} ({seg}-{field_num}) is longer than {limit} characters",
            segment=seg,
            field=field_num,
        )
    return value


def workitem_uid_for(accession: str, requested_procedure_id: str, step_id: str) -> str:
    """The workitem's SOP Instance UID for an order: stable across resent messages."""
    key = f"{accession}|{requested_procedure_id}|{step_id}"
    return f"2.25.{uuid.uuid5(_ORDER_NAMESPACE, key).int}"


def parse_message(text: str, now: datetime | None = None) -> OrderMessage:
    """The orders of one ORM^O01 or OMI^O23 message; OrderRejected says why not."""
    if not text.startswith("MSH"):
        raise OrderRejected(
            SEGMENT_SEQUENCE_ERROR, "the message must begin with an MSH segment", ack_code="AR"
        )
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises several kinds on malformed text
        raise OrderRejected(
            SEGMENT_SEQUENCE_ERROR, f"not a parsable HL7 message: {exc}", ack_code="AR"
        ) from exc
    segments = _segments(message)
    msh = segments[0]
    msg_type, trigger = _value(msh, 9, 1), _value(msh, 9, 2)
    if msg_type not in {t for t, _ in SUPPORTED_TYPES}:
        raise OrderRejected(
            UNSUPPORTED_MESSAGE_TYPE,
            f"message type {msg_type or '(empty)'} is not taken: send ORM^O01 or OMI^O23",
            ack_code="AR",
            segment="MSH",
            field=9,
        )
    if (msg_type, trigger) not in SUPPORTED_TYPES:
        raise OrderRejected(
            UNSUPPORTED_EVENT_CODE,
            f"{msg_type}^{trigger or '(empty)'} is not taken: send ORM^O01 or OMI^O23",
            ack_code="AR",
            segment="MSH",
            field=9,
        )
    version = _value(msh, 12)
    if not re.fullmatch(r"2\.\d+(\.\d+)?", version):
        raise OrderRejected(
            UNSUPPORTED_VERSION_ID,
            f"HL7 version {version or '(empty)'} is not taken: versions 2.x are",
            ack_code="AR",
            segment="MSH",
            field=12,
        )
    control_id = _value(msh, 10)
    if not control_id:
        raise OrderRejected(
            REQUIRED_FIELD_MISSING,
            "MSH-10 (message control id) is empty",
            ack_code="AR",
            segment="MSH",
            field=10,
        )
    when = now or datetime.now(UTC)
    message_time = _dt(_value(msh, 7)) or when.strftime("%Y%m%d%H%M%S")
    pid = _first(segments, "PID")
    pv1 = _first(segments, "PV1")
    groups = list(_groups(segments))
    if not groups:
        raise OrderRejected(
            REQUIRED_FIELD_MISSING, "the message has no ORC segment", segment="ORC", field=1
        )
    orders: list[Order] = []
    for seq, (orc, rest) in enumerate(groups, start=1):
        orders.extend(_orders_of(orc, seq, rest, pid, pv1, message_time))
    return OrderMessage(
        control_id=control_id,
        message_type=f"{msg_type}^{trigger}",
        orders=orders,
        patient_id=_value(pid, 3) if pid is not None else "",
    )


def _patient(pid: Any | None) -> dict[str, Any]:
    if pid is None:
        raise OrderRejected(REQUIRED_FIELD_MISSING, "the order has no PID segment", segment="PID")
    patient_id = _check_length(_value(pid, 3), 64, "PID", 3, "Patient ID")
    if not patient_id:
        raise OrderRejected(
            REQUIRED_FIELD_MISSING, "PID-3 (patient identifier) is empty", segment="PID", field=3
        )
    data: dict[str, Any] = {
        "00100010": _person(_pn(pid, 5)),
        "00100020": _elem("LO", patient_id),
    }
    issuer = _value(pid, 3, 4)
    if issuer:
        data["00100021"] = _elem("LO", issuer[:64])
    birth = _value(pid, 7)[:8]
    data["00100030"] = _elem("DA", birth) if re.fullmatch(r"\d{8}", birth) else _elem("DA")
    sex = _value(pid, 8).upper()
    data["00100040"] = _elem("CS", sex) if sex in ("M", "F", "O") else _elem("CS")
    return data


def _orders_of(
    orc: Any, seq: int, rest: list[Any], pid: Any | None, pv1: Any | None, message_time: str
) -> list[Order]:
    control = _value(orc, 1).upper()
    action = ORDER_CONTROLS.get(control)
    if action is None:
        raise OrderRejected(
            TABLE_VALUE_NOT_FOUND,
            f"order control {control or '(empty)'} (ORC-1) is not taken: "
            "NW, CA, DC, OC, OD, XO or XX",
            segment="ORC",
            sequence=seq,
            field=1,
        )
    obr = _first(rest, "OBR")
    if obr is None:
        raise OrderRejected(
            REQUIRED_FIELD_MISSING,
            f"the order of ORC #{seq} has no OBR segment",
            segment="OBR",
            sequence=seq,
        )
    ipcs = [s for s in rest if _seg_id(s) == "IPC"] or [None]
    return [_order(action, control, orc, obr, ipc, rest, pid, pv1, message_time) for ipc in ipcs]


def _pick(*candidates: tuple[Any | None, int, int]) -> tuple[str, str, int]:
    """The first non-empty (segment, field, component): (value, segment id, field)."""
    for seg, field_num, component in candidates:
        if seg is not None:
            value = _value(seg, field_num, component)
            if value:
                return value, _seg_id(seg), field_num
    return "", "", 0


def _order(
    action: str,
    control: str,
    orc: Any,
    obr: Any,
    ipc: Any | None,
    rest: list[Any],
    pid: Any | None,
    pv1: Any | None,
    message_time: str,
) -> Order:
    zds = _first(rest, "ZDS")
    tq1 = _first(rest, "TQ1")
    accession, seg, fld = _pick(
        (ipc, 1, 1), (obr, 18, 1), (orc, 3, 1), (obr, 3, 1), (orc, 2, 1), (obr, 2, 1)
    )
    if not accession:
        raise OrderRejected(
            REQUIRED_FIELD_MISSING,
            "no accession number: give IPC-1 or OBR-18 (or a filler order number, ORC-3)",
            segment="OBR",
            field=18,
        )
    _check_length(accession, 16, seg, fld, "Accession Number")
    rp_id, seg, fld = _pick((ipc, 2, 1), (obr, 19, 1))
    rp_id = _check_length(rp_id, 16, seg, fld, "Requested Procedure ID") or accession
    step_id, seg, fld = _pick((ipc, 4, 1), (obr, 20, 1))
    step_id = _check_length(step_id, 16, seg, fld, "Scheduled Procedure Step ID") or rp_id
    uid = workitem_uid_for(accession, rp_id, step_id)
    if action == CANCEL:
        return Order(action, control, accession, rp_id, step_id, uid)
    study_uid, seg, fld = _pick((ipc, 3, 1), (zds, 1, 1))
    if study_uid and not is_valid_uid(study_uid):
        raise OrderRejected(
            DATA_TYPE_ERROR,
            f"Study Instance UID {study_uid[:70]!r} ({seg}-{fld}) is not a valid DICOM UID",
            segment=seg,
            field=fld,
        )
    study_uid = study_uid or f"2.25.{uuid.uuid4().int}"
    modality, seg, fld = _pick((ipc, 5, 1), (obr, 24, 1))
    modality = modality.upper()
    if modality and not _CS_RE.match(modality):
        raise OrderRejected(
            DATA_TYPE_ERROR,
            f"modality {modality[:20]!r} ({seg}-{fld}) is not a DICOM code string",
            segment=seg,
            field=fld,
        )
    station_ae, seg, fld = _pick((ipc, 9, 1), (obr, 21, 1))
    _check_length(station_ae, 16, seg, fld, "Scheduled Station AE Title")
    station_name = (_value(ipc, 7) if ipc is not None else "") or station_ae
    start_raw, _, _ = _pick((tq1, 7, 1), (obr, 27, 4), (orc, 7, 4), (obr, 36, 1))
    start = _dt(start_raw) or message_time
    priority_raw, _, _ = _pick((tq1, 9, 1), (obr, 27, 6), (orc, 7, 6))
    priority = _PRIORITY.get(priority_raw.upper()[:1], "MEDIUM")
    description, _, _ = _pick((obr, 4, 2), (obr, 4, 5), (obr, 4, 1))
    description = description[:64] or "Imaging procedure"
    requesting = _pn(orc, 12, xcn=True) or _pn(obr, 16, xcn=True)
    referring = (_pn(pv1, 8, xcn=True) if pv1 is not None else "") or requesting
    request: dict[str, Any] = {
        "00080050": _elem("SH", accession),
        "0020000D": _elem("UI", study_uid),
        "00401001": _elem("SH", rp_id),
        "00321060": _text("LO", description),
        "00321032": _person(requesting),
    }
    dataset: dict[str, Any] = {
        **_patient(pid),
        "00080090": _person(referring),
        "00400009": _elem("SH", step_id),
        "00404005": _elem("DT", start),
        "00404041": _elem("CS", "READY"),
        "00741000": _elem("CS", "SCHEDULED"),
        "00741200": _elem("CS", priority),
        "00741204": _elem("LO", description),
        "0040A370": _elem("SQ", request),
    }
    if modality:
        meaning = MODALITY_MEANINGS.get(modality, modality)
        dataset["00404026"] = _elem("SQ", _code(modality, "DCM", meaning))
    if station_ae:
        dataset["00404025"] = _elem("SQ", _code(station_ae, "99DCMWEB", station_name))
    return Order(action, control, accession, rp_id, step_id, uid, dataset)
