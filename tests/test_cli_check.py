"""`dicomweb-server check`: crash leftovers found and removed, missing blobs reported."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from dicomweb_server.services.check import sop_uid_of
from tests.conftest import run_cli
from tests.dicomgen import make_dataset, to_part10


def _blobs(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())


def test_check_finds_and_repairs_crash_leftovers(tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "data"
    src = tmp_path / "in"
    src.mkdir()
    datasets = [make_dataset(instance_number=n) for n in range(3)]
    for i, ds in enumerate(datasets):
        (src / f"{i}.dcm").write_bytes(to_part10(ds))
    common = ["--data-dir", str(data_dir), "--database-url", database_url]
    stored = run_cli("import", "-q", *common, str(src))
    assert stored.returncode == 0, stored.stderr
    blobs = _blobs(data_dir)
    assert len(blobs) == 3

    clean = run_cli("check", *common)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "3 blob(s), 3 indexed instance(s)" in clean.stdout

    # What a crash between rename and index commit leaves: a complete blob, unreferenced.
    # Same instance, another token: as if a second store of it crashed before its commit.
    old_orphan = blobs[0].with_name(blobs[0].name.rsplit("-", 1)[0] + "-deadbeef.dcm")
    shutil.copy(blobs[0], old_orphan)
    two_hours_ago = time.time() - 7200
    os.utime(old_orphan, (two_hours_ago, two_hours_ago))
    young_orphan = old_orphan.with_name(old_orphan.name.replace("deadbeef", "0badf00d"))
    shutil.copy(blobs[0], young_orphan)
    foreign = data_dir / "blobs" / "README.txt"
    foreign.write_text("not ours")
    os.utime(foreign, (two_hours_ago, two_hours_ago))
    # A damaged disk: one stored instance lost its file.
    lost = blobs[1]
    lost_uid = sop_uid_of(lost.relative_to(data_dir / "blobs").as_posix())
    assert lost_uid is not None
    lost.unlink()

    found = run_cli("check", *common)
    assert found.returncode == 1
    out = found.stdout
    assert f"unreferenced blob: {old_orphan.relative_to(data_dir / 'blobs')}" in out
    assert "1 unreferenced blob(s)" in out and "found (remove with --repair)" in out
    assert "newer than 3600 s left alone" in out
    assert f"instance {lost_uid}" in out
    assert "1 indexed instance(s) whose blob is missing" in out
    assert old_orphan.exists(), "check without --repair changes nothing"

    repaired = run_cli("check", "--repair", *common)
    assert repaired.returncode == 1  # the missing blob remains a problem for a person
    assert "1 unreferenced blob(s)" in repaired.stdout and "removed" in repaired.stdout
    assert not old_orphan.exists()
    assert young_orphan.exists() and foreign.exists()
    assert blobs[0].exists() and blobs[2].exists(), "referenced blobs are never touched"

    young_orphan.unlink()
    lost.write_bytes(to_part10(datasets[0]))  # put back (content does not matter here)
    assert run_cli("check", *common).returncode == 0


def test_sop_uid_of_reads_only_our_key_format() -> None:
    assert sop_uid_of("ab/1.2/1.3/1.2.3.4-0a1b2c3d.dcm") == "1.2.3.4"
    assert sop_uid_of("ab/1.2/1.3/notes.txt") is None
    assert sop_uid_of("ab/1.2/1.3/x-y.dcm") is None
    assert sop_uid_of("-0a1b.dcm") is None
