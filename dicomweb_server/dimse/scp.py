"""The DIMSE listener: one pynetdicom AE with its presentation contexts and handlers.

Services offered as SCP (see conformance/README.md): Verification, every Storage SOP
class pynetdicom knows (with SCP/SCU role selection accepted, so C-GET can send on the
same association, PS3.4 C.4.3 and PS3.7 D.3.3.4), Patient Root and Study Root
Query/Retrieve FIND, MOVE and GET, Storage Commitment Push Model, Modality Worklist
FIND and Modality Performed Procedure Step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    QueryRetrievePresentationContexts,
    VerificationPresentationContexts,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicomweb_server.bootstrap import Services
from dicomweb_server.config import Settings
from dicomweb_server.dicom.mpps import MODALITY_PERFORMED_PROCEDURE_STEP
from dicomweb_server.dicom.mwl import MODALITY_WORKLIST_FIND
from dicomweb_server.dimse import commitment, handlers, mpps, worklist
from dicomweb_server.dimse.handlers import Gateway
from dicomweb_server.dimse.syntaxes import STORAGE_SYNTAXES, UNCOMPRESSED
from dicomweb_server.dimse.tls import server_context

log = logging.getLogger(__name__)


def build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.dimse_aet)
    ae.maximum_associations = settings.dimse_max_associations
    ae.acse_timeout = settings.dimse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.dimse_timeout
    ae.maximum_pdu_size = settings.dimse_max_pdu
    ae.require_called_aet = settings.dimse_check_called_aet
    for cx in VerificationPresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), UNCOMPRESSED)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(
            str(cx.abstract_syntax), STORAGE_SYNTAXES, scu_role=True, scp_role=True
        )
    for cx in QueryRetrievePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), UNCOMPRESSED)
    ae.add_supported_context(commitment.PUSH_MODEL, UNCOMPRESSED)
    # --- mwl ---
    ae.add_supported_context(MODALITY_WORKLIST_FIND, UNCOMPRESSED)
    ae.add_supported_context(MODALITY_PERFORMED_PROCEDURE_STEP, UNCOMPRESSED)
    return ae


def _on_find(event: Any, gateway: Gateway) -> Any:
    """One C-FIND handler per AE: worklist queries go to the worklist SCP."""
    if str(event.request.AffectedSOPClassUID) == MODALITY_WORKLIST_FIND:
        return worklist.on_find(event, gateway)
    return handlers.on_find(event, gateway)


@dataclass
class Listener:
    server: ThreadedAssociationServer
    gateway: Gateway

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def services(self) -> Services:
        return self.gateway.services

    def stop(self) -> None:
        """Abort open associations, then close: a stop never waits for a peer that
        keeps an association idle (up to the network timeout) or a stalled handshake."""
        for assoc in list(self.server.ae.active_associations):
            assoc.abort()
        self.server.shutdown()


def start(services: Services) -> Listener:
    """Start listening on (host, dimse_port) in background threads, over TLS when
    a certificate is configured.

    Raises OSError (e.g. address already in use, unreadable certificate) when the
    listener cannot start.
    """
    settings = services.settings
    if settings.log_level.lower() not in ("debug", "trace"):
        # pynetdicom logs every association and message at INFO: too much for a PACS log.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = build_ae(settings)
    gateway = Gateway(services, services.modalities)
    steps = services.mpps
    events: list[Any] = [
        (evt.EVT_REQUESTED, handlers.on_requested, [gateway]),
        (evt.EVT_C_ECHO, handlers.on_echo, [gateway]),
        (evt.EVT_C_STORE, handlers.on_store, [gateway]),
        (evt.EVT_C_FIND, _on_find, [gateway]),
        (evt.EVT_C_MOVE, handlers.on_move, [gateway]),
        (evt.EVT_C_GET, handlers.on_get, [gateway]),
        (evt.EVT_N_ACTION, commitment.on_action, [gateway]),
        # --- mwl ---
        (evt.EVT_N_CREATE, mpps.on_create, [gateway, steps]),
        (evt.EVT_N_SET, mpps.on_set, [gateway, steps]),
    ]
    server = ae.start_server(
        (settings.host, settings.dimse_port),
        block=False,
        evt_handlers=events,
        ssl_context=server_context(settings),
    )
    assert server is not None  # block=False returns the server
    # Association threads must not keep the process alive, nor be joined at shutdown.
    server.daemon_threads = True
    log.info(
        "DIMSE gateway %s listening on %s:%d%s",
        settings.dimse_aet,
        settings.host,
        settings.dimse_port,
        " over TLS" if settings.dimse_tls_cert else "",
    )
    return Listener(server, gateway)
