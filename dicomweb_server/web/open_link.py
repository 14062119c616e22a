"""``GET /open``: a stable link an HIS can open to show a study in the bundled viewer.

``/open?AccessionNumber=A`` (or ``StudyInstanceUID=`` or ``PatientID=``) looks the
studies up with the QIDO query engine, by exact value (no wildcards: a deep link names
a study, it does not search), then:

- one study: 302 to OHIF's viewer route, ``/viewer?StudyInstanceUIDs=<uid>``;
- several: 302 to OHIF's study list filtered the same way (its URL keys ``accession``
  and ``mrn``);
- none: a 404 page; when a workitem (an order) has that key but no images arrived yet,
  the 404 page says so, with the order's state, procedure and scheduled time;
- a missing, repeated, unknown or malformed parameter: a 400 page.

Whether a study exists is a reader's question. A browser following an HIS link carries
no token when users sign in with OpenID Connect (OHIF keeps it in the page), so without
the ``reader`` role nothing is looked up: the answer is a redirect that depends only on
the link, to the viewer on that study (StudyInstanceUID) or to the study list filtered
by the key; OHIF then signs the user in and searches with the user's token.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dicomweb_server.bootstrap import Services
from dicomweb_server.config import Settings
from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.matching import STUDY_INSTANCE_UID, Condition, Kind, QueryRequest
from dicomweb_server.dicom.uids import is_valid_uid
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.services.workitems import CANCELED, COMPLETED, IN_PROGRESS, SCHEDULED
from dicomweb_server.web import policy
from dicomweb_server.web.qido import query_pairs
from dicomweb_server.web.urls import base_url

ACCESSION_NUMBER = 0x00080050
PATIENT_ID = 0x00100020
# parameter -> (tag, maximum length of its VR (PS3.5 6.2), OHIF study-list URL key)
ALL_STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
KEYS: dict[str, tuple[int, int, str | None]] = {
    "AccessionNumber": (ACCESSION_NUMBER, 16, "accession"),
    "PatientID": (PATIENT_ID, 64, "mrn"),
    "StudyInstanceUID": (STUDY_INSTANCE_UID, 64, None),
}


def parse_open_params(pairs: list[tuple[str, str]]) -> tuple[str, str]:
    """The one (parameter, value) of a deep link; InvalidRequest says what is wrong."""
    if len(pairs) != 1:
        raise InvalidRequest(
            "give exactly one of AccessionNumber, StudyInstanceUID or PatientID "
            f"(got {len(pairs)} parameters)"
        )
    name, value = pairs[0]
    if name not in KEYS:
        raise InvalidRequest(
            f"unknown parameter {name!r}: use AccessionNumber, StudyInstanceUID or PatientID"
        )
    _, max_len, _ = KEYS[name]
    value = value.strip()
    if not value:
        raise InvalidRequest(f"{name} must not be empty")
    if len(value) > max_len:
        raise InvalidRequest(f"{name} is longer than {max_len} characters")
    if any(c in value for c in "\\*?") or any(ord(c) < 0x20 for c in value):
        raise InvalidRequest(f"{name} must be one exact value (no wildcards, '\\' or controls)")
    if name == "StudyInstanceUID" and not is_valid_uid(value):
        raise InvalidRequest(f"StudyInstanceUID {value!r} is not a valid DICOM UID")
    return name, value


_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(status: int, title: str, message: str) -> HTMLResponse:
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(message)}</p><p><a href='/'>Study list</a></p></body></html>"
    )
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


async def open_study(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        name, value = parse_open_params(query_pairs(request.scope.get("query_string", b"")))
    except InvalidRequest as exc:
        return _page(400, "Bad link", exc.message)
    tag, _, list_key = KEYS[name]
    principal = request.scope.get("state", {}).get("principal")
    if services.settings.auth_enabled and not (
        principal is not None and policy.allows(principal.roles, policy.READER)
    ):
        return _blind_redirect(name, value)
    query = QueryRequest(level=Level.STUDY, conditions=[Condition(tag, Kind.SINGLE, (value,))])
    query.limit = 2  # enough to tell one study from several
    base = base_url(request, services.settings)
    outcome = await anyio.to_thread.run_sync(services.query.search, query, base)
    uids = [r["0020000D"]["Value"][0] for r in outcome.results if "0020000D" in r]
    headers = _HEADERS
    if not uids:
        return await _no_study(services, name, value)
    if len(uids) == 1:
        target = "/viewer?" + urlencode({"StudyInstanceUIDs": uids[0]})
        return RedirectResponse(target, status_code=302, headers=headers)
    assert list_key is not None  # a StudyInstanceUID names one study
    return RedirectResponse("/?" + urlencode({list_key: value}), status_code=302, headers=headers)


def _blind_redirect(name: str, value: str) -> Response:
    """Where a link goes for someone not (yet) signed in: the same for any value."""
    _, _, list_key = KEYS[name]
    if list_key is None:  # a Study Instance UID names the study itself
        target = "/viewer?" + urlencode({"StudyInstanceUIDs": value})
    else:
        target = "/?" + urlencode({list_key: value})
    return RedirectResponse(target, status_code=302, headers=_HEADERS)


_FIND_KEYS = {
    "AccessionNumber": "accession_number",
    "StudyInstanceUID": "study_uid",
    "PatientID": "patient_id",
}


async def _no_study(services: Services, name: str, value: str) -> Response:
    """No images: a 404 still, but one that says when the order exists and waits for
    its images, so the person who clicked the HIS link knows it is not a wrong link."""
    key = _FIND_KEYS[name]
    items = await anyio.to_thread.run_sync(
        lambda: services.workitems.find(
            states=ALL_STATES,
            limit=5,
            outputs=False,
            accession_number=value if key == "accession_number" else None,
            study_uid=value if key == "study_uid" else None,
            patient_id=value if key == "patient_id" else None,
        )
    )
    if not items:
        return _page(404, "No study found", f"No study has {name} {value}.")
    item = items[0]
    when = _text(item.dataset, "00404005")
    what = _text(item.dataset, "00741204")
    detail = ", ".join(p for p in (what, f"scheduled {_show_dt(when)}" if when else "") if p)
    return _page(
        404,
        "No images yet",
        f"The order with {name} {value} is {item.state}"
        + (f" ({detail})" if detail else "")
        + "; no images have arrived for it yet. Open this link again once they have.",
    )


def _text(dataset: dict[str, Any], tag: str) -> str:
    values = dataset.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _show_dt(value: str) -> str:
    """YYYYMMDDHHMM... as YYYY-MM-DD HH:MM for a person."""
    if len(value) >= 12 and value[:12].isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:8]} {value[8:10]}:{value[10:12]}"
    if len(value) >= 8 and value[:8].isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    return value


def open_routes(settings: Settings) -> list[BaseRoute]:
    if not settings.viewer_enabled:
        return []
    return [Route("/open", open_study, methods=["GET", "HEAD"])]
