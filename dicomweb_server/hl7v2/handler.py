"""One HL7 message in, its acknowledgement out: parse, apply, answer.

The reply is always an acknowledgement, whatever arrives: a message that cannot be
read, mapped or applied gets a NAK saying why. A message that cannot be read or mapped
changes nothing (its orders are all mapped before the first is applied); one refused
while applying keeps its earlier orders, and since applying is idempotent the sender
may resend it whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from dicomweb_server.hl7v2.ack import build_ack
from dicomweb_server.hl7v2.codes import APPLICATION_INTERNAL_ERROR, OrderRejected
from dicomweb_server.hl7v2.orders import Header, OrderMessage, decode, parse_message, read_header

log = logging.getLogger(__name__)

# Applies a mapped message (creates, cancels, updates workitems); returns the text for
# MSA-3, raises OrderRejected for a NAK.
Apply = Callable[[OrderMessage], str]


@dataclass(frozen=True)
class Handled:
    """The reply to one message and what the audit trail needs to know of it."""

    reply: bytes
    header: Header
    ack_code: str  # MSA-1
    detail: str
    message: OrderMessage | None = None


def handle_message(payload: bytes, apply: Apply) -> Handled:
    text, encoding = decode(payload)
    header = read_header(text)
    message: OrderMessage | None = None
    try:
        message = parse_message(text)
        detail = apply(message)
    except OrderRejected as exc:
        log.warning(
            "HL7: %s %s from %s/%s: %s",
            exc.ack_code,
            header.control_id or "(no control id)",
            header.sending_application,
            header.sending_facility,
            exc.message,
        )
        return _handled(header, exc, exc.message, encoding, message)
    except Exception:
        log.exception("HL7: message %s could not be applied", header.control_id)
        failure = OrderRejected(
            APPLICATION_INTERNAL_ERROR, "the archive could not apply the message; resend it"
        )
        return _handled(header, failure, failure.message, encoding, message)
    log.info("HL7: %s %s: %s", message.message_type, message.control_id, detail)
    return _handled(header, None, detail, encoding, message)


def _handled(
    header: Header,
    rejected: OrderRejected | None,
    detail: str,
    encoding: str,
    message: OrderMessage | None,
) -> Handled:
    ack = build_ack(header, rejected, text=detail)
    code = "AA" if rejected is None else rejected.ack_code
    return Handled(ack.encode(encoding, errors="replace"), header, code, detail, message)
