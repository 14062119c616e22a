"""UPS subscriptions and event reports, the pure parts (PS3.18 11.10-11.13, PS3.4 CC.2.3-CC.2.4).

- Subscription targets: a workitem UID or one of the two well-known UIDs.
- Receiving AE titles (PS3.5 Table 6.2-1, VR AE).
- Filters of filtered worklist subscriptions (PS3.18 11.10.1.2).
- Event reports as the DICOM JSON a WebSocket text frame carries (PS3.18 8.10.5, 11.13).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from dicomweb_server.errors import InvalidRequest

# PS3.4 CC.3.1: the well-known UIDs of a (filtered) worklist subscription.
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"
FILTERED_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5.1"
GLOBAL, FILTERED = "global", "filtered"
KIND_OF = {GLOBAL_SUBSCRIPTION_UID: GLOBAL, FILTERED_SUBSCRIPTION_UID: FILTERED}
# PS3.4 CC.2.4.3: every UPS is an instance of UPS Push, the Affected SOP Class of its events.
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"

# Query parameters of the Subscribe transaction that are not matching keys (PS3.18
# Table 11.10.1-2).
_NOT_FILTER = frozenset({"deletionlock", "accept", "charset", "filter"})


def check_ae_title(value: str) -> str:
    """A Receiving AE title (PS3.5 VR AE): 1 to 16 characters of the default repertoire,
    no backslash or control characters, not only spaces; leading and trailing spaces
    are not significant and are removed."""
    title = value.strip(" ")
    if not 1 <= len(title) <= 16 or any(not " " <= c <= "~" or c == "\\" for c in title):
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise InvalidRequest(
            f"invalid AE title {shown!r}: 1 to 16 printable ASCII characters without "
            "backslash, not only spaces (PS3.5 Table 6.2-1, VR AE)"
        )
    return title


def parse_deletion_lock(values: list[str]) -> bool:
    """The deletionlock parameter (PS3.18 11.10.1.2): "true" or "false", at most once."""
    if not values:
        return False
    if len(values) > 1 or values[0] not in ("true", "false"):
        raise InvalidRequest('deletionlock must be given once, as "true" or "false"')
    return values[0] == "true"


def _split_filter(raw: str) -> list[tuple[str, str]]:
    """``filter=a=1,b=2`` into pairs; a comma-separated piece without "=" continues the
    value before it (a list of values, as in QIDO matching)."""
    pairs: list[tuple[str, str]] = []
    for piece in raw.split(","):
        name, eq, value = piece.partition("=")
        if eq and name:
            pairs.append((name, value))
        elif pairs:
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + "," + piece)
        else:
            raise InvalidRequest(f"filter: {raw!r} is not a list of attribute=value")
    return pairs


def subscription_filter(params: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The matching keys of a Subscribe request: every query parameter that is not one of
    the transaction's own, and the pairs inside ``filter=`` (PS3.18 11.10.1.2 writes the
    filter as ``filter=attribute=value,...``; older editions as plain query parameters)."""
    keys: list[tuple[str, str]] = []
    for name, value in params:
        if name == "filter":
            keys += _split_filter(value)
        elif name not in _NOT_FILTER:
            keys.append((name, value))
    return tuple(keys)


def filter_params(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Matching keys as the ``params`` mapping of a workitem search."""
    params: dict[str, list[str]] = {}
    for name, value in keys:
        params.setdefault(name, []).append(value)
    return params


def _cs(value: str) -> dict[str, Any]:
    return {"vr": "CS", "Value": [value]}


def event_report(workitem_uid: str, event_type: int, info: Mapping[str, Any]) -> dict[str, Any]:
    """The Event Report of PS3.18 11.13: the N-EVENT-REPORT command attributes (Affected
    SOP Class and Instance UIDs, Event Type ID) and the event information of PS3.4
    Table CC.2.4-1. The Message ID is added per connection (``numbered``)."""
    report: dict[str, Any] = {
        "00000002": {"vr": "UI", "Value": [UPS_PUSH_SOP_CLASS]},
        "00001000": {"vr": "UI", "Value": [workitem_uid]},
        "00001002": {"vr": "US", "Value": [event_type]},
    }
    report.update(info)
    return report


def state_report_info(state: str, dataset: Mapping[str, Any]) -> dict[str, Any]:
    """UPS State Report information (PS3.4 Table CC.2.4-1, event 1): the Procedure Step
    State and Input Readiness State, as sent on subscribing (PS3.4 CC.2.4.3)."""
    info = {"00741000": _cs(state)}
    readiness = dataset.get("00404041")
    if isinstance(readiness, dict) and readiness.get("Value"):
        info["00404041"] = _cs(str(readiness["Value"][0]))
    return info


def encode(report: Mapping[str, Any]) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_SORT_KEYS)


def numbered(message: bytes, message_id: int) -> str:
    """The stored report with this connection's Message ID (0000,0110), as frame text."""
    report = orjson.loads(message)
    report["00000110"] = {"vr": "US", "Value": [message_id]}
    return encode(report).decode()
