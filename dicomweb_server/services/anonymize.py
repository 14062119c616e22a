"""De-identified copies of stored instances, made on the way out (WADO-URI ``anonymize``).

The stored object is never changed: one instance is read, cleaned in memory by the
Basic Application Level Confidentiality Profile (``dicom/deidentify.py``) and sent.
Replacement UIDs are keyed by a per-archive secret kept in ``data_dir`` (created on
first use, mode 0600), so the same archive always maps a UID the same way and nobody
without the file can compute or reverse the mapping.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import pydicom

from dicomweb_server.dicom.deidentify import deidentify, keyed_uid, refusal
from dicomweb_server.dicom.transcode import to_transfer_syntax
from dicomweb_server.errors import Refused, StorageUnavailable
from dicomweb_server.services.retrieve import RetrieveService

SECRET_FILE = "deidentify.key"
_SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> bytes:
    """The secret at ``path``, made (32 random bytes, 0600) if there is none yet.

    Several worker processes may get here at once: the new file is written whole under
    a temporary name and hard-linked into place, which fails if another won the race,
    so every process ends up with the one secret on disk.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    if len(data) >= _SECRET_BYTES:
        return data
    if data:
        raise StorageUnavailable(f"de-identification secret {path} is truncated")
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(_SECRET_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use theirs
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path.read_bytes()


class AnonymizeService:
    def __init__(self, retrieve: RetrieveService, secret_path: Path) -> None:
        self.retrieve = retrieve
        self.secret_path = secret_path
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def _key(self) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = load_or_create_secret(self.secret_path)
            return self._secret

    def instance(
        self, study: str, series: str, sop: str, requested: Sequence[str]
    ) -> tuple[bytes, str]:
        """One instance de-identified, as Part 10 bytes, and the transfer syntax used.

        ``requested`` lists acceptable syntaxes in preference order, as for a plain
        retrieve. Raises Refused when the object cannot be safely de-identified.
        """
        found = self.retrieve.instances(study, series, sop)
        item = self.retrieve.plan(found, requested)[0]
        with self.retrieve.blobs.open(item.instance.blob_key) as fh:
            data = fh.read()  # one object: fine in memory
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        reason = refusal(ds)
        if reason is not None:
            raise Refused(f"cannot de-identify instance {sop}: {reason}")
        if not item.as_stored:
            data = to_transfer_syntax(io.BytesIO(data), item.transfer_syntax)
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        secret = self._key()
        deidentify(ds, lambda uid: keyed_uid(secret, uid))
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue(), item.transfer_syntax
