"""STOW-RS (PS3.18 10.5): the request body is streamed part by part into spool files.

Nothing is stored until the whole multipart body has been read and found well formed,
so a malformed or truncated request changes nothing. Each instance then goes through
the store service and gets its own outcome (PS3.18 Annex I).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicomweb_server.bootstrap import Services
from dicomweb_server.dicom import status
from dicomweb_server.dicom.multipart import MultipartError, MultipartParser, parse_content_type
from dicomweb_server.dicom.negotiation import Choice, choose_dataset_form
from dicomweb_server.errors import (
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    is_no_space,
)
from dicomweb_server.services.store import SpoolFile, StoreOutcome, StoreService
from dicomweb_server.web.audit import note
from dicomweb_server.web.responses import dataset_response
from dicomweb_server.web.urls import base_url, path_uids

log = logging.getLogger(__name__)
_ACCEPTED_PART_TYPES = ("application/dicom", "application/octet-stream", "")
# Parts of at most _KEEP_BYTES are also kept in memory for their analysis, for the first
# _KEEP_PARTS parts of a request: at most 4 MiB per request, and no more than the
# process's copy budget (services/store.py) for all requests at once.
_KEEP_BYTES, _KEEP_PARTS = 64 * 1024, 64


@dataclass
class _Part:
    spool: SpoolFile
    content_type: str
    writing: bool = True
    failure: int | None = None
    message: str = ""

    @property
    def path(self) -> Path:
        return self.spool.path


@dataclass
class SpoolSink:
    """Writes each part to its own spool file, whose fsync starts as soon as the part is
    complete; remembers parts that could not be written."""

    store: StoreService
    parts: list[_Part] = field(default_factory=list)

    def start_part(self, headers: dict[str, str]) -> None:
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        # Small objects are analysed from a copy in memory; bounded per request.
        keep = _KEEP_BYTES if len(self.parts) < _KEEP_PARTS else 0
        self.parts.append(_Part(self.store.spool(keep), media))

    def write(self, data: bytes) -> None:
        part = self.parts[-1]
        if not part.writing:
            return
        try:
            part.spool.write(data)
        except OSError as exc:
            self._fail(part, exc)

    def end_part(self) -> None:
        part = self.parts[-1]
        if part.writing:
            part.writing = False
            try:
                part.spool.finish()
            except OSError as exc:
                self._fail(part, exc)

    @staticmethod
    def _fail(part: _Part, exc: OSError) -> None:
        part.writing = False
        part.spool.close()
        if not is_no_space(exc):
            raise exc
        part.failure = status.OUT_OF_RESOURCES
        part.message = "no space left on the archive"

    def drop_copies(self) -> None:
        """Give back the in-memory copies' budget, whatever became of the parts."""
        for part in self.parts:
            part.spool.drop_copy()

    def discard(self) -> None:
        for part in self.parts:
            part.spool.close()
            part.path.unlink(missing_ok=True)


async def _read_body(request: Request, sink: SpoolSink, services: Services) -> None:
    settings = services.settings
    content_type = request.headers.get("content-type")
    if not content_type:
        # PS3.18 Table 10.5.3-1: 415 when the request's media type is not supported.
        raise UnsupportedMediaType(
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom"; boundary=...'
        )
    media, params = parse_content_type(content_type)
    if media != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS takes multipart/related; type="application/dicom", not {media or "nothing"}'
        )
    inner = params.get("type", "application/dicom").lower()
    if inner != "application/dicom":
        raise UnsupportedMediaType(
            f"multipart/related of {inner} is not supported; send application/dicom parts"
        )
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidRequest("multipart/related Content-Type has no boundary parameter")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise PayloadTooLarge(f"request body exceeds {settings.max_request_bytes} bytes")
    parser = MultipartParser(boundary, sink, max_parts=settings.max_parts)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > settings.max_request_bytes:
            raise PayloadTooLarge(f"request body exceeds {settings.max_request_bytes} bytes")
        parser.feed(chunk)
    parser.close()
    if not sink.parts:
        raise InvalidRequest("multipart body has no parts")


# Instances per index transaction: bounds how long one request holds SQLite's writer.
_BATCH = 64


