"""Wire concrete storage into services, from Settings; open and close resources."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from dicomweb_server.config import Settings
from dicomweb_server.dicom.ingest import configure_pydicom
from dicomweb_server.dimse.scu import PynetdicomNetwork
from dicomweb_server.errors import StorageUnavailable
from dicomweb_server.services.anonymize import SECRET_FILE, AnonymizeService
from dicomweb_server.services.audit import AuditSink, AuditTrail, JsonlFileSink, SyslogSink
from dicomweb_server.services.check import CheckService
from dicomweb_server.services.delete import DeleteService
from dicomweb_server.services.modalities import ModalityService
from dicomweb_server.services.mpps import MppsService
from dicomweb_server.services.pixels import PixelService
from dicomweb_server.services.query import QueryService
from dicomweb_server.services.rendering import RenderService
from dicomweb_server.services.retrieve import RetrieveService
from dicomweb_server.services.store import StoreService
from dicomweb_server.services.subscriptions import SubscriptionService
from dicomweb_server.services.ups_delivery import EventHub
from dicomweb_server.services.workitem_loop import WorkitemLoop
from dicomweb_server.services.workitems import WorkitemService
from dicomweb_server.storage.blob_fs import FileBlobStore
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.modalities import SqlModalities
from dicomweb_server.storage.sql.mpps import SqlMpps
from dicomweb_server.storage.sql.ups_events import SqlSubscriptions
from dicomweb_server.storage.sql.workitems import SqlWorkitems

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: StoreService
    query: QueryService
    retrieve: RetrieveService
    delete: DeleteService
    check: CheckService
    index: SqlIndex
    blobs: FileBlobStore
    pixels: PixelService
    rendering: RenderService
    audit: AuditTrail
    # --- dimse ---
    modalities: ModalityService
    # --- ups-core ---
    workitems: WorkitemService
    # --- ups-events ---
    subscriptions: SubscriptionService
    ups_hub: EventHub
    # --- mpps ---
    mpps: MppsService
    # --- wado-anon ---
    anonymize: AnonymizeService

    def close(self) -> None:
        self.store.close()
        self.index.close()
        self.blobs.close()
        self.audit.close()


def build_audit(settings: Settings) -> AuditTrail:
    sinks: list[AuditSink] = [JsonlFileSink(settings.audit_path)]
    if settings.audit_syslog:
        sinks.append(SyslogSink(settings.audit_syslog))
    return AuditTrail(sinks)


def prepare(settings: Settings) -> None:
    """Once per deployment start, before any worker: create folders, migrate, clean spool."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = FileBlobStore(settings.data_dir)
    removed = blobs.clean_spool()
    if removed:
        log.info("removed %d incomplete upload(s) left by an earlier stop", removed)
    # Thumbnails of releases before per-study cache folders: not removable per study.
    shutil.rmtree(settings.data_dir / "cache" / "thumbnails", ignore_errors=True)
    index = SqlIndex(settings.effective_database_url)
    try:
        applied = index.migrate()
        if applied:
            log.info("index schema migrated to version %d", applied[-1])
    except OperationalError as exc:
        where = settings.database_url_for_display
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise StorageUnavailable(f"cannot use the index database {where}: {reason}") from exc
    finally:
        index.close()


def build_services(settings: Settings) -> Services:
    configure_pydicom()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = FileBlobStore(settings.data_dir, settings.min_free_bytes, settings.blob_sync)
    # Held for the life of the process: a concurrent `prepare` must not clean our spool.
    blobs.hold_spool()
    index = SqlIndex(settings.effective_database_url)
    retrieve = RetrieveService(index, blobs)
    pixels = PixelService(index, blobs)
    rendering = RenderService(retrieve, pixels, settings.data_dir / "cache" / "thumbs")
    ups_store = SqlSubscriptions(index)
    subscriptions = SubscriptionService(ups_store, settings.ups_event_retention_seconds)
    workitems = WorkitemService(
        SqlWorkitems(index),
        subscriptions,
        default_limit=settings.qido_default_limit,
        max_limit=settings.qido_max_limit,
    )
    services = Services(
        settings=settings,
        store=StoreService(index, blobs, settings),
        query=QueryService(index),
        retrieve=retrieve,
        delete=DeleteService(index, blobs, forget=[rendering.forget]),
        check=CheckService(index, blobs),
        index=index,
        blobs=blobs,
        pixels=pixels,
        rendering=rendering,
        audit=build_audit(settings),
        modalities=ModalityService(
            settings, SqlModalities(index), PynetdicomNetwork(settings, retrieve)
        ),
        workitems=workitems,
        subscriptions=subscriptions,
        ups_hub=EventHub(ups_store, settings.ups_event_poll_ms / 1000),
        mpps=MppsService(workitems, SqlMpps(index)),
        anonymize=AnonymizeService(retrieve, settings.data_dir / SECRET_FILE),
    )
    # The workitem service publishes through subscriptions, which read workitems back.
    subscriptions.attach(services.workitems)
    # --- hl7-loop ---
    if settings.worklist_link_on_store:
        services.store.after_store = WorkitemLoop(services.workitems, settings).stored
    return services
