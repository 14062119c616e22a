"""DIMSE event handlers: each translates one request to the services and back.

Handlers receive the ``Gateway`` (services, settings, known AEs) as a bound extra
argument (pynetdicom ``evt_handlers`` with args), so there is no global state.
Domain errors map to DIMSE statuses here and only here.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.events import Event

from dicomweb_server.bootstrap import Services
from dicomweb_server.dicom import status as reasons
from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.matching import SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID
from dicomweb_server.dimse import audit as dimse_audit
from dicomweb_server.dimse import query as q
from dicomweb_server.dimse import status
from dicomweb_server.dimse.query import first
from dicomweb_server.dimse.scu import storage_contexts
from dicomweb_server.dimse.tcp import NO_DELAY
from dicomweb_server.errors import (
    DicomWebError,
    InvalidRequest,
    NotFound,
    OutOfResources,
    is_no_space,
)
from dicomweb_server.services.modalities import Modality, ModalityService, StoredInstance
from dicomweb_server.services.retrieve import Planned

log = logging.getLogger(__name__)

# pynetdicom's ceiling for one retrieve (sub-operation counts are US, PS3.7 C.4.2.1.6).
MAX_SUBOPS = 65535


# Known-AE lookups are cached this long, so a C-STORE does not read the index each
# time; a change made through /admin/modalities applies within this many seconds.
AE_CACHE_SECONDS = 2.0


@dataclass
class Gateway:
    services: Services
    modalities: ModalityService
    _seen: dict[str, tuple[float, Modality | None]] = field(default_factory=dict)

    @property
    def aet(self) -> str:
        return self.services.settings.dimse_aet

    def known(self, ae_title: str) -> Modality | None:
        now = time.monotonic()
        hit = self._seen.get(ae_title)
        if hit is not None and now - hit[0] < AE_CACHE_SECONDS:
            return hit[1]
        found = self.modalities.find(ae_title)
        if len(self._seen) > 10_000:  # bounded: titles are chosen by callers
            self._seen.clear()
        self._seen[ae_title] = (now, found)
        return found


def _permitted(event: Event, gateway: Gateway, operation: str) -> bool:
    """Known AEs may do only their listed operations, from their listed addresses;
    unknown AEs may do everything unless they are rejected at association time."""
    aet, ip = dimse_audit.caller(event)
    modality = gateway.known(aet)
    if modality is None:
        return not gateway.services.settings.dimse_reject_unknown
    allowed = modality.allows(operation, ip)
    if not allowed:
        log.warning("DIMSE: %s from %s may not %s", aet, ip, operation)
        dimse_audit.refused(gateway.services, event, operation, f"{aet} may not {operation}")
    return allowed


def on_requested(event: Event, gateway: Gateway) -> None:
    """A-ASSOCIATE-RQ: reject an unknown calling AE when so configured (PS3.8 7.1.1.9:
    result rejected-permanent, source service-user, reason calling-AE-not-recognized)."""
    if not gateway.services.settings.dimse_reject_unknown:
        return
    aet, ip = dimse_audit.caller(event)
    modality = gateway.known(aet)
    if modality is None or (modality.allowed_ips and ip not in modality.allowed_ips):
        log.warning("DIMSE: rejected association from unknown AE %r at %s", aet, ip)
        dimse_audit.refused(gateway.services, event, "associate", f"unknown AE {aet!r}")
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.is_rejected = True
        event.assoc.kill()  # as pynetdicom's own rejections do: lets the A-ASSOCIATE-RJ out


def on_echo(event: Event, gateway: Gateway) -> int:
    """C-ECHO (PS3.4 A.4): success, or refused for an AE not allowed to echo."""
    return status.SUCCESS if _permitted(event, gateway, "echo") else status.NOT_AUTHORIZED


def on_store(event: Event, gateway: Gateway) -> int | Dataset:
    """C-STORE (PS3.4 B.2.3) through the one ingest path, stored as received."""
    if not _permitted(event, gateway, "store"):
        return status.with_comment(status.NOT_AUTHORIZED, "this AE may not store")
    store = gateway.services.store
    try:
        path, fh = store.new_spool_file()
    except OSError as exc:
        log.error("C-STORE: cannot spool: %s", exc)
        if is_no_space(exc):
            return status.with_comment(status.OUT_OF_RESOURCES, "no space left on the archive")
        return status.with_comment(reasons.PROCESSING_FAILURE, "cannot spool the dataset")
    try:
        with fh:
            # The dataset as received, with a File Meta header naming the context's
            # transfer syntax: compressed data is kept, never re-encoded.
            fh.write(event.encoded_dataset(include_meta=True))
    except Exception as exc:
        path.unlink(missing_ok=True)
        if is_no_space(exc):
            return status.with_comment(status.OUT_OF_RESOURCES, "no space left on the archive")
        log.exception("C-STORE: cannot spool the dataset")
        return status.with_comment(reasons.PROCESSING_FAILURE, "cannot spool the dataset")
    outcome = store.store_spooled(path)
    code = status.store_status(outcome)
    dimse_audit.stored(
        gateway.services, event, outcome.study_uid, outcome.series_uid,
        outcome.sop_instance_uid, outcome.stored, outcome.message,
    )  # fmt: skip
    if code == status.SUCCESS:
        return code
    return status.with_comment(code, outcome.message or status.TEXT.get(code, ""))


def _model(event: Event) -> str:
    return str(event.request.AffectedSOPClassUID)


def on_find(event: Event, gateway: Gateway) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND (PS3.4 C.4.1): Patient Root and Study Root, every level."""
    if not _permitted(event, gateway, "find"):
        yield status.with_comment(status.NOT_AUTHORIZED, "this AE may not query"), None
        return
    settings = gateway.services.settings

    def answers() -> Iterator[Dataset]:
        dimse_audit.queried(gateway.services, event, event.identifier)
        ident = q.parse_identifier(event.identifier, _model(event))
        for item in q.search(gateway.services.query, ident, settings.qido_match_empty):
            yield q.render(item, ident, gateway.aet)

    yield from find_responses(event, answers(), "C-FIND")


