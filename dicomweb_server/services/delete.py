"""Delete studies, series and instances: index rows first, then their blobs.

Removing the rows first means a crash in between leaves unreferenced files (wasted
space only; `dicomweb-server check --repair` removes them), never index rows that
point at nothing. Derived copies (cached thumbnails) go too, through ``forget``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dicomweb_server.errors import NotFound
from dicomweb_server.storage.interfaces import BlobStore, IndexStore

log = logging.getLogger(__name__)


class DeleteService:
    def __init__(
        self,
        index: IndexStore,
        blobs: BlobStore,
        forget: Sequence[Callable[[str], None]] = (),
    ) -> None:
        self.index = index
        self.blobs = blobs
        # Called with the study's UID after anything in it was deleted.
        self.forget = tuple(forget)

    def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        keys = self.index.delete(study, series, sop)
        if not keys:
            what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
            raise NotFound(f"{what} is not stored")
        for key in keys:
            try:
                self.blobs.delete(key)
            except OSError as exc:  # the rows are gone; a leftover file is only wasted space
                log.warning("could not remove blob %s: %s", key, exc)
        for forget in self.forget:
            try:
                forget(study)
            except OSError as exc:  # a stale cache entry is never served (versioned names)
                log.warning("could not forget cached copies of study %s: %s", study, exc)
        return len(keys)