def _store_parts(store: StoreService, parts: list[_Part], study: str | None) -> list[StoreOutcome]:
    """One outcome per part, in order; the storable parts go in batches to the store."""
    outcomes: list[StoreOutcome | None] = [None] * len(parts)
    storable: list[int] = []
    for i, part in enumerate(parts):
        if part.failure is not None:
            part.path.unlink(missing_ok=True)
            outcomes[i] = StoreOutcome(failure_reason=part.failure, message=part.message)
        elif part.content_type not in _ACCEPTED_PART_TYPES:
            part.path.unlink(missing_ok=True)
            outcomes[i] = StoreOutcome(
                failure_reason=status.CANNOT_UNDERSTAND,
                message=f"part of type {part.content_type} is not a DICOM object",
            )
        else:
            storable.append(i)
    for start in range(0, len(storable), _BATCH):
        chunk = storable[start : start + _BATCH]
        stored = store.store_batch([parts[i].spool for i in chunk], study)
        for i, outcome in zip(chunk, stored, strict=True):
            outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def stow_response_dataset(
    outcomes: list[StoreOutcome], base: str, study: str | None
) -> tuple[dict[str, Any], int]:
    """The Store Instances Response Module (PS3.18 I.1) and the HTTP status (Table 10.5.3-1).

    - ReferencedSOPSequence (0008,1199): one item per stored instance, with its
      RetrieveURL and, for a warning, WarningReason (0008,1196).
    - FailedSOPSequence (0008,1198): failures of identified instances (both UIDs are
      Type 1), FailureReason (0008,1197); OtherFailuresSequence (0008,119A) for parts
      that could not be identified.
    - RetrieveURL (0008,1190), Type 2: the study's URL when the stored instances belong
      to one study (or the study in the request URL), else empty.
    - 200 all stored without warnings; 202 some stored, or warnings; 400/409 none stored.
    """
    referenced, failed, other = [], [], []
    warned = False
    for o in outcomes:
        if o.stored:
            assert o.sop_class_uid and o.sop_instance_uid
            item = {
                "00081150": _uid(o.sop_class_uid),
                "00081155": _uid(o.sop_instance_uid),
                "00081190": {
                    "vr": "UR",
                    "Value": [
                        f"{base}/studies/{o.study_uid}/series/{o.series_uid}"
                        f"/instances/{o.sop_instance_uid}"
                    ],
                },
            }
            if o.warning_reason is not None:
                item["00081196"] = _us(o.warning_reason)
                warned = True
            referenced.append(dict(sorted(item.items())))
        elif o.sop_instance_uid and o.sop_class_uid:
            failed.append(
                {
                    "00081150": _uid(o.sop_class_uid),
                    "00081155": _uid(o.sop_instance_uid),
                    "00081197": _us(o.failure_reason or status.PROCESSING_FAILURE),
                }
            )
        else:
            other.append({"00081197": _us(o.failure_reason or status.CANNOT_UNDERSTAND)})
    studies = {o.study_uid for o in outcomes if o.stored}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    dataset: dict[str, Any] = {
        "00081190": {"vr": "UR", "Value": [f"{base}/studies/{target}"]}
        if target and referenced
        else {"vr": "UR"}
    }
    if failed:
        dataset["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        dataset["00081199"] = {"vr": "SQ", "Value": referenced}
    if other:
        dataset["0008119A"] = {"vr": "SQ", "Value": other}
    if not referenced:
        # None stored: 400 when every part was unreadable ("bad syntax"), else 409
        # ("a conflict in the request ... or a mixture of reasons"), Table 10.5.3-1.
        reasons = [o.failure_reason or status.CANNOT_UNDERSTAND for o in outcomes]
        code = 400 if reasons and all(status.is_syntax_failure(r) for r in reasons) else 409
    elif failed or other or warned:
        code = 202
    else:
        code = 200
    return dataset, code


def _note_stored(request: Request, outcomes: list[StoreOutcome]) -> None:
    """What the audit record of this request names: the instances actually stored."""
    event = note(request)
    if event is None:
        return
    stored = [o for o in outcomes if o.stored]
    event.study_uids = sorted({o.study_uid for o in stored if o.study_uid})
    event.series_uids = sorted({o.series_uid for o in stored if o.series_uid})
    event.sop_instance_uids = [o.sop_instance_uid for o in stored if o.sop_instance_uid]
    if len(stored) < len(outcomes):
        event.detail = f"{len(outcomes) - len(stored)} of {len(outcomes)} part(s) not stored"


async def stow(request: Request) -> Response:
    services: Services = request.app.state.services
    study = path_uids(request)[0] if "study" in request.path_params else None
    choice = choose_dataset_form(request.headers.get("accept"))
    sink = SpoolSink(services.store)
    try:
        return await _stow(request, services, sink, study, choice)
    finally:
        sink.drop_copies()


async def _stow(
    request: Request, services: Services, sink: SpoolSink, study: str | None, choice: Choice
) -> Response:
    try:
        await _read_body(request, sink, services)
    except (MultipartError, ClientDisconnect) as exc:
        sink.discard()
        if isinstance(exc, ClientDisconnect):
            raise InvalidRequest(
                "client disconnected before the request body was complete"
            ) from exc
        raise
    except BaseException:
        sink.discard()
        raise
    try:
        outcomes = await anyio.to_thread.run_sync(_store_parts, services.store, sink.parts, study)
    except BaseException:
        sink.discard()  # whatever the store did not consume (it consumes all it finishes)
        raise
    _note_stored(request, outcomes)
    base = base_url(request, services.settings)
    dataset, code = stow_response_dataset(list(outcomes), base, study)
    response = dataset_response(choice, dataset, code)
    # The reasons as text, for people reading logs and clients showing errors.
    explained = [o for o in outcomes if o.message][:20]
    for o in explained:
        code_hex = o.failure_reason if o.failure_reason is not None else o.warning_reason
        who = o.sop_instance_uid or "unidentified part"
        text = f"{who}: 0x{code_hex or 0:04X} {o.message}"
        text = " ".join(text.encode("ascii", "replace").decode().split())
        response.headers.append("Warning", f"299 {base}: {text}")
        if not o.stored:
            log.info("STOW part rejected: %s", text)
    return response