def find_responses(
    event: Event, answers: Iterator[Dataset], what: str
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """The C-FIND response stream (PS3.4 C.4.1.1.4, PS3.7 9.1.2.1.6): a pending response
    per answer until C-CANCEL (FE00), then success; a bad identifier A900, no space
    A700, anything else C000, the association living on."""
    try:
        for answer in answers:
            if event.is_cancelled:
                yield status.CANCEL, None
                return
            yield status.PENDING, answer
    except InvalidRequest as exc:
        yield status.with_comment(status.IDENTIFIER_DOES_NOT_MATCH, exc.message), None
        return
    except OutOfResources as exc:
        yield status.with_comment(status.OUT_OF_RESOURCES, exc.message), None
        return
    except Exception as exc:
        log.exception("%s failed", what)
        yield status.with_comment(status.UNABLE_TO_PROCESS, type(exc).__name__), None
        return
    yield status.SUCCESS, None


def _matched_instances(gateway: Gateway, event: Event) -> list[StoredInstance]:
    """Every stored instance under the entities the identifier names (PS3.4 C.4.2.2)."""
    ident = q.parse_identifier(event.identifier, _model(event))
    retrieve = gateway.services.retrieve
    found: dict[str, StoredInstance] = {}
    settings = gateway.services.settings
    query = gateway.services.query
    if ident.level == Level.PATIENT:
        # The patient's studies: the same patient-level keys matched on studies.
        ident = q.Identifier(Level.STUDY, ident.params, [STUDY_INSTANCE_UID], ident.charset)
    for item in q.search(query, ident, settings.qido_match_empty):
        series = first(item, SERIES_INSTANCE_UID) if ident.level >= Level.SERIES else None
        sop = first(item, SOP_INSTANCE_UID) if ident.level == Level.INSTANCE else None
        studies = [first(item, STUDY_INSTANCE_UID)]
        for uid in studies:
            try:
                for inst in retrieve.instances(uid, series, sop):
                    found.setdefault(inst.sop_instance_uid, inst)
            except NotFound:
                continue  # deleted since the search
        if len(found) > MAX_SUBOPS:
            raise OutOfResources(f"more than {MAX_SUBOPS} instances match")
    return list(found.values())


def _dataset(gateway: Gateway, inst: StoredInstance, accepted: set[str] | None) -> Dataset:
    """The stored instance, decompressed only when the peer did not accept its syntax."""
    data = b"".join(gateway.services.retrieve.chunks(Planned(inst, inst.transfer_syntax)))
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    syntax = UID(inst.transfer_syntax)
    if accepted is not None and syntax not in accepted and syntax.is_compressed:
        ds.decompress(generate_instance_uid=False)
    return ds


def _retrieve_failure(exc: Exception) -> Dataset:
    if isinstance(exc, InvalidRequest):
        return status.with_comment(status.IDENTIFIER_DOES_NOT_MATCH, exc.message)
    if isinstance(exc, OutOfResources):
        return status.with_comment(status.OUT_OF_RESOURCES_MATCHES, exc.message)
    log.exception("retrieve: matching failed")
    return status.with_comment(status.UNABLE_TO_PROCESS, type(exc).__name__)


def _sub_operations(
    event: Event, gateway: Gateway, instances: list[StoredInstance], accepted: Any
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    for inst in instances:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        try:
            ds = _dataset(gateway, inst, accepted(inst) if accepted else None)
        except (DicomWebError, OSError, ValueError, RuntimeError) as exc:
            log.error("retrieve: cannot read %s: %s", inst.sop_instance_uid, exc)
            # Counted as a failed sub-operation by sending nothing for it.
            ds = Dataset()
            ds.SOPInstanceUID = inst.sop_instance_uid
            yield status.PENDING, ds
            continue
        yield status.PENDING, ds


def on_move(event: Event, gateway: Gateway) -> Iterator[Any]:
    """C-MOVE (PS3.4 C.4.2): sub-operations to a destination known by AE title."""
    destination: Modality | None = gateway.modalities.find(str(event.move_destination).strip())
    if destination is None:
        log.warning("C-MOVE: unknown destination %r", event.move_destination)
        yield None, None  # pynetdicom answers A801 Move Destination unknown
        return
    if not _permitted(event, gateway, "move"):
        # pynetdicom takes a failure status only after the destination and a count.
        yield destination.host, destination.port
        yield 1
        yield status.with_comment(status.NOT_AUTHORIZED, "this AE may not retrieve"), None
        return
    try:
        instances = _matched_instances(gateway, event)
    except Exception as exc:
        yield destination.host, destination.port
        yield 1  # pynetdicom needs a count before a failure status is honoured
        yield _retrieve_failure(exc), None
        return
    dimse_audit.transferred(gateway.services, event, "C-MOVE", instances)
    yield (
        destination.host,
        destination.port,
        {"contexts": storage_contexts(instances) or None, "evt_handlers": NO_DELAY},
    )
    yield len(instances)
    yield from _sub_operations(event, gateway, instances, None)


def on_get(event: Event, gateway: Gateway) -> Iterator[Any]:
    """C-GET (PS3.4 C.4.3): C-STORE sub-operations on the same association, in a
    syntax the requester accepted for the SOP class in the SCP role."""
    if not _permitted(event, gateway, "get"):
        yield 1
        yield status.with_comment(status.NOT_AUTHORIZED, "this AE may not retrieve"), None
        return
    try:
        instances = _matched_instances(gateway, event)
    except Exception as exc:
        yield 1
        yield _retrieve_failure(exc), None
        return
    dimse_audit.transferred(gateway.services, event, "C-GET", instances)
    by_class: dict[str, set[str]] = {}
    for cx in event.assoc.accepted_contexts:
        by_class.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    yield len(instances)
    yield from _sub_operations(
        event, gateway, instances, lambda inst: by_class.get(inst.sop_class_uid, set())
    )
