"""Outbound DIMSE with pynetdicom: the ``DicomNetwork`` the modality service uses.

Each operation opens one association, does its work and releases it. Stored objects
are sent in their stored transfer syntax when the peer accepts it, else uncompressed.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from dicomweb_server.config import Settings
from dicomweb_server.dimse.syntaxes import UNCOMPRESSED
from dicomweb_server.dimse.tcp import NO_DELAY
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.services.modalities import Modality, RemoteResult, StoredInstance
from dicomweb_server.services.retrieve import Planned, RetrieveService

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# PS3.4 Annex C.6: Query/Retrieve information models.
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"

# "Unable to associate": not a DIMSE status, reported in the same field (PS3.7 C.1.4
# Cxxx class, implementation specific), so every outcome has one code.
NO_ASSOCIATION = 0xC0FF


class PynetdicomNetwork:
    def __init__(self, settings: Settings, retrieve: RetrieveService) -> None:
        self.settings = settings
        self.retrieve = retrieve

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.dimse_aet)
        ae.acse_timeout = self.settings.dimse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.dimse_timeout
        ae.maximum_pdu_size = self.settings.dimse_max_pdu
        return ae

    def _associate(self, target: Modality, contexts: list[Any]) -> Association | RemoteResult:
        ae = self._ae()
        assoc = ae.associate(
            target.host,
            target.port,
            contexts=contexts,
            ae_title=target.ae_title,
            evt_handlers=NO_DELAY,
        )
        if not assoc.is_established:
            return RemoteResult(
                NO_ASSOCIATION,
                message=f"cannot open an association with {target.ae_title} "
                f"at {target.host}:{target.port}",
            )
        return assoc

    def echo(self, target: Modality) -> RemoteResult:
        assoc = self._associate(target, [build_context(VERIFICATION, UNCOMPRESSED)])
        if isinstance(assoc, RemoteResult):
            return assoc
        try:
            rsp = assoc.send_c_echo()
            return _result(rsp)
        finally:
            assoc.release()

    def send(self, target: Modality, instances: Iterable[StoredInstance]) -> RemoteResult:
        items = list(instances)
        contexts = storage_contexts(items)
        assoc = self._associate(target, contexts)
        if isinstance(assoc, RemoteResult):
            return assoc
        result = RemoteResult(0)
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        try:
            for inst in items:
                code = self._send_one(assoc, inst, accepted.get(inst.sop_class_uid, set()))
                if code == 0:
                    result.completed += 1
                elif 0xB000 <= code <= 0xBFFF:
                    result.warning += 1
                else:
                    result.failed += 1
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        result.failed += len(items) - result.completed - result.warning - result.failed
        if result.failed or result.warning:
            result.status = 0xB000
        return result

    def _send_one(self, assoc: Association, inst: StoredInstance, accepted: set[str]) -> int:
        if not accepted:
            return 0x0122  # SOP class not supported by the peer
        data = b"".join(self.retrieve.chunks(Planned(inst, inst.transfer_syntax)))
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        syntax = UID(inst.transfer_syntax)
        if str(syntax) not in accepted and syntax.is_compressed:
            ds.decompress(generate_instance_uid=False)
        try:
            rsp = assoc.send_c_store(ds)
        except (ValueError, RuntimeError) as exc:
            log.error("C-STORE of %s failed: %s", inst.sop_instance_uid, exc)
            return 0xC000
        return int(rsp.Status) if "Status" in rsp else 0xC000

    def find(self, target: Modality, level: str, keys: dict[str, str]) -> RemoteResult:
        model = PATIENT_ROOT_FIND if level == "PATIENT" else STUDY_ROOT_FIND
        assoc = self._associate(target, [build_context(model, UNCOMPRESSED)])
        if isinstance(assoc, RemoteResult):
            return assoc
        result = RemoteResult(0)
        try:
            for rsp, ident in assoc.send_c_find(_identifier(level, keys), model):
                if "Status" not in rsp:
                    return RemoteResult(NO_ASSOCIATION, message="the association was lost")
                code = int(rsp.Status)
                if code in (0xFF00, 0xFF01) and ident is not None:
                    result.matches.append(ident.to_json_dict())
                else:
                    result.status = code
        finally:
            if assoc.is_established:
                assoc.release()
        return result

    def move(self, target: Modality, level: str, keys: dict[str, str]) -> RemoteResult:
        model = PATIENT_ROOT_MOVE if level == "PATIENT" else STUDY_ROOT_MOVE
        assoc = self._associate(target, [build_context(model, UNCOMPRESSED)])
        if isinstance(assoc, RemoteResult):
            return assoc
        result = RemoteResult(0)
        try:
            for rsp, _ in assoc.send_c_move(
                _identifier(level, keys), self.settings.dimse_aet, model
            ):
                if "Status" not in rsp:
                    return RemoteResult(NO_ASSOCIATION, message="the association was lost")
                result.status = int(rsp.Status)
                result.completed = int(rsp.get("NumberOfCompletedSuboperations", 0) or 0)
                result.failed = int(rsp.get("NumberOfFailedSuboperations", 0) or 0)
                result.warning = int(rsp.get("NumberOfWarningSuboperations", 0) or 0)
        finally:
            if assoc.is_established:
                assoc.release()
        return result


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for name, value in keys.items():
        if tag_for_keyword(name) is None or name in ("QueryRetrieveLevel",):
            raise InvalidRequest(f"{name!r} is not a DICOM keyword usable as a query key")
        setattr(ds, name, value)
    return ds


def _result(rsp: Dataset) -> RemoteResult:
    if "Status" not in rsp:
        return RemoteResult(NO_ASSOCIATION, message="no response (timeout or aborted)")
    return RemoteResult(int(rsp.Status), message=str(rsp.get("ErrorComment", "") or ""))


def storage_contexts(items: list[StoredInstance]) -> list[Any]:
    """Each SOP class in its stored syntax and uncompressed (at most 128, PS3.8 9.3.2.2)."""
    wanted: dict[tuple[str, str], None] = {}
    for inst in items:
        if UID(inst.transfer_syntax).is_compressed:
            wanted[(inst.sop_class_uid, inst.transfer_syntax)] = None
        wanted[(inst.sop_class_uid, "")] = None
    return [
        build_context(sop_class, [syntax] if syntax else list(UNCOMPRESSED))
        for sop_class, syntax in list(wanted)[:128]
    ]
