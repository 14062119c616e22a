"""HL7 v2 acknowledgements (original mode, HL7 v2.5 chapter 2.9.2 and 2.15).

MSA-1 (Table 0008): AA when the message was processed, AE when its content was in
error (nothing of it was applied), AR when it was refused as a whole (unsupported
type, event or version, or not HL7 at all). MSA-2 echoes the message's MSH-10. A NAK
carries an ERR segment: ERR-2 the location, ERR-3 the Table 0357 code, ERR-4
severity E, ERR-8 the text for a person; ERR-1 repeats location and code for v2.3
receivers, and MSA-3 the text (both kept for backward compatibility).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from dicomweb_server.hl7v2.codes import ERROR_TEXT, OrderRejected
from dicomweb_server.hl7v2.orders import Header

APPLICATION = "DICOMWEB"


def _escape(value: str, sep: str) -> str:
    """HL7 escape sequences (2.7.4) for the delimiters inside a text value."""
    fs, cs, rs, esc, ss = sep[0], sep[1], sep[2], sep[3], sep[4]
    out = value.replace(esc, f"{esc}E{esc}")
    for char, code in ((fs, "F"), (cs, "S"), (rs, "R"), (ss, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(
    header: Header,
    rejected: OrderRejected | None = None,
    text: str = "",
    now: datetime | None = None,
) -> str:
    """The ACK for a message: AA without ``rejected``, else its AE/AR with an ERR segment."""
    sep = header.separators
    fs, cs = sep[0], sep[1]
    when = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    trigger = header.trigger or ""
    msh = fs.join(
        [
            "MSH",
            sep[1:],
            _escape(header.receiving_application or APPLICATION, sep),
            _escape(header.receiving_facility, sep),
            _escape(header.sending_application, sep),
            _escape(header.sending_facility, sep),
            when,
            "",
            f"ACK{cs}{_escape(trigger, sep)}{cs}ACK",
            secrets.token_hex(10),
            _escape(header.processing_id, sep),
            _escape(header.version, sep),
        ]
    )
    code = "AA" if rejected is None else rejected.ack_code
    detail = text if rejected is None else rejected.message
    msa = fs.join(["MSA", code, _escape(header.control_id, sep), _escape(detail[:80], sep)])
    segments = [msh, msa]
    if rejected is not None:
        where = ""
        if rejected.segment:
            where = cs.join([rejected.segment, str(rejected.sequence), str(rejected.field or "")])
        name = ERROR_TEXT.get(rejected.code, "")
        err_code = cs.join([str(rejected.code), name, "HL70357"])
        sub = sep[4]
        legacy = cs.join(
            [
                rejected.segment,
                str(rejected.sequence) if rejected.segment else "",
                str(rejected.field or ""),
                sub.join([str(rejected.code), name, "HL70357"]),
            ]
        )
        segments.append(
            fs.join(
                ["ERR", legacy, where, err_code, "E", "", "", "", _escape(rejected.message, sep)]
            )
        )
    return "\r".join(segments) + "\r"
