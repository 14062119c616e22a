"""HL7 order messages to workitem datasets, and the acknowledgements (pure, no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hl7
import pytest

from dicomweb_server.hl7v2.ack import build_ack
from dicomweb_server.hl7v2.codes import CANCEL, CHANGE, NEW, OrderRejected
from dicomweb_server.hl7v2.handler import handle_message
from dicomweb_server.hl7v2.orders import (
    OrderMessage,
    decode,
    parse_message,
    read_header,
    workitem_uid_for,
)
from tests.hl7samples import omi, orm


def _value(ds: dict[str, Any], tag: str) -> Any:
    return ds[tag]["Value"][0]


def test_omi_maps_to_the_agreed_workitem_shape() -> None:
    message = parse_message(omi())
    assert (message.control_id, message.message_type) == ("MSG00001", "OMI^O23")
    [order] = message.orders
    assert (order.action, order.accession, order.requested_procedure_id, order.step_id) == (
        NEW,
        "ACC0001",
        "RP0001",
        "SPS0001",
    )
    ds = order.dataset
    assert _value(ds, "00100010") == {"Alphabetic": "Doe^John^Q^Dr^Jr"}  # XPN -> PN order
    assert _value(ds, "00100020") == "PAT001"
    assert _value(ds, "00100021") == "HOSP"
    assert _value(ds, "00100030") == "19700102"
    assert _value(ds, "00100040") == "M"
    assert _value(ds, "00080090") == {"Alphabetic": "Smith^Anna^^Dr"}  # PV1-8
    assert _value(ds, "00404005") == "202611250930"  # TQ1-7
    assert _value(ds, "00741200") == "MEDIUM"  # TQ1-9 R
    assert _value(ds, "00741204") == "CT Head without contrast"  # OBR-4.2
    assert _value(ds, "00404041") == "READY"
    assert _value(ds, "00741000") == "SCHEDULED"
    assert _value(ds, "00400009") == "SPS0001"
    request = _value(ds, "0040A370")
    assert _value(request, "00080050") == "ACC0001"
    assert _value(request, "0020000D") == "1.2.826.0.1.3680043.10.1000.1"
    assert _value(request, "00401001") == "RP0001"
    assert _value(request, "00321032") == {"Alphabetic": "Jones^Peter^^Dr"}  # ORC-12
    station_class = _value(ds, "00404026")
    assert [_value(station_class, t) for t in ("00080100", "00080102", "00080104")] == [
        "CT",
        "DCM",
        "Computed Tomography",
    ]
    station = _value(ds, "00404025")
    assert [_value(station, t) for t in ("00080100", "00080102", "00080104")] == [
        "CT01",
        "99DCMWEB",
        "Room 1",
    ]
    assert order.workitem_uid == workitem_uid_for("ACC0001", "RP0001", "SPS0001")


def test_orm_takes_the_ihe_v231_fields() -> None:
    [order] = parse_message(orm()).orders
    ds = order.dataset
    assert order.accession == "ACC1001"  # OBR-18
    assert order.requested_procedure_id == "RPACC1001"  # OBR-19
    assert order.step_id == "SPSACC1001"  # OBR-20
    assert _value(ds, "00404005") == "20261125101500"  # OBR-27.4
    assert _value(ds, "00741200") == "HIGH"  # OBR-27.6 S (stat)
    assert _value(_value(ds, "0040A370"), "0020000D") == "1.2.826.0.1.3680043.10.1000.2"  # ZDS-1
    assert _value(_value(ds, "00404026"), "00080100") == "MR"  # OBR-24
    assert _value(_value(ds, "00404025"), "00080100") == "MR01"  # OBR-21
    assert _value(ds, "00100040") == "F"


def test_same_order_same_workitem_uid_and_a_study_uid_is_generated_when_absent() -> None:
    text = omi(study_uid="")
    first, second = parse_message(text).orders[0], parse_message(text).orders[0]
    assert first.workitem_uid == second.workitem_uid
    study = _value(_value(first.dataset, "0040A370"), "0020000D")
    assert study.startswith("2.25.") and len(study) <= 64
    other = parse_message(omi(accession="ACC0002")).orders[0]
    assert other.workitem_uid != first.workitem_uid


@pytest.mark.parametrize(("control", "action"), [("CA", CANCEL), ("DC", CANCEL), ("XO", CHANGE)])
def test_order_controls(control: str, action: str) -> None:
    [order] = parse_message(omi(control=control)).orders
    assert order.action == action
    assert order.workitem_uid == parse_message(omi()).orders[0].workitem_uid


def test_cancel_needs_no_patient() -> None:
    text = "\r".join(s for s in omi(control="CA").split("\r") if not s.startswith("PID"))
    assert parse_message(text).orders[0].action == CANCEL


def test_message_time_is_the_start_when_the_order_has_none() -> None:
    text = "\r".join(s for s in omi().split("\r") if not s.startswith("TQ1"))
    ds = parse_message(text).orders[0].dataset
    assert _value(ds, "00404005") == "20261125083000"  # MSH-7


def test_a_byte_order_mark_is_ignored() -> None:
    text, _ = decode(b"\xef\xbb\xbf" + omi().encode())
    assert parse_message(text).control_id == "MSG00001"


def test_lf_line_ends_and_latin1_are_taken() -> None:
    raw = omi().replace("Doe^John", "Müller^Jürgen").replace("\r", "\n").encode("latin-1")
    text, encoding = decode(raw)
    assert encoding == "latin-1"
    [order] = parse_message(text).orders
    assert _value(order.dataset, "00100010")["Alphabetic"].startswith("Müller^Jürgen")


def _rejected(text: str) -> OrderRejected:
    with pytest.raises(OrderRejected) as info:
        parse_message(text)
    return info.value


@pytest.mark.parametrize(
    ("text", "ack_code", "code", "where"),
    [
        ("hello world", "AR", 100, ""),
        (omi().replace("OMI^O23^OMI_O23", "ADT^A01"), "AR", 200, "MSH"),
        (omi().replace("OMI^O23^OMI_O23", "OMI^O99"), "AR", 201, "MSH"),
        (omi().replace("|P|2.5", "|P|3.0"), "AR", 203, "MSH"),
        (omi().replace("MSG00001", ""), "AR", 101, "MSH"),
        (omi(control="ZZ"), "AE", 103, "ORC"),
        (omi(patient_id=""), "AE", 101, "PID"),
        (omi(accession="A" * 17), "AE", 102, "IPC"),
        (omi(study_uid="1.2.abc"), "AE", 102, "IPC"),
        (omi(modality="c;t"), "AE", 102, "IPC"),
        ("\r".join(s for s in omi().split("\r") if not s.startswith("ORC")), "AE", 101, "ORC"),
        ("\r".join(s for s in omi().split("\r") if not s.startswith("OBR")), "AE", 101, "OBR"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(
    text: str, ack_code: str, code: int, where: str
) -> None:
    exc = _rejected(text)
    assert (exc.ack_code, exc.code, exc.segment) == (ack_code, code, where)
    assert exc.message


def test_no_accession_anywhere_is_an_error() -> None:
    text = omi(accession="")
    text = text.replace("PL|", "|").replace("FL|", "|")  # placer/filler numbers empty too
    exc = _rejected(text)
    assert exc.code == 101 and "accession" in exc.message


NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_ack_echoes_the_control_id_and_swaps_the_applications() -> None:
    header = read_header(omi())
    ack = hl7.parse(build_ack(header, text="1 order(s) accepted", now=NOW))
    msh = ack.segment("MSH")
    assert str(msh(3)) == "DICOMWEB" and str(msh(5)) == "RIS"
    assert str(msh(9)) == "ACK^O23^ACK"
    assert str(msh(12)) == "2.5"
    assert str(ack.segment("MSA")(1)) == "AA"
    assert str(ack.segment("MSA")(2)) == "MSG00001"
    with pytest.raises(KeyError):
        ack.segment("ERR")


def test_nak_carries_an_err_segment() -> None:
    header = read_header(omi())
    rejected = OrderRejected(
        101, "PID-3 (patient identifier) is empty", segment="PID", field=3, ack_code="AE"
    )
    ack = hl7.parse(build_ack(header, rejected, now=NOW))
    assert str(ack.segment("MSA")(1)) == "AE"
    err = ack.segment("ERR")
    assert str(err(2)) == "PID^1^3"
    assert str(err(3)) == "101^Required field missing^HL70357"
    assert str(err(4)) == "E"
    assert str(err(8)) == "PID-3 (patient identifier) is empty"


def test_text_with_delimiters_is_escaped() -> None:
    rejected = OrderRejected(207, "bad | value ^ here & there ~ \\")
    ack = build_ack(read_header(omi()), rejected, now=NOW)
    err = hl7.parse(ack).segment("ERR")
    assert len(err) == 9  # no field was split by a delimiter in the text
    assert hl7.parse(ack).unescape(str(err(8))) == "bad | value ^ here & there ~ \\"


def test_handler_answers_garbage_with_a_reject() -> None:
    applied: list[OrderMessage] = []

    def apply(message: OrderMessage) -> str:
        applied.append(message)
        return "ok"

    reply = hl7.parse(handle_message(b"\x00\xff garbage", apply).reply.decode("latin-1"))
    assert str(reply.segment("MSA")(1)) == "AR"
    assert applied == []
    good = hl7.parse(handle_message(omi().encode(), apply).reply.decode())
    assert str(good.segment("MSA")(1)) == "AA" and len(applied) == 1


def test_handler_turns_a_failure_into_an_application_error() -> None:
    def apply(message: OrderMessage) -> str:
        raise RuntimeError("database down")

    reply = hl7.parse(handle_message(omi().encode(), apply).reply.decode())
    assert str(reply.segment("MSA")(1)) == "AE"
    assert str(reply.segment("MSA")(2)) == "MSG00001"
    assert str(reply.segment("ERR")(3)).startswith("207^")


def test_each_ipc_is_a_step_and_each_orc_an_order() -> None:
    """OMI: one requested procedure with two scheduled steps (two IPC), then a second
    order (ORC group) in the same message."""
    lines = omi(accession="MULTI1").split("\r")
    ipc = next(line for line in lines if line.startswith("IPC"))
    second_step = ipc.replace("SPS0001", "SPS0002").replace("|CT01", "|CT02")
    second_order = omi(accession="MULTI2", rp_id="RP0009", sps_id="SPS0009").split("\r")[3:]
    text = "\r".join([*lines[:-1], second_step, *second_order])
    orders = parse_message(text).orders
    assert [(o.accession, o.step_id) for o in orders] == [
        ("MULTI1", "SPS0001"),
        ("MULTI1", "SPS0002"),
        ("MULTI2", "SPS0009"),
    ]
    assert len({o.workitem_uid for o in orders}) == 3
    stations = [_value(_value(o.dataset, "00404025"), "00080100") for o in orders]
    assert stations == ["CT01", "CT02", "CT01"]
