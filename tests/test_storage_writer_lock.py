"""SQLite writers of different processes queue on the writer lock file."""

from __future__ import annotations

import fcntl
import io
import os
import threading
import time
from pathlib import Path

from dicomweb_server.dicom.ingest import analyse
from dicomweb_server.storage.sql.index import SqlIndex
from tests.dicomgen import make_dataset, to_part10


def test_a_writer_waits_for_the_lock_another_process_holds(tmp_path: Path) -> None:
    database = tmp_path / "index.sqlite3"
    index = SqlIndex(f"sqlite:///{database}")
    index.migrate()
    rec = analyse(io.BytesIO(to_part10(make_dataset())))
    # As another worker process would: an flock of its own open file description.
    fd = os.open(tmp_path / "index.sqlite3.writer", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()

    def store() -> None:
        index.add_instance(rec, "k/a.dcm", 1, "h")
        done.set()

    writer = threading.Thread(target=store, daemon=True)
    try:
        writer.start()
        assert not done.wait(0.5), "the write did not wait for the other process"
        assert index.find_instance(rec.sop_instance_uid) is None
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    started = time.monotonic()
    assert done.wait(30)
    assert time.monotonic() - started < 5  # woken on release, not after a sleep step
    assert index.find_instance(rec.sop_instance_uid) is not None
    index.close()
